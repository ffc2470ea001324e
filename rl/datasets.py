"""RL training and evaluation data for the US agent, from real logs and from simulation stores.

One row is one prompt (the schema is fixed: the rewards, trainers and evaluation read it):

* ``task``: ``"judgement"`` (Yes/No on one candidate) or ``"selection"`` (pick 1 of 4);
* ``protocol``: how the negatives were chosen: ``"random"``, ``"popular"``
  (popularity-matched), ``"hard"`` (the paper's recommender ranks) or ``"logged"`` (rows from
  a simulation store);
* ``m``: negatives per positive (selection: 3);
* ``group_id``: one positive with its negatives (judgement: the 1+m rows share it; selection:
  one row); ``"{split}:{source}:{user}:{task}:{protocol}:{m}"``;
* ``user_id``, ``item_ids`` (judgement: the candidate; selection: the candidates as shown),
  ``history_ids`` (the history shown, oldest first);
* ``prompt`` (TRL conversational messages, no assistant turn) and ``assistant_prefix``
  (``"<think>"``);
* ``candidates`` (what the model sees per candidate), ``label`` (``"Yes"``/``"No"``, or the
  correct candidate's shown title), ``correct_index`` (selection; judgement -1);
* ``source`` (``"real"`` or ``"run:<id>"``) and ``split`` (``"train"``/``"eval"``).

Real rows follow the paper (notes §3.3): each kept user's time-ordered sequence is cut to its
last ``max_len`` items, the last item is the positive and the rest the history. Users are split
into disjoint train and held-out eval users. Judgement follows Agent4Rec's 1:m protocol,
selection the paper's 1 + 3 candidates; :mod:`rl.negatives` draws the negatives and
:mod:`rl.logged` turns a simulation run's decisions into rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from agents.backends.base import ChatPrompt
from agents.ip_agent import ItemText
from agents.persona import build_persona, item_line
from agents.prompts import (
    PersonaView,
    judgement_prompt,
)
from agents.selection import selection_prompt, shown_titles
from environments.datasets import load_dataset
from environments.schema import DataFormatError, Dataset
from environments.sources import DATASET_KINDS, canonical_kind
from environments.splits import as_sequences
from rl.negatives import (
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
from sandbox.perception import item_texts
from sandbox.world import user_profiles

if TYPE_CHECKING:
    import datasets


__all__ = [
    "COLUMNS",
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
    "rl_manifest",
    "save_rl_data",
    "selection_row",
    "split_users",
    "user_profiles",
    "user_samples",
]

TASKS = ("judgement", "selection")
PROTOCOLS = ("random", "popular", "hard")
SELECTION_NEGATIVES = 3
LIKE_RATING = 4  # explicit data: a rating at or above this is a "Yes"
CANDIDATE_LINE = "\nCandidate video:\n"  # how agents.prompts.user_turn appends the candidate
MANIFEST = "manifest.json"
POPULARITY = "popularity.json"
FORMAT = "vragent-rl-data"

COLUMNS = ("task", "protocol", "m", "group_id", "user_id", "item_ids", "history_ids", "prompt",
           "assistant_prefix", "candidates", "label", "correct_index", "source", "split")


class RLDataError(ValueError):
    """An RL data folder is missing or unreadable, or a build setting is invalid."""


# ------------------------------------------------------------------------------ config


@dataclass
class RLDataConfig:
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
        tasks: which tasks to build.
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

    dataset: str = "movielens-100k"
    dataset_path: str | None = None
    dataset_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    min_len: int = 5
    max_len: int = 13
    history_len: int = 10
    eval_users: int | float = 500
    train_users: int | None = 2000
    tasks: tuple[str, ...] = TASKS
    judgement_ms: tuple[int, ...] = (1, 2, 3, 9)
    protocols: tuple[str, ...] = PROTOCOLS
    train_ms: tuple[int, ...] = (1,)
    train_protocols: tuple[str, ...] = ("random", "hard")
    popular_window: int = 50
    hard_recommender: str = "itemknn"
    hard_params: dict[str, Any] = field(default_factory=dict)
    store_url: str | None = None
    store_runs: tuple[str, ...] = ()
    store_unseen_negatives: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RLDataConfig:
        """A config from plain data (YAML/JSON); lists become tuples.

        Raises:
            RLDataError: an unknown key or an invalid value.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise RLDataError(f"unknown RL data setting(s) {unknown}; known: {sorted(names)}")
        cfg = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check the settings.

        Raises:
            RLDataError: the first invalid setting, by name.
        """
        _require(canonical_kind(self.dataset) in DATASET_KINDS,
                 f"unknown dataset {self.dataset!r}; expected one of {', '.join(DATASET_KINDS)}")
        _require(set(self.tasks) <= set(TASKS) and self.tasks, f"tasks must be from {TASKS}")
        for name in ("protocols", "train_protocols"):
            _require(set(getattr(self, name)) <= set(PROTOCOLS),
                     f"{name} must be from {PROTOCOLS}")
        for name, protos in (("judgement_ms", self.protocols),
                             ("train_ms", self.train_protocols)):
            ms = getattr(self, name)
            top = HARD_K - 1 if "hard" in protos else 10_000
            _require(all(isinstance(m, int) and 1 <= m <= top for m in ms),
                     f"{name} must be integers in 1..{top}")
        _require(self.min_len >= 2 and self.max_len >= 2, "min_len and max_len must be >= 2")
        _require(self.history_len >= 0, "history_len must be >= 0")
        _require(self.eval_users >= 0, "eval_users must be >= 0")
        _require(self.train_users is None or self.train_users >= 0, "train_users must be >= 0")
        _require(self.popular_window >= 1, "popular_window must be >= 1")
        _require(self.store_unseen_negatives >= 0, "store_unseen_negatives must be >= 0")
        _require(not self.store_runs or bool(self.store_url), "store_runs need a store_url")


def _require(ok: object, message: str) -> None:
    if not ok:
        raise RLDataError(message)


# Where $VRAGENT_DATA_DIR keeps each file-based dataset (sandbox.world uses the same folders).
_DATA_DIR_FOLDERS = {"movielens-100k": "movielens-100k", "ml-100k": "movielens-100k",
                     "microlens": "microlens-100k", "microlens-50k": "microlens-100k",
                     "microlens-100k": "microlens-100k"}


def load_source(cfg: RLDataConfig) -> Dataset:
    """The dataset a config names (its folder under ``$VRAGENT_DATA_DIR`` when no path).

    Raises:
        RLDataError: a file-based kind without a path.
        FileNotFoundError: the path does not exist.
        DataFormatError: the files are malformed.
    """
    path = cfg.dataset_path
    folder = _DATA_DIR_FOLDERS.get(cfg.dataset.strip().lower())
    data_dir = os.environ.get("VRAGENT_DATA_DIR")
    if path is None and folder and data_dir:
        path = str(Path(data_dir) / folder)
    if path is None and canonical_kind(cfg.dataset) != "synthetic":
        where = " (or set VRAGENT_DATA_DIR)" if folder else ""
        raise RLDataError(f"dataset {cfg.dataset!r} needs a path: --path or dataset_path"
                          f"{where}")
    try:
        return load_dataset(cfg.dataset, path, **cfg.dataset_params)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, DataFormatError):
            raise
        raise RLDataError(str(exc)) from None


# ------------------------------------------------------------------------------ users


@dataclass(frozen=True)
class UserSample:
    """One user's real data for the RL rows.

    Attributes:
        user_id: the user.
        sequence: the full real sequence (before any cut): no negative may come from it.
        history: the cut sequence without its last item, oldest first.
        target: the real next item (the cut sequence's last item).
        before_target: every item of the full sequence before the target (the history
            before the cut included): the hard recommender masks these.
    """

    user_id: int
    sequence: frozenset[int]
    history: tuple[int, ...]
    target: int
    before_target: frozenset[int]


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


# ------------------------------------------------------------------------------ rows


_SLOT_MARK = "@@vragent-candidate-"
_SLOT = _SLOT_MARK + "{}@@"


class PromptBuilder:
    """Item texts and prompt pieces, built once per build and cached per item.

    Args:
        dataset: the dataset (items and users).
        history_len: history items a prompt shows.
        users: users whose profiles are needed.
    """

    def __init__(self, dataset: Dataset, history_len: int, users: Iterable[int]) -> None:
        self.texts = item_texts(dataset.items)
        self.history_len = history_len
        self.profiles = user_profiles(dataset.users, users)
        self._lines: dict[int, str] = {}
        self._shown: dict[int, str] = {}
        self._selection: tuple[tuple[tuple[int, ...], int], ChatPrompt] | None = None

    def text(self, item: int) -> ItemText:
        """The item's text (an empty one for items without a row)."""
        return self.texts.get(item) or ItemText(item, "")

    def line(self, item: int) -> str:
        """The judgement candidate line (sanitised title and category)."""
        line = self._lines.get(item)
        if line is None:
            line = self._lines[item] = item_line(self.text(item))
        return line

    def title(self, item: int) -> str:
        """The raw title for a selection prompt (cleaned there); never empty."""
        return self.text(item).title or f"item {item}"

    def shown_title(self, item: int) -> str:
        """The title as a selection prompt shows it (``shown_titles`` of :meth:`title`)."""
        shown = self._shown.get(item)
        if shown is None:
            shown = self._shown[item] = shown_titles([self.title(item)])[0]
        return shown

    def selection_chat(self, history: Sequence[int], items: Sequence[int]) -> ChatPrompt:
        """``selection_prompt`` of these history and candidate items, built fast.

        Cleaning titles dominates the build, and a user's history is the same for every
        protocol: the prompt is built once per history with slot markers for the candidates,
        which are then filled with the cleaned titles, exactly what ``selection_prompt`` would
        write there. Titles that contain a marker take the direct path.
        """
        key = (tuple(history), len(items))
        if self._selection is None or self._selection[0] != key:
            slots = [_SLOT.format(k) for k in range(len(items))]
            template = selection_prompt([self.title(i) for i in history], slots, thinking=True)
            self._selection = key, template
        template = self._selection[1]
        titles = [self.shown_title(i) for i in items]
        texts = [c for _, c in template.messages if isinstance(c, str)]
        clean = (len(texts) == len(template.messages)
                 and all("".join(texts).count(_SLOT.format(k)) == 1 for k in range(len(items)))
                 and not any(_SLOT_MARK in t for t in titles))
        if not clean:
            return selection_prompt([self.title(i) for i in history],
                                    [self.title(i) for i in items], thinking=True)
        messages = []
        for role, content in template.messages:
            for k, title in enumerate(titles):
                content = content.replace(_SLOT.format(k), title)
            messages.append((role, content))
        return ChatPrompt(messages=tuple(messages), assistant_prefix=template.assistant_prefix)

    def shown_history(self, sample: UserSample) -> list[int]:
        """The history items a prompt shows, oldest first."""
        return list(sample.history[-self.history_len:]) if self.history_len > 0 else []

    def persona(self, sample: UserSample) -> PersonaView:
        """The judgement persona, as the simulation builds it (profile + real history)."""
        history = [self.text(i) for i in sample.history]
        return build_persona(self.profiles.get(sample.user_id, {}), history, self.history_len)


def _row(**values: Any) -> dict[str, Any]:
    missing = set(COLUMNS) - set(values)
    if missing:
        raise AssertionError(f"row lacks {sorted(missing)}")
    return {c: values[c] for c in COLUMNS}


def group_id(split: str, source: str, user: int, task: str, protocol: str, m: int) -> str:
    """The id shared by one positive and its negatives."""
    return f"{split}:{source}:{user}:{task}:{protocol}:{m}"


def judgement_rows(
    prompts: PromptBuilder,
    persona: PersonaView,
    sample: UserSample,
    negatives: Sequence[int],
    *,
    split: str,
    protocol: str,
    source: str = "real",
) -> list[dict[str, Any]]:
    """One 1:m judgement group: the positive ("Yes") first, then each negative ("No").

    Args:
        prompts: the build's prompt builder.
        persona: the user's persona (:meth:`PromptBuilder.persona`).
        sample: the user's history and positive.
        negatives: the m negatives.
        split: ``"train"`` or ``"eval"``.
        protocol: the negative protocol.
        source: ``"real"`` or ``"run:<id>"``.

    Returns:
        1 + m rows.
    """
    m = len(negatives)
    gid = group_id(split, source, sample.user_id, "judgement", protocol, m)
    shown = prompts.shown_history(sample)
    rows = []
    for item, label in [(sample.target, "Yes"), *((n, "No") for n in negatives)]:
        line = prompts.line(item)
        chat = judgement_prompt(persona, line, think=True)
        rows.append(_row(
            task="judgement", protocol=protocol, m=m, group_id=gid, user_id=sample.user_id,
            item_ids=[int(item)], history_ids=shown, prompt=chat.as_dicts(),
            assistant_prefix=chat.assistant_prefix, candidates=[line], label=label,
            correct_index=-1, source=source, split=split,
        ))
    return rows


def selection_row(
    prompts: PromptBuilder,
    sample: UserSample,
    negatives: Sequence[int],
    rng: np.random.Generator,
    *,
    split: str,
    protocol: str,
    source: str = "real",
) -> dict[str, Any]:
    """One next-video selection prompt: the real next item and the negatives, shuffled.

    Args:
        prompts: the build's prompt builder.
        sample: the user's history and positive.
        negatives: the (3) negatives.
        rng: shuffles the candidates.
        split: ``"train"`` or ``"eval"``.
        protocol: the negative protocol.
        source: ``"real"`` or ``"run:<id>"``.

    Returns:
        The row; ``label`` is the real item's shown title.
    """
    items = [sample.target, *(int(n) for n in negatives)]
    items = [items[k] for k in rng.permutation(len(items))]
    correct = items.index(sample.target)
    shown = prompts.shown_history(sample)
    chat = prompts.selection_chat(shown, items)
    titles = [prompts.shown_title(i) for i in items]
    return _row(
        task="selection", protocol=protocol, m=len(negatives),
        group_id=group_id(split, source, sample.user_id, "selection", protocol, len(negatives)),
        user_id=sample.user_id, item_ids=items, history_ids=shown, prompt=chat.as_dicts(),
        assistant_prefix=chat.assistant_prefix, candidates=titles, label=titles[correct],
        correct_index=correct, source=source, split=split,
    )


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
    cfg: RLDataConfig, dataset: Dataset | None = None, *, stats: BuildStats | None = None
) -> datasets.DatasetDict:
    """Build the train and eval RL datasets from real logs (plus logged store rows).

    Args:
        cfg: the build settings.
        dataset: the dataset, already loaded; ``None`` loads the one ``cfg`` names.
        stats: filled with what the build did (for :func:`rl_manifest`).

    Returns:
        Splits ``"train"`` and ``"eval"`` in the :data:`COLUMNS` schema.

    Raises:
        RLDataError: an invalid setting.
    """
    start = time.perf_counter()
    cfg.validate()
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
    for plan in plans:
        max_m = max([*plan.ms, SELECTION_NEGATIVES if "selection" in cfg.tasks else 1])
        fallbacks = stats.hard_fallbacks.setdefault(plan.split, {})
        rows[plan.split] = [
            row for u in plan.users
            for row in _user_rows(prompts, _Negatives(sampler, tops.get(u), samples[u], max_m),
                                  plan, cfg.tasks, fallbacks, cfg.seed)
        ]
        stats.duplicate_titles[plan.split] = _duplicate_titles(rows[plan.split])
    for run_id in cfg.store_runs:
        # Simulated users may be real eval users: their rows stay out of training.
        from rl.logged import rows_from_store

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


