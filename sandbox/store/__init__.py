"""The run store: SQLAlchemy 2.0 over any database URL (SQLite by default, PostgreSQL too).

Every prompt, completion, decision and metric of a run lands here. Four modules, one job each:

- :mod:`~sandbox.store.schema`: the tables (SQLAlchemy models);
- :mod:`~sandbox.store.engine`: engines for a URL (SQLite in WAL mode; read-only for readers);
- :mod:`~sandbox.store.migrate`: Alembic revisions that bring a store made by any earlier
  version up to the schema, run when :class:`Store` opens it;
- :mod:`~sandbox.store.writes`: :class:`Store`, which writes a step in one transaction;
- :mod:`~sandbox.store.queries`: the reads that the CLI, exports, A/B analysis, dashboard and
  benchmarks share.

Everything other packages use is importable from ``sandbox.store``.
"""

from vragent.sandbox.store import queries
from vragent.sandbox.store.engine import (
    StoreMissingError,
    make_engine,
    read_only_engine,
    sqlite_busy_ms,
    sqlite_file,
)
from vragent.sandbox.store.queries import llm_call_sums
from vragent.sandbox.store.schema import (
    AB_TABLES,
    IP_AGENT_LABEL,
    METERING_COLUMNS,
    RUN_TABLES_NOT_EXPORTED,
    TABLES_IN_EXPORT,
    AbArmValue,
    AbComparison,
    AbExperiment,
    Arm,
    Base,
    Decision,
    Impression,
    Item,
    ItemProfileRow,
    LlmCacheEntry,
    LlmCall,
    LlmTotal,
    Metric,
    NulSafeText,
    Run,
    RunOwner,
    SessionEvent,
    SimUser,
    StepRow,
)
from vragent.sandbox.store.writes import LOG_CHUNK_ROWS, Store, add_llm_totals, insert_ignore

__all__ = [
    "AB_TABLES", "IP_AGENT_LABEL", "LOG_CHUNK_ROWS", "METERING_COLUMNS",
    "RUN_TABLES_NOT_EXPORTED", "TABLES_IN_EXPORT", "AbArmValue", "AbComparison",
    "AbExperiment", "Arm", "Base", "Decision", "Impression", "Item", "ItemProfileRow",
    "LlmCacheEntry", "LlmCall", "LlmTotal", "Metric", "NulSafeText", "Run", "RunOwner",
    "SessionEvent", "SimUser", "StepRow", "Store", "StoreMissingError", "add_llm_totals",
    "insert_ignore", "llm_call_sums", "make_engine", "queries", "read_only_engine",
    "sqlite_busy_ms", "sqlite_file",
]
