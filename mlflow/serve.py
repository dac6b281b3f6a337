"""Start the MLflow tracking server for this platform's sweeps.

    python mlflow/serve.py [--backend-store-uri URI] [--artifacts-destination DEST]
                           [--host 127.0.0.1] [--port 5000] [--allowed-hosts H1,H2] [--workers N]
                           [--auth [--auth-store-uri URI] [--admin-password-file PATH]
                                   [--default-permission READ] [--auth-cache-s 60]]
                           [--insecure-no-auth]

The backend store is any SQLAlchemy URL: SQLite by default (``sqlite:///mlflow.db``), PostgreSQL on a
cluster (``postgresql://user@host:5432/mlflow``; the password comes from ``PGPASSWORD`` or ``~/.pgpass``,
never the command line). Artifacts are served by the server itself (``--serve-artifacts``) from a local
folder by default, or from S3 (``s3://bucket/prefix``), so that clients need no storage credentials.

Before the server starts, the launcher creates the database's tables, or migrates them to this MLflow's
schema, so that a second start against the same store keeps every run. It binds to 127.0.0.1 unless told
otherwise, and sets the allowed Host headers to the address it serves on. A store it cannot open exits 2
with one line, before anything is started.

``--auth`` serves MLflow's basic-auth app (the ``auth`` extra): every request but ``/health`` needs a
user's name and password. The users and their permissions live in the auth store (default: the tracking
store's database, or for SQLite a ``-auth`` file beside it), created or migrated here like the tracking
store. At the first start the launcher creates the admin, ``MLFLOW_AUTH_ADMIN_USERNAME`` (default
``admin``), with the password from ``MLFLOW_AUTH_ADMIN_PASSWORD`` or the first line of
``--admin-password-file`` (outside the repository, readable by its owner only); there is no default
password, and the one older MLflow versions shipped is refused. The server process itself never holds
the admin password. A ``--host`` other than a loopback address without ``--auth`` exits 2, unless
``--insecure-no-auth`` says that the network alone is to guard the store.

(This folder holds no ``__init__.py``: it would shadow the ``mlflow`` package.)
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

REPO_ROOT = Path(__file__).resolve().parent.parent
ADMIN_USERNAME_ENV = "MLFLOW_AUTH_ADMIN_USERNAME"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
DEFAULT_ADMIN_USERNAME = "admin"
# The admin password that MLflow's basic_auth.ini shipped before 3.x (GHSA-gq3w-7jj3-x7gr): public.
LEGACY_DEFAULT_ADMIN_PASSWORD = "password1234"
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")


class LaunchError(ValueError):
    """Invalid input, or a store that cannot be used: one line naming the flag, exit 2."""


def check_connects(store_uri: str) -> None:
    """One plain connection: MLflow retries a failing database for minutes, and a wrong URL should be an
    error at once."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(store_uri)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


def prepare_store(backend_store_uri: str) -> None:
    """Create the tracking tables, or upgrade them to this MLflow's schema (idempotent). A SQLite store is
    made as a sweep makes it (``rdt_core.tracking.store``: created aside and moved into place whole, under
    the lock a sweep opening it at the same time takes too)."""
    from mlflow.tracking import MlflowClient

    if backend_store_uri.startswith("sqlite:"):
        from rdt_core.tracking.store import ready_store

        ready_store(backend_store_uri)
        return
    check_connects(backend_store_uri)
    MlflowClient(backend_store_uri).search_experiments(max_results=1)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host``; a host name other than ``localhost`` is taken to
    reach others."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_auth_store_uri(backend_store_uri: str) -> str:
    """The tracking store's own database (the auth tables have names of their own and their own
    migration history, ``alembic_version_auth``), except for SQLite: a second file beside it, so that
    the login checked on every request does not wait on the lock of the file the runs are written to."""
    from sqlalchemy.engine import make_url

    url = make_url(backend_store_uri)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return backend_store_uri
    database = Path(url.database)
    auth_database = database.with_name(f"{database.stem}-auth{database.suffix or '.db'}")
    return url.set(database=str(auth_database)).render_as_string(hide_password=False)


def read_admin_password(password_file: Path | None) -> str | None:
    """The admin password: the first line of ``password_file``, else ``MLFLOW_AUTH_ADMIN_PASSWORD``."""
    if password_file is not None:
        password = read_password_file(password_file)
    else:
        password = os.environ.get(ADMIN_PASSWORD_ENV) or None
    if password == LEGACY_DEFAULT_ADMIN_PASSWORD:
        raise LaunchError("the admin password is the default that older MLflow versions published; choose another")
    return password


