"""Packaging: one import name (``vragent``), dependencies that flow one way, and a wheel that
works from another directory with its bundled scenarios."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import tiny_scenario, write_scenario

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
FOLDERS = {"sandbox": "vragent.sandbox", "agents": "vragent.agents",
           "environments": "vragent.environments", "rl": "vragent.rl",
           "dashboards": "vragent.dashboards", "scenarios": "vragent.scenarios"}

#: What each package may import (docs/architecture.md): environments ← agents ← sandbox ← rl
#: and dashboards.
ALLOWED = {
    "environments": {"environments"},
    "agents": {"environments", "agents"},
    "sandbox": {"environments", "agents", "sandbox"},
    "rl": {"environments", "agents", "sandbox", "rl"},
    "dashboards": {"environments", "agents", "sandbox", "dashboards"},
}


def test_every_package_folder_installs_under_vragent():
    tool = PYPROJECT["tool"]["setuptools"]
    assert {k: v for k, v in tool["package-dir"].items() if k != "vragent"} == {
        name: folder for folder, name in FOLDERS.items()}
    want = {"vragent"} | {
        FOLDERS[p.parent.relative_to(REPO).parts[0]] + "".join(
            f".{part}" for part in p.parent.relative_to(REPO).parts[1:])
        for folder in FOLDERS for p in (REPO / folder).rglob("__init__.py")}
    assert set(tool["packages"]) == want


def _imports(path: Path) -> set[str]:
    """The first-party packages a module imports (``vragent.<package>``), anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                 else [])
        for name in names:
            parts = name.split(".")
            if parts[0] in FOLDERS:
                out.add(f"bare {parts[0]}")  # the old top-level names must not come back
            elif parts[0] == "vragent" and len(parts) > 1:
                out.add(parts[1])
    return out


def test_dependencies_flow_one_way():
    wrong = {}
    for package, allowed in ALLOWED.items():
        for path in sorted((REPO / package).rglob("*.py")):
            bad = _imports(path) - allowed
            if bad:
                wrong[str(path.relative_to(REPO))] = sorted(bad)
    assert not wrong, f"imports against docs/architecture.md's layering: {wrong}"


def _module_graph() -> dict[str, set[str]]:
    """Module-level first-party imports, module to module (``from pkg import submodule`` is an
    edge to the submodule, not to the package's ``__init__``)."""
    mods = {}
    for folder, name in FOLDERS.items():
        for p in (REPO / folder).rglob("*.py"):
            parts = p.relative_to(REPO / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            mods[".".join((name, *parts))] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.parse(path.read_text()).body:  # what runs at import time
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vragent"):
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets = subs if all(s in mods for s in subs) else [node.module, *subs]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[mod] |= {t for t in targets if t in mods and t != mod}
    return graph


def test_no_import_cycle():
    import networkx as nx

    graph = nx.DiGraph([(a, b) for a, bs in _module_graph().items() for b in bs])
    assert graph.number_of_edges() > 100  # the walk found the package's imports
    assert list(nx.simple_cycles(graph)) == []


@pytest.mark.slow
def test_the_wheel_runs_from_another_directory_with_its_scenarios(tmp_path):
    """Build the wheel, install it (without dependencies: those of this environment serve)
    into a folder of its own, and from another directory list the bundled scenarios, load
    one by name, and run a tiny scenario."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(REPO)], check=True, capture_output=True,
                   timeout=300)
    (wheel,) = wheels.glob("vragent-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, timeout=300)
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "VRAGENT_HOME": str(tmp_path / "home")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=away, env=env, capture_output=True,
                              text=True, timeout=600)

    where = run("-c", "import vragent.sandbox.store as s; print(s.__file__)")
    assert where.returncode == 0, where.stderr[-2000:]
    assert where.stdout.startswith(str(site)), where.stdout  # the wheel's copy, not the repo's
    listed = run("-m", "vragent.sandbox.cli", "scenarios")
    assert listed.returncode == 0, listed.stderr[-2000:]
    bundled = sorted(p.stem for p in (REPO / "scenarios").glob("*.yaml"))
    assert all(name in listed.stdout for name in bundled), listed.stdout
    loaded = run("-c", "from vragent.sandbox.config import load_scenario; "
                       "sc, _, path = load_scenario('quickstart'); print(sc.name, path)")
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    name, path = loaded.stdout.split()
    assert name == "quickstart" and path.startswith(str(site)), loaded.stdout
    files = run("-c", "import importlib.resources as r; d = r.files('vragent'); print("
                      "(d / 'dashboards' / 'views' / 'runs.py').is_file(), "
                      "(d / 'sandbox' / 'store' / 'migrations' / 'versions').is_dir())")
    assert files.stdout.split() == ["True", "True"], files.stderr
    tiny = write_scenario(tmp_path, tiny_scenario(simulation={"steps": 1}))
    done = run("-m", "vragent.sandbox.cli", "run", str(tiny), "--db",
               f"sqlite:///{tmp_path}/run.sqlite")
    assert done.returncode == 0, done.stderr[-2000:]


def _length(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from ``def`` to the end, the docstring left out."""
    skip = 0
    if ast.get_docstring(node) and len(node.body) > 1:
        skip = node.body[1].lineno - node.body[0].lineno
    return node.end_lineno - node.lineno + 1 - skip


def test_long_functions_say_why():
    """A function over 80 lines (docstring aside) says why in an "Over 80 lines" comment."""
    unexplained = []
    for folder in (*FOLDERS, "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            text = path.read_text()
            lines = text.splitlines()
            for node in ast.walk(ast.parse(text)):
                if (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                        and _length(node) > 80
                        and not any("Over 80 lines" in line
                                    for line in lines[node.lineno - 1:node.end_lineno])):
                    unexplained.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not unexplained, unexplained
