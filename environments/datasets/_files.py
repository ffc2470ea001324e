"""Finding and opening the dataset files: plain or gzip, judged by their bytes, not names."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable
from pathlib import Path
from typing import IO

_GZIP_MAGIC = b"\x1f\x8b"



def display_name(path: str | Path) -> str:
    """The short file name used in reports and error messages."""
    return Path(path).name


def is_gzip(path: str | Path) -> bool:
    """Whether ``path`` holds gzip data (judged by the magic bytes, not the name)."""
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a plain or gzip-compressed file for binary reading."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def open_text(path: str | Path, encoding: str = "utf-8", errors: str = "strict") -> IO[str]:
    """Open a plain or gzip-compressed file as text.

    Args:
        path: The file; gzip is detected from its first bytes, so ``X`` and ``X.gz`` both work
            whatever their names say.
        encoding: Text encoding.
        errors: How undecodable bytes are handled (see :func:`open`).

    Returns:
        A text file object; the caller closes it.
    """
    if is_gzip(path):
        return gzip.open(path, "rt", encoding=encoding, errors=errors, newline="")
    return open(path, encoding=encoding, errors=errors, newline="")


def _with_gz(name: str) -> tuple[str, str]:
    return (name, name + ".gz") if not name.endswith(".gz") else (name, name[:-3])


def find_file(folder: str | Path, names: Iterable[str], depth: int = 1) -> Path | None:
    """Find the first of ``names`` (each also tried with/without ``.gz``) under ``folder``.

    Args:
        folder: Where to look.
        names: Candidate file names, best first.
        depth: How many subfolder levels to search below ``folder`` (the folder itself is
            always searched first).

    Returns:
        The path found, or ``None``.
    """
    names = list(names)
    for directory in _dirs(Path(folder), depth):
        for name in names:
            for candidate in _with_gz(name):
                path = directory / candidate
                if path.is_file():
                    return path
    return None


def find_files(folder: str | Path, pattern: str, depth: int = 1) -> list[Path]:
    """All files matching the regular expression ``pattern`` (full name) under ``folder``.

    Args:
        folder: Where to look.
        pattern: A regular expression matched against the whole file name.
        depth: How many subfolder levels to search below ``folder``.

    Returns:
        Matching paths, folder itself first, then subfolders in name order.
    """
    regex = re.compile(pattern)
    found = []
    for directory in _dirs(Path(folder), depth):
        found.extend(
            p for p in sorted(directory.iterdir()) if p.is_file() and regex.fullmatch(p.name)
        )
    return found


def _dirs(folder: Path, depth: int) -> list[Path]:
    if not folder.is_dir():
        return []
    out, level = [folder], [folder]
    for _ in range(depth):
        level = [d for parent in level for d in sorted(parent.iterdir()) if d.is_dir()]
        out.extend(level)
    return out
