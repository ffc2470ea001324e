"""Progress of long commands (issue 17): Rich bars in a terminal, plain lines in a log."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

from rich.console import Console
from vragent.sandbox.progress import RunProgress, Tracker

from tests.conftest import REPO, tiny_scenario, write_scenario
from tests.test_ab import truth_scenario

# "[vragent] LABEL · DONE/TOTAL UNIT · H:MM:SS elapsed[ · ~H:MM:SS left | estimate ...]"
LINE = re.compile(r"^\[vragent\] .+ · \d+/\d+ \w+ · \d+:\d\d:\d\d elapsed"
                  r"( · (~\d+:\d\d:\d\d left|estimate after the first))?$")
# Rich's Console.log suffix ("cli.py:124") or any other source location.
SOURCE_LOCATION = re.compile(r"\w+\.py:\d+")


class FakeClock:
    """Fault injection: a clock the test moves by hand, so the figures are exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _plain(clock: FakeClock) -> tuple[Tracker, io.StringIO]:
    out = io.StringIO()
    return Tracker(Console(file=out, force_terminal=False), clock=clock), out


def test_plain_lines_give_elapsed_time_and_an_estimate():
    clock = FakeClock()
    tracker, out = _plain(clock)
    with tracker:
        task = tracker.task("run abc123", 5, unit="steps")
        clock.now += 36
        task.update(1)
        clock.now += 36
        task.update(2)
        tracker.log("a [bold]message[/] as written")
        clock.now += 108
        task.update(5)
    assert out.getvalue().splitlines() == [
        "[vragent] run abc123 · 1/5 steps · 0:00:36 elapsed · ~0:02:24 left",
        "[vragent] run abc123 · 2/5 steps · 0:01:12 elapsed · ~0:01:48 left",
        "[vragent] a [bold]message[/] as written",
        "[vragent] run abc123 · 5/5 steps · 0:03:00 elapsed",
    ]


def test_fine_grained_counts_stay_out_of_the_log_or_are_throttled():
    clock = FakeClock()
    tracker, out = _plain(clock)
    with tracker:
        silent = tracker.task("users decided", 100, lines=False)
        throttled = tracker.task("users", 100, unit="users", every=5.0)
        for _ in range(100):
            silent.advance()
            throttled.advance()
            clock.now += 0.125  # 12.5 s in all: a line at the start, every 5 s, the last
    lines = out.getvalue().splitlines()
    assert [line.split(" · ")[1] for line in lines] == ["1/100 users", "41/100 users",
                                                          "81/100 users", "100/100 users"]


def test_resumed_work_counts_as_done_but_not_in_the_pace():
    """An A/B experiment resumed after its first seed: the estimate uses this process's pace."""
    clock = FakeClock()
    tracker, out = _plain(clock)
    with tracker:
        view = RunProgress(tracker, "ab-1", runs=3)
        view.next_run("ab-1 seed 1 (1/3) · run a")  # found finished: never executed
        view.next_run("ab-1 seed 2 (2/3) · run b")
        view("start", 0, 2)  # the first seed's 2 steps are skipped, not timed
        clock.now += 60
        view("users", 4, 8)  # a bar in a terminal only
        view("step", 1, 2)
    lines = out.getvalue().splitlines()
    assert lines[0] == ("[vragent] ab-1 seed 2 (2/3) · run b · 2/6 steps · 0:00:00 elapsed · "
                        "estimate after the first")
    # 1 step in 60 s, 3 left: 3 minutes (the 2 skipped steps would have made it 1 minute).
    assert lines[1] == ("[vragent] ab-1 seed 2 (2/3) · run b step 1/2 · 3/6 steps · "
                        "0:01:00 elapsed · ~0:03:00 left")
    assert len(lines) == 2


def test_a_one_seed_experiment_starts_at_zero_steps():
    """A single seed goes through next_run() like any other: its start line says 0/1, not 1/1."""
    clock = FakeClock()
    tracker, out = _plain(clock)
    with tracker:
        view = RunProgress(tracker, "ab-2", runs=1)
        view.next_run("ab-2 seed 41 (1/1) · run c")
        view("start", 0, 1)
        clock.now += 30
        view("step", 1, 1)
    lines = out.getvalue().splitlines()
    assert " · 0/1 steps · " in lines[0] and " · 1/1 steps · " in lines[1]


def test_terminal_mode_draws_a_rich_bar_with_an_estimate():
    clock = FakeClock()
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    with Tracker(console) as tracker:
        assert tracker.bars is not None
        task = tracker.task("run [b]abc[/b]", 4, unit="steps")
        task.update(1)
        tracker.log("seed 3: run abc")
        task.update(4)
    text = out.getvalue()
    assert "run [b]abc[/b]" in text  # descriptions are never read as markup
    assert "4/4" in text and "seed 3: run abc" in text
    assert "[vragent]" not in text and not SOURCE_LOCATION.search(text)
    assert clock.now == 100.0  # the terminal mode draws with Rich's own clock


