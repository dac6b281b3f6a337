"""Start the MLflow tracking server for this platform's sweeps.

    python mlflow/serve.py [--backend-store-uri URI] [--artifacts-destination DEST]
                           [--host 127.0.0.1] [--port 5000] [--allowed-hosts H1,H2] [--workers N]

The backend store is any SQLAlchemy URL: SQLite by default (``sqlite:///mlflow.db``), PostgreSQL on a
cluster (``postgresql://user@host:5432/mlflow``; the password comes from ``PGPASSWORD`` or ``~/.pgpass``,
never the command line). Artifacts are served by the server itself (``--serve-artifacts``) from a local
folder by default, or from S3 (``s3://bucket/prefix``), so that clients need no storage credentials.

Before the server starts, the launcher creates the database's tables, or migrates them to this MLflow's
schema, so that a second start against the same store keeps every run. It binds to 127.0.0.1 unless told
otherwise, and sets the allowed Host headers to the address it serves on. A store it cannot open exits 2
with one line, before anything is started.

(This folder holds no ``__init__.py``: it would shadow the ``mlflow`` package.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def prepare_store(backend_store_uri: str) -> None:
    """Create the tracking tables, or upgrade them to this MLflow's schema (idempotent).

    One plain connection first: MLflow retries a failing database for minutes, and a wrong URL should
    be an error at once.
    """
    import sqlalchemy
    from mlflow.tracking import MlflowClient

    engine = sqlalchemy.create_engine(backend_store_uri)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()
    MlflowClient(backend_store_uri).search_experiments(max_results=1)


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
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python mlflow/serve.py", description=__doc__.splitlines()[0])
    parser.add_argument("--backend-store-uri", default=os.environ.get("MLFLOW_BACKEND_STORE_URI", "sqlite:///mlflow.db"))
    parser.add_argument("--artifacts-destination", default=str(Path("mlartifacts").resolve()))
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines (a cluster)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--allowed-hosts", help="Host headers to accept; default: the address served")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        prepare_store(args.backend_store_uri)
    except Exception as error:  # any driver or connection error: the store is unusable
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: --backend-store-uri {args.backend_store_uri}: {first_line}", file=sys.stderr)
        return 2
    command = server_command(args)
    print(f"MLflow tracking server on http://{args.host}:{args.port} (store {args.backend_store_uri})", flush=True)
    os.execv(command[0], command)  # the server replaces this process: its pid is the launcher's


if __name__ == "__main__":
    raise SystemExit(main())
