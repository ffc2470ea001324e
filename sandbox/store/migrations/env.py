"""Alembic's environment: migrations run on the connection that ``migrate.upgrade`` passes."""

from alembic import context
from vragent.sandbox.store.schema import Base

context.configure(connection=context.config.attributes["connection"],
                  target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
