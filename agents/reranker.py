"""The US agent refines a recommender's top-10 in two selection rounds (notes §3.7).

Round 1: the agent picks 1 of the 10 candidates. Round 2: it picks 1 of the remaining 9. The
refined list is ``[pick1, pick2] + the rest of the top-10 in recommender order``
(:func:`refine_order`; the paper's code stops at the two picks, this merge is the notes'
reconstruction). :func:`rerank_report` compares HR/NDCG before and after.

Two modes:

* ``generate``: the paper's protocol. The model writes ``<think>…</think><answer>…</answer>``
  (:func:`~agents.selection.selection_prompt`), the answer is matched to a candidate
  (:func:`~agents.parsing.parse_selection`). One ``generate`` call per round for all users.
* ``score``: a fast deterministic variant for small CPU models. The candidates are labelled
  with letters and the assistant turn ends right before the label
  (:func:`~agents.selection.selection_letter_prompt`); ``backend.score`` over the labels gives
  the pick as the argmax. Letters, not numbers: "10" is two tokens in most vocabularies and
  would share its first token with "1". A tokenizer without single " A" tokens (the tiny test
  tokenizer) adds the same space token's mass to every option, which leaves the argmax alone.
  The pick inherits the model's prior on letters (" A" is a common word), a bias toward the
  recommender's first candidate.

A round whose answer cannot be used (no candidate matched in ``generate`` mode, no option among
the returned tokens in ``score`` mode) falls back to the recommender's order: the pick is the
first remaining candidate, recorded in ``fallbacks`` with ``picks`` left ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from vragent.agents.backends.base import ChatPrompt, LLMBackend
from vragent.agents.parsing import parse_selection
from vragent.agents.selection import (
    LETTER_LABELS,
    selection_letter_prompt,
    selection_prompt,
    shown_titles,
)
from vragent.environments.evaluation import hit_ndcg_at_k

ROUNDS = 2


@dataclass(frozen=True)
class RerankRequest:
    """One user's recommended list to refine."""

    user_id: int
    history_titles: Sequence[str]
    candidates: Sequence[tuple[int, str]]  # (item id, title), in recommender order


@dataclass
class RoundTrace:
    """What one selection round asked and got back, for logs and traces."""

    remaining: list[int]  # indices into the original candidates, in recommender order
    prompt: str  # the prompt's flat text
    completion: str | None = None  # generate mode
    probs: dict[str, float] | None = None  # score mode: option label -> probability
    pick: int | None = None  # the model's pick (index into the original list), None on fallback
    fallback: bool = False
    format_ok: bool | None = None  # generate mode: the answer's format check
    problems: list[str] = field(default_factory=list)


@dataclass
class RerankResult:
    """A refined list and how it came about."""

    user_id: int
    order: list[int]  # item ids: the two picks, then the rest in recommender order
    picks: list[int | None]  # per round: the model's pick, index into the original candidates
    fallbacks: list[bool]  # per round: the pick fell back to the recommender's order
    rounds: list[RoundTrace]

    @property
    def prompts(self) -> list[str]:
        """The prompts of the rounds that ran."""
        return [r.prompt for r in self.rounds]

    @property
    def completions(self) -> list[str | None]:
        """The completions of the rounds that ran (``None`` in score mode)."""
        return [r.completion for r in self.rounds]


def refine_order(
    topk: Sequence[int], pick1: int | None, pick2: int | None = None
) -> list[int]:
    """Merge the picks into the recommended list.

    Args:
        topk: item ids in recommender order.
        pick1: round-1 pick, an index into ``topk`` (``None``: no pick).
        pick2: round-2 pick, an index into ``topk`` (not into the 9 left after round 1).

    Returns:
        ``[topk[pick1], topk[pick2]] + the other items in recommender order``.

    Raises:
        ValueError: a pick is out of range or both picks are the same.
    """
    picks = [p for p in (pick1, pick2) if p is not None]
    for p in picks:
        if not 0 <= p < len(topk):
            raise ValueError(f"pick {p} is outside the list of {len(topk)}")
    if len(set(picks)) != len(picks):
        raise ValueError(f"both rounds picked index {picks[0]}")
    chosen = set(picks)
    return [topk[p] for p in picks] + [x for i, x in enumerate(topk) if i not in chosen]


