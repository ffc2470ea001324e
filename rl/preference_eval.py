"""Evaluation of the paper's open-ended preference task (``video_preference``).

A sampled answer's ``Next_video`` text (:func:`agents.parsing.parse_preference`) is compared with
the real next item's title by the reward's sentence-embedding similarity (all-MiniLM-L6-v2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from vragent.agents.parsing import parse_preference
from vragent.rl.metrics import mean_words

if TYPE_CHECKING:
    from vragent.rl.evaluation import LLMPolicy
    from vragent.rl.text_similarity import Similarity

Row = Mapping[str, Any]


def llm_preference(
    policy: LLMPolicy, rows: Sequence[Row], mode: str, similarity: Similarity | None = None
) -> dict[str, Any]:
    """Open-ended preference metrics of an LLM policy (``generate`` mode only).

    ``similarity`` is the mean sentence-embedding cosine (all-MiniLM-L6-v2, as the reward)
    between each answer's ``Next_video`` text and the real next item's title, an answer
    without one counting 0; ``accuracy`` is the share above the reward's 0.5 threshold.

    Raises:
        ValueError: ``mode`` is not ``generate`` (an open answer has no options to score).
    """
    if mode != "generate":
        raise ValueError("the preference task is evaluated in generate mode only")
    from vragent.rl.rewards import PREFERENCE_SIM_MIN

    if similarity is None:
        from vragent.rl.text_similarity import default_similarity

        similarity = default_similarity()
    texts = policy.generate(rows)
    parsed = [parse_preference(t, policy.prompt(r).assistant_prefix)
              for t, r in zip(texts, rows, strict=True)]
    have = [k for k, p in enumerate(parsed) if p.prediction]
    sims = np.zeros(len(rows))
    sims[have] = similarity.pairs([parsed[k].prediction for k in have],
                                  [str(rows[k]["label"]) for k in have])
    n = len(rows)
    return {
        "n": n,
        "similarity": float(sims.mean()) if n else None,
        "accuracy": float((sims > PREFERENCE_SIM_MIN).mean()) if n else None,
        "none_rate": 1.0 - len(have) / n if n else None,
        "format_rate": float(np.mean([p.format_ok for p in parsed])) if n else None,
        "answer_words": mean_words(texts),
    }
