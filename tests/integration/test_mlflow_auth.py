"""The tracking server with MLflow's authentication (``mlflow/serve.py --auth``), on a SQLite and on a
PostgreSQL store: only valid credentials get in, a read-only user cannot write, a sweep reaches the server
with the credentials of MLflow's environment variables and a wrong one stops it before any trial, and no
credential leaks into what the sweep logs or prints. The launcher's refusals need no server."""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from base64 import b64encode
from pathlib import Path

import psutil
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from rdt_core.tracking.tracker import TrackingCredentialsError, check_reachable, credentials_refused
from tests.helpers import (
    LAUNCHER,
    REPO_ROOT,
    free_port,
    isolated_env,
    load_smoke_spec,
    run_sweep_cli,
    stop_tracking_server,
    write_spec,
)

ADMIN = "admin"
CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def new_password() -> str:
    """Random, so that finding it anywhere is a leak and never a coincidence."""
    return f"pw-{secrets.token_urlsafe(18)}"


def load_launcher():
    """mlflow/serve.py as a module (its folder is no package: it would shadow mlflow)."""
    spec = importlib.util.spec_from_file_location("rdt_mlflow_serve", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_authenticated_server(backend: str, workdir: Path, admin_password: str, via_file: bool):
    """``serve.py --auth`` on a free loopback port, the admin's password given through
    ``MLFLOW_AUTH_ADMIN_PASSWORD`` or (``via_file``) a private file; returns the server and its URL. Its
    output goes to ``workdir/server.log``. One worker: a second one only costs a loaded machine its
    start-up, and the sweep's driver is the only writer."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env["TMPDIR"] = str(workdir)  # where the launcher writes the server's auth config, gone with the test
    flags = []
    if via_file:
        password_file = workdir / "admin-password"
        password_file.write_text(admin_password + "\n")
        password_file.chmod(0o600)
        flags = ["--admin-password-file", str(password_file)]
    else:
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = admin_password
    with open(workdir / "server.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, str(LAUNCHER), "--auth", *flags, "--backend-store-uri", backend,
             "--artifacts-destination", str(workdir / "served"), "--port", str(port), "--workers", "1"],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # a guard against a hang, not a speed check
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the launcher exited with {server.returncode}: {(workdir / 'server.log').read_text()[-2000:]}")
        if status_of(f"{url}/health") == 200:
            return server, url
        time.sleep(1)
    stop_tracking_server(server)
    pytest.fail("the authenticated tracking server did not answer within 300 s")


def users_of(url: str):
    """MLflow's client of the basic-auth app's user and permission API (it acts with the credentials of
    this process's environment)."""
    with warnings.catch_warnings():  # MLflow's server modules import starlette's deprecated WSGI middleware
        warnings.simplefilter("ignore")
        from mlflow.server.auth.client import AuthServiceClient
    return AuthServiceClient(url)


def status_of(url: str, user: str | None = None, password: str | None = None) -> int | None:
    """The HTTP status of a GET, with basic auth when a user is given; None when nothing answers."""
    request = urllib.request.Request(url)
    if user is not None:
        request.add_header("Authorization", "Basic " + b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def act_as(monkeypatch, user: str | None, password: str | None = None) -> None:
    """This process's MLflow clients send ``user``'s credentials from now on (none for None): they read
    the environment at every request."""
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    if user is not None:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_uri(request, tmp_path):
    """The tracking store of the server under test; its users go where the launcher puts them by default."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'server.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:No path_separator found:DeprecationWarning")  # MLflow's alembic config
def test_only_valid_credentials_get_in_and_a_reader_cannot_write(tmp_path, store_uri, monkeypatch, capsys):
    admin_password = new_password()
    via_file = store_uri.startswith("postgresql")  # each store takes the admin's password one way
    server, url = start_authenticated_server(store_uri, tmp_path, admin_password, via_file)
    try:
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert status_of(search) == 401
        assert status_of(search, ADMIN, "wrong-password-123") == 401
        assert status_of(search, ADMIN, "password1234") == 401  # older MLflow's published default
        assert status_of(search, ADMIN, admin_password) == 200  # the admin has exactly the given password
        for process in [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]:
            assert admin_password not in "".join(process.environ().values()), process.cmdline()

        # The sweep's pre-flight check names the cause and the variable, never the password.
        act_as(monkeypatch, None)
        with pytest.raises(TrackingCredentialsError, match="wants credentials.*MLFLOW_TRACKING_USERNAME"):
            check_reachable(url)
        act_as(monkeypatch, ADMIN, "wrong-password-123")
        with pytest.raises(TrackingCredentialsError, match="user 'admin'.*check MLFLOW_TRACKING_PASSWORD") as refused:
            check_reachable(url)
        assert "wrong-password-123" not in str(refused.value) and len(str(refused.value).splitlines()) == 1

        # A researcher writes; a reader with READ on the researcher's experiment reads it and writes nothing.
        act_as(monkeypatch, ADMIN, admin_password)
        check_reachable(url)
        researcher, reader = ("alice", new_password()), ("bob", new_password())
        users = users_of(url)
        for name, password in (researcher, reader):
            users.create_user(name, password)
        act_as(monkeypatch, *researcher)
        client = MlflowClient(url)
        experiment_id = client.create_experiment("shared")
        run_id = client.create_run(experiment_id).info.run_id
        client.log_param(run_id, "train.lr", "0.01")
        act_as(monkeypatch, ADMIN, admin_password)
        users.grant_user_permission(reader[0], "experiment", experiment_id, "READ")
        act_as(monkeypatch, *reader)
        assert client.get_run(run_id).data.params == {"train.lr": "0.01"}
        for write in (lambda: client.log_param(run_id, "train.steps", "10"),
                      lambda: client.set_tag(run_id, "note", "x"),
                      lambda: client.create_run(experiment_id),
                      lambda: users.create_user("mallory", new_password())):
            with pytest.raises(MlflowException) as denied:
                write()
            assert denied.value.get_http_status_code() == 403
        assert set(client.get_run(run_id).data.params) == {"train.lr"}

        # Started again, the launcher finds the admin and needs no password; a different one is ignored.
        launcher = load_launcher()
        auth_store = launcher.default_auth_store_uri(store_uri)
        launcher.prepare_auth_store(auth_store, ADMIN, None)
        other_password = new_password()
        launcher.prepare_auth_store(auth_store, ADMIN, other_password)
        assert "exists with another password" in capsys.readouterr().err
        assert status_of(search, ADMIN, admin_password) == 200 and status_of(search, ADMIN, other_password) == 401
    finally:
        stop_tracking_server(server)
    assert admin_password not in (tmp_path / "server.log").read_text()


@pytest.mark.slow
def test_a_sweep_needs_valid_credentials_and_leaks_none(tmp_path, monkeypatch):
    """A wrong password stops the sweep in seconds, before Ray starts; the right one logs the parent and
    its children, and the password appears in no param, tag, artifact, console line or file the sweep
    wrote."""
    admin_password, researcher_password = new_password(), new_password()
    server, url = start_authenticated_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path, admin_password, False)
    try:
        act_as(monkeypatch, ADMIN, admin_password)
        users_of(url).create_user("alice", researcher_password)
        act_as(monkeypatch, None)  # the sweep's environment is built from this process's

        spec = load_smoke_spec()
        spec.update(name="authed", num_samples=2)
        spec["base"]["train"].update({"steps": 60, "eval_every": 30})
        workdir = tmp_path / "work"
        workdir.mkdir()
        spec_path = write_spec(workdir / "authed.yaml", spec)
        env = isolated_env(workdir)
        env.update(MLFLOW_TRACKING_URI=url, MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD="not-" + researcher_password)

        started = time.monotonic()
        refused = run_sweep_cli(spec_path, workdir, timeout=120, env=env)
        assert time.monotonic() - started < 60, "MLflow's client retries a refused request for minutes"
        assert refused.returncode == 1, refused.stdout[-3000:] + refused.stderr[-3000:]
        (line,) = refused.stderr.strip().splitlines()
        assert line.startswith("error: ") and "'alice'" in line and "MLFLOW_TRACKING_PASSWORD" in line, line
        assert researcher_password not in refused.stdout + refused.stderr  # the wrong password holds it
        assert not (workdir / "ray_results").exists() and not any(Path(env["RAY_TMPDIR"]).iterdir())  # no Ray

        env["MLFLOW_TRACKING_PASSWORD"] = researcher_password
        completed = run_sweep_cli(spec_path, workdir, timeout=600, env=env)
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

        # A user who may only read the experiment (the server's default permission) is stopped with one line.
        act_as(monkeypatch, ADMIN, admin_password)
        reader_password = new_password()
        users_of(url).create_user("bob", reader_password)
        reader_env = {**env, "MLFLOW_TRACKING_USERNAME": "bob", "MLFLOW_TRACKING_PASSWORD": reader_password}
        forbidden = run_sweep_cli(spec_path, workdir, timeout=120, env=reader_env)
        assert forbidden.returncode == 1, forbidden.stdout[-3000:] + forbidden.stderr[-3000:]
        (line,) = forbidden.stderr.strip().splitlines()
        assert line.startswith("error: ") and "'bob'" in line and "EDIT" in line, line

        client = MlflowClient(url)
        runs = client.search_runs([client.get_experiment_by_name("authed").experiment_id])
        (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
        children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
        assert len(children) == 2 and all(run.info.status == "FINISHED" for run in runs)
        assert any(entry.path.startswith("diagrams") for entry in client.list_artifacts(parent.info.run_id))
        logged = []
        for run in runs:
            logged += [*run.data.params.items(), *run.data.tags.items()]
            downloaded = tmp_path / "artifacts" / run.info.run_id
            downloaded.mkdir(parents=True)
            client.download_artifacts(run.info.run_id, "", str(downloaded))
    finally:
        stop_tracking_server(server)

    # Ray's own session logs count too: they are files on the driver's machine.
    written = [path for folder in (tmp_path / "artifacts", workdir, Path(env["RAY_TMPDIR"]))
               for path in folder.rglob("*") if path.is_file()]
    assert logged and written
    for password in (researcher_password, admin_password):
        assert not [item for item in logged if password in "".join(item)]
        assert password not in completed.stdout + completed.stderr
        assert not [path for path in written if password.encode() in path.read_bytes()]


def test_a_password_in_the_tracking_uri_or_a_refused_token_is_never_printed(monkeypatch):
    with pytest.raises(TrackingCredentialsError, match="MLFLOW_TRACKING_PASSWORD") as in_uri:
        check_reachable("http://alice:hunter2-secret@127.0.0.1:1")
    assert "hunter2-secret" not in str(in_uri.value) and "alice:***@127.0.0.1:1" in str(in_uri.value)

    act_as(monkeypatch, None)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "token-of-alice-123")
    refused = credentials_refused("http://127.0.0.1:1", 401)
    assert "MLFLOW_TRACKING_TOKEN" in str(refused) and "token-of-alice-123" not in str(refused)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--host", "0.0.0.0"], "--insecure-no-auth"),
        (["--host", "0.0.0.0", "--auth", "--insecure-no-auth"], "contradict"),
        (["--auth", "--admin-password-file", str(REPO_ROOT / "admin-password")], "inside the repository"),
        (["--auth", "--admin-password-file", "{readable}"], "chmod 600"),
        (["--auth"], "MLFLOW_AUTH_ADMIN_PASSWORD"),  # a new user store and no password: no admin without one
    ],
    ids=["open-without-auth", "contradiction", "password-file-in-repo", "password-file-readable", "no-password"],
)
def test_the_launcher_refuses_with_one_line(tmp_path, flags, expected):
    readable = tmp_path / "readable-password"
    readable.write_text(new_password())
    readable.chmod(0o644)
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    completed = subprocess.run(
        [sys.executable, str(LAUNCHER), *[flag.format(readable=readable) for flag in flags],
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--port", str(free_port())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2, completed.stdout + completed.stderr
    lines = completed.stderr.strip().splitlines()
    if "--auth" not in flags or "--admin-password-file" in flags:  # refused before any store is opened
        assert len(lines) == 1, completed.stderr
    assert lines[-1].startswith("error: ") and expected in lines[-1], completed.stderr
    assert sum(line.startswith("error: ") for line in lines) == 1, completed.stderr
    assert not (REPO_ROOT / "admin-password").exists()
