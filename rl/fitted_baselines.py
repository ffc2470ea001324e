"""Baselines fitted on all training logs: recommender and response-model scorers.

:mod:`rl.baselines` holds the scorer interface and the baselines that need no fitted model
(random, popularity, item-kNN); this module holds the scorers that wrap a fitted model
(:class:`RecommenderScorer`, :class:`ResponseModelScorer`), the interactions every baseline of
``vragent rl eval`` is fitted on (:func:`training_interactions`: every training user's full
sequence plus each held-out user's sequence up to, not including, the held-out target) and
:func:`fit_baselines`, which fits them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from vragent.rl.baselines import (
    BaseScorer,
    Row,
    TieBreak,
    as_rows,
    catalogue_columns,
)


def history_interactions(rows: Iterable[Row]) -> pd.DataFrame:
    """The users' histories in the rows as an interactions frame (``user_id, item_id, order``).

    Use it to fit a recommender (or :class:`ItemKNNScorer`) on the training interactions plus
    the held-out users' visible histories, never their targets, so the held-out users are known
    users. A user met in several rows keeps the longest history given.

    Args:
        rows: evaluation rows.

    Returns:
        The frame, sorted by ``(user_id, order)``.
    """
    longest: dict[int, list[int]] = {}
    for r in rows:
        hist = [int(i) for i in r["history_ids"]]
        user = int(r["user_id"])
        if len(hist) > len(longest.get(user, ())):
            longest[user] = hist
    users = [u for u, h in sorted(longest.items()) for _ in h]
    items = [i for _, h in sorted(longest.items()) for i in h]
    order = [k for _, h in sorted(longest.items()) for k in range(len(h))]
    return pd.DataFrame({"user_id": np.asarray(users, dtype=np.int64),
                         "item_id": np.asarray(items, dtype=np.int64),
                         "order": np.asarray(order, dtype=np.int64)})


#: Users scored at once by :class:`RecommenderScorer` (bounds the dense user × item matrix).
RECOMMENDER_CHUNK_USERS = 256


class RecommenderScorer(BaseScorer):
    """Scores from a fitted :mod:`environments.recommenders` model.

    A candidate's score is the model's ``score([user_id])`` column for that item; items outside
    the model's catalogue get ``-inf``. The model scores users by the history **it was fitted
    on**, not by the row's ``history_ids``: users it never saw get its fallback (popularity for
    the built-in models, see :meth:`environments.recommenders.base.Recommender.score`). To score
    held-out users by their histories, fit it on the training interactions concatenated with
    :func:`history_interactions` of the evaluation rows (histories only, never targets).

    Args:
        recommender: a fitted recommender.
        name: the model's name in result tables; defaults to the recommender's ``name``.
        seed: seeds selection tie-breaking.
        threshold: a known judgement threshold, else tune one with :meth:`fit_threshold`.
        tie_break: see :class:`BaseScorer`.
    """

    def __init__(self, recommender: Any, name: str | None = None, *, seed: int = 0,
                 threshold: float | None = None, tie_break: TieBreak = "random") -> None:
        super().__init__(name or str(getattr(recommender, "name", "recommender")), seed=seed,
                         threshold=threshold, tie_break=tie_break)
        self.recommender = recommender

    def item_scores(self, rows: Sequence[Row]) -> list[np.ndarray]:
        """The recommender's score of each row's candidates for the row's user."""
        rows = as_rows(rows)
        rec = self.recommender
        # The recommender's score columns follow its catalogue order, which need not be sorted.
        cat = np.asarray(rec.item_ids, dtype=np.int64)
        sorter = np.argsort(cat, kind="stable")
        cat_sorted = cat[sorter]
        users = np.unique(np.array([int(r["user_id"]) for r in rows], dtype=np.int64))
        row_of = {int(u): k for k, u in enumerate(users)}
        out: list[np.ndarray | None] = [None] * len(rows)
        by_user: dict[int, list[int]] = {}
        for k, r in enumerate(rows):
            by_user.setdefault(int(r["user_id"]), []).append(k)
        for start in range(0, users.size, RECOMMENDER_CHUNK_USERS):
            part = users[start:start + RECOMMENDER_CHUNK_USERS]
            matrix = np.asarray(rec.score(part), dtype=np.float64)
            for u in part.tolist():
                line = matrix[row_of[u] - start]
                for k in by_user[u]:
                    pos = catalogue_columns(cat_sorted, np.asarray(rows[k]["item_ids"]))
                    cols = sorter[np.maximum(pos, 0)] if cat.size else pos
                    out[k] = np.where(pos >= 0, line[cols] if cat.size else 0.0, -np.inf)
        return [s if s is not None else np.zeros(0) for s in out]


