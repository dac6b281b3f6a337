"""Recurrent-depth transformers on synthetic knowledge graphs: data, model, training, sweeps.

Layers, lowest first: ``config`` and ``metrics`` -> ``data`` and ``model`` -> ``eval`` and the
instruments -> ``train`` -> ``tracking`` (MLflow alone) -> ``report`` -> ``sweep``. A lower layer never
imports a higher one, and no module imports itself back through another (tests/unit/test_layers.py).
Ray and Optuna are imported by ``rdt_core.sweep`` alone; MLflow by ``tracking`` and the layers above it.
"""
