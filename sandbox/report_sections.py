"""Generated sections inside a hand-kept markdown file (``docs/results.md``).

Several commands write their results into one document: the IP-agent experiment, the RL
evaluation on each dataset. Each owns a section between ``<!-- BEGIN name -->`` and
``<!-- END name -->``; rerunning a command replaces its own section and leaves the rest (other
sections, hand-written prose) as it was.
"""

from __future__ import annotations

import re
from pathlib import Path


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- BEGIN {name} (generated: rerun its command to update) -->", f"<!-- END {name} -->"


def write_section(path: str | Path, name: str, text: str) -> Path:
    """Replace (or append) the section ``name`` of a markdown file with ``text``.

    Args:
        path: the document; created when missing.
        name: the section's name (letters, digits, ``-``, ``_``, ``:`` and ``.``).
        text: the section's markdown.

    Returns:
        The document's path.

    Raises:
        ValueError: a bad name, or the document holds the section's start without its end.
    """
    if not re.fullmatch(r"[\w:.-]+", name):
        raise ValueError(f"bad section name {name!r}")
    path = Path(path)
    begin, end = _markers(name)
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    start = old.find(f"<!-- BEGIN {name} ")
    if start < 0:
        new = f"{old.rstrip()}\n\n{block}" if old.strip() else block
    else:
        stop = old.find(end, start)
        if stop < 0:
            raise ValueError(f"{path}: section {name!r} has a start marker but no end marker")
        new = old[:start] + block + old[stop + len(end):].lstrip("\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new, encoding="utf-8")
    return path
