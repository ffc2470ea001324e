"""Security checks (issue 8): no unsafe deserialisation or eval, SQL only with parameters, and
the API key never leaves the environment and the Authorization header.

The source checks walk the AST of the project's own packages, so comments, docstrings and
method names such as ``model.eval()`` never trip them.
"""

from __future__ import annotations

import ast
import logging
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("sandbox", "agents", "environments", "rl", "dashboards")

# (file, enclosing function) -> why a string-built SQL statement there is safe.
SQL_ALLOWED = {
    ("sandbox/store/engine.py", "_read_only_sqlite"): (
        "PRAGMA busy_timeout takes no bound parameter; the value is sqlite_busy_ms(), an int "
        "parsed from digits only"),
}


def _sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    assert len(files) > 50, "the project's source was not found"
    return files


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


class _Scanner(ast.NodeVisitor):
    """Collects unsafe calls and string-built SQL in one module."""

    def __init__(self, rel: str) -> None:
        self.rel = rel
        self.unsafe: list[str] = []
        self.sql: list[tuple[str, str, int]] = []  # (file, function, line)
        self.text_names: set[str] = set()  # local names of sqlalchemy.text
        self.sa_modules: set[str] = set()  # local names of the sqlalchemy module
        self.pickle_loads: set[str] = set()  # names bound by "from pickle import load(s)"
        self.func: list[str] = ["<module>"]

    # -- imports
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name == "sqlalchemy":
                self.sa_modules.add(a.asname or a.name)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        for a in node.names:
            if mod.startswith("sqlalchemy") and a.name == "text":
                self.text_names.add(a.asname or a.name)
            if mod in ("pickle", "cPickle", "_pickle", "dill") and a.name in ("load", "loads"):
                self.pickle_loads.add(a.asname or a.name)
        self.generic_visit(node)

    # -- scopes
    def _scope(self, node: ast.AST) -> None:
        self.func.append(node.name)  # type: ignore[attr-defined]
        self.generic_visit(node)
        self.func.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scope(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._scope(node)

    # -- calls
    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        where = f"{self.rel}:{node.lineno}"
        if isinstance(f, ast.Name):
            if f.id in ("eval", "exec"):
                self.unsafe.append(f"{where}: {f.id}()")
            if f.id in self.pickle_loads:
                self.unsafe.append(f"{where}: pickle {f.id}()")
            if f.id in self.text_names:
                self._check_sql(node)
        elif isinstance(f, ast.Attribute):
            owner = f.value.id if isinstance(f.value, ast.Name) else None
            if owner in ("pickle", "cPickle", "_pickle", "dill") and f.attr in ("load", "loads"):
                self.unsafe.append(f"{where}: {owner}.{f.attr}()")
            if owner == "torch" and f.attr == "load" and not _weights_only(node):
                self.unsafe.append(f"{where}: torch.load() without weights_only=True")
            if owner == "builtins" and f.attr in ("eval", "exec"):
                self.unsafe.append(f"{where}: builtins.{f.attr}()")
            if f.attr == "text" and owner in self.sa_modules:
                self._check_sql(node)
            if f.attr in ("exec_driver_sql", "execute", "executescript", "executemany"):
                self._check_sql(node)
        self.generic_visit(node)

    def _check_sql(self, node: ast.Call) -> None:
        site = (self.rel, self.func[-1], node.lineno)
        names = frozenset(self.text_names | {"text"})
        if node.args and _built_string(node.args[0], names) and site not in self.sql:
            self.sql.append(site)  # execute(text(f"...")) is one site, not two


def _weights_only(call: ast.Call) -> bool:
    return any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
               and k.value.value is True for k in call.keywords)


def _built_string(node: ast.AST, text_names: frozenset[str] = frozenset({"text"})) -> bool:
    """A string made at run time: f-string, ``%``, ``+`` or ``.format`` (or text() of one)."""
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        return True
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in ("format", "join", "replace"):
            return True
        # conn.execute(text(f"...")): judge the string inside text() (by any local name).
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        if name in text_names and node.args and _built_string(node.args[0], text_names):
            return True
    return False


def _scan(path: Path, source: str | None = None) -> _Scanner:
    rel = _rel(path) if source is None else str(path)
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"))
    scanner = _Scanner(rel)
    scanner.visit(tree)
    return scanner


def test_no_unsafe_deserialisation_or_eval_in_the_source():
    found = [u for p in _sources() for u in _scan(p).unsafe]
    assert not found, "unsafe calls:\n" + "\n".join(found)


