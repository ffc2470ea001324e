"""A learned decision head on the language model's hidden state (of its last or an earlier layer).

The grounded US policy (docs/rl.md, "The default US policy") decides with the language model:
the model reads the user's persona and history, the candidate's title and the collaborative
evidence, and its final hidden state after ``Prediction:`` is mapped to p(like) by this head,
in place of the two rows ``Yes`` and ``No`` of the model's own output layer. A 135M model's
own Yes/No rows say Yes to nearly everything (docs/results.md); the head is those rows
re-learned on real logs (a logistic regression on the standardised state), which costs no
backward pass through the model and ships as a few kilobytes.

A head may read an earlier layer's state (``layer``): the model then runs only that many layers
when it scores with the head, which is both more faithful (a frozen small model's middle
layers keep more of what it read than its last one, docs/results.md) and faster.

The head is a pair of logits, ``Yes = w·(h - mean)/scale + b`` and ``No = 0``, so a backend
returns it through the ordinary :class:`~agents.backends.base.Score` and everything that reads
p(Yes) (the simulator, the evaluation, the response cache) reads the head's probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

HEAD_FILE = "head.safetensors"


@dataclass(frozen=True)
class ScoreHead:
    """``logit(Yes) = w · (h - mean) / scale + b``; ``logit(No) = 0``.

    Attributes:
        weight: ``w``, one per hidden unit.
        bias: ``b``.
        mean: the training states' mean, per unit.
        scale: the training states' standard deviation, per unit (never 0).
        layer: the decoder layers the state comes after (normed by the model's final norm);
            0 means all of them.
    """

    weight: np.ndarray
    bias: float
    mean: np.ndarray
    scale: np.ndarray
    layer: int = 0

    def __post_init__(self) -> None:
        shapes = {self.weight.shape, self.mean.shape, self.scale.shape}
        if len(shapes) != 1 or self.weight.ndim != 1:
            raise ValueError(f"head vectors must share one 1-D shape, got {sorted(shapes)}")
        if not (np.isfinite(self.weight).all() and np.isfinite(self.bias)
                and np.isfinite(self.mean).all() and (self.scale > 0).all()):
            raise ValueError("head parameters must be finite with a positive scale")
        if int(self.layer) < 0:
            raise ValueError(f"head layer must be >= 0, got {self.layer}")

    @property
    def width(self) -> int:
        """The hidden size the head reads."""
        return int(self.weight.shape[0])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``logit(Yes)`` per row of ``hidden`` (``(n, width)``), in float64 for stability."""
        h = hidden.detach().to(torch.float64).cpu().numpy()
        z = ((h - self.mean) / self.scale) @ self.weight + self.bias
        return torch.from_numpy(z)

    def save(self, folder: str | Path) -> Path:
        """Write ``head.safetensors`` (no pickle) into ``folder``; return its path."""
        path = Path(folder) / HEAD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.astype(np.float32),
                   "bias": np.array([self.bias], dtype=np.float32),
                   "mean": self.mean.astype(np.float32),
                   "scale": self.scale.astype(np.float32),
                   "layer": np.array([int(self.layer)], dtype=np.int64)}, str(path),
                  metadata={"format": "vragent-score-head-1"})
        return path

    @classmethod
    def load(cls, folder: str | Path) -> ScoreHead:
        """Read a head written by :meth:`save`.

        Raises:
            ValueError: the file is missing, not a head, or holds bad values.
        """
        path = Path(folder) / HEAD_FILE
        if not path.is_file():
            raise ValueError(f"{path}: no score head")
        from safetensors import SafetensorError

        try:
            t = load_file(str(path))
            layer = int(t["layer"][0]) if "layer" in t else 0  # heads before layers: final
            return cls(t["weight"].astype(np.float64), float(t["bias"][0]),
                       t["mean"].astype(np.float64), t["scale"].astype(np.float64), layer)
        except (KeyError, IndexError, OSError, SafetensorError) as exc:
            raise ValueError(f"{path}: not a score head ({exc})") from None
