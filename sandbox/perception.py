"""Item perception for a catalogue: one code path for the simulation graph and `vragent perceive`.

Profiles are cached in the store per dataset, item and agent (model + pipeline), so a profile is
made once, a crashed or interrupted pass resumes where it stopped, and the simulation reuses what
`vragent perceive` made (and the other way round).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from vragent.agents.backends.base import LLMBackend
from vragent.agents.ip_agent import IPAgent, ItemText, make_key_frame_fn
from vragent.environments.schema import Dataset
from vragent.sandbox.config import IPAgentConfig
from vragent.sandbox.store import Store

_VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi")


def frames_source(frames_dir: str | Path | None, item_id: int) -> str:
    """An item's frames: ``FRAMES_DIR/<item>/`` or ``FRAMES_DIR/<item>.<video ext>``; ``""``."""
    if not frames_dir:
        return ""
    root = Path(frames_dir)
    folder = root / str(item_id)
    if folder.is_dir():
        return str(folder)
    for ext in _VIDEO_SUFFIXES:
        f = root / f"{item_id}{ext}"
        if f.is_file():
            return str(f)
    return ""


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def item_texts(items: pd.DataFrame, frames_dir: str | Path | None = None) -> dict[int, ItemText]:
    """What the IP agent reads about each catalogue item.

    Title, category and tags always; comments, cover and frames when the dataset has them.
    """
    out = {}
    cols = set(items.columns)
    for r in items.itertuples(index=False):
        iid = int(r.item_id)
        out[iid] = ItemText(
            iid, _text(r.title), _text(getattr(r, "category", "")),
            _text(getattr(r, "tags", "")),
            comments=_text(getattr(r, "comments", "")) if "comments" in cols else "",
            cover_path=_text(getattr(r, "cover_path", "")) if "cover_path" in cols else "",
            # A FRAMES_DIR given for the run wins over a dataset's own frames_path column.
            frames_source=frames_source(frames_dir, iid) or (
                _text(getattr(r, "frames_path", "")) if "frames_path" in cols else ""),
        )
    return out


def build_ip_agent(cfg: IPAgentConfig, backend: LLMBackend, seed: int = 0) -> IPAgent:
    """The IP agent a config asks for, with its CLIP key-frame scorer when one is named."""
    key_frames = None
    if cfg.vision and cfg.frames_dir:
        scorer = None
        if cfg.clip_model == "tiny-random":  # tests: a tiny randomly initialised CLIP
            from vragent.agents.backends.tiny_vision import tiny_clip_scorer

            scorer = tiny_clip_scorer(seed=seed)
        elif cfg.clip_model:
            from vragent.agents.keyframes import ClipScorer

            scorer = ClipScorer.from_pretrained(cfg.clip_model, backend=cfg.clip_backend)
        key_frames = make_key_frame_fn(scorer, n_frames=cfg.n_frames, top_k=cfg.top_k_frames)
    return IPAgent(backend, max_new_tokens=cfg.max_new_tokens, seed=seed, staged=cfg.staged,
                   cmp_max_new_tokens=cfg.cmp_max_new_tokens, vision=cfg.vision,
                   key_frames=key_frames)


def perception_setup(dataset: str, path: str | Path | None, backend: dict[str, Any],
                     ip_agent: dict[str, Any], store: Store, *, seed: int = 0,
                     source: str = "perception",
                     dataset_options: dict[str, Any] | None = None,
                     ) -> tuple[Dataset, str, IPAgent]:
    """The dataset, its cache key and an IP agent, outside a simulation run.

    The settings are validated as the matching scenario sections (one-line errors naming the
    key), and the agent's backend sits behind the store's response cache, as in a run.
    ``dataset_options`` are further ``dataset`` keys (``items_path``, ``columns`` …).

    Raises:
        ScenarioError: a bad setting.
    """
    from vragent.sandbox.backend_factory import make_backend
    from vragent.sandbox.config import parse_scenario
    from vragent.sandbox.response_cache import wrap_backend
    from vragent.sandbox.world import load_world

    sc = parse_scenario({
        "name": source, "seed": seed,
        "dataset": {"kind": dataset, **({"path": str(path)} if path else {}),
                    **(dataset_options or {})},
        "arms": [{"name": "none", "recommender": "popular"}],  # a scenario needs one
        "backend": backend, "ip_agent": ip_agent,
    }, source)
    ds, key = load_world(sc)
    llm = wrap_backend(make_backend(sc.backend, seed=seed), sc.backend, store, None)
    return ds, key, build_ip_agent(sc.ip_agent, llm, seed=seed)