def test_sql_is_only_built_from_parameters():
    seen = {}
    for p in _sources():
        for rel, func, line in _scan(p).sql:
            seen.setdefault((rel, func), []).append(line)
    unexpected = {k: v for k, v in seen.items() if k not in SQL_ALLOWED}
    assert not unexpected, (
        "SQL built from strings (use bound parameters, or add the site to SQL_ALLOWED with a "
        f"reason): {unexpected}")
    # The allow-list names real sites only; remove entries that no longer exist.
    assert set(SQL_ALLOWED) <= set(seen), set(SQL_ALLOWED) - set(seen)


def test_the_scanner_catches_what_it_should_and_ignores_comments():
    bad = '''
import pickle, torch
import sqlalchemy as sa
from sqlalchemy import text as T
from pickle import loads
# eval(x) and pickle.load(f) in a comment are fine
"""exec(x) in a docstring is fine"""
def f(conn, cur, name, model):
    model.eval()
    pickle.load(open("x", "rb"))
    loads(b"")
    torch.load("w.pt")
    torch.load("w.pt", weights_only=True)
    eval("1")
    exec("x = 1")
    conn.execute(T(f"SELECT * FROM t WHERE a = '{name}'"))
    conn.execute(sa.text("SELECT %s" % name))
    conn.exec_driver_sql("DELETE FROM t WHERE a = '{}'".format(name))
    cur.execute("SELECT " + name)
    conn.execute(T("SELECT * FROM t WHERE a = :a"), {"a": name})
    cur.execute("SELECT ?", (name,))
'''
    s = _scan(Path("fake.py"), bad)
    assert [u.split(": ", 1)[1] for u in s.unsafe] == [
        "pickle.load()", "pickle loads()", "torch.load() without weights_only=True",
        "eval()", "exec()"]
    assert [line for _, _, line in s.sql] == [16, 17, 18, 19]


# ---------------------------------------------------------------------- the API key


@pytest.fixture(scope="module")
def server(tiny_backend):
    from tests.openai_stand_in import stand_in

    with stand_in(tiny_backend, torch_threads=1) as s:
        yield s


def _files_holding(root: Path, secret: bytes) -> list[str]:
    return [str(p) for p in sorted(root.rglob("*")) if p.is_file() and secret in p.read_bytes()]


def test_the_api_key_never_reaches_the_store_logs_or_exports(
        server, tmp_path, monkeypatch, caplog, capfd):
    import pandas as pd
    from vragent.sandbox.export import export_run
    from vragent.sandbox.runner import checkpoint_path, start
    from vragent.sandbox.store import Store

    from tests.conftest import tiny_scenario, write_scenario

    secret = f"sk-test-{uuid.uuid4()}"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    sc = tiny_scenario(
        population={"size": 3, "history_len": 3},
        simulation={"steps": 2, "slate_size": 2, "users_per_task": 3, "refit_every": 1},
        arms=[{"name": "popular", "recommender": "popular"}],
        backend={"kind": "openai", "base_url": server.url, "model": "tiny", "trace_rate": 0.5,
                 "max_new_tokens": 4, "max_concurrency": 2, "max_retries": 1,
                 "backoff_base_s": 0.01, "backoff_max_s": 0.02},
        ip_agent={"enabled": True, "items_per_step": 1, "max_new_tokens": 4,
                  "cmp_max_new_tokens": 4})
    path = write_scenario(tmp_path, sc)
    db = tmp_path / "db" / "store.sqlite"
    server.reset()
    run_id, summary = start(str(path), f"sqlite:///{db}")
    assert summary
    # The key was sent, so a key silently dropped would fail here, not pass unnoticed.
    auth = [{k.lower(): v for k, v in r["headers"].items()}.get("authorization")
            for r in server.requests if r["method"] == "POST"]
    assert auth and set(auth) == {f"Bearer {secret}"}

    store = Store(f"sqlite:///{db}")
    exported = tmp_path / "export"
    export_run(store, run_id, exported / "jsonl", fmt="jsonl")
    export_run(store, run_id, exported / "parquet", fmt="parquet")
    store.engine.dispose()
    assert checkpoint_path(store).is_file()  # the LangGraph checkpoints were written
    assert len(list(db.parent.iterdir())) >= 2

    key = secret.encode()
    # Every byte of the store, its WAL and the checkpoint file, and the export folder.
    assert not _files_holding(db.parent, key)
    assert not _files_holding(exported, key)
    assert not _files_holding(checkpoint_path(store).parent, key)
    for p in (exported / "parquet").glob("*.parquet"):  # compressed pages: check the values
        assert secret not in pd.read_parquet(p).to_string()
    # Logs and console.
    out, err = capfd.readouterr()
    logged = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}"
                       for r in caplog.records)
    for text in (out, err, logged, caplog.text):
        assert secret not in text
    assert caplog.records  # something was logged, so the check above means something
