"""RL training and evaluation data for the US agent, from real logs and from simulation stores.

One row is one prompt (the schema is fixed: the rewards, trainers and evaluation read it):

* ``task``: ``"judgement"`` (Yes/No on one candidate), ``"selection"`` (pick 1 of 4) or
  ``"preference"`` (the paper's open-ended ``video_preference``: describe the preference and
  the next video from the history alone; built only when ``tasks`` asks for it);
* ``protocol``: how the negatives were chosen: ``"random"``, ``"popular"``
  (popularity-matched), ``"hard"`` (the paper's recommender ranks), ``"logged"`` (rows from
  a simulation store) or ``"open"`` (preference rows, which have none);
* ``m``: negatives per positive (selection: 3; preference: 0);
* ``group_id``: one positive with its negatives (judgement: the 1+m rows share it; selection:
  one row); ``"{split}:{source}:{user}:{task}:{protocol}:{m}"``;
* ``user_id``, ``item_ids`` (judgement: the candidate; selection: the candidates as shown),
  ``history_ids`` (the history shown, oldest first);
* ``prompt`` (TRL conversational messages, no assistant turn) and ``assistant_prefix``
  (``"<think>"``);
* ``candidates`` (what the model sees per candidate; preference: none), ``label``
  (``"Yes"``/``"No"``, the correct candidate's shown title, or the real next item's shown
  title for preference), ``correct_index`` (selection; otherwise -1);
* ``source`` (``"real"`` or ``"run:<id>"``) and ``split`` (``"train"``/``"eval"``).

Real rows follow the paper (notes §3.3): each kept user's time-ordered sequence is cut to its
last ``max_len`` items, the last item is the positive and the rest the history. Users are split
into disjoint train and held-out eval users. Judgement follows Agent4Rec's 1:m protocol,
selection the paper's 1 + 3 candidates; :mod:`rl.negatives` draws the negatives and
:mod:`rl.logged` turns a simulation run's decisions into rows. :mod:`rl.data_rows` writes the
rows and :mod:`rl.data_store` saves and loads the folders.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from vragent.environments.datasets import load_dataset
from vragent.environments.schema import DataFormatError, Dataset
from vragent.environments.sources import (
    DATA_DIR_FOLDERS,
    DATASET_KINDS,
    canonical_kind,
    data_dir_path,
)
from vragent.environments.splits import as_sequences
from vragent.rl.data_rows import (
    COLUMNS,
    PromptBuilder,
    RLDataError,
    UserSample,
    group_id,
    judgement_rows,
    preference_row,
    selection_row,
)
from vragent.rl.data_store import (
    _dataset_dict,
    load_popularity,
    load_rl_data,
    rl_manifest,
    save_rl_data,
)
from vragent.rl.negatives import (
    HARD_K,
    STREAM_HARD_FALLBACK,
    STREAM_SHUFFLE,
    STREAM_SPLIT,
    NegativeSampler,
    fit_hard_recommender,
    hard_negatives,
    item_popularity,
    top_k_lists,
    user_rng,
)
from vragent.sandbox.config import ConfigModel
from vragent.sandbox.progress import Task
from vragent.sandbox.world import user_profiles

if TYPE_CHECKING:
    import datasets


__all__ = [
    "COLUMNS",
    "DEFAULT_TASKS",
    "PROTOCOLS",
    "TASKS",
    "BuildStats",
    "PromptBuilder",
    "RLDataConfig",
    "RLDataError",
    "UserSample",
    "build_and_save",
    "build_rl_data",
    "group_id",
    "item_popularity",
    "judgement_rows",
    "load_popularity",
    "load_rl_data",
    "load_source",
    "preference_row",
    "rl_manifest",
    "save_rl_data",
    "selection_row",
    "split_users",
    "user_profiles",
    "user_samples",
]

TASKS = ("judgement", "selection", "preference")
DEFAULT_TASKS = ("judgement", "selection")
PROTOCOLS = ("random", "popular", "hard")
SELECTION_NEGATIVES = 3


# ------------------------------------------------------------------------------ config


class RLDataConfig(ConfigModel):
    """Every knob of an RL data build.

    Attributes:
        dataset: a dataset kind (``environments.datasets.DATASET_KINDS``).
        dataset_path: its folder; ``None``: ``$VRAGENT_DATA_DIR/<default folder>``.
        dataset_params: loader arguments (the synthetic world's ``n_users``, ``seed`` ...).
        seed: seeds the user split, every negative and every shuffle.
        min_len: users with fewer interactions are left out.
        max_len: each sequence is cut to its last ``max_len`` items (history + positive).
        history_len: how many of the most recent history items a prompt shows.
        eval_users: held-out users: a count, or a fraction of the kept users when below 1.
        train_users: most train users (``None``: all users not held out).
        tasks: which tasks to build, from :data:`TASKS` (default :data:`DEFAULT_TASKS`; add
            ``"preference"`` for the paper's open-ended task, one row per user and split).
        judgement_ms: eval split: the m of each 1:m judgement protocol.
        protocols: eval split: negative protocols, each reported separately.
        train_ms: train split: judgement m values (small by default, to keep training light).
        train_protocols: train split: negative protocols.
        popular_window: popularity-matched negatives come from the W nearest unseen items
            ranked above the positive and the W nearest below (a fair coin picks the side).
        hard_recommender: registered recommender ranking hard negatives.
        hard_params: its parameters (``seed`` defaults to :attr:`seed`).
        store_url: a run store to add logged rows from (train split).
        store_runs: the runs of that store to read.
        store_unseen_negatives: unseen-item "No" rows added per simulated user.
    """

    error: ClassVar[type[ValueError]] = RLDataError

    dataset: str = "movielens-100k"
    dataset_path: str | None = None
    dataset_params: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    min_len: int = Field(5, ge=2)
    max_len: int = Field(13, ge=2)
    history_len: int = Field(10, ge=0)
    eval_users: int | float = Field(500, ge=0)
    train_users: int | None = Field(2000, ge=0)
    tasks: tuple[str, ...] = DEFAULT_TASKS
    judgement_ms: tuple[int, ...] = (1, 2, 3, 9)
    protocols: tuple[str, ...] = PROTOCOLS
    train_ms: tuple[int, ...] = (1,)
    train_protocols: tuple[str, ...] = ("random", "hard")
    popular_window: int = Field(50, ge=1)
    hard_recommender: str = "itemknn"
    hard_params: dict[str, Any] = Field(default_factory=dict)
    store_url: str | None = None
    store_runs: tuple[str, ...] = ()
    store_unseen_negatives: int = Field(0, ge=0)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RLDataConfig:
        """A config from plain data (YAML/JSON; lists become tuples).

        Raises:
            RLDataError: an unknown key or an invalid value, in one line.
        """
        return cls(**data)

    @model_validator(mode="after")
    def _check(self) -> RLDataConfig:
        _require(canonical_kind(self.dataset) in DATASET_KINDS,
                 f"unknown dataset {self.dataset!r}; expected one of {', '.join(DATASET_KINDS)}")
        _require(set(self.tasks) <= set(TASKS) and self.tasks, f"tasks must be from {TASKS}")
        for name in ("protocols", "train_protocols"):
            _require(set(getattr(self, name)) <= set(PROTOCOLS),
                     f"{name} must be from {PROTOCOLS}")
        for name, protos in (("judgement_ms", self.protocols),
                             ("train_ms", self.train_protocols)):
            top = HARD_K - 1 if "hard" in protos else 10_000
            _require(all(1 <= m <= top for m in getattr(self, name)),
                     f"{name} must be integers in 1..{top}")
        _require(not self.store_runs or bool(self.store_url), "store_runs need a store_url")
        return self


def _require(ok: object, message: str) -> None:
    if not ok:
        raise ValueError(message)  # inside a validator: pydantic reports it with its field


def load_source(cfg: RLDataConfig) -> Dataset:
    """The dataset a config names (its folder under ``$VRAGENT_DATA_DIR`` when no path).

    Raises:
        RLDataError: a file-based kind without a path.
        FileNotFoundError: the path does not exist.
        DataFormatError: the files are malformed.
    """
    path = cfg.dataset_path
    default = data_dir_path(cfg.dataset)
    if path is None and default is not None:
        path = str(default)
    if path is None and canonical_kind(cfg.dataset) != "synthetic":
        where = " (or set VRAGENT_DATA_DIR)" if canonical_kind(cfg.dataset) in DATA_DIR_FOLDERS \
            else ""
        raise RLDataError(f"dataset {cfg.dataset!r} needs a path: --path or dataset_path"
                          f"{where}")
    try:
        return load_dataset(cfg.dataset, path, **cfg.dataset_params)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, DataFormatError):
            raise
        raise RLDataError(str(exc)) from None



# ------------------------------------------------------------------------------ users


def user_samples(
    data: Dataset | Mapping[int, Sequence[int]], min_len: int = 5, max_len: int = 13
) -> dict[int, UserSample]:
    """Each kept user's history and positive.

    Args:
        data: a dataset, or user -> time-ordered item ids.
        min_len: users with fewer interactions are dropped.
        max_len: each sequence is cut to its last ``max_len`` items first.

    Returns:
        user -> sample, sorted by user.
    """
    seqs = as_sequences(data)
    out = {}
    for user, seq in seqs.items():
        if len(seq) < min_len or len(seq) < 2:
            continue
        cut = seq[-max_len:]
        out[user] = UserSample(user, frozenset(seq), tuple(cut[:-1]), int(cut[-1]),
                               frozenset(seq[:-1]))
    return out


def split_users(
    users: Iterable[int], seed: int, eval_users: int | float, train_users: int | None = None
) -> tuple[list[int], list[int]]:
    """Disjoint train and held-out eval users from one seeded shuffle.

    The eval users are the first of the shuffle whatever the train cap, so capping the train
    set never changes the held-out users.

    Args:
        users: the candidate users.
        seed: the build seed.
        eval_users: a count, or a fraction of ``users`` when below 1 (capped at all users).
        train_users: most train users, from the rest of the shuffle; ``None``: all of them.

    Returns:
        ``(train, eval)``, each sorted.
    """
    pool = np.array(sorted(set(int(u) for u in users)), dtype=np.int64)
    n_eval = round(eval_users * pool.size) if 0 < eval_users < 1 else int(eval_users)
    n_eval = min(n_eval, pool.size)
    order = user_rng(seed, STREAM_SPLIT).permutation(pool)
    rest = order[n_eval:]
    if train_users is not None:
        rest = rest[: int(train_users)]
    return sorted(rest.tolist()), sorted(order[:n_eval].tolist())


# ------------------------------------------------------------------------------ build


@dataclass
class BuildStats:
    """What a build did, for the manifest.

    Attributes:
        users: kept users per split (``train``, ``eval``) and ``kept``/``dropped`` overall.
        popularity: item -> history interaction count (targets excluded).
        hard_fallbacks: split -> ``"task:m"`` -> ``{"samples", "fallback"}``: samples whose
            hard negatives fell back to random unseen items.
        duplicate_titles: split -> selection rows where two candidates show the same title.
        store: run id -> counts of what :func:`rows_from_store` kept and dropped.
        hard_model: the hard recommender's repr (``None`` when no hard protocol ran).
        seconds: build time.
    """

    users: dict[str, int] = field(default_factory=dict)
    popularity: pd.Series | None = None
    hard_fallbacks: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    duplicate_titles: dict[str, int] = field(default_factory=dict)
    store: dict[str, dict[str, int]] = field(default_factory=dict)
    hard_model: str | None = None
    seconds: float = 0.0


@dataclass
class _Plan:
    split: str
    users: list[int]
    protocols: tuple[str, ...]
    ms: tuple[int, ...]


class _Negatives:
    """One user's negatives per protocol: one draw of the largest m, its prefixes for smaller m.

    Nesting the m values (the m=1 negative is the first of the m=9 ones) makes the 1:m results
    differ by m only, not by a fresh draw.
    """

    def __init__(self, sampler: NegativeSampler, top: Sequence[int] | None, sample: UserSample,
                 max_m: int) -> None:
        self.sampler, self.top, self.sample, self.max_m = sampler, top, sample, max_m
        self._draws: dict[str, list[int]] = {}

    def _draw(self, kind: str) -> list[int]:
        if kind not in self._draws:
            s, u = self.sample, self.sample.user_id
            try:
                if kind == "random":
                    draw = self.sampler.random(u, s.sequence, self.max_m)
                elif kind == "popular":
                    draw = self.sampler.popular(u, s.target, s.sequence, self.max_m)
                else:
                    draw = self.sampler.random(u, s.sequence, self.max_m, STREAM_HARD_FALLBACK)
            except ValueError as exc:  # a catalogue too small for this user's m
                raise RLDataError(f"user {u}, {kind} negatives: {exc}") from None
            self._draws[kind] = draw
        return self._draws[kind]

    def get(self, protocol: str, m: int) -> tuple[list[int], bool]:
        """The m negatives of a protocol and whether the hard rule fell back to random."""
        if protocol == "hard":
            return hard_negatives(self.top or [], self.sample.sequence, m,
                                  self._draw("fallback"))
        return self._draw(protocol)[:m], False


def _plans(cfg: RLDataConfig, train: list[int], held_out: list[int]) -> list[_Plan]:
    return [_Plan("train", train, cfg.train_protocols, cfg.train_ms),
            _Plan("eval", held_out, cfg.protocols, cfg.judgement_ms)]


def _user_rows(prompts: PromptBuilder, negs: _Negatives, plan: _Plan, tasks: Sequence[str],
               fallbacks: dict[str, dict[str, int]], seed: int) -> list[dict[str, Any]]:
    sample = negs.sample
    persona = prompts.persona(sample) if "judgement" in tasks else None
    rows: list[dict[str, Any]] = []
    if "preference" in tasks:
        rows.append(preference_row(prompts, sample, split=plan.split))
    for p_index, protocol in enumerate(plan.protocols):
        if "judgement" in tasks:
            for m in plan.ms:
                picked, fell_back = negs.get(protocol, m)
                _count(fallbacks, protocol, f"judgement:{m}", fell_back)
                rows += judgement_rows(prompts, persona, sample, picked, split=plan.split,
                                       protocol=protocol)
        if "selection" in tasks:
            picked, fell_back = negs.get(protocol, SELECTION_NEGATIVES)
            _count(fallbacks, protocol, f"selection:{SELECTION_NEGATIVES}", fell_back)
            rng = user_rng(seed, STREAM_SHUFFLE, sample.user_id, p_index)
            rows.append(selection_row(prompts, sample, picked, rng, split=plan.split,
                                      protocol=protocol))
    return rows


def _count(fallbacks: dict[str, dict[str, int]], protocol: str, key: str, hit: bool) -> None:
    if protocol != "hard":
        return
    c = fallbacks.setdefault(key, {"samples": 0, "fallback": 0})
    c["samples"] += 1
    c["fallback"] += int(hit)


def _hard_tops(cfg: RLDataConfig, plans: list[_Plan], samples: Mapping[int, UserSample],
               catalogue: np.ndarray, stats: BuildStats) -> dict[int, list[int]]:
    users = [u for p in plans if "hard" in p.protocols for u in p.users]
    if not users:
        return {}
    histories = {u: s.history for u, s in samples.items()}
    model = fit_hard_recommender(cfg.hard_recommender, cfg.hard_params, histories, catalogue,
                                 cfg.seed)
    stats.hard_model = repr(model)
    # Mask the whole past, not only the cut history: otherwise older watches fill the top-10
    # and nearly every sample falls back (ML-100K users have 20+ ratings, the cut keeps 13).
    # The target stays eligible, so the fallback fires exactly when the model ranks the real
    # next item among the would-be negatives.
    return top_k_lists(model, users, HARD_K,
                       exclude={u: set(samples[u].before_target) for u in users})


def build_rl_data(
    cfg: RLDataConfig, dataset: Dataset | None = None, *, stats: BuildStats | None = None,
    progress: Task | None = None,
) -> datasets.DatasetDict:
    """Build the train and eval RL datasets from real logs (plus logged store rows).

    Args:
        cfg: the build settings.
        dataset: the dataset, already loaded; ``None`` loads the one ``cfg`` names.
        stats: filled with what the build did (for :func:`rl_manifest`).
        progress: counts the users whose rows are built.

    Returns:
        Splits ``"train"`` and ``"eval"`` in the :data:`COLUMNS` schema.

    Raises:
        RLDataError: an invalid setting.
    """
    start = time.perf_counter()
    stats = stats if stats is not None else BuildStats()
    ds = dataset if dataset is not None else load_source(cfg)
    samples = user_samples(ds, cfg.min_len, cfg.max_len)
    train, held_out = split_users(samples, cfg.seed, cfg.eval_users, cfg.train_users)
    n_all = ds.interactions["user_id"].nunique()
    stats.users = {"train": len(train), "eval": len(held_out), "kept": len(samples),
                   "dropped": int(n_all - len(samples))}
    catalogue = np.unique(ds.interactions["item_id"].to_numpy(dtype=np.int64))
    # Histories only: the popularity prior and the hard model never see a target.
    stats.popularity = item_popularity({u: s.history for u, s in samples.items()}, catalogue)
    sampler = NegativeSampler(catalogue, stats.popularity, cfg.seed, cfg.popular_window)
    plans = _plans(cfg, train, held_out)
    tops = _hard_tops(cfg, plans, samples, catalogue, stats)
    prompts = PromptBuilder(ds, cfg.history_len, [*train, *held_out])
    rows: dict[str, list[dict[str, Any]]] = {}
    if progress is not None:
        progress.update(0, total=sum(len(p.users) for p in plans))
    for plan in plans:
        max_m = max([*plan.ms, SELECTION_NEGATIVES if "selection" in cfg.tasks else 1])
        fallbacks = stats.hard_fallbacks.setdefault(plan.split, {})
        rows[plan.split] = [
            row for u in (progress.track(plan.users) if progress else plan.users)
            for row in _user_rows(prompts, _Negatives(sampler, tops.get(u), samples[u], max_m),
                                  plan, cfg.tasks, fallbacks, cfg.seed)
        ]
        stats.duplicate_titles[plan.split] = _duplicate_titles(rows[plan.split])
    for run_id in cfg.store_runs:
        # Simulated users may be real eval users: their rows stay out of training.
        from vragent.rl.logged import rows_from_store

        rows["train"] += rows_from_store(
            cfg.store_url, run_id, ds, unseen_negatives=cfg.store_unseen_negatives,
            seed=cfg.seed, exclude_users=held_out, stats=stats.store.setdefault(run_id, {}),
            prompts=prompts)
    dd = _dataset_dict(rows)
    stats.seconds = time.perf_counter() - start
    return dd


def _duplicate_titles(rows: Iterable[Mapping[str, Any]]) -> int:
    # Two candidates with one shown title make a selection answer ambiguous; count them.
    return sum(1 for r in rows if r["task"] == "selection"
               and len({t.casefold() for t in r["candidates"]}) < len(r["candidates"]))


def build_and_save(cfg: RLDataConfig, path: str | Path, dataset: Dataset | None = None,
                   progress: Task | None = None) -> tuple[datasets.DatasetDict, dict[str, Any]]:
    """Build, then save with the manifest and popularity; returns the splits and manifest."""
    stats = BuildStats()
    dd = build_rl_data(cfg, dataset, stats=stats, progress=progress)
    manifest = rl_manifest(dd, cfg, stats)
    save_rl_data(dd, path, manifest, stats.popularity)
    return dd, manifest
