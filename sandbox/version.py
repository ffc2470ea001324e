"""What this vragent is: its version and git revision (``vragent --version``, stored runs)."""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def package_version() -> str:
    """The installed distribution's version, or ``"unknown"`` when it is not installed."""
    try:
        return importlib.metadata.version("vragent")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, never installed
        return "unknown"


def git_revision() -> str | None:
    """The repository's HEAD commit (with ``-dirty`` when the tree has changes)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout
        return rev + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None

