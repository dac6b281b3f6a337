"""Why a tracking store cannot be used, each in one line: the commands print the message and exit (2 for
a store refused as it is, 1 for a server that does not answer)."""

from __future__ import annotations


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be used: it does not answer, or it refuses the credentials
    (``TrackingCredentialsError``); the message names it and the cause in one line."""


class TrackingCredentialsError(TrackingUnavailable):
    """The tracking server answers but will not take the credentials from the environment (none, wrong,
    or not allowed), or they sit in the tracking URI, which the sweep logs and prints. The message names
    the variable to set and never holds a password or token."""


class StoreRefused(TrackingUnavailable):
    """A SQLite store that cannot be used as it is and is not repaired here (missing where it must exist,
    made by another MLflow, not an MLflow store, or half-migrated with runs in it that a repair could lose);
    the message says what to do, in one line."""
