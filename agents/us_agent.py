"""The user-simulation (US) agent: one persona reacts to one slate.

Per impression the user **skips**, **watches** or **likes** (a like implies a watch); after the
slate the user may **leave** the session. See ``docs/user-actions.md`` for the semantics.

Two decision modes:

* ``score``: one forward pass gives p(Yes) for "would this user like the video?"; the action is
  drawn from it with the run's seeded RNG. A ``trace_rate`` fraction of decisions also gets a
  full chain of thought, stored for inspection (the action still comes from p(Yes)).
* ``generate``: the model writes ``<think>…</think><answer>…</answer>``; the parsed Yes/No is
  the decision. Unreadable answers fall back to ``skip`` and are stored with
  ``format_ok=false``.

A policy whose learned head decides (``backend.decides_with_head``, docs/rl.md) reasons
differently, so that a trace is what its decision read: the model writes the user's preference
once per slate (the paper's ``(1) User_preference``), then reads each candidate after it, and
the head decides from that state (:meth:`USAgent._reasoned`). Generate mode acts on the head's
Yes/No (p > 0.5); a traced score-mode decision draws its action from that p.

Randomness is keyed by (seed, step, user, position), never by arm, so every arm of an A/B test
sees the same random stream for the same user: common random numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from vragent.agents.backends.base import ChatPrompt, Generation, LLMBackend, Score
from vragent.agents.parsing import parse_judgement, preference_line
from vragent.agents.prompts import (
    PREFERENCE_OPEN,
    THINK_PREFIX,
    PersonaView,
    judgement_prompt,
    preference_prompt,
    score_prompt,
)

if TYPE_CHECKING:  # only annotations: prompts stay cheap to import
    from vragent.environments.grounding import Evidence

ACTIONS = ("skip", "watch", "like")


@dataclass(frozen=True)
class Candidate:
    """One impression of a slate."""

    item_id: int
    text: str  # sanitised title (and category) shown to the agent
    position: int
    rec_score: float
    # What the real logs say about this user and item (environments.grounding), shown to a
    # grounded policy next to the title; None for policies that read titles only.
    evidence: Evidence | None = None


@dataclass
class SlateRequest:
    """A user facing a slate in one arm."""

    arm: str
    user_id: int
    persona: PersonaView | Callable[[], PersonaView]
    candidates: list[Candidate]
    friends_liked: tuple[str, ...] = ()

    def view(self) -> PersonaView:
        """The persona; given as a function, it is built on first use and kept.

        A response model decides without reading a prompt, so at population scale most
        personas are never built (they cost more than the decision itself).
        """
        if callable(self.persona):
            self.persona = self.persona()
        return self.persona


@dataclass
class DecisionRecord:
    """Everything stored about one decision."""

    arm: str
    user_id: int
    position: int
    item_id: int
    rec_score: float
    action: str
    p_like: float | None
    prompt: str
    completion: str | None
    think: str | None
    answer: str | None
    format_ok: bool
    fallback: str | None
    model_id: str
    tokens_in: int
    tokens_out: int
    latency_ms: float
    traced: bool
    prompt_truncated: bool = False
    cache_hit: bool = False  # every LLM result behind the decision came from the response cache
    attempts: int = 1  # generate mode: completions asked for (format retries included)
    # What decided the action (docs/user-actions.md): ``draw`` (the uniform ``draw`` against
    # p(watch) = ``p_like`` and ``like_cut`` = p × like share), ``answer`` (the Yes/No answer;
    # a Yes is a like when ``draw`` < ``like_cut`` = like share) or ``invalid`` (no answer).
    rule: str | None = None
    draw: float | None = None
    like_cut: float | None = None
    # The trace's part: ``decided`` (the action read it) or ``separate`` (a second generation
    # stored for inspection); ``trace_ok`` is the trace's own format, apart from the decision's.
    trace_role: str | None = None
    trace_ok: bool | None = None

    def as_row(self) -> dict:
        """The fields as a plain dict (every field is a scalar; ``asdict`` would deep-copy)."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Reasoned:
    """A reasoned decision before it is acted on (:meth:`USAgent._reasoned`)."""

    preference: str  # the preference line the candidate was read after
    prompt: ChatPrompt  # the candidate's prompt, preference included
    score: Score  # the head's p(Yes) after reading it
    charged: Generation | None  # the preference's generation, on one decision of the slate


