"""Sweeps: the spec schema and the Ray Tune / Ray Train / Optuna wiring, tracked through ``rdt_core.tracking``.

The only layer that imports Ray and Optuna. ``spec`` is importable without starting anything.
"""
