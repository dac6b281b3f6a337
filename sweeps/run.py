"""Run a sweep: ``python sweeps/run.py sweeps/smoke.yaml`` (see rdt_core/sweep/cli.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not

from rdt_core.sweep.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