def read_password_file(password_file: Path) -> str:
    """Its first line. A file inside the repository could be committed, and one that others can read is
    no secret."""
    flag = f"--admin-password-file {password_file}"
    resolved = password_file.expanduser().resolve()
    if resolved.is_relative_to(REPO_ROOT):
        raise LaunchError(f"{flag}: inside the repository, where it could be committed; keep it outside")
    try:
        mode = resolved.stat().st_mode
        lines = resolved.read_text().splitlines()
    except OSError as error:
        raise LaunchError(f"{flag}: {error.strerror}") from None
    if mode & 0o077:
        raise LaunchError(f"{flag}: others may read it (mode {mode & 0o777:o}); chmod 600 it")
    if not lines or not lines[0]:
        raise LaunchError(f"{flag}: its first line is empty")
    return lines[0]


def prepare_auth_store(auth_store_uri: str, admin_username: str, admin_password: str | None) -> None:
    """Create the user store's tables or migrate them (MLflow's own migrations, as the server would),
    and make sure that the admin exists with a password that is not a published default.

    The admin is created here, not by the server, so that the password need not reach the server's
    processes: once the admin exists, MLflow's basic-auth app starts without it."""
    try:
        with warnings.catch_warnings():  # MLflow's server modules import starlette's deprecated WSGI middleware
            warnings.simplefilter("ignore")
            from mlflow.exceptions import MlflowException
            from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
    except ImportError as error:
        raise LaunchError(f"--auth needs MLflow's auth extra ({error}): pip install -e '.[auth]'") from None
    store = SqlAlchemyStore()
    try:
        check_connects(auth_store_uri)
        store.init_db(auth_store_uri)
    except Exception as error:  # any driver or connection error: the store is unusable
        raise LaunchError(f"--auth-store-uri {auth_store_uri}: {first_line(error)}") from None
    try:
        ensure_admin(store, admin_username, admin_password)
    except MlflowException as error:  # MLflow's password policy (12 characters at least), a database error
        raise LaunchError(f"--auth: admin {admin_username!r}: {first_line(error)}") from None
    finally:
        store.engine.dispose()


def ensure_admin(store: SqlAlchemyStore, admin_username: str, admin_password: str | None) -> None:
    """A new admin gets the given password; an existing one keeps its own (changed through MLflow's
    update-password API), unless it is still the old published default, which the given one replaces."""
    ask = f"set {ADMIN_PASSWORD_ENV} or --admin-password-file"
    if not store.has_user(admin_username):
        if admin_password is None:
            raise LaunchError(f"--auth: admin {admin_username!r} does not exist yet and has no password: {ask}")
        store.create_user(admin_username, admin_password, is_admin=True)
    elif store.authenticate_user(admin_username, LEGACY_DEFAULT_ADMIN_PASSWORD):
        if admin_password is None:
            raise LaunchError(f"--auth: admin {admin_username!r} still has the old published default password: {ask}")
        store.update_user(admin_username, password=admin_password)
    elif admin_password is not None and not store.authenticate_user(admin_username, admin_password):
        print(f"warning: admin {admin_username!r} exists with another password, which it keeps (the given one "
              "is ignored; change it with the update-password API)", file=sys.stderr)


def write_auth_config(auth_store_uri: str, admin_username: str, default_permission: str, cache_s: int) -> Path:
    """MLflow's auth config (``MLFLOW_AUTH_CONFIG_PATH``) in a private temporary folder: the auth store
    and the admin's name, no password. Rewritten at every start from the flags, so nothing drifts.

    ``cache_s``: how long a server worker trusts a password it has checked. MLflow checks each request's
    password against a deliberately slow hash (scrypt); measured here under load, 685 ms a request
    without the cache and 117 ms with it, and a small sweep makes a few hundred requests. The price: a
    password changed or a user deleted through one worker still gets into the others for that long."""
    folder = Path(tempfile.mkdtemp(prefix="rdt-mlflow-auth-"))  # mode 700
    path = folder / "basic_auth.ini"

    def escaped(value: str) -> str:  # MLflow reads it with configparser's %-interpolation
        return value.replace("%", "%%")

    path.write_text(
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {escaped(auth_store_uri)}\n"
        f"admin_username = {escaped(admin_username)}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {cache_s}\n"
    )
    path.chmod(0o600)
    return path


