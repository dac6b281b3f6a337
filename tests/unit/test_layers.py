"""The layers stand on each other one way: training and the report never import the sweep (nor Ray or
Optuna), and the tracking layer is MLflow only. Checked in a fresh interpreter, where nothing else has
imported them first."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["rdt_core.report", "rdt_core.train", "rdt_core.train.__main__", "rdt_core.tracking"])
def test_lower_layers_import_no_sweep_ray_or_optuna(module):
    check = (
        f"import sys, {module}; "
        "found = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'optuna') or m.startswith('rdt_core.sweep')); "
        "print(found); sys.exit(1 if found else 0)"
    )
    completed = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
