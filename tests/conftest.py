"""Shared fixtures: tiny real models, small scenarios, the real-data folder."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:  # dashboard_fixture imports this module
    from tests.dashboard_fixture import DashboardStore

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_backend():
    """A randomly initialised 0.1M-parameter Llama behind the hf backend."""
    from vragent.agents.backends.tiny import tiny_hf_backend

    return tiny_hf_backend(seed=0, batch_size=8)


def real_data_missing(name: str = "") -> str | None:
    """Why the shared real data (``$VRAGENT_DATA_DIR``, or its folder ``name``) is not there.

    Returns:
        ``None`` when it is; else one line saying which: the variable is unset, or which
        folder is missing (``make test`` sets it to ``../shared/data`` when unset).
    """
    root = os.environ.get("VRAGENT_DATA_DIR")
    if not root:
        return "VRAGENT_DATA_DIR is not set"
    folder = Path(root).expanduser()
    if not folder.is_dir():
        return f"VRAGENT_DATA_DIR={root}: the folder {folder.resolve()} is missing"
    if name and not (folder / name).is_dir():
        return f"VRAGENT_DATA_DIR={root} has no {name} folder ({(folder / name).resolve()})"
    return None


def real_data(name: str = "", required_in_ci: bool = False) -> Path:
    """The shared real data folder (or its folder ``name``); skip, saying why, when absent.

    Args:
        name: a dataset folder under it, e.g. ``"microlens-100k"``.
        required_in_ci: fail instead of skipping when ``CI`` is set.
    """
    why = real_data_missing(name)
    if why is not None:
        if required_in_ci and os.environ.get("CI"):
            pytest.fail(f"CI must run the real-data tests: {why}", pytrace=False)
        pytest.skip(why)
    return Path(os.environ["VRAGENT_DATA_DIR"]).expanduser() / name


@pytest.fixture
def data_dir() -> Path:
    """The shared real data (``VRAGENT_DATA_DIR``), or skip saying what is missing."""
    return real_data()


def tiny_scenario(**overrides) -> dict:
    """A synthetic-world scenario with the tiny model; sections can be overridden."""
    sc = {
        "name": "tiny-synthetic",
        "seed": 11,
        "dataset": {"kind": "synthetic",
                    "synthetic": {"n_users": 40, "n_items": 60, "mean_history": 10}},
        "population": {"size": 6, "history_len": 5},
        "simulation": {"steps": 3, "slate_size": 3, "users_per_task": 2, "refit_every": 2},
        "arms": [{"name": "popular", "recommender": "popular"},
                 {"name": "cooc", "recommender": "cooccurrence"},
                 {"name": "random", "recommender": "random"}],
        "backend": {"kind": "tiny", "decision_mode": "score", "trace_rate": 0.3,
                    "max_new_tokens": 12, "max_prompt_tokens": 2048},
        "ip_agent": {"enabled": True, "items_per_step": 2, "max_new_tokens": 12,
                     "cmp_max_new_tokens": 12},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(sc.get(key), dict):
            sc[key] = {**sc[key], **value}
        else:
            sc[key] = value
    return sc


def write_scenario(tmp_path: Path, sc: dict, name: str = "scenario.yaml") -> Path:
    """Write a scenario dict as YAML and return its path."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(sc, sort_keys=False))
    return path


# ---------------------------------------------------------------- store backends

PG_ENV = "VRAGENT_PG_URL"  # a PostgreSQL URL whose role may CREATE DATABASE (docs/scaling.md)


def pg_admin_url() -> str:
    """``$VRAGENT_PG_URL``; skip when unset, but fail in CI (``CI=true``), which must test it."""
    url = os.environ.get(PG_ENV)
    if not url:
        why = (f"{PG_ENV} is not set; start a server with "
               f"export {PG_ENV}=$(scripts/postgres-ci.sh start)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {why}", pytrace=False)
        pytest.skip(why)
    return url


@contextmanager
def fresh_pg_database(prefix: str = "vragent_t") -> Iterator[str]:
    """A new, empty PostgreSQL database on ``$VRAGENT_PG_URL``'s server; dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin_url = make_url(pg_admin_url())
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_urls(request, tmp_path, monkeypatch) -> Iterator[Callable[[str], str]]:
    """A factory of fresh, empty store URLs, for SQLite and for PostgreSQL.

    ``store_urls(name)`` gives a new database each call: a file under ``tmp_path`` or a new
    PostgreSQL database (dropped after the test). For PostgreSQL, ``VRAGENT_HOME`` points at a
    private folder, so the LangGraph checkpoint file (``runner.checkpoint_path``) is the test's.
    """
    if request.param == "sqlite":
        yield lambda name: f"sqlite:///{tmp_path}/{name}.sqlite"
        return
    pg_admin_url()
    monkeypatch.setenv("VRAGENT_HOME", str(tmp_path / "vragent-home"))
    with ExitStack() as stack:
        yield lambda name: stack.enter_context(fresh_pg_database())


@pytest.fixture
def store_url(store_urls) -> str:
    """One fresh, empty store URL (SQLite, then PostgreSQL)."""
    return store_urls("store")


@pytest.fixture(scope="session")
def dashboard_store(tmp_path_factory: pytest.TempPathFactory) -> DashboardStore:
    """The dashboard tests' store (tests/dashboard_fixture.py), built once per session."""
    from tests.dashboard_fixture import build

    return build(tmp_path_factory.getbasetemp() / "dashboard-store")


@pytest.fixture
def dashboard_env(dashboard_store: DashboardStore,
                  monkeypatch: pytest.MonkeyPatch) -> DashboardStore:
    """The dashboard store handed to the app the way the CLI does: ``VRAGENT_DB``."""
    monkeypatch.setenv("VRAGENT_DB", dashboard_store.url)
    monkeypatch.setenv("VRAGENT_COVERS_DIR", str(dashboard_store.covers))
    return dashboard_store