class ResponseModelScorer(BaseScorer):
    """The simulator's learned user model as a baseline: p(watch | the row's history, item).

    This is :class:`environments.response_model.LogisticResponseModel`, the model that decides
    for users in population-scale runs (``response_model: learned``), scored on the same rows
    as the LLM policies: how well it agrees with real users is the fidelity bar the LLM users
    have to clear to be worth their cost. The user vector comes from the row's own
    ``history_ids``, so held-out users need not have been seen in training. The judgement
    threshold is tuned on training rows (:meth:`fit_threshold`).

    Args:
        model: a fitted response model.
        name: the model's name in result tables.
        seed: seeds selection tie-breaking.
        threshold: a known judgement threshold, else tune one.
        tie_break: see :class:`BaseScorer`.
    """

    def __init__(self, model: Any, name: str = "learned response model", *, seed: int = 0,
                 threshold: float | None = None, tie_break: TieBreak = "random") -> None:
        super().__init__(name, seed=seed, threshold=threshold, tie_break=tie_break)
        self.model = model

    @classmethod
    def fit_on(cls, interactions: pd.DataFrame,
               item_vectors: Mapping[int, np.ndarray] | None = None, *, dim: int = 32,
               seed: int = 0, **kwargs: Any) -> ResponseModelScorer:
        """Fit the response model on an interactions frame (``user_id, item_id, order``).

        Args:
            interactions: what the model may learn from (histories, never targets).
            item_vectors: item vectors (text or category); without them, vectors come from
                the interactions themselves
                (:func:`environments.response_model.collaborative_item_vectors`).
            dim: width of those collaborative vectors.
            seed: seeds the fit's sampling and the SVD.
            **kwargs: passed to the scorer.

        Returns:
            The fitted scorer.

        Raises:
            ValueError: no user has two or more items to learn from.
        """
        from vragent.environments.response_model import (
            LogisticResponseModel,
            collaborative_item_vectors,
        )

        ordered = interactions.sort_values(["user_id", "order"], kind="stable")
        histories = {int(u): g["item_id"].astype(int).tolist()
                     for u, g in ordered.groupby("user_id", sort=True)}
        vectors = (item_vectors if item_vectors is not None
                   else collaborative_item_vectors(histories, dim=dim, seed=seed))
        popularity = interactions["item_id"].astype(int).value_counts().to_dict()
        model = LogisticResponseModel(vectors, popularity, seed=seed)
        model.fit(histories)
        return cls(model, seed=seed, **kwargs)

    def item_scores(self, rows: Sequence[Row]) -> list[np.ndarray]:
        """p(watch) of each row's candidates given the row's history."""
        rows = as_rows(rows)
        if not rows:
            return []
        sizes = [len(r["item_ids"]) for r in rows]
        user_vecs = np.stack([self.model.user_vector([int(i) for i in r["history_ids"]])
                              for r in rows])
        items = np.concatenate([np.asarray(r["item_ids"], dtype=np.int64) for r in rows])
        flat = self.model.predict(np.repeat(user_vecs, sizes, axis=0), items)
        return np.split(np.asarray(flat, dtype=np.float64), np.cumsum(sizes)[:-1])


# ---------------------------------------------------------------------------- fitting on all logs


def row_targets(rows: Iterable[Row]) -> dict[int, set[int]]:
    """Each user's positives in the rows: judgement ``Yes`` items and selection answers."""
    out: dict[int, set[int]] = {}
    for r in rows:
        items = [int(i) for i in r["item_ids"]]
        if r["task"] == "judgement":
            if str(r["label"]).strip().lower() != "yes":
                continue
            item = items[0]
        else:
            item = items[int(r["correct_index"])]
        out.setdefault(int(r["user_id"]), set()).add(item)
    return out


