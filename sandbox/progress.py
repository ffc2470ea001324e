"""Progress of long commands on stderr: a Rich bar in a terminal, plain lines in a log.

Every long ``vragent`` command (run, ab, sweep, fidelity, loop, perceive, experiment
ip-agent, rl build-data, rl eval) reports through one :class:`Tracker`, made per command, so
nothing carries over from one run to the next:

* stderr is a terminal: a Rich progress bar per task, with done/total, elapsed time and an
  estimate of the time left; messages print above the bars.
* stderr is not a terminal (``| tee``, CI, nohup): one flushed plain line per unit of work,
  e.g. ``[vragent] run abc123 · 2/5 steps · 0:01:12 elapsed · ~0:01:48 left``, with no Rich
  markup, wrapping or source-location suffix, so a log shows that work goes on.

Progress goes to stderr: stdout keeps only the tables, fit for a pipe.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PREFIX = "[vragent]"
T = TypeVar("T")


def clock_text(seconds: float) -> str:
    """``H:MM:SS``, e.g. ``0:01:12``."""
    return str(dt.timedelta(seconds=max(0, int(seconds))))


class Task:
    """One counted piece of work of a :class:`Tracker` (made by :meth:`Tracker.task`).

    The estimate of the time left is the pace of the work done since the task started (or
    since :meth:`restart`), applied to what remains; work found already done (a resumed run)
    is left out of the pace with :meth:`skip_to`.
    """

    def __init__(self, tracker: Tracker, label: str, total: int | None, unit: str,
                 lines: bool, every: float) -> None:
        self._tracker, self.label, self.total, self.unit = tracker, label, total, unit
        self._lines, self._every = lines, every
        self.done = 0
        self._t0 = tracker.clock()
        self._base = 0  # work done before this process took the task on
        self._last_line = -float("inf")
        self._id: TaskID | None = None
        if tracker.bars is not None:
            self._id = tracker.bars.add_task(label, total=total)

    def elapsed(self) -> float:
        """Seconds since the task started (or restarted)."""
        return self._tracker.clock() - self._t0

    def left(self) -> float | None:
        """Estimated seconds left, or ``None`` before any work was done here."""
        worked = self.done - self._base
        if self.total is None or worked <= 0:
            return None
        return self.elapsed() / worked * max(0, self.total - self.done)

    def line(self) -> str:
        """The plain progress line (without the ``[vragent]`` prefix)."""
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        parts = [f"{self.label} · {count} {self.unit}".rstrip(),
                 f"{clock_text(self.elapsed())} elapsed"]
        left = self.left()
        if self.total is not None and self.done < self.total:
            parts.append("estimate after the first" if left is None
                         else f"~{clock_text(left)} left")
        return " · ".join(parts)

    def update(self, done: int, total: int | None = None, label: str | None = None) -> None:
        """Set the work done (and optionally the total and label); report it."""
        self.done = int(done)
        if total is not None:
            self.total = int(total)
        if label is not None:
            self.label = label
        self._show()

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.update(self.done + n)

    def track(self, items: Iterable[T]) -> Iterator[T]:
        """Yield ``items``, counting one unit done after each."""
        for item in items:
            yield item
            self.advance()

    def skip_to(self, done: int, total: int | None = None, label: str | None = None) -> None:
        """Set work that was already done before (a resumed run): shown, not in the pace."""
        self._base += max(0, int(done) - self.done)
        self.done = int(done)
        if total is not None:
            self.total = int(total)
        if label is not None:
            self.label = label
        self._show(line=False)

    def restart(self, total: int | None, label: str | None = None) -> None:
        """Start over at zero (a new step's batch of items): clock, pace and count."""
        self.done, self._base, self.total = 0, 0, total
        self._t0 = self._tracker.clock()
        if label is not None:
            self.label = label
        bars = self._tracker.bars
        if bars is not None and self._id is not None:
            bars.reset(self._id, total=total, description=self.label)

    def _show(self, line: bool = True) -> None:
        bars = self._tracker.bars
        if bars is not None and self._id is not None:
            bars.update(self._id, completed=self.done, total=self.total,
                        description=self.label)
            return
        if not (line and self._lines and self._tracker.plain):
            return
        now = self._tracker.clock()
        finished = self.total is not None and self.done >= self.total
        if finished or now - self._last_line >= self._every:
            self._last_line = now
            self._tracker.write(self.line())


class Tracker:
    """Where one command's progress goes (a context manager: the bars live inside it).

    Args:
        console: the console to draw on (default: stderr, markup off).
        terminal: draw bars (``True``) or write plain lines (``False``); default: whether
            the console is a terminal.
        clock: seconds, monotonic (tests pass a fake one to fix the figures).
    """

    def __init__(self, console: Console | None = None, *, terminal: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console or Console(stderr=True, markup=False)
        self.terminal = self.console.is_terminal if terminal is None else terminal
        self.clock = clock
        self.bars: Progress | None = None
        self.plain = False

    def __enter__(self) -> Tracker:
        if self.terminal:
            # Descriptions hold run ids and arm names: printed as written, never as markup.
            self.bars = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("left"), TimeRemainingColumn(),
                                 console=self.console)
            self.bars.start()
        else:
            self.plain = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bars is not None:
            self.bars.stop()
        self.bars, self.plain = None, False

    def task(self, label: str, total: int | None = None, *, unit: str = "",
             lines: bool = True, every: float = 0.0) -> Task:
        """A new task.

        Args:
            label: what is counted, e.g. ``"run abc123"``.
            total: units in all (``None``: not known yet).
            unit: the unit's name in plain lines, e.g. ``"steps"``.
            lines: write plain lines for it (``False``: a bar in a terminal only, for counts
                too fine-grained for a log).
            every: at most one plain line per this many seconds (the last always shows).
        """
        return Task(self, label, total, unit, lines, every)

    def log(self, message: str) -> None:
        """A message: above the bars in a terminal, a plain line in a log."""
        if self.bars is not None:
            self.bars.console.print(message, markup=False, highlight=False, soft_wrap=True)
        elif self.plain:
            self.write(message)
        else:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def write(self, text: str) -> None:
        """One plain line, flushed at once (a log shows it while the work goes on)."""
        stream: TextIO = self.console.file
        stream.write(f"{PREFIX} {text}\n")
        stream.flush()


class RunProgress:
    """The runner's ``progress(event, done, total)`` calls, shown on a :class:`Tracker`.

    Follows one run or several in a row with the same number of steps (an A/B experiment's
    seeds, a sweep's points): call :meth:`next_run` before each. Events (see
    :class:`sandbox.runner.RunDriver`): ``"start"`` (steps already done, steps), ``"step"``,
    ``"users"`` (decided users, a bar in a terminal only) and ``"items"`` (IP-agent profiles
    of the step, a line per batch).

    Args:
        tracker: where to show it.
        label: the first run's label, e.g. ``"run abc123"``.
        runs: how many runs the steps count covers.
    """

    def __init__(self, tracker: Tracker, label: str, runs: int = 1) -> None:
        self.tracker, self.label, self.runs = tracker, label, runs
        # next_run() moves to run 0 first; a lone run that never calls it is run 0 too.
        self.index = -1
        self.n_steps: int | None = None
        self.steps = tracker.task(label, None, unit="steps")
        self.users = tracker.task("users decided", None, lines=False)
        self.items: Task | None = None  # made at the first IP-agent batch

    def next_run(self, label: str) -> None:
        """The next run of the series starts (or resumes) now."""
        self.index += 1
        self.label = label
        # Runs before this one that were found finished (a resumed experiment) count as
        # done, not as pace.
        done = self.index * self.n_steps if self.n_steps is not None else self.steps.done
        self.steps.skip_to(max(done, self.steps.done), label=label)

    @property
    def _run(self) -> int:
        """This run's place in the series (0 before the first :meth:`next_run`)."""
        return max(self.index, 0)

    def __call__(self, event: str, done: int, total: int) -> None:
        """Show one runner event (the runner's ``progress`` callback)."""
        if event == "start":
            self.n_steps = total
            self.steps.skip_to(self._run * total + done, self.runs * total)
            self.steps.update(self.steps.done)  # a line: loaded, the steps begin
            self.users.restart(None)
        elif event == "step":
            self.steps.update(self._run * total + done, self.runs * total,
                              label=f"{self.label} step {done}/{total}"
                              if self.runs > 1 else self.label)
        elif event == "users":
            self.users.update(done, total)
        elif event == "items":
            if self.items is None:
                self.items = self.tracker.task("IP profiles", total, unit="items")
            if done == 0:
                step = self.steps.done - self._run * (self.n_steps or 0) + 1
                self.items.restart(total, f"{self.label} step {step}/{self.n_steps} IP profiles")
            else:
                self.items.update(done, total)
