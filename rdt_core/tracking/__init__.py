"""MLflow tracking, below both the sweep and the report, and MLflow only (no Ray, no Optuna).

``store``: a SQLite store that several processes open at once, made whole aside and repaired where an
older run left it half-migrated (``open_store``); ``tracker``: the store (its URI, whether it answers) and
the runs in it (``SweepTracker``); ``outbox``: the sweep's writes, in order, kept in a file while the
store does not answer; ``reports``: what of a run's reports MLflow holds (a few headline metrics over
training, tables at the end); ``errors``: why a store cannot be used, in one line.
"""

from rdt_core.tracking.errors import StoreRefused
from rdt_core.tracking.outbox import PARENT, Outbox, outbox_path, send_outbox, trial_key
from rdt_core.tracking.reports import headline, log_evaluation, log_final, table_file
from rdt_core.tracking.store import open_store, ready_store
from rdt_core.tracking.tracker import (
    DEFAULT_TRACKING_URI,
    SweepTracker,
    TrackingCredentialsError,
    TrackingUnavailable,
    check_reachable,
    resolve_tracking_uri,
    store_must_answer,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "PARENT",
    "Outbox",
    "StoreRefused",
    "SweepTracker",
    "TrackingCredentialsError",
    "TrackingUnavailable",
    "check_reachable",
    "headline",
    "log_evaluation",
    "log_final",
    "open_store",
    "outbox_path",
    "ready_store",
    "resolve_tracking_uri",
    "send_outbox",
    "store_must_answer",
    "table_file",
    "trial_key",
]
