"""Shared helpers: run the sweep CLI in a subprocess against a private Ray and MLflow store."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_PY = REPO_ROOT / "sweeps" / "run.py"
LAUNCHER = REPO_ROOT / "mlflow" / "serve.py"

# A config that trains in seconds yet has every split (train, id, ood), two test hop counts and room for
# the lens and patching: the unit tests' model run.
TINY_CONFIG = {
    "data": {"n_entities": 24, "n_relations": 4, "inferred_ratio": 1.0, "n_test_queries": 12,
             "ood_fraction": 0.25, "test_max_hops": 3},
    "model": {"d_model": 32, "n_heads": 2, "max_loops": 4},
    "train": {"steps": 60, "eval_every": 20, "train_loops": 2, "batch_size": 32, "warmup_steps": 5},
    "eval": {"n_train_eval_per_hop": 32, "n_lens_queries": 8, "n_patching_queries": 8},
}


def short_temp_dir() -> str:
    """A Ray temp dir under /tmp: Ray's unix socket paths must stay under ~107 characters."""
    return tempfile.mkdtemp(prefix="rdt-ray-", dir="/tmp")


# Settings of a user's shell that would send a test's sweep to their cluster, server or bucket.
OUTSIDE_SETTINGS = frozenset({"RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RDT_STORAGE_PATH"})


def isolated_env(workdir: Path) -> dict[str, str]:
    """Environment for a sweep subprocess: its own Ray temp dir and MLflow store, no outside cluster."""
    env = {key: value for key, value in os.environ.items() if key not in OUTSIDE_SETTINGS}
    env["RAY_TMPDIR"] = short_temp_dir()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class SharedRay:
    """A local Ray started once (``ray start --head``, its own temp dir and ports) for the sweeps of a test
    module that need nothing of a Ray of their own: each joins it, as a sweep joins a cluster, instead
    of starting and stopping an embedded Ray (seconds each, here). Tests that kill Ray's processes, count
    them or start it a special way keep their own (``isolated_env``)."""

    def __init__(self) -> None:
        self.temp_dir = short_temp_dir()
        self.address = f"127.0.0.1:{free_port()}"
        self.token = secrets.token_hex(32)  # Ray 2.60 turns token authentication on for a local head

    def auth_env(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def start(self) -> None:
        env = {key: value for key, value in os.environ.items() if key not in OUTSIDE_SETTINGS}
        started = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={self.address.split(':')[1]}",
             "--num-cpus=2", f"--dashboard-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
             f"--ray-client-server-port={free_port()}", f"--temp-dir={self.temp_dir}", "--disable-usage-stats"],
            env={**env, **self.auth_env()}, capture_output=True, text=True, timeout=180,
        )
        if started.returncode != 0:
            self.stop()
            pytest.fail(f"ray start --head failed:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}")

    def stop(self) -> None:
        stop_ray_started_in(self.temp_dir)

    def env(self, workdir: Path) -> dict[str, str]:
        """``isolated_env(workdir)`` for a sweep that joins this Ray: it starts no Ray of its own."""
        env = isolated_env(workdir)
        shutil.rmtree(env.pop("RAY_TMPDIR"), ignore_errors=True)
        return {**env, **self.auth_env(), "RAY_ADDRESS": self.address}


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def load_smoke_spec() -> dict:
    return yaml.safe_load((REPO_ROOT / "sweeps" / "smoke.yaml").read_text())


