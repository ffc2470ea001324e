"""The paper's rewards as TRL ``GRPOTrainer`` reward functions, read from dataset columns.

:func:`make_reward_funcs` gives TRL the two parts of :mod:`rl.rewards` as separate functions
(``format`` and ``accuracy``), so TRL logs each; their sum is the paper's total.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from vragent.rl.rewards import THINK_PREFIX, RewardBreakdown, score

if TYPE_CHECKING:
    from vragent.rl.text_similarity import Similarity


def _as_text(value: object) -> str:
    return value if isinstance(value, str) else ""


class RewardRecorder:
    """Collects per-completion format-valid and correct flags for a logging callback.

    Only the accuracy function records, so each completion is counted once. A callback calls
    :meth:`pop_means` at each logging step.
    """

    def __init__(self) -> None:
        self._valid: list[bool] = []
        self._correct: list[bool] = []

    def __len__(self) -> int:
        return len(self._valid)

    def record(self, breakdowns: Iterable[RewardBreakdown]) -> None:
        """Add the flags of scored completions.

        Args:
            breakdowns: scored completions.
        """
        for b in breakdowns:
            self._valid.append(bool(b.valid))
            self._correct.append(bool(b.correct))

    def pop_means(self) -> dict[str, float]:
        """The means since the last call, then clear.

        Returns:
            ``{"format_valid_rate", "accuracy", "n"}``; both rates are NaN when ``n`` is 0.
        """
        n = len(self._valid)
        nan = float("nan")
        out = {
            "format_valid_rate": sum(self._valid) / n if n else nan,
            "accuracy": sum(self._correct) / n if n else nan,
            "n": float(n),
        }
        self._valid.clear()
        self._correct.clear()
        return out


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):  # content parts: [{"type": "text", "text": ...}]
        return "".join(_as_text(p.get("text")) for p in content
                       if isinstance(p, dict) and p.get("type", "text") == "text")
    return ""


def completion_text(completion: object) -> str:
    """The text of a TRL completion, standard or conversational.

    Standard completions are strings. Conversational ones are message lists
    (``[{"role": "assistant", "content": ...}]``); the contents of the assistant messages are
    joined (tool messages are not the model's text). Structured reasoning fields that some chat
    templates split off (``reasoning_content``) are not re-tagged.

    Args:
        completion: one element of TRL's ``completions``.

    Returns:
        The text, ``""`` for anything unreadable.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if not isinstance(completion, list | tuple):
        return ""
    parts = []
    for msg in completion:
        if isinstance(msg, str):
            parts.append(msg)
        elif isinstance(msg, dict) and msg.get("role", "assistant") == "assistant":
            parts.append(_content_text(msg.get("content")))
    return "".join(parts)


def _column(kwargs: dict[str, Any], name: str, i: int, n: int, default: Any = None) -> Any:
    values = kwargs.get(name)
    if values is None:
        return default
    # One value per completion; a bare string would otherwise be indexed character by character.
    if isinstance(values, str | bytes) or not hasattr(values, "__len__"):
        raise ValueError(f"column {name!r} must be a list with one value per completion")
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    return values[i]


def score_batch(
    completions: Sequence[object],
    missing_answer: float | None = None,
    similarity: Similarity | None = None,
    **columns: Any,
) -> list[RewardBreakdown]:
    """Score a TRL batch from the dataset columns.

    Args:
        completions: TRL completions (strings or message lists).
        missing_answer: see :func:`score_judgement`; ``None`` is the paper's rule.
        similarity: the preference task's text similarity (default: MiniLM, loaded only when
            a preference row comes).
        **columns: the dataset columns as lists, one value per completion: ``task``,
            ``label``, ``candidates``, ``correct_index`` and optionally ``assistant_prefix``
            (default ``<think>``). Other keys (TRL's ``trainer_state``, ``completion_ids``, …)
            are ignored.

    Returns:
        One breakdown per completion.

    Raises:
        ValueError: a missing ``task`` column, a column of the wrong length, or invalid truth.
    """
    n = len(completions)
    if n and "task" not in columns:
        raise ValueError("the dataset needs a 'task' column (judgement, selection, preference)")
    out = []
    for i, completion in enumerate(completions):
        prefix = _column(columns, "assistant_prefix", i, n, THINK_PREFIX)
        out.append(score(
            completion_text(completion),
            _column(columns, "task", i, n),
            label=_column(columns, "label", i, n),
            candidates=_column(columns, "candidates", i, n),
            correct_index=_column(columns, "correct_index", i, n),
            assistant_prefix=THINK_PREFIX if prefix is None else prefix,
            missing_answer=missing_answer,
            similarity=similarity,
        ))
    return out


class RewardFunc:
    """One part of the reward as a TRL reward function (picklable, named for TRL's logs).

    ``format`` returns ``R_format`` and ``accuracy`` returns ``R_content``; their sum is the
    paper's total for every completion (with no answer block: 0.0 and the missing-answer
    value under the paper's rule).
    """

    def __init__(
        self,
        part: str,
        missing_answer: float | None = None,
        recorder: RewardRecorder | None = None,
        similarity: Similarity | None = None,
    ) -> None:
        if part not in ("format", "accuracy"):
            raise ValueError(f"part must be 'format' or 'accuracy', got {part!r}")
        self.part = part
        self.missing_answer = missing_answer
        self.recorder = recorder
        self.similarity = similarity
        self.__name__ = part  # TRL names the reward column after this

    def __call__(self, prompts: Sequence[object], completions: Sequence[object],
                 **kwargs: Any) -> list[float]:
        """Score a batch; the prompts are never read.

        Args:
            prompts: TRL's prompts (unused: item titles in them are hostile text).
            completions: TRL's completions, strings or message lists.
            **kwargs: the dataset columns (see :func:`score_batch`) and TRL extras.

        Returns:
            One reward per completion.
        """
        rows = score_batch(completions, self.missing_answer, self.similarity, **kwargs)
        if self.recorder is not None:
            self.recorder.record(rows)
        if self.part == "format":
            return [r.format_reward for r in rows]
        return [r.content_reward for r in rows]

    def __repr__(self) -> str:
        return f"RewardFunc({self.part!r}, missing_answer={self.missing_answer!r})"


def format_reward_func(prompts: Sequence[object], completions: Sequence[object],
                       **kwargs: Any) -> list[float]:
    """TRL reward function: ``R_format`` per completion (paper's rule for a missing answer).

    Args:
        prompts: TRL's prompts (never read).
        completions: TRL's completions, strings or message lists.
        **kwargs: dataset columns ``task``, ``label``, ``candidates``, ``correct_index``,
            ``assistant_prefix``, one value per completion; TRL extras are ignored.

    Returns:
        One reward per completion, 0 to 1.
    """
    return RewardFunc("format")(prompts, completions, **kwargs)


def accuracy_reward_func(prompts: Sequence[object], completions: Sequence[object],
                         **kwargs: Any) -> list[float]:
    """TRL reward function: ``R_content`` per completion (paper's rule for a missing answer).

    Args:
        prompts: TRL's prompts (never read).
        completions: TRL's completions, strings or message lists.
        **kwargs: dataset columns ``task``, ``label``, ``candidates``, ``correct_index``,
            ``assistant_prefix``, one value per completion; TRL extras are ignored.

    Returns:
        One reward per completion: 2.0, -1.5, -2.0, or 0.0 without an answer block.
    """
    return RewardFunc("accuracy")(prompts, completions, **kwargs)


# TRL logs each reward under its function's __name__ ("rewards/format/mean").
format_reward_func.__name__ = "format"
accuracy_reward_func.__name__ = "accuracy"


def make_reward_funcs(
    missing_answer: float | None = None,
    recorder: RewardRecorder | None = None,
    similarity: Similarity | None = None,
) -> list[Callable[..., list[float]]]:
    """The two TRL reward functions, ``[format, accuracy]``, summing to the paper's total.

    Args:
        missing_answer: content reward without an answer block; ``None`` is the paper's flat
            0.0 total (see :func:`score_judgement` for why a trainer may want e.g. ``-2.0``).
        recorder: receives each completion's flags; only the accuracy function records, so
            nothing is counted twice.
        similarity: the preference task's text similarity (default: MiniLM).

    Returns:
        ``[format_func, accuracy_func]``, named ``"format"`` and ``"accuracy"``.
    """
    return [RewardFunc("format", missing_answer, similarity=similarity),
            RewardFunc("accuracy", missing_answer, recorder, similarity)]
