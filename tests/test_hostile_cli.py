"""Hostile input at the command line (issue 16): every bad scenario, override, store and export
destination is one line on stderr (``error: …``), never a traceback; user text is never read as
Rich markup; store passwords never print.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner
from vragent.sandbox.cli import app
from vragent.sandbox.cli_common import scrub_url, shown_url
from vragent.sandbox.config import MAX_SEED

from tests.conftest import tiny_scenario, write_scenario
from tests.fault_injecting_server import free_port

SECRET = "s3cret-Pw-9f8e"
PG_URL = f"postgresql+psycopg://vragent:{SECRET}@127.0.0.1:{{port}}/runs"
# Where nothing can be written, even as root (sysfs refuses new files and folders).
UNWRITABLE = Path("/sys/vragent-test")


def invoke(*args: str):
    """Run the CLI in-process; stderr apart from stdout."""
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line(result, code: int, *parts: str) -> str:
    """The command exited ``code`` with one ``error:`` line holding ``parts``, and nothing else
    on stderr (no traceback, no Rich panel)."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    """A small valid scenario (the constant backend: no model)."""
    return write_scenario(tmp_path, tiny_scenario(
        population={"size": 2, "history_len": 3},
        simulation={"steps": 1, "slate_size": 2, "users_per_task": 2, "refit_every": 0},
        arms=[{"name": "popular", "recommender": "popular"}],
        backend={"kind": "constant", "trace_rate": 0.0}, ip_agent={"enabled": False}))


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/store.sqlite"


# ---------------------------------------------------------------------- scenario files


def test_non_utf8_bytes_in_a_scenario(tmp_path, db):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\narms: []\n".encode("latin-1"))
    assert_one_line(invoke("run", path, "--db", db), 2, str(path), "line 1", "not UTF-8")


def test_an_alias_bomb_is_refused_at_once(tmp_path, db):
    """Nine levels of ten aliases each: cheap to parse, 10**9 values once expanded."""
    lines = ["name: bomb", "arms:", "  - name: a", "    recommender: popular", "    params:",
             "      l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"      l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    t0 = time.monotonic()
    assert_one_line(invoke("run", path, "--db", db), 2, "alias *l0 is not allowed", "line 7")
    assert time.monotonic() - t0 < 10
    # The same through --set.
    ok = write_scenario(tmp_path, tiny_scenario())
    assert_one_line(invoke("run", ok, "--db", db, "--set", "arms.0.params={a: &a [1], b: *a}"),
                    2, "override arms.0.params", "alias *a")


def test_an_endless_file_as_scenario_fails_fast(db):
    t0 = time.monotonic()
    assert_one_line(invoke("run", "/dev/zero", "--db", db), 2, "/dev/zero",
                    "larger than 1024 KiB")
    assert time.monotonic() - t0 < 10


# ---------------------------------------------------------------------- --set


@pytest.mark.parametrize(("override", "parts"), [
    ("name=[unclosed", ("override name", "invalid YAML")),
    ("name=!!python/object:os.system {}", ("override name", "invalid YAML",
                                            "python/object")),
    (f"seed={2**63}", ("seed", f"less than or equal to {MAX_SEED}")),
    ("seed=-1", ("seed", "greater than or equal to 0")),
], ids=["unclosed", "python-tag", "seed-2^63", "negative-seed"])
def test_bad_overrides(scenario, db, tmp_path, override, parts):
    assert_one_line(invoke("run", scenario, "--db", db, "--set", override), 2, *parts)
    assert not (tmp_path / "store.sqlite").exists()  # refused before the store was opened


def test_set_on_an_empty_file(tmp_path, db):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert_one_line(invoke("run", empty, "--db", db, "--set", "seed=1"), 2,
                    "expected a mapping at the top level, got nothing (an empty file)")


@pytest.mark.parametrize(("override", "parts"), [
    ("arms.0.recommender=populr", ("arms.0: unknown recommender 'populr'", "popular")),
    ("arms.0.params.windw=3", ("arms.0: recommender 'popular'", "'windw'")),
    ("arms.0.params.weight=often", ("weight must be 'count' or 'like'",)),
    ("arms.0.params.seed=3", ("'seed' comes from the scenario's seed",)),
], ids=["recommender", "parameter", "value", "seed"])
def test_bad_arms_fail_at_load_before_a_run_exists(scenario, db, tmp_path, override, parts):
    assert_one_line(invoke("run", scenario, "--db", db, "--set", override), 2, *parts)
    assert not (tmp_path / "store.sqlite").exists()


def test_a_model_without_params_takes_none(scenario, db):
    assert_one_line(invoke("run", scenario, "--db", db, "--set", "arms.0.recommender=random",
                           "--set", "arms.0.params.k=1"), 2,
                    "recommender 'random' takes no params, got ['k']")


# ---------------------------------------------------------------------- markup


MARKUP = "odd[/]name[bold]"


def test_markup_in_paths_run_ids_and_store_paths_prints_as_written(tmp_path, scenario):
    folder = tmp_path / MARKUP
    folder.mkdir(parents=True)  # "[/]" holds a path separator: two folders
    path = folder / "s[bold].yaml"
    path.write_text(scenario.read_text().replace("name: tiny-synthetic", f"name: '{MARKUP}'"))
    bad = folder / "bad.yaml"
    bad.write_text("name: x\nbogus: 1\n")
    assert_one_line(invoke("run", bad, "--db", f"sqlite:///{folder}/s.sqlite"), 2,
                    f"{folder}/bad.yaml: ")
    db = f"sqlite:///{folder}/[red]s[/].sqlite"
    ran = invoke("run", path, "--db", db)
    assert ran.exit_code == 0, ran.output
    assert f"→ {db}" in ran.stdout  # the store path, brackets and all
    listed = invoke("runs", "--db", db)
    assert listed.exit_code == 0 and MARKUP in listed.stdout, listed.output
    assert_one_line(invoke("show", f"run{MARKUP}", "--db", db), 2, f"no run 'run{MARKUP}'",
                    db)
    assert_one_line(invoke("run", "--resume", f"[bold]{MARKUP}", "--db", db), 2,
                    f"no run '[bold]{MARKUP}'")


# ---------------------------------------------------------------------- stores


def _not_a_database(tmp_path: Path) -> str:
    (tmp_path / "notes.txt").write_text("just some text, long enough to be a file header\n" * 9)
    return f"sqlite:///{tmp_path}/notes.txt"


BAD_STORES = {
    "not a database": (_not_a_database, "file is not a database"),
    "a directory": (lambda p: f"sqlite:///{p}", "unable to open database file"),
    "unwritable place": (lambda p: f"sqlite:///{UNWRITABLE}/s.sqlite", str(UNWRITABLE)),
    "not a URL": (lambda p: "notaurl", "Could not parse SQLAlchemy URL"),
    "driver not installed": (lambda p: f"mysql://vragent:{SECRET}@127.0.0.1/runs",
                             "driver is not installed"),
    "server down": (lambda p: PG_URL.format(port=free_port()), "Connection refused"),
}


@pytest.mark.parametrize("command", ["runs", "show", "export", "run", "ab", "show-item",
                                     "perceive"])
@pytest.mark.parametrize("case", list(BAD_STORES))
def test_a_bad_store_is_one_line_naming_it(tmp_path, scenario, command, case):
    if case == "server down":
        pytest.importorskip("psycopg")
    make, reason = BAD_STORES[case]
    url = make(tmp_path)
    reads = command in ("runs", "show", "export", "show-item")
    args = {"runs": ["runs"], "show": ["show", "abc"], "run": ["run", scenario],
            "export": ["export", "abc", "--out", tmp_path / "out"], "ab": ["ab", scenario],
            "show-item": ["show-item", "1"], "perceive": ["perceive", "--backend", "tiny"],
            }[command]
    if reads and case == "unwritable place":  # nothing there, and a read creates nothing
        assert_one_line(invoke(*args, "--db", url), 2, f"no store at {UNWRITABLE}/s.sqlite")
        return
    line = assert_one_line(invoke(*args, "--db", url), 1, f"store {shown_url(url)}", reason)
    assert SECRET not in line
    if command == "run":
        assert line.endswith("nothing was started")


def test_store_urls_print_without_their_password():
    url = PG_URL.format(port=5432)
    assert shown_url(url) == "postgresql+psycopg://vragent:***@127.0.0.1:5432/runs"
    assert shown_url(f"weird://u:{SECRET}@h:x:y/") == "weird://u:***@h:x:y/"  # unparsable
    assert SECRET not in scrub_url(f"could not reach {url} (password {SECRET})", url)
    assert shown_url("sqlite:///runs/a.sqlite") == "sqlite:///runs/a.sqlite"


# ---------------------------------------------------------------------- export


@pytest.fixture
def finished_run(scenario, db) -> str:
    ran = invoke("run", scenario, "--db", db)
    assert ran.exit_code == 0, ran.output
    return ran.stdout.split("run ", 1)[1].split(" ", 1)[0]


def test_export_never_overwrites_silently(tmp_path, db, finished_run):
    a_file = tmp_path / "results.parquet"
    a_file.write_text("precious")
    assert_one_line(invoke("export", finished_run, "--db", db, "--out", a_file), 2,
                    f"--out {a_file}: exists and is not a folder")
    assert a_file.read_text() == "precious"
    out = tmp_path / "exp"
    first = invoke("export", finished_run, "--db", db, "--out", out)
    assert first.exit_code == 0, first.output
    before = (out / "runs.parquet").stat().st_mtime_ns
    for fmt in ("parquet", "jsonl"):  # an export in either format is an export
        assert_one_line(invoke("export", finished_run, "--db", db, "--out", out,
                               "--format", fmt), 2, "already holds an export", "--force")
    assert (out / "runs.parquet").stat().st_mtime_ns == before
    forced = invoke("export", finished_run, "--db", db, "--out", out, "--force")
    assert forced.exit_code == 0, forced.output
    assert (out / "runs.parquet").stat().st_mtime_ns != before


def test_export_to_an_unwritable_place(db, finished_run):
    assert_one_line(invoke("export", finished_run, "--db", db, "--out", UNWRITABLE / "x"), 1,
                    f"--out {UNWRITABLE / 'x'}: cannot write the export")


# ---------------------------------------------------------------------- population


def test_a_population_larger_than_the_dataset_is_a_warning(tmp_path, scenario, db):
    ran = invoke("run", scenario, "--db", db, "--set", "population.size=1000")
    assert ran.exit_code == 0, ran.output
    warnings = [ln for ln in ran.stderr.splitlines() if ln.startswith("warning:")]
    assert warnings == ["warning: population.size 1000 is more than the 40 users with a "
                        "training history; capped at 40"], ran.stderr
    assert yaml.safe_load(scenario.read_text())["dataset"]["synthetic"]["n_users"] == 40
