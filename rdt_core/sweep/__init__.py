"""Sweeps: the spec schema, Ray Tune / Ray Train / Optuna wiring and MLflow tracking.

The only layer that imports Ray, Optuna and MLflow. ``spec`` is importable without starting anything.
"""