def _features() -> datasets.Features:
    from datasets import Features, List, Value

    s, i = Value("string"), Value("int64")
    return Features({
        "task": s, "protocol": s, "m": i, "group_id": s, "user_id": i,
        "item_ids": List(i), "history_ids": List(i),
        "prompt": List({"role": s, "content": s}), "assistant_prefix": s,
        "candidates": List(s), "label": s, "correct_index": i, "source": s, "split": s,
    })


def _dataset_dict(rows: Mapping[str, list[dict[str, Any]]]) -> datasets.DatasetDict:
    import pyarrow as pa
    from datasets import Dataset as HFDataset
    from datasets import DatasetDict

    # Straight to Arrow with the fixed schema: Dataset.from_dict encodes every nested value
    # in Python, which took longer than building the rows.
    schema = _features().arrow_schema
    return DatasetDict({
        split: HFDataset(pa.Table.from_pydict(
            {c: [r[c] for r in rows.get(split, [])] for c in COLUMNS}, schema=schema))
        for split in ("train", "eval")
    })


def _name(path: str | None) -> str | None:
    """A path's last part only: manifests name data without leaking local folders."""
    if not path:
        return None
    return Path(str(path).removeprefix("sqlite:///")).name


def _sizes(dd: datasets.DatasetDict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split, part in dd.items():
        frame = part.select_columns(["task", "protocol", "m", "group_id"]).to_pandas()
        by: dict[str, dict[str, dict[str, int]]] = {}
        for (task, protocol, m), n in frame.groupby(["task", "protocol", "m"]).size().items():
            by.setdefault(task, {}).setdefault(protocol, {})[str(m)] = int(n)
        out[split] = {"rows": len(frame), "groups": int(frame["group_id"].nunique()), "by": by}
    return out


def rl_manifest(
    dd: datasets.DatasetDict, cfg: RLDataConfig, stats: BuildStats
) -> dict[str, Any]:
    """The manifest of a build: sizes, settings, fallbacks and provenance.

    Args:
        dd: the built splits.
        cfg: the settings they were built with.
        stats: what :func:`build_rl_data` recorded.

    Returns:
        JSON-ready data.
    """
    from sandbox.runner import git_revision, package_versions

    config = dataclasses.asdict(cfg)
    config["dataset_path"] = _name(cfg.dataset_path)
    config["store_url"] = _name(cfg.store_url)
    params = dict(cfg.dataset_params)
    if params.get("items_path"):  # interactions: the items file, named like the log
        params["items_path"] = _name(params["items_path"])
    config["dataset_params"] = params
    pop = stats.popularity
    return {
        "format": FORMAT,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "versions": package_versions(),
        "dataset": {"kind": cfg.dataset, "path_name": _name(cfg.dataset_path),
                    "params": params},
        "seed": cfg.seed,
        "min_len": cfg.min_len,
        "max_len": cfg.max_len,
        "history_len": cfg.history_len,
        "users": dict(stats.users),
        "sizes": _sizes(dd),
        "hard": {"recommender": cfg.hard_recommender, "params": dict(cfg.hard_params),
                 "k": HARD_K, "model": stats.hard_model, "fallbacks": stats.hard_fallbacks},
        "popular_window": cfg.popular_window,
        "popularity": {
            "counted_on": "histories (targets excluded)", "file": POPULARITY,
            "items": 0 if pop is None else len(pop),
            "interactions": 0 if pop is None else int(pop.sum()),
        },
        "duplicate_title_selection_rows": dict(stats.duplicate_titles),
        "sources": ["real", *(f"run:{r}" for r in cfg.store_runs)],
        "store": {"name": _name(cfg.store_url), "runs": stats.store},
        "notes": [
            "train and eval users are disjoint real users (seeded shuffle)",
            "logged rows come from simulated users grounded in real train users; a decision is "
            "kept only when its item is in the user's real log, labelled from the real rating "
            f"(>= {LIKE_RATING}: Yes) or Yes for implicit data",
        ],
        "build_seconds": round(stats.seconds, 3),
        "config": config,
    }


def save_rl_data(
    dd: datasets.DatasetDict,
    path: str | Path,
    manifest: Mapping[str, Any],
    popularity: pd.Series | None = None,
) -> Path:
    """Write the splits (``save_to_disk``), ``manifest.json`` and ``popularity.json``.

    The folder is written beside the target and renamed into place, so a crash never leaves a
    half-written dataset under ``path``. An existing RL data folder there is replaced; any
    other existing folder is left alone.

    Args:
        dd: the splits.
        path: the output folder.
        manifest: :func:`rl_manifest` output.
        popularity: item -> count (``BuildStats.popularity``), for the popularity prior.

    Returns:
        The folder.

    Raises:
        RLDataError: ``path`` exists and is not an RL data folder.
    """
    path = Path(path)
    if path.exists() and not (path / MANIFEST).is_file():
        raise RLDataError(f"{path}: exists and is not an RL data folder; not overwriting")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    dd.save_to_disk(str(tmp))
    if popularity is not None:
        pop = {str(int(i)): int(c) for i, c in popularity.items()}
        (tmp / POPULARITY).write_text(json.dumps(pop), encoding="utf-8")
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def load_rl_data(path: str | Path) -> tuple[datasets.DatasetDict, dict[str, Any]]:
    """Read a folder written by :func:`save_rl_data`.

    Returns:
        The splits and the manifest.

    Raises:
        RLDataError: one line naming the folder when it is missing or unreadable.
    """
    from datasets import DatasetDict, load_from_disk

    path = Path(path)
    if not path.is_dir():
        raise RLDataError(f"{path}: no RL data folder (build it with rl.datasets)")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RLDataError(f"{path}: unreadable {MANIFEST} ({_one_line(exc)})") from None
    try:
        dd = load_from_disk(str(path))
    except Exception as exc:  # datasets raises many types for a damaged folder
        raise RLDataError(f"{path}: unreadable dataset ({_one_line(exc)})") from None
    if not isinstance(dd, DatasetDict) or set(dd) != {"train", "eval"}:
        raise RLDataError(f"{path}: expected splits train and eval")
    for split, part in dd.items():
        if tuple(part.column_names) != COLUMNS:
            raise RLDataError(f"{path}: split {split} has columns {part.column_names}, "
                              f"expected {list(COLUMNS)}")
    return dd, manifest


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def load_popularity(path: str | Path) -> pd.Series:
    """The item popularity a build saved (``popularity.json``), as counts indexed by item.

    Raises:
        RLDataError: the file is missing or unreadable.
    """
    file = Path(path) / POPULARITY
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RLDataError(f"{file}: unreadable ({_one_line(exc)})") from None
    out = pd.Series({int(k): int(v) for k, v in data.items()}, dtype="int64").sort_index()
    out.index.name = "item_id"
    return out.rename("popularity")


def build_and_save(
    cfg: RLDataConfig, path: str | Path, dataset: Dataset | None = None
) -> tuple[datasets.DatasetDict, dict[str, Any]]:
    """Build, then save with the manifest and popularity; returns the splits and manifest."""
    stats = BuildStats()
    dd = build_rl_data(cfg, dataset, stats=stats)
    manifest = rl_manifest(dd, cfg, stats)
    save_rl_data(dd, path, manifest, stats.popularity)
    return dd, manifest
