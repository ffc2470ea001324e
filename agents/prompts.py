"""Prompt templates: the paper's US-agent judgement prompt and the minimal IP-agent prompt.

Layout matters for speed: everything shared by a user's slate (instructions, persona, history)
comes first and the candidate comes last, so a server's prefix cache (and, later, our own KV
reuse) covers most of the tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agents.backends.base import ChatPrompt

# The paper's judgement system prompt (usagent/prepare_video_like_data.py), lightly edited to
# name the persona block we add before the history.
US_SYSTEM = (
    "You are a helpful assistant that simulates a short-video platform user. You read the "
    "user's profile and video viewing history, analyse the user's preferences, and predict "
    "whether the user would like the candidate video. Just give Yes or No. Show your reasoning "
    "in <think> </think> tags and return the final answer in <answer> </answer> tags, in this "
    "format: <answer> (1) User_preference: ...\n(2) Prediction: Yes/No </answer>."
)
THINK_PREFIX = "<think>"
# Score mode reads p(Yes) right after "Prediction:"; this is the paper's no-thinking variant,
# whose assistant turn opens with <answer>.
SCORE_PREFIX = "<answer> (2) Prediction:"
# The fast score layout asks the question in the system turn, which every prompt shares, and
# names the candidate inside the answer. A candidate then costs only its own
# tokens plus this short tail, and the whole user turn is a reusable prefix (docs/performance.md).
SCORE_QUESTION = (
    "The candidate video is named at the start of your answer; predict whether this user "
    "would like it."
)
SCORE_CANDIDATE_PREFIX = "<answer> Candidate video: "
SCORE_TAIL = "\nPrediction:"
SOCIAL_LINE = "Friends of this user recently liked:"
RECENT_LINE = "Watched on this platform:"

IP_EXAMPLE = (
    "A driver films a tense night-time encounter on an empty road. #thriller #roadsafety #suspense"
)
IP_SYSTEM = (
    "You are a video content analyst for a recommender system. Given a short video's title and "
    "category, write a recommendation-oriented profile of at most 35 words in the format "
    "'[Core Content Description] + [Refined #Tags]': one sentence on what the video shows and "
    f"why viewers would watch it, then 2 to 4 hashtags. Example for another video: '{IP_EXAMPLE}'"
)


@dataclass(frozen=True)
class PersonaView:
    """What the US agent knows about its user, already sanitised."""

    description: str
    history_titles: tuple[str, ...]
    recent_titles: tuple[str, ...] = ()


def _context_lines(persona: PersonaView, friends_liked: Sequence[str]) -> list[str]:
    # Most stable first: profile and real history never change during a run, platform watches
    # only grow, friends' likes change every step. Cached prefixes then survive longest.
    lines = [f"User profile: {persona.description}", "User's viewing history:"]
    lines += [f"- {t}" for t in persona.history_titles] or ["- (no history yet)"]
    if persona.recent_titles:
        lines.append(RECENT_LINE)
        lines += [f"- {t}" for t in persona.recent_titles]
    if friends_liked:
        lines.append(SOCIAL_LINE)
        lines += [f"- {t}" for t in friends_liked]
    return lines


def user_turn(persona: PersonaView, candidate: str, friends_liked: Sequence[str] = ()) -> str:
    """The user message: persona, history bullets, then the candidate (paper layout)."""
    lines = _context_lines(persona, friends_liked)
    lines += ["Candidate video:", candidate]
    return "\n".join(lines)


def judgement_prompt(
    persona: PersonaView, candidate: str, *, think: bool = True, friends_liked: Sequence[str] = ()
) -> ChatPrompt:
    """The paper's Yes/No judgement prompt for one candidate.

    Args:
        persona: the user's description and history titles.
        candidate: the candidate's sanitised title (with category).
        think: open the assistant turn with ``<think>`` (generate mode) or right before the
            Yes/No word (score mode, paper layout; the simulator scores with
            :func:`score_prompt`).
        friends_liked: titles friends recently liked, when social influence is on.

    Returns:
        The chat prompt.
    """
    return ChatPrompt(
        messages=(("system", US_SYSTEM), ("user", user_turn(persona, candidate, friends_liked))),
        assistant_prefix=THINK_PREFIX if think else SCORE_PREFIX,
    )


def score_prompt(
    persona: PersonaView, candidate: str, *, friends_liked: Sequence[str] = ()
) -> ChatPrompt:
    """The fast score-mode prompt: the question is shared, the candidate comes last.

    Everything up to the candidate is the same for a whole slate (and, for the profile and real
    history, for every step and arm), so a backend runs it once and reuses its KV cache. The
    Yes/No word is read right after ``Prediction:``, as in :func:`judgement_prompt`.

    Args:
        persona: the user's description and history titles.
        candidate: the candidate's sanitised title (with category).
        friends_liked: titles friends recently liked, when social influence is on.

    Returns:
        The chat prompt.
    """
    user = "\n".join(_context_lines(persona, friends_liked))
    return ChatPrompt(
        messages=(("system", f"{US_SYSTEM} {SCORE_QUESTION}"), ("user", user)),
        assistant_prefix=f"{SCORE_CANDIDATE_PREFIX}{candidate}{SCORE_TAIL}",
    )


def ip_prompt(title: str, category: str) -> ChatPrompt:
    """The minimal IP-agent prompt: title and category in, a ≤35-word profile out."""
    user = f"Title: {title}\nCategory: {category or 'unknown'}\nProfile:"
    return ChatPrompt(messages=(("system", IP_SYSTEM), ("user", user)))
