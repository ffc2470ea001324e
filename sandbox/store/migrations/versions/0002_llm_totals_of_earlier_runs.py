"""Running LLM totals for runs logged before ``llm_totals`` existed.

Until this revision the first step a run logged after the table appeared summed the run's
earlier US-agent calls into it; a finished run never got its totals. This revision sums them
once, for every run that has US-agent calls and no totals, in one ``INSERT … SELECT``.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Insert the missing totals."""
    calls = sa.table("llm_calls", *(sa.column(c) for c in (
        "run_id", "agent", "arm", "cached", "tokens_in", "tokens_out", "latency_ms")))
    totals = sa.table("llm_totals", *(sa.column(c) for c in (
        "run_id", "agent", "arm", "calls", "cache_hits", "tokens_in", "tokens_out",
        "latency_ms")))
    sent = calls.c.cached.is_(sa.false())
    sums = (sa.select(calls.c.run_id, calls.c.agent, calls.c.arm,
                      sa.func.sum(sa.case((sent, 1), else_=0)),
                      sa.func.sum(sa.case((sent, 0), else_=1)),
                      sa.func.sum(sa.case((sent, calls.c.tokens_in), else_=0)),
                      sa.func.sum(sa.case((sent, calls.c.tokens_out), else_=0)),
                      sa.func.sum(sa.case((sent, calls.c.latency_ms), else_=0.0)))
            .where(calls.c.agent == "us",
                   calls.c.run_id.not_in(sa.select(totals.c.run_id).distinct()))
            .group_by(calls.c.run_id, calls.c.agent, calls.c.arm))
    op.execute(totals.insert().from_select(
        ["run_id", "agent", "arm", "calls", "cache_hits", "tokens_in", "tokens_out",
         "latency_ms"], sums))