def server_command(args: argparse.Namespace) -> list[str]:
    allowed_hosts = args.allowed_hosts or ",".join(
        {f"{args.host}:{args.port}", f"localhost:{args.port}", f"127.0.0.1:{args.port}", args.host}
    )
    executable = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    return [
        executable, "server",
        "--backend-store-uri", args.backend_store_uri,
        "--artifacts-destination", args.artifacts_destination,
        "--serve-artifacts",
        "--host", args.host,
        "--port", str(args.port),
        "--allowed-hosts", allowed_hosts,
        "--workers", str(args.workers),
        *(["--app-name", "basic-auth"] if args.auth else []),
    ]


def server_environment(auth_config: Path | None) -> dict[str, str]:
    """The server's environment: without the admin's credentials (the admin exists by now), without
    MLflow's job runner unless ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` is set, with the auth config and the secret key that MLflow's basic-auth app signs its forms with (one per start
    unless ``MLFLOW_FLASK_SERVER_SECRET_KEY`` is set, which servers behind one load balancer must share)."""
    env = {key: value for key, value in os.environ.items() if key not in (ADMIN_USERNAME_ENV, ADMIN_PASSWORD_ENV)}
    # MLflow 3's job runner (GenAI scorers, trace roll-ups: nothing sweeps use) starts about seven huey
    # worker processes beside the server; left off unless asked for.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if auth_config is not None:
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config)
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
    return env


def check_arguments(args: argparse.Namespace) -> None:
    """Contradictions, and a server reachable from other machines that nobody decided should be open."""
    if args.auth and args.insecure_no_auth:
        raise LaunchError("--auth and --insecure-no-auth contradict each other")
    if not args.auth:
        for flag, value in (("--auth-store-uri", args.auth_store_uri), ("--admin-password-file", args.admin_password_file)):
            if value is not None:
                raise LaunchError(f"{flag} needs --auth")
    if not args.auth and not args.insecure_no_auth and not is_loopback(args.host):
        raise LaunchError(
            f"--host {args.host} lets other machines read, change and delete every run: add --auth "
            "(MLflow's users and passwords), or --insecure-no-auth if the network alone is to guard it"
        )


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python mlflow/serve.py", description=__doc__.splitlines()[0])
    parser.add_argument("--backend-store-uri", default=os.environ.get("MLFLOW_BACKEND_STORE_URI", "sqlite:///mlflow.db"))
    parser.add_argument("--artifacts-destination", default=str(Path("mlartifacts").resolve()))
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines (a cluster): needs --auth")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--allowed-hosts", help="Host headers to accept; default: the address served")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--auth", action="store_true", help="MLflow's basic-auth app: every request needs a user")
    parser.add_argument("--auth-store-uri", help="users and permissions; default: the tracking store's database "
                        "(SQLite: a -auth file beside it)")
    parser.add_argument("--admin-password-file", type=Path, help=f"first line: the admin's password; default: ${ADMIN_PASSWORD_ENV}")
    parser.add_argument("--default-permission", choices=PERMISSIONS, default="READ",
                        help="what every user may do on experiments they were given no permission on")
    parser.add_argument("--auth-cache-s", type=int, default=60,
                        help="seconds a worker trusts a checked password (0: check every request)")
    parser.add_argument("--insecure-no-auth", action="store_true",
                        help="serve a non-loopback --host without authentication")
    args = parser.parse_args(argv)
    auth_config = None
    try:
        check_arguments(args)
        admin_password = read_admin_password(args.admin_password_file) if args.auth else None
        try:
            prepare_store(args.backend_store_uri)
        except Exception as error:  # any driver or connection error: the store is unusable
            raise LaunchError(f"--backend-store-uri {args.backend_store_uri}: {first_line(error)}") from None
        if args.auth:
            admin_username = os.environ.get(ADMIN_USERNAME_ENV) or DEFAULT_ADMIN_USERNAME
            auth_store_uri = args.auth_store_uri or default_auth_store_uri(args.backend_store_uri)
            prepare_auth_store(auth_store_uri, admin_username, admin_password)
            auth_config = write_auth_config(auth_store_uri, admin_username, args.default_permission, args.auth_cache_s)
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    command = server_command(args)
    access = f"basic-auth, users in {auth_store_uri}" if args.auth else "no authentication"
    print(f"MLflow tracking server on http://{args.host}:{args.port} (store {args.backend_store_uri}; {access})", flush=True)
    os.execve(command[0], command, server_environment(auth_config))  # the server replaces this process: its pid is the launcher's


if __name__ == "__main__":
    raise SystemExit(main())