class TwoRoundReranker:
    """Refine recommended lists with two selection rounds of an LLM user agent.

    Args:
        backend: the LLM.
        mode: ``"generate"`` (the paper's protocol) or ``"score"`` (one forward per round).
        max_new_tokens: completion budget per round (generate mode).
        temperature: sampling temperature (generate mode); 0 is greedy. The paper used 0.8.
        seed: generation seed; round ``r`` uses ``seed + r`` so the rounds draw differently.
        thinking: generate mode opens the answer with ``<think>``; ``False`` is the paper's
            no-thinking ablation.
        top_p: nucleus mass when sampling.
    """

    def __init__(
        self,
        backend: LLMBackend,
        mode: Literal["generate", "score"] = "generate",
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        seed: int = 0,
        thinking: bool = True,
        top_p: float = 0.95,
    ) -> None:
        if mode not in ("generate", "score"):
            raise ValueError(f"mode must be 'generate' or 'score', got {mode!r}")
        self.backend = backend
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        self.thinking = thinking
        self.top_p = top_p

    def rerank(self, requests: Sequence[RerankRequest]) -> list[RerankResult]:
        """Run both rounds for every request, batched over users.

        Args:
            requests: users with their history and recommended candidates.

        Returns:
            One result per request, in order.

        Raises:
            ValueError: score mode with more candidates than letters.
        """
        if self.mode == "score":
            too_long = [r.user_id for r in requests if len(r.candidates) > len(LETTER_LABELS)]
            if too_long:
                raise ValueError(f"score mode labels at most {len(LETTER_LABELS)} candidates; "
                                 f"users {too_long[:5]} have more")
        remaining = [list(range(len(r.candidates))) for r in requests]
        traces: list[list[RoundTrace]] = [[] for _ in requests]
        for rnd in range(ROUNDS):
            # A round with one candidate left (or none) has nothing to ask.
            active = [u for u, rem in enumerate(remaining) if len(rem) > 1]
            if not active:
                break
            prompts = [self._prompt(requests[u], remaining[u]) for u in active]
            new = (self._score_round(prompts, [remaining[u] for u in active])
                   if self.mode == "score"
                   else self._generate_round(prompts, [requests[u] for u in active],
                                             [remaining[u] for u in active], rnd))
            for u, trace in zip(active, new, strict=True):
                traces[u].append(trace)
                used = trace.pick if trace.pick is not None else remaining[u][0]
                remaining[u] = [i for i in remaining[u] if i != used]
        return [self._result(req, tr) for req, tr in zip(requests, traces, strict=True)]

    # ------------------------------------------------------------------ rounds

    def _prompt(self, req: RerankRequest, rem: list[int]) -> ChatPrompt:
        titles = [req.candidates[i][1] for i in rem]
        if self.mode == "score":
            return selection_letter_prompt(req.history_titles, titles)
        return selection_prompt(req.history_titles, titles, thinking=self.thinking)

    def _generate_round(
        self,
        prompts: list[ChatPrompt],
        reqs: list[RerankRequest],
        rems: list[list[int]],
        rnd: int,
    ) -> list[RoundTrace]:
        gens = self.backend.generate(
            prompts, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
            top_p=self.top_p, seed=self.seed + rnd,
        )
        out = []
        for prompt, req, rem, gen in zip(prompts, reqs, rems, gens, strict=True):
            # Match against the titles exactly as the prompt showed them (cleaned).
            titles = shown_titles([req.candidates[i][1] for i in rem])
            parsed = parse_selection(gen.text, titles, prompt.assistant_prefix)
            pick = rem[parsed.index] if parsed.index is not None else None
            out.append(RoundTrace(
                remaining=list(rem), prompt=prompt.flat_text(), completion=gen.text,
                pick=pick, fallback=pick is None, format_ok=parsed.format_ok,
                problems=parsed.problems,
            ))
        return out

    def _score_round(
        self, prompts: list[ChatPrompt], rems: list[list[int]]
    ) -> list[RoundTrace]:
        # One call per distinct candidate count: the options must be the same for all prompts
        # of a call. With full top-10 lists that is one call per round.
        out: list[RoundTrace | None] = [None] * len(prompts)
        by_n: dict[int, list[int]] = {}
        for j, rem in enumerate(rems):
            by_n.setdefault(len(rem), []).append(j)
        for n, idx in by_n.items():
            labels = list(LETTER_LABELS[:n])
            scores = self.backend.score([prompts[j] for j in idx], labels)
            for j, s in zip(idx, scores, strict=True):
                pick = None
                if s.found:
                    # max() keeps the first of equal maxima: ties go to recommender order.
                    best = max(range(n), key=lambda k, p=s.probs: p.get(labels[k], 0.0))
                    pick = rems[j][best]
                out[j] = RoundTrace(
                    remaining=list(rems[j]), prompt=prompts[j].flat_text(),
                    probs=dict(s.probs), pick=pick, fallback=pick is None,
                    problems=[] if s.found else ["options not among the returned tokens"],
                )
        return [t for t in out if t is not None]

    @staticmethod
    def _result(req: RerankRequest, rounds: list[RoundTrace]) -> RerankResult:
        used = [t.pick if t.pick is not None else t.remaining[0] for t in rounds]
        ids = [c[0] for c in req.candidates]
        # Rounds that did not run (a list of 0 or 1 candidates) count as neither pick nor
        # fallback, so picks and fallbacks always have two entries.
        pad = ROUNDS - len(rounds)
        return RerankResult(
            user_id=req.user_id,
            order=refine_order(ids, *used, *[None] * pad),
            picks=[t.pick for t in rounds] + [None] * pad,
            fallbacks=[t.fallback for t in rounds] + [False] * pad,
            rounds=rounds,
        )


