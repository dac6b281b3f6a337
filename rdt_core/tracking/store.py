"""A SQLite tracking store that several processes can open at once, and that a kill cannot leave broken.

MLflow makes a missing SQLite store in place: it creates the file, then runs some seventy schema migrations
on it, each of which may autocommit. Two processes that open a fresh store at once (a sweep and the MLflow UI
beside it) both migrate it and one dies (``table _alembic_tmp_experiments already exists``); a process killed
while migrating leaves a half-migrated store that nothing opens again. So every command here opens a SQLite
store through ``open_store`` (``ready_store`` does the work):

- First use is serialised by a file lock beside the database (``mlflow.db.lock``): one process at a time
  looks at the store and, if need be, makes or repairs it; the others then find it whole.
- A new store is made whole aside, under a hidden temporary name in the same directory (MLflow's own
  creation: tables, migrations, the default experiment), then linked into place atomically, so a kill
  leaves either no store or a whole one. A file that appears meanwhile (a process not using the lock, such
  as the MLflow UI) is never overwritten: it is waited on until whole.
- A store left half-migrated by an older run (leftover ``_alembic_tmp_*`` tables, a schema behind MLflow's
  head in a store holding no runs) is repaired on a copy that then replaces it, with one line on stderr;
  one that cannot be repaired safely is refused with one line saying what to do (``StoreRefused``).

Other tracking URIs (HTTP servers, PostgreSQL, ...) are left to MLflow.
"""

from __future__ import annotations

import glob
import logging
import os
import secrets
import sqlite3
import sys
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout
from mlflow.tracking import MlflowClient

from rdt_core.tracking.errors import StoreRefused

TMP_TABLE_PREFIX = "_alembic_tmp_"  # alembic's batch mode (SQLite's ALTER TABLE) copies a table through it
TMP_TABLE_NAME_LIMIT = 50  # alembic cuts the temporary name to 50 characters
SETTLE_S = 10.0  # a store not whole and unchanged this long is left over, not being made by another process
CHANGING_LIMIT_S = 120.0  # a store still changing, and not whole, after this long is refused
LOCK_NOTE_S = 10.0  # waiting longer than this for the lock is said in one line
LOCK_LIMIT_S = 600.0
POLL_S = 0.2

_ready: set[str] = set()  # stores this process has found whole (absolute paths)


class RepairFailed(RuntimeError):
    """A repair on the copy did not end in a whole store (the original is untouched)."""


def sqlite_path(tracking_uri: str) -> Path | None:
    """The file behind a SQLite tracking URI (relative to the working directory, as MLflow reads it);
    None for any other store, or an in-memory database."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(tracking_uri)
    except (ArgumentError, ValueError):
        return None
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    if url.database.startswith("file:"):  # SQLite's own URI form: left to MLflow
        return None
    return Path(url.database)


def open_store(tracking_uri: str, create: bool = True) -> MlflowClient:
    """A client of the store at ``tracking_uri``; a SQLite store is made ready first (``ready_store``)."""
    ready_store(tracking_uri, create=create)
    return MlflowClient(tracking_uri)


def ready_store(tracking_uri: str, create: bool = True) -> None:
    """Make sure the SQLite store at ``tracking_uri`` is whole before MLflow opens it: made whole if it is
    missing (or, with ``create=False``, refused), repaired if an older run left it half-migrated. Holds the
    store's lock meanwhile. Other stores: nothing to do. Raises ``StoreRefused``."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return
    key = os.path.realpath(path)  # a link's target: the file SQLite opens, and the lock beside it
    if key in _ready and os.path.isfile(key):
        return
    path = Path(key)
    if not create and not path.exists():
        raise StoreRefused(f"no MLflow store at {tracking_uri}")
    path.parent.mkdir(parents=True, exist_ok=True)
    revisions(), expected_tables()  # read MLflow's migration scripts before the lock, not while others wait
    with store_lock(path) as locked:
        settle(path, create, locked)
    _ready.add(key)


@contextmanager
def store_lock(path: Path) -> Iterator[bool]:
    """The store's lock file, held; yields False (and holds nothing) where none can be taken (a read-only
    directory, a file system without locks): the store is then opened as MLflow alone would."""
    lock_path = path.with_name(path.name + ".lock")
    lock = FileLock(str(lock_path))
    try:
        try:
            lock.acquire(timeout=LOCK_NOTE_S)
        except Timeout:
            say(f"waiting for another process that is opening MLflow store {path} (it holds {lock_path})")
            lock.acquire(timeout=LOCK_LIMIT_S)
    except Timeout:
        raise StoreRefused(
            f"another process has held {lock_path} for over {LOCK_LIMIT_S / 60:.0f} min while opening MLflow "
            f"store {path}: stop it (`fuser {lock_path}` names it), then start again"
        ) from None
    except OSError:
        locked = False
    else:
        locked = True
    try:
        yield locked
    finally:
        if locked:
            lock.release()


