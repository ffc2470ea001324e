"""Fault injection for crash tests: kill or pause the process at a chosen point, deterministically.

``VRAGENT_FAULT_KILL_AT="decide:3"`` sends SIGKILL to this process when the 3rd fan-out task
has decided its users. The points, in the order a step passes them:

* ``perceive``: the step's item profiles are stored;
* ``decide``: a fan-out task has decided (the step's fan-out is under way);
* ``log``: the step's store write is about to commit (inside its open transaction);
* ``committed``: the step's write has committed, before memory is updated;
* ``feedback``: the step's refits are done, before its checkpoint is written.

``VRAGENT_FAULT_PAUSE_AT="decide:1"`` with ``VRAGENT_FAULT_PAUSE_DIR=DIR`` instead stops there:
the process creates ``DIR/paused-<pid>`` and waits (at most ten minutes) until ``DIR/release``
exists, so a test can act while a run is known to be mid-step. Only tests set these variables.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

ENV = "VRAGENT_FAULT_KILL_AT"
PAUSE_ENV = "VRAGENT_FAULT_PAUSE_AT"
PAUSE_DIR_ENV = "VRAGENT_FAULT_PAUSE_DIR"
POINTS = ("perceive", "decide", "log", "committed", "feedback")
_calls: Counter[str] = Counter()


def _hit(spec: str, point: str) -> bool:
    name, _, nth = spec.partition(":")
    return name == point and _calls[point] == int(nth or 1)


def checkpoint(point: str) -> None:
    """Count a pass through ``point``; die or pause there if the environment asks for it."""
    kill, pause = os.environ.get(ENV), os.environ.get(PAUSE_ENV)
    if not kill and not pause:
        return
    _calls[point] += 1
    if kill and _hit(kill, point):
        os.kill(os.getpid(), signal.SIGKILL)
    if pause and _hit(pause, point):
        folder = Path(os.environ[PAUSE_DIR_ENV])
        (folder / f"paused-{os.getpid()}").touch()
        deadline = time.monotonic() + 600
        while not (folder / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