def rerank_report(
    before_lists: Sequence[Sequence[int]],
    after_lists: Sequence[Sequence[int]],
    targets: Sequence[int],
    k: int = 10,
) -> dict[str, Any]:
    """HR@k and NDCG@k of the recommended lists before and after re-ranking.

    Reordering within the top-10 cannot change HR@10 (the same items are in the list), only
    NDCG@10 (where the held-out item sits); with ``k`` smaller than the lists, HR@k can change.

    Args:
        before_lists: each user's recommended item ids, in recommender order.
        after_lists: the same users' refined lists.
        targets: each user's held-out next item.
        k: cut-off.

    Returns:
        ``n``, ``k``, and the means over users of ``hr_before``, ``ndcg_before``,
        ``hr_after``, ``ndcg_after`` (NaN when there are no users), ``hr_delta``,
        ``ndcg_delta``.

    Raises:
        ValueError: the three sequences differ in length.
    """
    if not len(before_lists) == len(after_lists) == len(targets):
        raise ValueError(f"lengths differ: {len(before_lists)} before, {len(after_lists)} "
                         f"after, {len(targets)} targets")

    def as_array(lists: Sequence[Sequence[int]]) -> np.ndarray:
        # Lists may be ragged (a user with fewer recommendations): pad with -1, never an item.
        width = max((len(x) for x in lists), default=0)
        arr = np.full((len(lists), max(width, 1)), -1, dtype=np.int64)
        for row, x in enumerate(lists):
            arr[row, : len(x)] = x
        return arr

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else float("nan")

    tgt = np.asarray(targets, dtype=np.int64)
    hr_b, ndcg_b = (mean(v) for v in hit_ndcg_at_k(as_array(before_lists), tgt, k))
    hr_a, ndcg_a = (mean(v) for v in hit_ndcg_at_k(as_array(after_lists), tgt, k))
    return {
        "n": len(targets), "k": k,
        "hr_before": hr_b, "ndcg_before": ndcg_b, "hr_after": hr_a, "ndcg_after": ndcg_a,
        "hr_delta": hr_a - hr_b, "ndcg_delta": ndcg_a - ndcg_b,
    }
