"""Fixtures shared by the suites: a private PostgreSQL database for tests that need one, and one local Ray
per test module for the sweeps that can share it."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.helpers import SharedRay

POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": os.environ.get("RDT_POSTGRES_USER", "root"), "dbname": "test"}


@pytest.fixture
def postgres_url():
    """A fresh database on the local PostgreSQL (127.0.0.1:5432, trust auth), dropped afterwards.

    Skipped with its reason where no server answers (a laptop); CI sets RDT_REQUIRE_POSTGRES=1, which
    turns the skip into a failure, so that these tests never pass by being skipped there.
    """
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(connect_timeout=5, autocommit=True, **POSTGRES)
    except psycopg.OperationalError as error:
        reason = f"no PostgreSQL at {POSTGRES['host']}:{POSTGRES['port']} ({str(error).strip().splitlines()[0]})"
        if os.environ.get("RDT_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason}, and RDT_REQUIRE_POSTGRES=1 makes it mandatory")
        pytest.skip(reason)
    name = f"rdt_test_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{POSTGRES['user']}@{POSTGRES['host']}:{POSTGRES['port']}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def shared_ray():
    """One local Ray for the sweeps of a test module, started on first use and stopped after the module's
    last test (in each pytest-xdist process that runs some of them); ``shared_ray.env(workdir)`` is the
    environment of a sweep joining it. A module, not the session: an idle Ray costs ~6% of a core here
    (19 processes), more over a whole run than the starts it saves outside a module of many sweeps."""
    ray = SharedRay()
    ray.start()
    try:
        yield ray
    finally:
        ray.stop()
