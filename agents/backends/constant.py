"""A backend with no model: fixed answers in constant time.

It exists to measure what LangGraph, Mesa and the store cost per decision, with the LLM taken
out of the picture (``benchmarks/graph_overhead.py``). It is never a default.
"""

from __future__ import annotations

from collections.abc import Sequence

from vragent.agents.backends.base import ChatPrompt, Generation, LLMBackend, Score

CONSTANT_COMPLETION = (
    " The history is mixed. </think><answer> (1) User_preference: mixed\n(2) Prediction: No "
    "</answer>"
)


class ConstantBackend(LLMBackend):
    """Returns ``p_yes`` for every scored prompt and one fixed completion for every generation."""

    kind = "constant"

    def __init__(self, p_yes: float = 0.3) -> None:
        self.p_yes = p_yes

    @property
    def model_id(self) -> str:
        """Name stored with decisions."""
        return f"constant-p{self.p_yes:g}"

    def generate(
        self,
        prompts: Sequence[ChatPrompt],
        *,
        max_new_tokens: int = 96,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int = 0,
    ) -> list[Generation]:
        """The same completion for each prompt."""
        return [Generation(CONSTANT_COMPLETION, 0, 0, 0.0) for _ in prompts]

    def score(
        self, prompts: Sequence[ChatPrompt], options: Sequence[str] = ("Yes", "No")
    ) -> list[Score]:
        """``p_yes`` for the first option, the rest for the others."""
        rest = (1.0 - self.p_yes) / max(1, len(options) - 1)
        return [
            Score({o: (self.p_yes if i == 0 else rest) for i, o in enumerate(options)}, 0, 0.0)
            for _ in prompts
        ]
