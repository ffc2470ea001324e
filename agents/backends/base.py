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

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ChatPrompt:
    """Chat messages and the text the assistant turn starts with."""

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    assistant_prefix: str = ""

    def as_dicts(self) -> list[dict[str, str]]:
        """The messages in the OpenAI ``{"role", "content"}`` layout."""
        return [{"role": r, "content": c} for r, c in self.messages]

    def flat_text(self) -> str:
        """A readable one-string form, stored with each decision."""
        parts = [f"<|{r}|>\n{c}" for r, c in self.messages]
        parts.append(f"<|assistant|>\n{self.assistant_prefix}")
        return "\n".join(parts)


@dataclass
class Generation:
    """One sampled completion and what it cost."""

    text: str
    tokens_in: int
    tokens_out: int
    latency_s: float
    truncated_prompt: bool = False


@dataclass
class Score:
    """Next-token probabilities of the answer options, renormalised over the options."""

    probs: dict[str, float]
    tokens_in: int
    latency_s: float
    logits: dict[str, float] = field(default_factory=dict)
    found: bool = True  # False when no option was among the returned candidates
    truncated_prompt: bool = False


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

    def close(self) -> None:  # noqa: B027 (optional hook, most backends hold nothing)
        """Release resources."""


def renormalise(logits: dict[str, float]) -> dict[str, float]:
    """Softmax over the options' log-scores."""
    top = max(logits.values())
    exp = {k: math.exp(v - top) for k, v in logits.items()}
    total = sum(exp.values())
    return {k: v / total for k, v in exp.items()}