# --- what is in the file -------------------------------------------------------------------------------------


@dataclass
class StoreState:
    """What one look at a store's file found. ``tables`` empty: a file with no tables (or no bytes)."""

    tables: set[str] = field(default_factory=set)
    version: str | None = None  # alembic's revision, None where there is none
    n_runs: int = 0
    has_default_experiment: bool = False

    @property
    def leftover_tables(self) -> list[str]:
        return sorted(name for name in self.tables if name.startswith(TMP_TABLE_PREFIX))

    @property
    def is_mlflow(self) -> bool:
        return bool(self.tables & ({"alembic_version", "experiments", "runs"} | set(self.leftover_tables)))

    def is_whole(self) -> bool:
        return (
            self.version == head_revision()
            and not self.leftover_tables
            and expected_tables() <= self.tables
            and self.has_default_experiment
        )


@lru_cache(maxsize=None)
def revisions() -> tuple[str, frozenset[str]]:
    """MLflow's head schema revision and every revision it knows."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    script = ScriptDirectory.from_config(_get_alembic_config(""))
    return script.get_current_head(), frozenset(revision.revision for revision in script.walk_revisions())


def head_revision() -> str:
    return revisions()[0]


@lru_cache(maxsize=None)
def expected_tables() -> frozenset[str]:
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (defines the tracking tables)
    from mlflow.store.db.base_sql_model import Base

    return frozenset(Base.metadata.tables)


def siblings(path: Path) -> list[Path]:
    """SQLite's own files beside a database: its rollback journal, write-ahead log and shared memory."""
    return [path.with_name(path.name + suffix) for suffix in ("-journal", "-wal", "-shm")]


def signature(path: Path) -> tuple[int, ...]:
    """Sizes and change times of the file and its journal: what a writer moves."""
    values: list[int] = []
    for file in (path, *siblings(path)):
        try:
            stat = file.stat()
        except FileNotFoundError:
            values += [-1, -1]
        else:
            values += [stat.st_size, stat.st_mtime_ns]
    return tuple(values)


def last_change_s(path: Path) -> float:
    """Seconds since the file or its journal last changed."""
    times = [file.stat().st_mtime for file in (path, *siblings(path)) if file.exists()]
    return time.time() - max(times) if times else float("inf")


def connect(path: Path) -> sqlite3.Connection:
    """SQLite's own connection, never creating the file. Read-write where it may be, so that SQLite rolls
    back a journal a killed writer left before anything reads the store."""
    uri = Path(os.path.abspath(path)).as_uri()
    try:
        return sqlite3.connect(f"{uri}?mode=rw", uri=True, timeout=30)
    except sqlite3.OperationalError:  # a read-only file
        return sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30)


def inspect_store(path: Path) -> StoreState | None:
    """What the store at ``path`` holds; None where there is no file. Raises sqlite3 errors for a file
    SQLite cannot read (not a database, or locked by a writer)."""
    if not path.exists():
        return None
    if path.stat().st_size == 0:
        return StoreState()
    connection = connect(path)
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        tables = {name for name in tables if not name.startswith("sqlite_")}
        state = StoreState(tables=tables)
        if "alembic_version" in tables:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            state.version = row[0] if row else None
        if "runs" in tables:
            state.n_runs = connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        if "experiments" in tables:
            state.has_default_experiment = (
                connection.execute("SELECT 1 FROM experiments WHERE experiment_id = 0").fetchone() is not None
            )
    finally:
        connection.close()
    return state


# --- making it ready -----------------------------------------------------------------------------------------


def settle(path: Path, create: bool, locked: bool) -> None:
    """Under the store's lock (``locked``): return once the store is whole, making or repairing it if need
    be. A store not whole that is changing is being made by a process that does not take the lock (the
    MLflow UI): waited on until whole, or until it has not changed for ``SETTLE_S`` (then a leftover)."""
    if locked:
        remove_stale_temporaries(path)
    started = seen_change = time.monotonic()
    last_signature: tuple[int, ...] | None = None
    first_age: float | None = None  # how long the file had been still when first seen
    while True:
        age = last_change_s(path)  # before a look, which may roll back the journal a killed writer left
        unreadable: sqlite3.DatabaseError | None = None
        try:
            state = inspect_store(path)
        except sqlite3.DatabaseError as error:
            state, unreadable = None, error
        if state is None and unreadable is None:  # no file
            if not create:
                raise StoreRefused(f"no MLflow store at sqlite:///{path}")
            if make_store(path, replace=False):
                return
            continue  # a process that does not take the lock made the file meanwhile: look at it
        if state is not None and state.is_whole():
            return
        if first_age is None:
            first_age = age
        now = time.monotonic()
        current = signature(path)
        if current != last_signature:
            last_signature, seen_change = current, now
        if first_age >= SETTLE_S or now - seen_change >= SETTLE_S:
            break  # nobody is writing it: a leftover
        if now - started > CHANGING_LIMIT_S:
            raise StoreRefused(
                f"MLflow store {path} has been changing for {CHANGING_LIMIT_S:.0f} s without becoming whole: "
                "stop the other process that writes it, then start again"
            )
        time.sleep(POLL_S)
    if unreadable is not None:
        if "locked" in str(unreadable):
            raise StoreRefused(f"MLflow store {path} stays locked by another process ({unreadable}): stop it")
        raise StoreRefused(
            f"{path} is not an SQLite database ({unreadable}): move it aside, or set another tracking URI"
        )
    assert state is not None
    mend(path, state)


