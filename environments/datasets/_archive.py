"""Distributed ``.zip`` archives (``ml-100k.zip``, ``ml-1m.zip``) read as data folders."""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vragent.environments.schema import DataFormatError

MAX_UNPACKED_BYTES = 4 << 30
"""An archive that would unpack to more than this is refused (a zip bomb, not a dataset)."""


@contextmanager
def data_folder(path: str | Path) -> Iterator[Path]:
    """The folder to read: ``path`` itself, or a zip archive unpacked into a temporary folder.

    The loaders search one subfolder down, so the ``ml-100k/`` folder inside GroupLens's zip
    needs nothing special. The temporary folder is removed on exit, and error messages name
    the archive instead of it.

    Args:
        path: A data folder, or a ``.zip`` file (judged by its content, not its name).

    Yields:
        A folder holding the data files.

    Raises:
        DataFormatError: the archive is unreadable or too big.
    """
    path = Path(path)
    if not (path.is_file() and zipfile.is_zipfile(path)):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="vragent-zip-") as tmp:
        try:
            with zipfile.ZipFile(path) as zf:
                size = sum(info.file_size for info in zf.infolist())
                if size > MAX_UNPACKED_BYTES:
                    raise DataFormatError(
                        f"{path.name}: unpacks to {size:,} bytes, over the "
                        f"{MAX_UNPACKED_BYTES:,}-byte limit"
                    )
                zf.extractall(tmp)  # member names are sanitised: nothing lands outside tmp
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
            raise DataFormatError(f"{path.name}: not a readable zip archive ({exc})") from None
        try:
            yield Path(tmp)
        except DataFormatError as exc:  # name the archive, not the temporary folder
            raise DataFormatError(str(exc).replace(tmp, path.name)) from None