@dataclass
class SlateOutcome:
    """A user's decisions on a slate and whether they left afterwards."""

    arm: str
    user_id: int
    decisions: list[DecisionRecord]
    left: bool
    leave_prob: float
    leave_draw: float = 0.0  # the uniform compared with ``leave_prob``


@dataclass(frozen=True)
class SessionRules:
    """How decisions turn into likes and exits (documented in docs/user-actions.md).

    Attributes:
        like_share: share of positive decisions that are likes rather than plain watches.
        base_leave_prob: chance of leaving after any slate.
        bored_leave_prob: extra chance of leaving after a slate with nothing watched.
    """

    like_share: float = 0.5
    base_leave_prob: float = 0.05
    bored_leave_prob: float = 0.3


REASONED_OPEN = "(1) User_preference:"  # how every reasoned completion starts


def trace_prefix(completion: str | None) -> str:
    """The assistant prefix a stored trace was written after, for :func:`parse_judgement`.

    A reasoned decision's completion (:meth:`USAgent._reasoned`) answers in the paper's
    ``<answer>`` layout; every other trace opened with ``<think>``.
    """
    return "<answer>" if (completion or "").lstrip().startswith(REASONED_OPEN) else THINK_PREFIX


def stable_int(*parts: object) -> int:
    """A 63-bit integer from the parts, identical across processes (unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def user_uniforms(seed: int, step: int, user_id: int, slate_size: int) -> dict[str, np.ndarray]:
    """The user's random draws for one step; the same in every arm (paired design)."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, step, user_id & 0xFFFFFFFF])
    draws = rng.random(3 * slate_size + 1)
    return {
        "action": draws[:slate_size],
        "trace": draws[slate_size : 2 * slate_size],
        "like": draws[2 * slate_size : 3 * slate_size],
        "leave": draws[-1:],
    }


def _think_prompt(request: SlateRequest, cand: Candidate) -> ChatPrompt:
    return judgement_prompt(request.view(), cand.text, think=True,
                            friends_liked=request.friends_liked, evidence=cand.evidence)


