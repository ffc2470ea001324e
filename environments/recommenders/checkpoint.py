"""Recommender checkpoints: tensors in safetensors, settings in JSON, no pickle anywhere.

A checkpoint is a folder::

    model.safetensors   named float/int arrays (weights, the catalogue's item ids)
    config.json         {"name": registry key, "params": constructor kwargs, "format": 1, ...}

Loading reads only these two files with ``safetensors`` and ``json``, so a checkpoint from an
untrusted source cannot run code (``torch.load`` and pickle are never used).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or of an unknown format."""


def save_checkpoint(path: str | Path, tensors: Mapping[str, np.ndarray], config: Mapping[str,
                    Any]) -> Path:
    """Write ``tensors`` and ``config`` into the folder ``path`` (created if needed).

    Args:
        path: the checkpoint folder.
        tensors: named numpy arrays (torch tensors: pass ``t.detach().cpu().numpy()``).
        config: JSON-serialisable settings; ``format`` is added.

    Returns:
        The folder.
    """
    from safetensors.numpy import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    # Write to temporary names and rename, so a crash never leaves a half-written checkpoint
    # that looks complete.
    tmp_w, tmp_c = folder / (WEIGHTS_FILE + ".tmp"), folder / (CONFIG_FILE + ".tmp")
    save_file(arrays, str(tmp_w))
    tmp_c.write_text(json.dumps({**config, "format": FORMAT_VERSION}, indent=2, sort_keys=True),
                     encoding="utf-8")
    tmp_w.replace(folder / WEIGHTS_FILE)
    tmp_c.replace(folder / CONFIG_FILE)
    return folder


def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a folder written by :func:`save_checkpoint`.

    Returns:
        ``(tensors, config)``.

    Raises:
        CheckpointError: a file is missing or the format is unknown; one line naming the file.
    """
    from safetensors.numpy import load_file

    folder = Path(path)
    weights, cfg_file = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    for f in (weights, cfg_file):
        if not f.is_file():
            raise CheckpointError(f"{f}: checkpoint file missing")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{cfg_file}: unreadable checkpoint config ({exc})") from None
    if config.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{cfg_file}: unknown checkpoint format {config.get('format')!r}")
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{weights}: unreadable weights ({exc})") from None
    return tensors, config
