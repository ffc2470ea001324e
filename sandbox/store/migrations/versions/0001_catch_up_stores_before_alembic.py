"""Catch up a store made before Alembic: columns and indexes added over time, ``llm_totals``.

Until this revision the store added missing nullable columns and missing indexes each time it
opened (``add_missing_columns``). A store made by any of those versions can lack any of the
columns below; each is added only where it is missing, so the revision runs on every such
store whatever version made it. The list is this revision's own copy of the schema at the time,
so later model changes do not change what it does.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from vragent.sandbox.store.schema import NulSafeText

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

#: Every column that a store made before this revision may lack, as of this revision.
COLUMNS: dict[str, list[sa.Column]] = {
    "runs": [sa.Column("scenario_path", NulSafeText()), sa.Column("git_revision", sa.String(64)),
             sa.Column("error", NulSafeText()), sa.Column("finished_at", sa.DateTime(True))],
    "users": [sa.Column("heldout", sa.JSON())],
    "item_profiles": [sa.Column("run_id", sa.String(32)),
                      sa.Column("title", NulSafeText(), nullable=False, server_default=""),
                      sa.Column("stages", sa.JSON(), nullable=False, server_default="[]")],
    "impressions": [sa.Column("source", sa.String(10))],
    "decisions": [sa.Column("p_like", sa.Float()), sa.Column("completion", NulSafeText()),
                  sa.Column("think", NulSafeText()), sa.Column("answer", NulSafeText()),
                  sa.Column("fallback", sa.String(50)),
                  sa.Column("cache_hit", sa.Boolean(), nullable=False,
                            server_default=sa.false()),
                  sa.Column("attempts", sa.Integer()), sa.Column("rule", sa.String(10)),
                  sa.Column("draw", sa.Float()), sa.Column("like_cut", sa.Float()),
                  sa.Column("trace_role", sa.String(10)), sa.Column("trace_ok", sa.Boolean())],
    "sessions": [sa.Column("leave_draw", sa.Float())],
    "llm_cache": [sa.Column("seed", sa.BigInteger()), sa.Column("prompt_index", sa.Integer()),
                  sa.Column("run_id", sa.String(32))],
    "run_owners": [sa.Column("pid", sa.BigInteger()), sa.Column("host", NulSafeText())],
    "ab_experiments": [sa.Column("report_dir", NulSafeText()),
                       sa.Column("finished_at", sa.DateTime(True))],
    "ab_arm_values": [sa.Column(c, sa.Float()) for c in ("value", "low", "high")]
    + [sa.Column("seed", sa.BigInteger())],
    "ab_comparisons": [sa.Column(c, sa.Float()) for c in (
        "mean_arm", "mean_baseline", "diff", "low", "high", "p_value")]
    + [sa.Column("seed", sa.BigInteger())],
    "training_runs": [sa.Column("wall_s", sa.Float()), sa.Column("git_revision", sa.String(64)),
                      sa.Column("error", sa.Text()), sa.Column("finished_at", sa.DateTime(True))],
    "policy_evals": [sa.Column("value", sa.Float()), sa.Column("policy", sa.String(100))],
}

#: Indexes added to existing tables over time: ``(name, table, columns, where per dialect)``.
INDEXES = [
    ("ix_decisions_run_arm_user", "decisions", ["run_id", "arm", "user_id"], None),
    ("ix_decisions_traced", "decisions", ["run_id", "arm", "user_id"],
     {"sqlite_where": "traced IS 1", "postgresql_where": "traced IS true"}),
]


def upgrade() -> None:
    """Add what is missing; leave what is there."""
    insp = sa.inspect(op.get_bind())
    tables = set(insp.get_table_names())
    for table, columns in COLUMNS.items():
        if table not in tables:
            continue  # created whole, at the newest schema, after the revisions
        have = {c["name"] for c in insp.get_columns(table)}
        for col in columns:
            if col.name not in have:
                op.add_column(table, col)
    if "llm_totals" not in tables and "runs" in tables:
        op.create_table(
            "llm_totals",
            sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), primary_key=True),
            sa.Column("agent", sa.String(10), primary_key=True),
            sa.Column("arm", sa.String(100), primary_key=True),
            *(sa.Column(c, sa.BigInteger(), nullable=False)
              for c in ("calls", "cache_hits", "tokens_in", "tokens_out")),
            sa.Column("latency_ms", sa.Float(), nullable=False))
    if "decisions" in tables:
        have_ix = {ix["name"] for ix in insp.get_indexes("decisions")}
        for name, table, cols, where in INDEXES:
            if name in have_ix:
                continue
            kw = {k: sa.text(v) for k, v in (where or {}).items()}
            op.create_index(name, table, cols, **kw)