def training_interactions(sequences: Mapping[int, Sequence[int]],
                          held_out: Mapping[int, set[int]]) -> pd.DataFrame:
    """All logged interactions a baseline may learn from (``user_id, item_id, order``).

    Every user's full time-ordered sequence, except that a user with held-out positives keeps
    only what came before them: the sequence is cut at the earliest of the positives' last
    positions, and the positives themselves are dropped from what is left (so not even an
    earlier watch of a target enters a fit).

    Args:
        sequences: user -> time-ordered item ids (the whole dataset).
        held_out: user -> positives that must stay out (the targets of the rows evaluated or
            used for tuning thresholds).

    Returns:
        The frame, sorted by ``(user_id, order)``.

    Raises:
        ValueError: a held-out positive is not in its user's sequence (the rows were built
            from other logs).
    """
    users, items, order = [], [], []
    for user, seq in sorted(sequences.items()):
        seq = [int(i) for i in seq]
        targets = held_out.get(int(user))
        if targets:
            last = {i: k for k, i in enumerate(seq)}
            missing = sorted(t for t in targets if t not in last)
            if missing:
                raise ValueError(f"user {user}: positive(s) {missing[:3]} are not in the user's "
                                 "logged sequence; the RL data was built from other logs")
            cut = min(last[t] for t in targets)
            seq = [i for i in seq[:cut] if i not in targets]
        users += [int(user)] * len(seq)
        items += seq
        order += range(len(seq))
    return pd.DataFrame({"user_id": np.asarray(users, dtype=np.int64),
                         "item_id": np.asarray(items, dtype=np.int64),
                         "order": np.asarray(order, dtype=np.int64)})


def fit_baselines(
    interactions: pd.DataFrame,
    catalogue: Iterable[int],
    *,
    recommenders: Sequence[str] = ("mf", "sasrec"),
    threshold_rows: Sequence[Row] = (),
    seed: int = 0,
    log: Any = None,
) -> dict[str, BaseScorer]:
    """Every non-LLM baseline, fitted on the same interactions.

    Args:
        interactions: what they may learn from (:func:`training_interactions`).
        catalogue: every item; the popularity median counts unseen items as 0.
        recommenders: registered recommenders whose scores are baselines (``"<name> scores"``).
        threshold_rows: judgement rows whose targets are not in ``interactions``, on which
            each judgement threshold is tuned (random and popularity keep theirs).
        seed: seeds the fits and the tie-breaking.
        log: called with a line per fit.

    Returns:
        name -> scorer: ``random``, ``popularity``, ``item-kNN``, each recommender's scores
        and the learned response model (left out when no user has two items).
    """
    import time

    from vragent.environments.recommenders import make_recommender
    from vragent.rl.baselines import ItemKNNScorer, PopularityScorer, RandomScorer

    say = log or (lambda _msg: None)
    cat = [int(i) for i in catalogue]
    out: dict[str, BaseScorer] = {
        "random": RandomScorer(seed),
        "popularity": PopularityScorer.from_interactions(interactions, cat, seed=seed)}
    t0 = time.perf_counter()
    out["item-kNN"] = ItemKNNScorer(seed=seed).fit(interactions, cat)
    say(f"item-kNN fitted on {len(interactions)} interactions ({time.perf_counter() - t0:.0f} s)")
    for name in recommenders:
        t0 = time.perf_counter()
        rec = make_recommender(name, seed=seed).fit(interactions, cat)
        out[f"{name} scores"] = RecommenderScorer(rec, f"{name} scores", seed=seed)
        say(f"{name} fitted ({time.perf_counter() - t0:.0f} s)")
    try:
        # The simulator's non-LLM user model: the fidelity an LLM user has to beat.
        learned = ResponseModelScorer.fit_on(interactions, seed=seed)
        out[learned.name] = learned
    except ValueError:
        pass  # no history of two items or more: nothing it could learn, so no row for it
    judged = [r for r in threshold_rows if r["task"] == "judgement"]
    for name, scorer in out.items():
        if judged and name not in ("random", "popularity"):
            scorer.fit_threshold(judged)  # tuned on train users, applied to held-out
    return out
