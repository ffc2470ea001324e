"""The item-perception (IP) agent, minimal form: title + category in, a ≤35-word profile out.

The full staged pipeline (key frames, sufficiency check, multimodal perception) comes later; this
version already follows the paper's output contract, ``[Core Content Description] + [Refined
#Tags]`` in at most 35 words, and never stores a profile that breaks it silently: it is repaired
and flagged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from agents.backends.base import LLMBackend
from agents.prompts import IP_EXAMPLE, ip_prompt
from agents.text_safety import clean_item_text

MAX_WORDS = 35
_TAG = re.compile(r"#[\w-]+", re.U)


@dataclass(frozen=True)
class ItemText:
    """What the IP agent reads about one item."""

    item_id: int
    title: str
    category: str = ""
    tags: str = ""


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


@dataclass
class IPAgent:
    """Profiles items in batches with an LLM backend.

    Attributes:
        backend: the LLM.
        max_new_tokens: completion budget; 35 words fit in about 60 tokens.
        seed: sampler seed (generation is greedy by default, so it rarely matters).
        temperature: 0 for greedy, reproducible profiles.
    """

    backend: LLMBackend
    max_new_tokens: int = 64
    seed: int = 0
    temperature: float = 0.0

    def profile(self, items: Sequence[ItemText]) -> list[ItemProfile]:
        """Write one profile per item, repairing and flagging any that break the contract."""
        cleaned = [
            (
                it,
                clean_item_text(it.title).text,
                clean_item_text(it.category, max_chars=80).text,
            )
            for it in items
        ]
        prompts = [ip_prompt(title, cat) for _, title, cat in cleaned]
        gens = self.backend.generate(
            prompts, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
            seed=self.seed,
        )
        out = []
        for (it, _, _), prompt, gen in zip(cleaned, prompts, gens, strict=True):
            profile, tags, problems = repair_profile(gen.text, it)
            out.append(
                ItemProfile(
                    item_id=it.item_id, profile=profile, tags=tags, prompt=prompt.flat_text(),
                    completion=gen.text, format_ok=not problems, problems=problems,
                    model_id=self.backend.model_id, tokens_in=gen.tokens_in,
                    tokens_out=gen.tokens_out, latency_ms=1000 * gen.latency_s,
                )
            )
        return out
