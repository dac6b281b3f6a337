"""Recurrent-depth transformers on synthetic knowledge graphs: data, model, training, sweeps.

Layers, lowest first: ``config`` -> ``data`` and ``model`` -> ``eval`` -> ``train`` -> ``sweep``.
A lower layer never imports a higher one; only ``rdt_core.sweep`` imports Ray, Optuna and MLflow.
"""
