"""The item-perception (IP) agent: the paper's staged, "progressive" reading of a video.

Stages, each recorded per item (prompt, output, tokens, or why it was skipped):

1. **kfr**, key-frame retrieval: sample frames (a frames folder or an mp4), score each against
   the title with CLIP, keep the top 3. Skipped without visual input or without a CLIP scorer
   (then the sampled frames are thinned uniformly, as the paper's released code does).
2. **sufficiency**: is the cover plus title enough to understand the video? ``Sufficient`` or
   ``Insufficient`` with a reason; insufficient means the key frames are used. Skipped for a
   text-only model or an item without a cover.
3. **cmp**, collaborative multimodal perception: the model interprets the title against the
   frames or cover (what the visuals add, what the title hides, characters, event, appeal). A
   text-only model reads title, category and comments instead.
4. **rra**, recommendation-relevant analysis: the ≤35-word ``[Core Content Description] +
   [Refined #Tags]`` profile. A profile that breaks the format or the length is repaired and
   flagged (``problems``), never stored silently.

Every stage is one batched backend call over the items that reach it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from vragent.agents.backends.base import ChatPrompt, Generation, ImagePart, LLMBackend
from vragent.agents.prompts import (
    IP_EXAMPLE,
    IP_HINT_FRAMES,
    IP_HINT_LIMITED,
    ip_cmp_prompt,
    ip_rra_prompt,
    ip_sufficiency_prompt,
)
from vragent.agents.text_safety import clean_item_text

MAX_WORDS = 35
STAGES = ("kfr", "sufficiency", "cmp", "rra")
#: Bumped when prompts or stage logic change, so cached profiles of the old pipeline are not
#: mistaken for new ones (it is part of the cache key, see :meth:`IPAgent.cache_key`).
PIPELINE_VERSION = "ip2"
_TAG = re.compile(r"#[\w-]+", re.U)
_SUFFICIENCY = re.compile(r"\b(insufficient|sufficient|not sufficient|not enough|enough)\b", re.I)


@dataclass(frozen=True)
class ItemText:
    """What the IP agent reads about one item.

    Attributes:
        item_id: the item.
        title: its title (user-generated: sanitised before use).
        category: category or genres.
        tags: the title's own #tags.
        comments: viewer comments, when the dataset has them.
        cover_path: a cover image file, when present.
        frames_source: a folder of frames or a video file, when present.
    """

    item_id: int
    title: str
    category: str = ""
    tags: str = ""
    comments: str = ""
    cover_path: str = ""
    frames_source: str = ""


@dataclass
class StageRecord:
    """One stage of one item: what was asked, what came back, or why it was skipped."""

    stage: str
    prompt: str = ""
    completion: str = ""
    output: Any = None
    skipped: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0


@dataclass
class ItemProfile:
    """A stored profile and how it was made."""

    item_id: int
    profile: str
    tags: str
    prompt: str
    completion: str
    format_ok: bool
    problems: list[str] = field(default_factory=list)
    model_id: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    title: str = ""
    stages: list[dict] = field(default_factory=list)


def _slug(text: str) -> str:
    return "#" + re.sub(r"\W+", "", text.title().replace(" ", "")) if text.strip() else ""


def _overlap(text: str, reference: str) -> float:
    words = set(re.findall(r"\w+", text.lower()))
    ref = set(re.findall(r"\w+", reference.lower()))
    return len(words & ref) / max(1, len(ref))


def repair_profile(completion: str, item: ItemText) -> tuple[str, str, list[str]]:
    """Bring a completion into the profile contract.

    Returns:
        ``(profile, tags, problems)``; ``problems`` is empty when nothing had to be fixed.
    """
    problems: list[str] = []
    # A chatty model keeps going after the profile; the first non-empty paragraph is the profile.
    paragraphs = [p for p in re.split(r"\n\s*\n|\n", completion or "") if p.strip()]
    text = clean_item_text(paragraphs[0] if paragraphs else "", max_chars=2000).text
    text = re.sub(r"^(profile|answer)\s*:\s*", "", text, flags=re.I).strip(" '\"")
    if text and _overlap(text, IP_EXAMPLE) > 0.6:
        # Small models copy the prompt's example verbatim: that describes another video.
        problems.append("copied the prompt's example")
        text = ""
    if not text:
        problems.append("empty profile")
        text = clean_item_text(item.title, max_chars=150).text
    tags = _TAG.findall(text)
    if not tags:
        problems.append("no #tags")
        fallback = _TAG.findall(item.tags or item.title) or [
            t for t in [_slug(c) for c in (item.category or "").split("|")] if t
        ]
        tags = fallback[:3]
        text = " ".join([text, *tags]).strip()
    words = text.split()
    if len(words) > MAX_WORDS:
        problems.append(f"{len(words)} words > {MAX_WORDS}")
        body = [w for w in words if not _TAG.fullmatch(w)]
        keep_tags = tags[:3]
        words = body[: MAX_WORDS - len(keep_tags)] + keep_tags
        text = " ".join(words)
    return text, " ".join(dict.fromkeys(_TAG.findall(text))), problems


def parse_sufficiency(completion: str) -> tuple[bool | None, str]:
    """``(sufficient, reason)`` from a sufficiency answer; ``None`` when it says neither.

    The first verdict word counts ("Insufficient ... would be sufficient with frames" is
    insufficient).
    """
    m = _SUFFICIENCY.search(completion or "")
    if not m:
        return None, (completion or "").strip()[:300]
    word = m.group(1).lower()
    verdict = word in ("sufficient", "enough")
    reason = (completion[m.end():] or "").strip(" .:-\n")[:300]
    return verdict, reason


def _first_paragraph(text: str, max_chars: int = 800) -> str:
    parts = [p for p in re.split(r"\n\s*\n", text or "") if p.strip()]
    return clean_item_text(parts[0] if parts else "", max_chars=max_chars).text


KeyFrameFn = Callable[[ItemText], tuple[list[ImagePart], dict]]


@dataclass
class IPAgent:
    """Profiles items in stages with an LLM backend (see the module docstring).

    Attributes:
        backend: the LLM (a vision model when ``vision`` is on).
        max_new_tokens: completion budget of the profile stage; 35 words fit in about 60 tokens.
        seed: sampler seed (generation is greedy by default, so it rarely matters).
        temperature: 0 for greedy, reproducible profiles.
        staged: run sufficiency and perception before the profile; ``False`` asks for the
            profile in one prompt (the cheapest variant).
        cmp_max_new_tokens: completion budget of the perception stage.
        sufficiency_max_new_tokens: completion budget of the sufficiency check.
        vision: send images (cover, key frames) to the backend; needs a vision model.
        key_frames: returns an item's key frames as image parts plus the KFR record (see
            :func:`make_key_frame_fn`); ``None`` skips KFR.
    """

    backend: LLMBackend
    max_new_tokens: int = 64
    seed: int = 0
    temperature: float = 0.0
    staged: bool = True
    cmp_max_new_tokens: int = 96
    sufficiency_max_new_tokens: int = 48
    vision: bool = False
    key_frames: KeyFrameFn | None = None

    @property
    def cache_key(self) -> str:
        """What identifies this agent's profiles in the cache: model, pipeline and inputs."""
        parts = [self.backend.model_id, PIPELINE_VERSION if self.staged else "ip1"]
        if self.staged:
            parts.append("vision" if self.vision else "text")
            if self.vision and self.key_frames is not None:
                parts.append(getattr(self.key_frames, "model_id", "kfr"))
        # Budgets and sampling change what is written, so they are part of the key.
        budget = f"c{self.cmp_max_new_tokens}p{self.max_new_tokens}" if self.staged else (
            f"p{self.max_new_tokens}")
        parts.append(budget + (f"t{self.temperature:g}" if self.temperature > 0 else ""))
        return "/".join(parts)

    # ------------------------------------------------------------------ stages

    def _generate(self, prompts: list[ChatPrompt], max_new_tokens: int) -> list[Generation]:
        if not prompts:
            return []
        return self.backend.generate(prompts, max_new_tokens=max_new_tokens,
                                     temperature=self.temperature, seed=self.seed)

    @staticmethod
    def _record(stage: str, prompt: ChatPrompt, gen: Generation, output: Any) -> StageRecord:
        return StageRecord(stage, prompt.flat_text(), gen.text, output, "", gen.tokens_in,
                           gen.tokens_out, 1000 * gen.latency_s)

    def profile(self, items: Sequence[ItemText]) -> list[ItemProfile]:
        """Write one profile per item, repairing and flagging any that break the contract."""
        if not self.staged:
            return self._profile_single(items)
        clean = [_Clean.of(it) for it in items]
        stages: list[dict[str, StageRecord]] = [{} for _ in items]
        frames = self._key_frames_stage(items, stages)
        covers = self._sufficiency_stage(items, clean, stages)
        analyses = self._cmp_stage(clean, frames, covers, stages)
        return self._rra_stage(items, clean, analyses, stages)

    def _key_frames_stage(self, items: Sequence[ItemText],
                          stages: list[dict[str, StageRecord]]) -> list[list[ImagePart]]:
        """1. KFR: key frames by CLIP similarity to the title."""
        frames: list[list[ImagePart]] = [[] for _ in items]
        for i, it in enumerate(items):
            if not self.vision:
                stages[i]["kfr"] = StageRecord("kfr", skipped="text-only model")
            elif not it.frames_source:
                stages[i]["kfr"] = StageRecord("kfr", skipped="no visual input")
            elif self.key_frames is None:
                stages[i]["kfr"] = StageRecord("kfr", skipped="no key-frame scorer")
            else:
                frames[i], record = self.key_frames(it)
                stages[i]["kfr"] = StageRecord(
                    "kfr", output=record, skipped="" if frames[i] else "no frames decoded")
        return frames

    def _sufficiency_stage(self, items: Sequence[ItemText], clean: list[_Clean],
                           stages: list[dict[str, StageRecord]]) -> list[ImagePart | None]:
        """2. Is the cover with the title enough to understand the video? Returns the covers."""
        covers: list[ImagePart | None] = [None] * len(items)
        ask: list[int] = []
        for i, it in enumerate(items):
            if self.vision and it.cover_path:
                try:
                    covers[i] = ImagePart.from_path(it.cover_path)
                except (OSError, ValueError) as exc:
                    stages[i]["sufficiency"] = StageRecord(
                        "sufficiency", skipped=f"cover unreadable: {exc}")
                    continue
                ask.append(i)
            else:
                stages[i]["sufficiency"] = StageRecord(
                    "sufficiency", skipped="text-only model" if not self.vision else "no cover")
        prompts = [ip_sufficiency_prompt(clean[i].title, covers[i]) for i in ask]
        for i, p, g in zip(ask, prompts, self._generate(prompts, self.sufficiency_max_new_tokens),
                           strict=True):
            verdict, reason = parse_sufficiency(g.text)
            stages[i]["sufficiency"] = self._record(
                "sufficiency", p, g, {"sufficient": verdict, "reason": reason})
        return covers

    def _cmp_stage(self, clean: list[_Clean], frames: list[list[ImagePart]],
                   covers: list[ImagePart | None],
                   stages: list[dict[str, StageRecord]]) -> list[str]:
        """3. CMP: interpret the title against the visuals the sufficiency check chose."""
        prompts = []
        for i, c in enumerate(clean):
            verdict = (stages[i]["sufficiency"].output or {}).get("sufficient")
            cover = covers[i]
            images: list[ImagePart] = []
            hint = ""
            if verdict is True or (verdict is None and not frames[i]):
                images = [cover] if cover else []
            elif frames[i]:
                images, hint = frames[i], IP_HINT_FRAMES
            elif cover:
                images, hint = [cover], IP_HINT_LIMITED
            prompts.append(ip_cmp_prompt(c.title, c.category, images=images,
                                         comments=c.comments, tags=c.tags, hint=hint))
        analyses = []
        for i, (p, g) in enumerate(zip(prompts, self._generate(prompts, self.cmp_max_new_tokens),
                                       strict=True)):
            # The prompt opened the answer ("This video"); the analysis is the whole sentence.
            analysis = _first_paragraph(p.assistant_prefix + g.text)
            analyses.append(analysis)
            stages[i]["cmp"] = self._record("cmp", p, g, analysis)
        return analyses

    def _rra_stage(self, items: Sequence[ItemText], clean: list[_Clean], analyses: list[str],
                   stages: list[dict[str, StageRecord]]) -> list[ItemProfile]:
        """4. RRA: the ≤35-word profile, repaired and flagged, with every stage's record."""
        prompts = [ip_rra_prompt(c.title, c.category, a, tags=c.tags)
                   for c, a in zip(clean, analyses, strict=True)]
        gens = self._generate(prompts, self.max_new_tokens)
        out = []
        for i, (it, p, g) in enumerate(zip(items, prompts, gens, strict=True)):
            profile, tags, problems = repair_profile(g.text, it)
            stages[i]["rra"] = self._record("rra", p, g, profile)
            if stages[i]["cmp"].completion.strip() == "":
                problems.append("empty analysis")
            records = [stages[i][s] for s in STAGES]
            out.append(ItemProfile(
                item_id=it.item_id, profile=profile, tags=tags, prompt=p.flat_text(),
                completion=g.text, format_ok=not problems, problems=problems,
                model_id=self.cache_key, tokens_in=sum(r.tokens_in for r in records),
                tokens_out=sum(r.tokens_out for r in records),
                latency_ms=sum(r.latency_ms for r in records), title=clean[i].title,
                stages=[asdict(r) for r in records],
            ))
        return out

    def _profile_single(self, items: Sequence[ItemText]) -> list[ItemProfile]:
        from vragent.agents.prompts import ip_prompt

        clean = [_Clean.of(it) for it in items]
        prompts = [ip_prompt(c.title, c.category) for c in clean]
        out = []
        for it, c, p, g in zip(items, clean, prompts, self._generate(prompts, self.max_new_tokens),
                               strict=True):
            profile, tags, problems = repair_profile(g.text, it)
            record = self._record("rra", p, g, profile)
            out.append(ItemProfile(
                item_id=it.item_id, profile=profile, tags=tags, prompt=p.flat_text(),
                completion=g.text, format_ok=not problems, problems=problems,
                model_id=self.cache_key, tokens_in=g.tokens_in, tokens_out=g.tokens_out,
                latency_ms=1000 * g.latency_s, title=c.title, stages=[asdict(record)],
            ))
        return out