@dataclass
class USAgent:
    """Turns slates into decisions with an LLM backend.

    Attributes:
        backend: the LLM.
        mode: ``"score"`` or ``"generate"``.
        seed: the run's seed.
        trace_rate: fraction of scored decisions that also get a stored chain of thought.
        max_new_tokens: budget of a chain of thought.
        temperature: sampling temperature of generation.
        rules: how positive decisions become likes and when users leave.
        format_retries: generate mode: how often an unreadable answer is re-asked (with a
            new seed) before it is recorded as invalid.
        response_model: score mode without the LLM: ``f(user_ids, item_ids, arms) ->
            p(like)`` arrays (the synthetic world's ground truth, or a learned response
            model). The backend then only writes the traced chains of thought.
        preference_tokens: budget of the preference a head policy writes per slate.
    """

    backend: LLMBackend
    mode: str = "score"
    seed: int = 0
    trace_rate: float = 0.0
    max_new_tokens: int = 96
    temperature: float = 0.7
    rules: SessionRules = field(default_factory=SessionRules)
    format_retries: int = 2
    response_model: Callable[[np.ndarray, np.ndarray, list[str]], np.ndarray] | None = None
    response_model_id: str = "response-model"
    preference_tokens: int = 32

    def __post_init__(self) -> None:
        if self.mode not in ("score", "generate"):
            raise ValueError(f"decision mode must be 'score' or 'generate', not {self.mode!r}")

    def decide(self, requests: Sequence[SlateRequest], step: int, batch_key: int = 0) -> list[
        SlateOutcome
    ]:
        """Decide every impression of every request.

        Args:
            requests: the slates, each for one user in one arm.
            step: the simulation step (keys the random draws).
            batch_key: distinguishes batches of the same step for the LLM sampler's seed.

        Returns:
            One outcome per request, in order.
        """
        flat = [(r, c) for r in requests for c in r.candidates]
        draws = {
            (r.arm, r.user_id): user_uniforms(self.seed, step, r.user_id, len(r.candidates))
            for r in requests
        }
        gen_seed = stable_int(self.seed, step, batch_key) % (2**31)
        records: list[DecisionRecord]
        if self.mode == "score":
            records = self._score(flat, draws, gen_seed)
        elif self.backend.decides_with_head:
            reasoned = self._reasoned(flat, range(len(flat)), gen_seed)
            records = [self._reasoned_record(r, c, reasoned[i], draws, threshold=True)
                       for i, (r, c) in enumerate(flat)]
        else:
            records = self._generate(flat, draws, [_think_prompt(r, c) for r, c in flat], gen_seed)
        outcomes, cursor = [], 0
        for r in requests:
            decs = records[cursor : cursor + len(r.candidates)]
            cursor += len(r.candidates)
            watched = sum(d.action != "skip" for d in decs)
            leave_prob = self.rules.base_leave_prob + (
                self.rules.bored_leave_prob if watched == 0 else 0.0
            )
            u_leave = float(draws[(r.arm, r.user_id)]["leave"][0])
            outcomes.append(SlateOutcome(r.arm, r.user_id, decs, u_leave < leave_prob,
                                         leave_prob, u_leave))
        return outcomes

    def _action_from_p(self, p: float, u: float) -> str:
        if u < p * self.rules.like_share:
            return "like"
        return "watch" if u < p else "skip"

    def _score(self, flat, draws, gen_seed: int):
        if self.response_model is not None:
            # No model reads a score prompt, so none is built or stored: a response-model
            # decision keeps a prompt only when it is traced (the chain-of-thought prompt).
            prompts = None
            scores = self._model_scores(flat)
        else:
            prompts = [score_prompt(r.view(), c.text, friends_liked=r.friends_liked,
                                    evidence=c.evidence) for r, c in flat]
            scores = self.backend.score(prompts, ("Yes", "No"))
        traced_idx = [
            i for i, (r, c) in enumerate(flat)
            if draws[(r.arm, r.user_id)]["trace"][c.position] < self.trace_rate
        ]
        if traced_idx and self.backend.decides_with_head and self.response_model is None:
            # The trace is what the decision reads: a traced decision is the reasoned one.
            reasoned = self._reasoned(flat, traced_idx, gen_seed)
        else:
            reasoned = {}
        traces = {}
        # Only traced decisions need the chain-of-thought prompt; build no others.
        think_prompts = {i: _think_prompt(*flat[i]) for i in traced_idx if i not in reasoned}
        if think_prompts:
            gens = self.backend.generate(
                list(think_prompts.values()), max_new_tokens=self.max_new_tokens,
                temperature=self.temperature, seed=gen_seed,
            )
            traces = dict(zip(think_prompts, gens, strict=True))
        out = []
        for i, ((r, c), s) in enumerate(zip(flat, scores, strict=True)):
            if i in reasoned:
                out.append(self._reasoned_record(r, c, reasoned[i], draws, threshold=False))
                continue
            p = float(s.probs["Yes"])
            u = float(draws[(r.arm, r.user_id)]["action"][c.position])
            action = self._action_from_p(p, u)
            gen = traces.get(i)
            parsed = parse_judgement(gen.text, THINK_PREFIX) if gen else None
            out.append(
                DecisionRecord(
                    arm=r.arm, user_id=r.user_id, position=c.position, item_id=c.item_id,
                    rec_score=c.rec_score, action=action, p_like=p,
                    prompt=(think_prompts[i].flat_text() if gen
                            else prompts[i].flat_text() if prompts else ""),
                    completion=gen.text if gen else None,
                    think=parsed.think if parsed else None,
                    answer=parsed.answer if parsed else None,
                    # Score mode reads a probability: the decision's format is whether the
                    # options were found; a stored trace reports its own format apart.
                    format_ok=s.found,
                    fallback=None if s.found else "options_not_in_top_logprobs",
                    model_id=(self.response_model_id if self.response_model is not None
                              else self.backend.model_id),
                    tokens_in=s.tokens_in + (gen.tokens_in if gen else 0),
                    tokens_out=gen.tokens_out if gen else 0,
                    latency_ms=1000 * (s.latency_s + (gen.latency_s if gen else 0.0)),
                    traced=gen is not None,
                    prompt_truncated=s.truncated_prompt,
                    cache_hit=s.cached and (gen is None or gen.cached),
                    rule="draw", draw=u, like_cut=p * self.rules.like_share,
                    trace_role="separate" if gen else None,
                    trace_ok=parsed.format_ok if parsed else None,
                )
            )
        return out

    def _reasoned(self, flat, idx, gen_seed: int) -> dict[int, Reasoned]:
        """Reasoned decisions of ``flat[i]`` for ``i`` in ``idx``.

        One written preference per slate, then every candidate scored after it (see the
        module docstring).
        """
        slates: dict[int, SlateRequest] = {}
        for i in idx:
            slates.setdefault(id(flat[i][0]), flat[i][0])
        gens = self.backend.generate(
            [preference_prompt(r.view(), friends_liked=r.friends_liked) for r in slates.values()],
            # Greedy: a user's preference is a property of the persona, not a random draw (the
            # actions keep their seeded uniforms); it is also what the head was trained after.
            max_new_tokens=self.preference_tokens, temperature=0.0, seed=gen_seed)
        written = dict(zip(slates, gens, strict=True))
        lines = {key: preference_line(g.text) for key, g in written.items()}
        prompts = {i: score_prompt(flat[i][0].view(), flat[i][1].text,
                                   friends_liked=flat[i][0].friends_liked,
                                   evidence=flat[i][1].evidence, preference=lines[id(flat[i][0])])
                   for i in idx}
        scores = dict(zip(prompts, self.backend.score(list(prompts.values()), ("Yes", "No")),
                          strict=True))
        out, charged = {}, set()
        for i in idx:
            key = id(flat[i][0])
            # The preference's tokens are charged once, to the slate's first reasoned decision.
            gen = written[key] if key not in charged else None
            charged.add(key)
            out[i] = Reasoned(lines[key], prompts[i], scores[i], gen)
        return out

    def _reasoned_record(self, r: SlateRequest, c: Candidate, rs: Reasoned, draws,
                         threshold: bool) -> DecisionRecord:
        p = float(rs.score.probs["Yes"])
        u = draws[(r.arm, r.user_id)]
        answer_word = "Yes" if p > 0.5 else "No"
        if threshold:  # generate mode acts on the answer, as it does on a parsed one
            rule, draw, cut = "answer", float(u["like"][c.position]), self.rules.like_share
            action = ("like" if draw < cut else "watch") if answer_word == "Yes" else "skip"
        else:
            rule, draw = "draw", float(u["action"][c.position])
            cut = p * self.rules.like_share
            action = self._action_from_p(p, draw)
        completion = f" {PREFERENCE_OPEN} {rs.preference}\n(2) Prediction: {answer_word} </answer>"
        parsed = parse_judgement(completion, trace_prefix(completion))
        gen = rs.charged
        return DecisionRecord(
            arm=r.arm, user_id=r.user_id, position=c.position, item_id=c.item_id,
            rec_score=c.rec_score, action=action, p_like=p, prompt=rs.prompt.flat_text(),
            completion=completion, think=parsed.user_preference or None, answer=parsed.answer,
            # The head always answers; the format flag says whether the model's own part (the
            # written preference) was there to read.
            format_ok=bool(rs.preference) and parsed.format_ok,
            fallback=None if rs.score.found else "options_not_in_top_logprobs",
            model_id=self.backend.model_id,
            tokens_in=rs.score.tokens_in + (gen.tokens_in if gen else 0),
            tokens_out=gen.tokens_out if gen else 0,
            latency_ms=1000 * (rs.score.latency_s + (gen.latency_s if gen else 0.0)),
            traced=True, prompt_truncated=rs.score.truncated_prompt,
            cache_hit=rs.score.cached and (gen is None or gen.cached),
            rule=rule, draw=draw, like_cut=cut, trace_role="decided",
            trace_ok=bool(rs.preference) and parsed.format_ok)

    def _model_scores(self, flat) -> list[Score]:
        """p(like) from the response model, shaped like backend scores (no tokens, no LLM)."""
        assert self.response_model is not None
        users = np.array([r.user_id for r, _ in flat], dtype=np.int64)
        items = np.array([c.item_id for _, c in flat], dtype=np.int64)
        arms = [r.arm for r, _ in flat]
        probs = np.asarray(self.response_model(users, items, arms), dtype=np.float64)
        return [Score(probs={"Yes": float(p), "No": 1.0 - float(p)}, tokens_in=0, latency_s=0.0)
                for p in probs]

    def _generate(self, flat, draws, think_prompts: list[ChatPrompt], gen_seed: int):
        gens = self.backend.generate(
            think_prompts, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
            seed=gen_seed,
        )
        tries = [[g] for g in gens]  # every attempt's completion, per decision
        parsed = [parse_judgement(g.text, THINK_PREFIX) for g in gens]
        for attempt in range(1, self.format_retries + 1):
            bad = [i for i, p in enumerate(parsed) if p.prediction not in ("Yes", "No")]
            if not bad:
                break
            # A fresh seed per retry round, derived from the batch's: reruns stay identical.
            regen = self.backend.generate(
                [think_prompts[i] for i in bad], max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                seed=stable_int(gen_seed, "format-retry", attempt) % (2**31),
            )
            for i, g in zip(bad, regen, strict=True):
                tries[i].append(g)
                parsed[i] = parse_judgement(g.text, THINK_PREFIX)
        out = []
        for (r, c), prompt, attempts, p in zip(flat, think_prompts, tries, parsed, strict=True):
            gen = attempts[-1]
            draw = float(draws[(r.arm, r.user_id)]["like"][c.position])
            rule = "answer"
            if p.prediction == "Yes":
                liked = draw < self.rules.like_share
                action, fallback, format_ok = ("like" if liked else "watch"), None, p.format_ok
            elif p.prediction == "No":
                action, fallback, format_ok = "skip", None, p.format_ok
            else:  # still unreadable after the retries: an invalid decision
                action, fallback, format_ok, rule = "skip", "invalid", False, "invalid"
            out.append(
                DecisionRecord(
                    arm=r.arm, user_id=r.user_id, position=c.position, item_id=c.item_id,
                    rec_score=c.rec_score, action=action, p_like=None, prompt=prompt.flat_text(),
                    completion=gen.text, think=p.think, answer=p.answer,
                    format_ok=format_ok, fallback=fallback,
                    model_id=self.backend.model_id,
                    tokens_in=sum(g.tokens_in for g in attempts),
                    tokens_out=sum(g.tokens_out for g in attempts),
                    latency_ms=1000 * sum(g.latency_s for g in attempts), traced=True,
                    prompt_truncated=gen.truncated_prompt,
                    cache_hit=all(g.cached for g in attempts), attempts=len(attempts),
                    rule=rule, draw=draw if p.prediction == "Yes" else None,
                    like_cut=self.rules.like_share if p.prediction == "Yes" else None,
                    trace_role="decided", trace_ok=format_ok,
                )
            )
        return out
