"""Fault injection for crash tests: kill the process at a chosen point, deterministically.

``VRAGENT_FAULT_KILL_AT="decide:3"`` sends SIGKILL to this process when the 3rd fan-out task
starts; ``log:2`` when the 2nd step's store write is about to commit. Only tests set it.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "VRAGENT_FAULT_KILL_AT"
_calls: Counter[str] = Counter()


def checkpoint(point: str) -> None:
    """Count a pass through ``point``; die there if the environment asks for it."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    _calls[point] += 1
    name, _, nth = spec.partition(":")
    if name == point and _calls[point] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