@dataclass(frozen=True)
class _Clean:
    """An item's text, sanitised once for every stage's prompt."""

    title: str
    category: str
    comments: str
    tags: str

    @classmethod
    def of(cls, it: ItemText) -> _Clean:
        return cls(clean_item_text(it.title).text, clean_item_text(it.category, 80).text,
                   clean_item_text(it.comments, 400).text, clean_item_text(it.tags, 120).text)


def make_key_frame_fn(scorer: Any, n_frames: int = 5, top_k: int = 3,
                      max_side: int = 448) -> KeyFrameFn:
    """KFR for :class:`IPAgent`: sample ``n_frames``, keep the ``top_k`` most title-like.

    Args:
        scorer: a :class:`agents.keyframes.ClipScorer`, or ``None`` to thin the sampled frames
            uniformly (what the paper's released code does instead of CLIP).
        n_frames: frames sampled per video.
        top_k: key frames kept.
        max_side: images are downscaled to this size before they go into a prompt.

    Returns:
        ``item -> (image parts, record)``; the record lists each sampled frame's similarity.
    """
    from vragent.agents.keyframes import frames_to_image_parts, sample_frames, select_key_frames

    def key_frames(item: ItemText) -> tuple[list[ImagePart], dict]:
        frames = sample_frames(item.frames_source, n=n_frames)
        if not frames:
            return [], {"sampled": 0}
        if scorer is None:
            # Evenly spread over the video, first and last frame included.
            k = min(top_k, len(frames))
            picks = sorted({round(j * (len(frames) - 1) / max(1, k - 1)) for j in range(k)})
            chosen = [frames[j] for j in picks]
            record = {"sampled": len(frames), "method": "uniform",
                      "kept": [f.label for f in chosen]}
            return frames_to_image_parts(chosen, max_side=max_side), record
        title = clean_item_text(item.title).text
        kept = select_key_frames(title, frames, scorer, top_k=top_k)
        record = {"sampled": len(frames), "method": "clip",
                  "kept": [{"label": k.frame.label, "score": round(float(k.score), 4)}
                           for k in kept]}
        return frames_to_image_parts([k.frame for k in kept], max_side=max_side), record

    key_frames.model_id = getattr(scorer, "model_id", "uniform")  # type: ignore[attr-defined]
    return key_frames