def run_sweep_cli(spec_path: Path, workdir: Path, timeout: float, env: dict[str, str] | None = None):
    """``python sweeps/run.py SPEC`` in ``workdir``; returns the completed process (output captured)."""
    return subprocess.run(
        [sys.executable, str(RUN_PY), str(spec_path)],
        cwd=workdir,
        env=env or isolated_env(workdir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_sweep_cli(spec_path: Path, workdir: Path, env: dict[str, str]) -> subprocess.Popen:
    """``python sweeps/run.py SPEC`` in the background, for a test that acts while it runs. Its output
    goes to ``workdir/sweep.out`` and ``sweep.err`` (``sweep_output``), not to pipes: a sweep that writes
    more than a pipe holds (64 KiB; Ray Train's logs of one data-parallel trial do) would block on them,
    and with it the whole sweep, while the test is busy waiting on something else."""
    with open(workdir / "sweep.out", "w") as stdout, open(workdir / "sweep.err", "w") as stderr:
        return subprocess.Popen([sys.executable, str(RUN_PY), str(spec_path)], cwd=workdir, env=env,
                                stdout=stdout, stderr=stderr)


def sweep_output(workdir: Path) -> tuple[str, str]:
    """The stdout and stderr of the sweep that ``start_sweep_cli`` started in ``workdir``."""
    return (workdir / "sweep.out").read_text(), (workdir / "sweep.err").read_text()


def sweep_with_an_event(
    spec_path: Path, workdir: Path, env: dict[str, str], moment: Callable[[], Any], event: Callable[[Any], None]
) -> tuple[int, str, str]:
    """Start a sweep, wait (300 s at most) for ``moment()`` to return something true while the sweep
    runs, call ``event(what it returned)`` (a kill, a crash), and wait for the sweep to end. Its Ray is
    stopped whatever happens. Returns the sweep's exit status, stdout and stderr."""
    sweep = start_sweep_cli(spec_path, workdir, env)
    try:
        deadline = time.monotonic() + 300
        while not (found := moment()):
            assert sweep.poll() is None, "the sweep ended before the moment of the event came"
            assert time.monotonic() < deadline, "the moment of the event did not come within 300 s"
            time.sleep(0.2)
        event(found)
        sweep.wait(timeout=600)
    finally:
        if sweep.poll() is None:
            sweep.kill()
        stop_ray_started_in(env["RAY_TMPDIR"])
    return sweep.returncode, *sweep_output(workdir)


def stop_ray_started_in(temp_dir: str) -> None:
    """End only the Ray processes of this test (and their children), never another Ray on the machine.

    Every process of a ``ray start --temp-dir=X`` names X on its command line or descends from one that
    does; ``ray stop`` would end every Ray on the machine instead.
    """
    me = os.getpid()
    ours = []
    for process in psutil.process_iter(["cmdline"]):
        if process.pid != me and any(temp_dir in part for part in process.info["cmdline"] or []):
            ours.append(process)
            ours.extend(process.children(recursive=True))
    for process in ours:
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    # Ray 2.60's gcs_server logs that it stopped on SIGTERM but lingers: what is left after 5 s is killed.
    _, alive = psutil.wait_procs(ours, timeout=5)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def ray_actor_pids(ray_temp_dir: str, actor_class: str) -> list[int]:
    """The processes of Ray actors of ``actor_class`` (``ImplicitFunc``: a Tune trial; ``RayTrainWorker``)
    of the Ray whose temp dir is ``ray_temp_dir``: their titles name the actor class, and they descend
    from that Ray's raylet, whose command line names the temp dir."""
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        if any(ray_temp_dir in part for part in process.info["cmdline"] or []):
            for child in process.children(recursive=True):
                try:
                    if actor_class in " ".join(child.cmdline()):
                        found.add(child.pid)
                except psutil.NoSuchProcess:
                    pass
    return sorted(found)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_tracking_server(
    backend: str, artifacts: Path, workdir: Path, port: int | None = None
) -> tuple[subprocess.Popen, str]:
    """The project's launcher (mlflow/serve.py) on a loopback port (a free one unless given); returns
    it and its URL."""
    port = port or free_port()
    server = subprocess.Popen(
        [sys.executable, str(LAUNCHER), "--backend-store-uri", backend, "--artifacts-destination", str(artifacts),
         "--port", str(port), "--workers", "2"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # a guard against a hang, not a speed check: a loaded CI is slow
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the launcher exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return server, url
        except OSError:
            time.sleep(1)
    stop_tracking_server(server)
    pytest.fail("the tracking server did not answer within 300 s")


def stop_tracking_server(server: subprocess.Popen, crash: bool = False) -> None:
    """End the server and its workers: politely, or (``crash``) at once, as a machine that dies would."""
    subprocess.run(["pkill", "-KILL" if crash else "-TERM", "-s", str(server.pid)], check=False)
    server.wait(timeout=30)
