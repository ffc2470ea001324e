"""Where vragent keeps its cache, databases and checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DB_URL = "sqlite:///runs/vragent.sqlite"


def vragent_home() -> Path:
    """The asset cache: ``$VRAGENT_HOME`` or ``~/.cache/vragent``."""
    return Path(os.environ.get("VRAGENT_HOME", Path.home() / ".cache" / "vragent")).expanduser()