def mend(path: Path, state: StoreState) -> None:
    """Make whole a store that is not: made anew if it holds no tables, repaired on a copy if an older run
    left it half-migrated, else refused in one line."""
    if not state.tables:
        make_store(path, replace=True)  # an empty file (SQLite makes one on first connect): nothing to keep
        return
    head, known = revisions()
    if not state.is_mlflow:
        raise StoreRefused(f"{path} is an SQLite database but not an MLflow store: set another tracking URI")
    if state.version is not None and state.version not in known:
        raise StoreRefused(
            f"MLflow store {path} has schema {state.version}, unknown to this MLflow (head {head}): a newer "
            "MLflow made it; open it with that one, or set another tracking URI"
        )
    leftovers = state.leftover_tables
    if not leftovers and state.n_runs > 0 and state.version != head:
        raise StoreRefused(
            f"MLflow store {path} has schema {state.version}, older than this MLflow's {head} (an older "
            f"MLflow made it): back it up, then run `mlflow db upgrade sqlite:///{path}`"
        )
    found = [f"leftover {', '.join(leftovers)}"] if leftovers else []
    if state.version != head:
        found.append(f"schema {state.version or 'none'}, not {head}")
    what = "; ".join(found) or "tables or the default experiment missing"
    try:
        done = repair_store(path, state)
    except RepairFailed as error:
        if state.n_runs > 0:
            raise StoreRefused(
                f"MLflow store {path} was left half-migrated ({what}) with {state.n_runs} runs in it, and "
                f"finishing its migration failed ({error}): restore it from a backup, or move it aside"
            ) from None
        make_store(path, replace=True)
        say(f"MLflow store {path} was left half-migrated ({what}) and held no runs: made it anew, whole")
        return
    say(f"MLflow store {path} was left half-migrated ({what}): repaired ({', '.join(done)})")


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def temporary_path(path: Path, purpose: str) -> Path:
    return path.with_name(f".{path.name}.{purpose}-{os.getpid()}-{secrets.token_hex(3)}")


def remove_stale_temporaries(path: Path) -> None:
    """Temporaries of a maker or repairer that was killed: only the lock's holder makes them."""
    for purpose in ("creating", "repairing"):
        for stale in path.parent.glob(f".{glob.escape(path.name)}.{purpose}-*"):
            stale.unlink(missing_ok=True)


def make_store(path: Path, replace: bool) -> bool:
    """Make a whole store aside and move it to ``path``: over what is there if ``replace``, else only if
    nothing is (False where a file appeared meanwhile; it is kept)."""
    aside = temporary_path(path, "creating")
    try:
        migrate(aside, None)
        return place(aside, path, replace)
    except (RepairFailed, OSError) as error:  # a directory not writable, a full disk
        raise StoreRefused(f"MLflow store {path} could not be made ({error})") from None
    finally:
        for file in (aside, *siblings(aside)):
            file.unlink(missing_ok=True)


def repair_store(path: Path, state: StoreState) -> list[str]:
    """Finish a half-migrated store on a copy (leftover batch tables cleared, the migration run to the head,
    the default experiment made), then move the copy over it. Returns what was done, in words."""
    copy = temporary_path(path, "repairing")
    try:
        try:
            with closing(connect(path)) as source, closing(sqlite3.connect(copy)) as target:
                source.backup(target)  # a consistent copy, through any journal a killed writer left
                done = clear_leftovers(target, state.tables)
                target.commit()
        except sqlite3.Error as error:
            raise RepairFailed(str(error).splitlines()[0]) from None
        migrate(copy, state)
        place(copy, path, replace=True)
    except OSError as error:
        raise RepairFailed(str(error)) from None
    finally:
        for file in (copy, *siblings(copy)):
            file.unlink(missing_ok=True)
    if state.version != head_revision():
        done.append(f"migrated from {state.version or 'nothing'} to {head_revision()}")
    return done or ["made what was missing"]