@dataclass
class PerceiveStats:
    """What one pass did."""

    wanted: int = 0
    cached: int = 0
    made: int = 0
    flagged: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0


def perceive_items(
    agent: IPAgent,
    store: Store,
    dataset_key: str,
    items: Sequence[ItemText],
    *,
    batch_size: int = 16,
    run_id: str | None = None,
    step: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[dict[int, str], PerceiveStats]:
    """Profile ``items``, reusing cached profiles; each batch is stored as soon as it is made.

    Args:
        agent: the IP agent.
        store: where profiles are cached (and the agent's LLM calls metered, with ``run_id``).
        dataset_key: names the dataset in the cache.
        items: the items, in the order to profile them.
        batch_size: items per batch (one backend call per stage per batch).
        run_id: the run the profiles are made for; ``None`` outside a simulation.
        step: the simulation step (for the metering rows).
        on_batch: called with the number of items finished after each batch (progress bars).

    Returns:
        ``item -> profile`` for all ``items``, and what the pass did.
    """
    stats = PerceiveStats(wanted=len(items))
    key = agent.cache_key
    cached = store.cached_profiles(dataset_key, key, [it.item_id for it in items])
    profiles = {iid: row.profile for iid, row in cached.items()}
    stats.cached = len(cached)
    if on_batch and cached:
        on_batch(len(cached))
    todo = [it for it in items if it.item_id not in cached]
    meter = getattr(agent.backend, "meter", None)
    t0 = time.perf_counter()
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        calls: list = []
        if meter is not None and run_id is not None:
            with meter() as calls:
                made = agent.profile(batch)
        else:
            made = agent.profile(batch)
        rows = []
        for p in made:
            profiles[p.item_id] = p.profile
            row = asdict(p)
            row.update(dataset=dataset_key, run_id=run_id)
            rows.append(row)
            stats.flagged += not p.format_ok
            stats.tokens_in += p.tokens_in
            stats.tokens_out += p.tokens_out
        store.add_profiles(rows, llm_calls=[
            {"run_id": run_id, "agent": "ip", "arm": "", "step": step, "task": start,
             "seq": seq, **asdict(c)} for seq, c in enumerate(calls)])
        stats.made += len(made)
        if on_batch:
            on_batch(len(batch))
    stats.seconds = time.perf_counter() - t0
    return profiles, stats


def item_text_for(kind: str, titles: Mapping[int, str], profiles: Mapping[int, str], *,
                  fallback_to_title: bool = False) -> dict[int, str]:
    """The text a text-tower recommender reads per item.

    Args:
        kind: ``"title"``, ``"profile"`` or ``"title+profile"``.
        titles: item -> title.
        profiles: item -> IP-agent profile (may lack items).
        fallback_to_title: an item without a profile reads its title (the simulation, where
            profiles arrive a few per step); otherwise the empty string.

    Raises:
        ValueError: an unknown ``kind``.
    """
    def profile(i: int) -> str:
        return profiles.get(i) or (titles[i] if fallback_to_title else "")

    if kind == "title":
        return dict(titles)
    if kind == "profile":
        return {i: profile(i) for i in titles}
    if kind == "title+profile":
        return {i: f"{t} {profiles.get(i, '')}".strip() for i, t in titles.items()}
    raise ValueError(f"unknown item text {kind!r}; use title, profile or title+profile")


def most_popular_first(interactions: pd.DataFrame, catalogue: Iterable[int]) -> list[int]:
    """Catalogue items by descending interaction count, unseen items last (by id)."""
    counts = interactions["item_id"].value_counts()
    # Ties by item id: the order (and so what each step profiles) must not depend on pandas.
    ranked = [int(i) for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    seen = set(ranked)
    return ranked + sorted(int(i) for i in catalogue if int(i) not in seen)
