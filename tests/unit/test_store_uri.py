"""Which tracking URIs ``rdt_core.tracking.store`` takes in hand: SQLite files only; every other store
(HTTP servers, PostgreSQL, MLflow's file store, an in-memory database) is left to MLflow as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from rdt_core.tracking.store import ready_store, sqlite_path


@pytest.mark.parametrize(
    "uri, path",
    [
        ("sqlite:///mlflow.db", Path("mlflow.db")),  # relative to the working directory, as MLflow reads it
        ("sqlite:////tmp/runs/mlflow.db", Path("/tmp/runs/mlflow.db")),
        ("sqlite+pysqlite:///a/b.db", Path("a/b.db")),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("http://127.0.0.1:5000", None),
        ("https://mlflow.example.org", None),
        ("postgresql://user@host:5432/mlflow", None),
        ("file:///tmp/mlruns", None),
        ("mlruns", None),
        ("databricks", None),
    ],
)
def test_only_sqlite_files_are_taken_in_hand(uri, path):
    assert sqlite_path(uri) == path


def test_other_stores_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for uri in ("http://127.0.0.1:9", "postgresql://nobody@127.0.0.1:9/none", "sqlite://"):
        ready_store(uri)  # nothing opened, nothing made
    assert list(tmp_path.iterdir()) == []
