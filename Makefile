# Every target sets up the virtual environment first (once; again when pyproject.toml changes).
# TORCH is installed before the project so that pip keeps it: the CPU build by default. On a GPU
# machine, pass a CUDA build instead, e.g.  make demo TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: venv demo test test-fast soak bench bench-quick clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: venv  ## the smoke sweep on an embedded local Ray, logging to sqlite:///mlflow.db
	$(BIN)/python sweeps/run.py sweeps/smoke.yaml

# Three test processes (pytest-xdist): most of a sweep test is waiting on processes starting, so three at
# once fit 2 cores. --dist worksteal: a process that runs out of tests takes some of another's queue, so the
# long tests (a browser check, ray job submit, the kill harness: 1-2.5 minutes each) do not queue up behind
# one process while the others sit idle. Sweeps that need no Ray of their own join one Ray per process
# (tests/conftest.py: shared_ray).
test: venv  ## the whole suite: unit, integration (real Ray + MLflow), end to end (ray job submit)
	$(BIN)/python -m pytest -n 3 --dist worksteal

test-fast: venv  ## unit tests only (about a minute)
	$(BIN)/python -m pytest -m "not slow" -n 2

soak: venv  ## kill a small sweep at 25 random moments, resume it, check every invariant; prints how many held, per target
	$(BIN)/python -m tests.kill_anywhere --points 25

bench: venv  ## every benchmark as a ratio against a baseline of the same run (~6 minutes): benchmarks/results.json
	$(BIN)/python -m benchmarks.run

bench-quick: venv  ## the same with fewer repeats and without the local-Ray benchmark (~2.5 minutes)
	$(BIN)/python -m benchmarks.run --quick

clean:
	rm -rf $(VENV) mlflow.db mlruns ray_results .pytest_cache
