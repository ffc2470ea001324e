"""The LLM backend interface shared by every agent.

Two operations, both batched:

* :meth:`LLMBackend.generate` samples completions (chain of thought, profiles).
* :meth:`LLMBackend.score` returns the probability of each answer option (``Yes``/``No``) as the
  next token after the prompt, from one forward pass: the fast decision mode.

Prompts are chat messages plus an optional assistant prefix (the paper opens the assistant turn
with ``<think>``). Backends render them with the model's chat template and put the shared part
first, so prefix caching on a server pays.
"""

from __future__ import annotations

import base64
import math
import mimetypes
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_PLACEHOLDER = "[image]"
_IMAGE_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".gif": "image/gif", ".webp": "image/webp", ".bmp": "image/bmp"}


@dataclass(frozen=True)
class TextPart:
    """A text part of a multipart message."""

    text: str

    def as_dict(self) -> dict[str, Any]:
        """The OpenAI content-part layout."""
        return {"type": "text", "text": self.text}


@dataclass(frozen=True)
class ImagePart:
    """An image part of a multipart message: an ``http(s)://`` URL or a ``data:`` URL."""

    url: str

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://", "data:")):
            raise ValueError("ImagePart url must be http(s):// or a data: URL, got "
                             f"{self.url[:40]!r}")

    @classmethod
    def from_path(cls, path: str | Path) -> ImagePart:
        """An image file as a base64 ``data:`` URL with its mime type.

        Raises:
            ValueError: the file's type is not a known image type.
        """
        path = Path(path)
        mime = _IMAGE_MIME.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
        if not mime or not mime.startswith("image/"):
            raise ValueError(f"{path}: not an image type the OpenAI API takes ({mime})")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return cls(f"data:{mime};base64,{data}")

    def as_dict(self) -> dict[str, Any]:
        """The OpenAI content-part layout."""
        return {"type": "image_url", "image_url": {"url": self.url}}


Part = TextPart | ImagePart
Content = str | tuple[Part, ...]


@dataclass(frozen=True)
class ChatPrompt:
    """Chat messages and the text the assistant turn starts with.

    A message's content is a string or a tuple of parts (:class:`TextPart`,
    :class:`ImagePart`); only backends that take images (``openai``) accept image parts.
    """

    messages: tuple[tuple[str, Content], ...]  # (role, content) pairs
    assistant_prefix: str = ""

    @property
    def has_images(self) -> bool:
        """Whether any message carries an image part."""
        return any(
            isinstance(c, tuple) and any(isinstance(p, ImagePart) for p in c)
            for _, c in self.messages
        )

    def require_text_only(self, backend: str) -> None:
        """Raise a clear error when a text-only backend gets image parts.

        Raises:
            ValueError: the prompt has an image part.
        """
        if self.has_images:
            raise ValueError(f"the {backend} backend is text-only: this prompt has image "
                             "parts (use the openai backend with a vision model)")

    def as_dicts(self) -> list[dict[str, Any]]:
        """The messages in the OpenAI ``{"role", "content"}`` layout.

        String contents stay strings; multipart contents become lists of
        ``{"type": "text", ...}`` and ``{"type": "image_url", ...}`` parts.
        """
        return [
            {"role": r, "content": c if isinstance(c, str) else [p.as_dict() for p in c]}
            for r, c in self.messages
        ]

    def flat_text(self) -> str:
        """A readable one-string form, stored with each decision (images as ``[image]``)."""
        parts = [f"<|{r}|>\n{_content_text(c)}" for r, c in self.messages]
        parts.append(f"<|assistant|>\n{self.assistant_prefix}")
        return "\n".join(parts)


def _content_text(content: Content) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(p.text if isinstance(p, TextPart) else IMAGE_PLACEHOLDER for p in content)


@dataclass
class Generation:
    """One sampled completion and what it cost."""

    text: str
    tokens_in: int
    tokens_out: int
    latency_s: float
    truncated_prompt: bool = False
    cached: bool = False  # served from the response cache (agents/backends/caching.py)


@dataclass
class Score:
    """Next-token probabilities of the answer options, renormalised over the options."""

    probs: dict[str, float]
    tokens_in: int
    latency_s: float
    logits: dict[str, float] = field(default_factory=dict)
    found: bool = True  # False when no option was among the returned candidates
    truncated_prompt: bool = False
    cached: bool = False  # served from the response cache (agents/backends/caching.py)


class BackendError(RuntimeError):
    """A backend failed in a way a retry will not fix (server down after retries, bad model)."""


class LLMBackend(ABC):
    """Batched text generation and option scoring."""

    kind: str = "base"

    @property
    @abstractmethod
    def model_id(self) -> str:
        """A stable name of the model, stored with every decision."""

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[ChatPrompt],
        *,
        max_new_tokens: int = 96,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int = 0,
    ) -> list[Generation]:
        """Sample one completion per prompt.

        Args:
            prompts: the prompts, in order.
            max_new_tokens: completion budget per prompt.
            temperature: 0 means greedy.
            top_p: nucleus sampling mass.
            seed: seeds the sampler so a rerun gives the same text.

        Returns:
            One :class:`Generation` per prompt, in order.
        """

    @abstractmethod
    def score(
        self, prompts: Sequence[ChatPrompt], options: Sequence[str] = ("Yes", "No")
    ) -> list[Score]:
        """Probability of each option as the next token after each prompt.

        Args:
            prompts: prompts whose assistant prefix ends right before the answer word.
            options: the answer words; each is matched with and without a leading space.

        Returns:
            One :class:`Score` per prompt, in order.
        """

    @property
    def decides_with_head(self) -> bool:
        """Whether Yes/No scores come from a learned head on the model's state.

        A head policy (:mod:`agents.policy_head`): the US agent then reads each candidate after
        the model's own written preference when it traces a decision or runs in generate mode.
        """
        return False

    def close(self) -> None:  # noqa: B027 (optional hook, most backends hold nothing)
        """Release resources."""


def renormalise(logits: dict[str, float]) -> dict[str, float]:
    """Softmax over the options' log-scores."""
    top = max(logits.values())
    exp = {k: math.exp(v - top) for k, v in logits.items()}
    total = sum(exp.values())
    return {k: v / total for k, v in exp.items()}