def test_run_in_a_log_writes_a_line_per_step_and_ip_batch(tmp_path):
    """`vragent run ... | tee log`: stderr is a pipe, so plain lines, no Rich suffix."""
    sc = tiny_scenario(population={"size": 4}, simulation={"steps": 2, "users_per_task": 4})
    path = write_scenario(tmp_path, sc)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "vragent.sandbox.cli", "run", str(path), "--db",
                          f"sqlite:///{tmp_path}/r.sqlite"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stderr.splitlines()
    steps = [line for line in lines if " steps · " in line]
    assert [line.split(" · ")[1] for line in steps] == ["0/2 steps", "1/2 steps", "2/2 steps"]
    assert all(LINE.match(line) for line in steps), steps
    assert "~" in steps[1] and " left" in steps[1]
    batches = [line for line in lines if "IP profiles" in line]
    assert len(batches) == 2 and all(LINE.match(b) and "2/2 items" in b for b in batches)
    assert "step 1/2 IP profiles" in batches[0]
    assert not SOURCE_LOCATION.search(res.stderr) and "logged" not in res.stderr
    assert "[vragent]" not in res.stdout  # the table's stream stays clean for pipes


def test_ab_shows_seeds_arms_and_steps(tmp_path):
    """What `vragent ab` shows: one count over every seed's steps, the seed and arms named."""
    from vragent.sandbox.ab import create_experiment, experiment_progress, run_experiment
    from vragent.sandbox.store import Store

    path = write_scenario(tmp_path, truth_scenario(population={"size": 10},
                                                   simulation={"steps": 2}))
    store = Store(f"sqlite:///{tmp_path}/ab.sqlite")
    exp_id = create_experiment(store, str(path), [11, 12])
    tracker, out = _plain(FakeClock())
    with tracker:
        run_experiment(store, exp_id, **experiment_progress(store, exp_id, tracker))
    steps = out.getvalue().splitlines()
    assert len(steps) == 6 and all(LINE.match(line) for line in steps), steps  # 3 per seed
    assert f"{exp_id} seed 11 (1/2) · 2 arms · run " in steps[0]
    assert steps[0].endswith("0/4 steps · 0:00:00 elapsed · estimate after the first")
    assert "seed 12 (2/2) · 2 arms · run " in steps[-1] and "step 2/2 · 4/4 steps" in steps[-1]


def test_sweep_counts_every_point_and_seed(tmp_path):
    from vragent.sandbox.sweep import parse_grid, run_sweep

    path = write_scenario(tmp_path, truth_scenario(population={"size": 8},
                                                   simulation={"steps": 2}))
    tracker, out = _plain(FakeClock())
    with tracker:
        run_sweep(str(path), parse_grid(["simulation.slate_size=3,4"]),
                  f"sqlite:///{tmp_path}/s.sqlite", tracker=tracker)
    lines = out.getvalue().splitlines()
    assert all(LINE.match(line) for line in lines), lines
    assert [re.search(r"\d+/4 steps", line)[0] for line in lines] == [
        "0/4 steps", "1/4 steps", "2/4 steps", "2/4 steps", "3/4 steps", "4/4 steps"]
    assert "sweep simulation.slate_size=4 seed 11 · run " in lines[-1]


def test_hf_bars_are_silenced_outside_terminals_only():
    """Loading a model: the "Loading weights" bar draws in a terminal, never into a log."""
    code = """
import sys, tempfile
from vragent.agents.backends.hf import HFBackend
from vragent.agents.backends.tiny import save_tiny_model
from transformers.utils.logging import is_progress_bar_enabled
folder = tempfile.mkdtemp()
save_tiny_model(folder)
sys.stderr.isatty = lambda: True  # fault injection: stderr (a pipe) claims to be a terminal
HFBackend(folder, device="cpu")
print("terminal: bars", is_progress_bar_enabled(), flush=True)
print("MARK", file=sys.stderr, flush=True)
del sys.stderr.isatty  # a pipe again, as under `| tee`
HFBackend(folder, device="cpu")
from huggingface_hub.utils import are_progress_bars_disabled
print("log: bars", is_progress_bar_enabled(), "hub disabled", are_progress_bars_disabled())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "terminal: bars True" in res.stdout
    assert "log: bars False hub disabled True" in res.stdout
    in_terminal, in_log = res.stderr.split("MARK\n")
    assert "Loading weights" in in_terminal  # the bar is real: there is something to silence
    assert "Loading weights" not in in_log and "%|" not in in_log
