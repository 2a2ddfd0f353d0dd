"""Why a write failed: the data written (a data error) or the database (an outage).

The two call for opposite handling. An outage (connection lost, database shutting down,
disk full, a lock timeout) fails every write alike and passes: the spool keeps the batch
until the database is back. A data error fails one record on every retry: the batch is split
until that record is found, the others are committed, and it goes to the dead-letter store.

The class of the error decides, never its message:

- PostgreSQL's SQLSTATE, when the server sent one: class 22 (data exception), 23 (integrity
  constraint violation) and 54 (program limit exceeded, e.g. an index row too large) are data
  errors; every other class (08 connection, 53 resources, 57 operator intervention, 40
  transaction rollback, 42 a statement the schema does not match, ...) is an outage.
- Without one, the DB-API exception class: ``DataError`` and ``IntegrityError`` (psycopg's
  and sqlite3's; psycopg raises ``DataError`` itself for a NUL in text), and a value the
  driver could not encode at all (``UnicodeEncodeError``, ``OverflowError``) are data errors;
  ``OperationalError``, ``InterfaceError`` and anything else are outages. Treating the unknown
  as an outage keeps the batch (spooled) rather than setting records aside.
"""

from __future__ import annotations

import sqlite3

import psycopg
import sqlalchemy as sa

__all__ = ["REJECT_REASONS", "is_data_error", "reject_reason", "root_error"]

#: The labels a refused record is counted and stored under (``bastion_ingest_rejected_total``).
REJECT_REASONS = ("nul", "encoding", "range", "length", "database_data_error")

_DATA_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})
# SQLSTATEs of text PostgreSQL cannot hold: a NUL or a byte sequence invalid in its encoding.
_ENCODING_SQLSTATES = frozenset({"22021", "22P05"})
_RANGE_SQLSTATES = frozenset({"22003", "22008", "22015"})
_LENGTH_SQLSTATES = frozenset({"22001", "54000"})
# sqlite3 result codes (primary) of data errors: TOOBIG, CONSTRAINT, MISMATCH.
_SQLITE_DATA_CODES = frozenset({18, 19, 20})


def root_error(exc: BaseException) -> BaseException:
    """The driver's exception under SQLAlchemy's wrapper (``exc`` itself when unwrapped)."""
    if isinstance(exc, sa.exc.StatementError) and exc.orig is not None:
        return exc.orig
    return exc


def _sqlstate(exc: BaseException) -> str | None:
    if isinstance(exc, psycopg.Error):
        return exc.sqlstate
    return None


def is_data_error(exc: BaseException) -> bool:
    """True when ``exc`` failed a write because of the data written (see the module doc)."""
    root = root_error(exc)
    state = _sqlstate(root)
    if state:
        return state[:2] in _DATA_SQLSTATE_CLASSES
    if isinstance(root, psycopg.DataError | psycopg.IntegrityError):
        return True
    if isinstance(root, sqlite3.Error):
        code = getattr(root, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in _SQLITE_DATA_CODES
        return isinstance(root, sqlite3.DataError | sqlite3.IntegrityError)
    return isinstance(root, UnicodeEncodeError | OverflowError)


def reject_reason(exc: BaseException, *, has_nul: bool) -> str:
    """The label (one of :data:`REJECT_REASONS`) of a data error refusing one record.

    ``has_nul`` says whether the record holds a NUL, which psycopg refuses before sending
    without a SQLSTATE and PostgreSQL with the one of any invalid byte sequence.
    """
    root = root_error(exc)
    state = _sqlstate(root)
    if isinstance(root, UnicodeEncodeError):
        return "encoding"
    if state in _ENCODING_SQLSTATES:
        return "nul" if has_nul else "encoding"
    if isinstance(root, psycopg.DataError) and state is None and has_nul:
        return "nul"
    if isinstance(root, OverflowError) or state in _RANGE_SQLSTATES:
        return "range"
    if state in _LENGTH_SQLSTATES:
        return "length"
    if isinstance(root, sqlite3.Error) and getattr(root, "sqlite_errorcode", 0) & 0xFF == 18:
        return "length"
    return "database_data_error"