def clear_leftovers(connection: sqlite3.Connection, tables: set[str]) -> list[str]:
    """Alembic's batch copy goes: create ``_alembic_tmp_T``, copy T into it, drop T, rename it to T. Before
    the drop, T is whole and the copy is dropped; after it, the copy is whole and takes T's name."""
    done = []
    for leftover in sorted(name for name in tables if name.startswith(TMP_TABLE_PREFIX)):
        name = leftover.removeprefix(TMP_TABLE_PREFIX)
        cut = len(leftover) >= TMP_TABLE_NAME_LIMIT
        originals = [
            table for table in tables
            if not table.startswith(TMP_TABLE_PREFIX) and (table == name or (cut and table.startswith(name)))
        ]
        if originals:
            connection.execute(f'DROP TABLE "{leftover}"')
            done.append(f"dropped {leftover}")
        elif not cut:
            connection.execute(f'ALTER TABLE "{leftover}" RENAME TO "{name}"')
            done.append(f"renamed {leftover} to {name}, whose drop it followed")
        else:
            raise RepairFailed(f"{leftover} stands for a table whose full name is lost")
    return done


def migrate(path: Path, state: StoreState | None) -> None:
    """MLflow's own making of a store at ``path`` (a temporary): its tables, its migrations to the head and
    its default experiment. ``state``: what a copy being repaired held (None for a new store). Durability
    is off while it runs (a kill only loses the temporary); the file is synced before it is placed."""
    import mlflow.store.db.utils as db_utils
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from sqlalchemy import event

    uri = f"sqlite:///{path}"
    engine = db_utils.create_sqlalchemy_engine(uri)
    event.listen(engine, "connect", fast_unsafe_pragmas)
    engines = getattr(SqlAlchemyStore, "_engine_map", None)  # MLflow 3.x keeps one engine per URI here
    if isinstance(engines, dict):
        engines[uri] = engine
    try:
        with quiet_mlflow_logs():
            if state is not None and state.tables:
                if state.version is None:
                    db_utils._initialize_tables(engine)  # tables made, then every migration
                elif state.version != head_revision():
                    db_utils._upgrade_db(engine)
            store = new_sqlalchemy_store(uri)  # a new store: tables and migrations; then the default experiment
            store.engine.dispose()
    except Exception as error:  # noqa: BLE001  (MLflow, SQLAlchemy and alembic raise their own kinds)
        first_line = (str(error).splitlines() or [""])[0]
        raise RepairFailed(f"{type(error).__name__}: {first_line}"[:300]) from None
    finally:
        if isinstance(engines, dict):
            engines.pop(uri, None)
        engine.dispose()
    state_now = inspect_store(path)
    if state_now is None or not state_now.is_whole():
        raise RepairFailed("the store is still not whole after its migration")


def new_sqlalchemy_store(uri: str):
    """MLflow's SQLAlchemy store for ``uri``, built as ``MlflowClient`` builds it (the same default artifact
    root, so the default experiment's artifact location is the one MLflow would give it)."""
    try:
        from mlflow.tracking._tracking_service.utils import _get_sqlalchemy_store
    except ImportError:  # another MLflow 3.x layout
        from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        return SqlAlchemyStore(uri, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
    return _get_sqlalchemy_store(uri, None)


def fast_unsafe_pragmas(dbapi_connection, _record) -> None:
    """For a temporary only: no fsync per statement, the journal in memory (no -journal file)."""
    dbapi_connection.execute("PRAGMA synchronous = OFF")
    dbapi_connection.execute("PRAGMA journal_mode = MEMORY")


@contextmanager
def quiet_mlflow_logs() -> Iterator[None]:
    """MLflow's store logs 'Creating initial MLflow database tables...' at INFO: not news to a user here."""
    logger = logging.getLogger("mlflow.store")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def place(aside: Path, path: Path, replace: bool) -> bool:
    """Move the whole store ``aside`` to ``path`` in one step, durably."""
    fsync(aside)
    if replace:
        for file in siblings(path):  # a journal of the file replaced must not be played onto the new one
            file.unlink(missing_ok=True)
        os.replace(aside, path)
    else:
        if path.exists():
            return False
        for file in siblings(path):  # a journal of a store deleted by hand, not of one being made now
            if file.exists() and time.time() - file.stat().st_mtime >= SETTLE_S:
                file.unlink(missing_ok=True)
        try:
            os.link(aside, path)  # fails if a file appeared meanwhile, where a rename would replace it
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links
            if path.exists():
                return False
            os.replace(aside, path)
    fsync(path.parent)
    return True


def fsync(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # a directory on a file system that does not sync directories
    finally:
        os.close(descriptor)
