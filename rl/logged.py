"""RL rows from a simulation run's logged decisions (the trajectories that feed retraining).

A decision is kept only when its item is in the user's real log, so every label is real. The
prompt is the one the simulator logged, rewritten into the judgement layout, so the simulator's
own context (recent platform watches, friends' likes) is part of the training data.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from vragent.agents.backends.base import ChatPrompt
from vragent.agents.prompts import (
    PREFERENCE_PREFIX,
    SCORE_CANDIDATE_PREFIX,
    SCORE_PREFIX,
    SCORE_QUESTION,
    SCORE_TAIL,
    THINK_PREFIX,
    US_SYSTEM,
)
from vragent.environments.schema import Dataset
from vragent.environments.splits import as_sequences
from vragent.rl.data_rows import (
    CANDIDATE_LINE,
    LIKE_RATING,
    PromptBuilder,
    RLDataError,
    _row,
    group_id,
)
from vragent.rl.negatives import (
    STREAM_STORE,
    draw_unseen,
    user_rng,
)

if TYPE_CHECKING:
    from vragent.sandbox.store import Store


_ROLE_LINE = re.compile(r"^<\|(system|user|assistant)\|>\n", re.M)


def parse_flat_prompt(text: str) -> ChatPrompt:
    """Invert :meth:`ChatPrompt.flat_text`: ``<|role|>`` lines, each followed by its content.

    Sanitised item text cannot contain ``<`` (it becomes ``‹``), so a role line inside a
    title cannot split a message.

    Raises:
        ValueError: the text is not in that format or has no final assistant turn.
    """
    marks = list(_ROLE_LINE.finditer(text))
    if not marks or marks[0].start() != 0 or marks[-1].group(1) != "assistant":
        raise ValueError("not a flat chat prompt with a final assistant turn")
    messages = []
    for mark, nxt in itertools.pairwise(marks):
        # The joining newline before the next role line belongs to neither message.
        messages.append((mark.group(1), text[mark.end() : nxt.start() - 1]))
    return ChatPrompt(messages=tuple(messages), assistant_prefix=text[marks[-1].end():])


REASONED_CANDIDATE = "\n" + SCORE_CANDIDATE_PREFIX.removeprefix("<answer> ")


def to_judgement_layout(prompt: ChatPrompt) -> tuple[ChatPrompt, str] | None:
    """A logged US-agent prompt in the judgement layout, and its candidate line.

    Score-mode prompts (question in the system turn, candidate in the assistant prefix) are
    rewritten so the candidate ends the user turn, as :func:`agents.prompts.judgement_prompt`
    writes it; the simulator's context (recent platform watches, friends' likes) is kept.

    Returns:
        ``(prompt with prefix "<think>", candidate line)``, or ``None`` for another layout.
    """
    if [r for r, _ in prompt.messages] != ["system", "user"]:
        return None
    (_, system), (_, user) = prompt.messages
    prefix = prompt.assistant_prefix
    if not (isinstance(system, str) and isinstance(user, str)):
        return None
    reasoned_cut = prefix.find(REASONED_CANDIDATE) if prefix.startswith(PREFERENCE_PREFIX) else -1
    if reasoned_cut >= 0:  # a reasoned decision: the candidate follows the written preference
        prefix = SCORE_CANDIDATE_PREFIX + prefix[reasoned_cut + len(REASONED_CANDIDATE):]
    if (system == f"{US_SYSTEM} {SCORE_QUESTION}" and prefix.startswith(SCORE_CANDIDATE_PREFIX)
            and prefix.endswith(SCORE_TAIL)):
        candidate = prefix[len(SCORE_CANDIDATE_PREFIX) : len(prefix) - len(SCORE_TAIL)]
        user = f"{user}{CANDIDATE_LINE}{candidate}"
    elif system == US_SYSTEM and prefix in (THINK_PREFIX, SCORE_PREFIX) and CANDIDATE_LINE in user:
        candidate = user.rsplit(CANDIDATE_LINE, 1)[1]
    else:
        return None
    chat = ChatPrompt(messages=(("system", US_SYSTEM), ("user", user)),
                      assistant_prefix=THINK_PREFIX)
    return chat, candidate


def _open_store(store: Store | str) -> Store:
    from vragent.sandbox.store import Store

    return store if isinstance(store, Store) else Store(store, create=False)


def _logged_label(dataset: Dataset) -> dict[tuple[int, int], str] | None:
    """(user, item) -> "Yes"/"No" from ratings; ``None`` for implicit data (all "Yes")."""
    inter = dataset.interactions
    if "rating" not in inter.columns:
        return None
    last = inter.sort_values(["user_id", "order"], kind="stable").drop_duplicates(
        ["user_id", "item_id"], keep="last")
    yes = last["rating"].to_numpy() >= LIKE_RATING
    keys = zip(last["user_id"].tolist(), last["item_id"].tolist(), strict=True)
    return {k: ("Yes" if y else "No") for k, y in zip(keys, yes.tolist(), strict=True)}


def _kept_decisions(store: Store, run_id: str, seqs: Mapping[int, Collection[int]],
                    exclude: Collection[int], counts: dict[str, int]) -> list[tuple[int, int, int]]:
    """``(decision id, user, item)`` of the first decision per real (user, item) pair."""
    from sqlalchemy import select
    from vragent.sandbox.store import Decision

    with store.session() as s:
        rows = s.execute(
            select(Decision.id, Decision.user_id, Decision.item_id)
            .where(Decision.run_id == run_id)
            .order_by(Decision.step, Decision.arm, Decision.user_id, Decision.position)
        ).all()
    counts["decisions"] = len(rows)
    kept: list[tuple[int, int, int]] = []
    seen_pairs: set[tuple[int, int]] = set()
    for did, user, item in rows:
        if user in exclude:
            counts["eval_user_dropped"] = counts.get("eval_user_dropped", 0) + 1
        elif item not in seqs.get(user, ()):
            counts["not_in_real_logs"] = counts.get("not_in_real_logs", 0) + 1
        elif (user, item) in seen_pairs:
            counts["duplicates"] = counts.get("duplicates", 0) + 1
        else:
            seen_pairs.add((user, item))
            kept.append((did, user, item))
    return kept


def _prompts_by_id(store: Store, ids: Sequence[int]) -> dict[int, str]:
    from sqlalchemy import select
    from vragent.sandbox.store import Decision

    out: dict[int, str] = {}
    with store.session() as s:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            out.update(s.execute(
                select(Decision.id, Decision.prompt).where(Decision.id.in_(chunk))).all())
    return out


def _run_context(store: Store, run_id: str) -> tuple[dict[int, list[int]], int]:
    """Each simulated user's real history (stored ids) and the run's prompt history length."""
    from sqlalchemy import select
    from vragent.sandbox.store import Run, SimUser

    with store.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise RLDataError(f"{store.url}: no run {run_id!r}")
        hist_len = int(((run.config or {}).get("population") or {}).get("history_len", 10))
        users = s.execute(select(SimUser.user_id, SimUser.history).where(
            SimUser.run_id == run_id)).all()
    return {int(u): [int(i) for i in h or []] for u, h in users}, hist_len


def rows_from_store(
    store: Store | str,
    run_id: str,
    dataset: Dataset,
    *,
    unseen_negatives: int = 0,
    seed: int = 0,
    exclude_users: Collection[int] = (),
    history_len: int | None = None,
    stats: dict[str, int] | None = None,
    prompts: PromptBuilder | None = None,
) -> list[dict[str, Any]]:
    """Judgement rows from a simulation run's logged decisions (``protocol="logged"``).

    A decision is kept only when its item is in that user's real log (the dataset's full
    sequence), so every label is real: with a ``rating`` column, rating >= 4 is "Yes" and
    lower "No"; implicit data is all "Yes". Each (user, item) pair is kept once (its first
    decision by step, arm and position). The prompt is the *logged* one in the judgement
    layout (:func:`to_judgement_layout`), so the simulator's own context is kept.

    The users are simulated users grounded in real ones: their rows go to the train split
    only, and users in ``exclude_users`` (held-out eval users) are dropped, so no eval target
    leaks into training.

    Args:
        store: a :class:`~sandbox.store.Store` or its URL.
        run_id: the run.
        dataset: the real dataset the run was grounded in.
        unseen_negatives: per user with kept rows, this many sampled unseen items as "No"
            rows, each in that user's first kept logged context.
        seed: seeds the unseen negatives.
        exclude_users: users whose decisions are dropped.
        history_len: ``history_ids`` shows this many of the user's real history; default:
            the run's ``population.history_len``.
        stats: filled with counts (decisions, kept, dropped by reason, negatives).
        prompts: a prompt builder to reuse (candidate lines of the negatives).

    Returns:
        The rows (split ``"train"``, source ``"run:<run_id>"``); a user's rows share a
        group id.

    Raises:
        RLDataError: the run is not in the store.
    """
    counts = stats if stats is not None else {}
    st = _open_store(store)
    histories, run_hist_len = _run_context(st, run_id)
    hist_len = run_hist_len if history_len is None else history_len
    seqs = {u: set(s) for u, s in as_sequences(dataset).items()}
    labels = _logged_label(dataset)
    kept = _kept_decisions(st, run_id, seqs, set(exclude_users), counts)
    texts = _prompts_by_id(st, [d for d, _, _ in kept])
    source = f"run:{run_id}"
    by_user: dict[int, list[tuple[int, str, str, ChatPrompt]]] = {}
    for did, user, item in kept:
        text = texts.get(did, "")
        if not text:  # a response model decided: no prompt was logged, nothing to learn from
            counts["no_prompt"] = counts.get("no_prompt", 0) + 1
            continue
        layout = _parse_logged(text)
        if layout is None:
            counts["unparsed_prompt"] = counts.get("unparsed_prompt", 0) + 1
            continue
        label = "Yes" if labels is None else labels.get((user, item), "No")
        by_user.setdefault(user, []).append((item, label, layout[1], layout[0]))
        counts["kept"] = counts.get("kept", 0) + 1
    prompts = prompts or PromptBuilder(dataset, hist_len, ())
    catalogue = np.unique(dataset.interactions["item_id"].to_numpy(dtype=np.int64))
    rows: list[dict[str, Any]] = []
    for user in sorted(by_user):
        entries = by_user[user]
        if unseen_negatives:
            rng = user_rng(seed, STREAM_STORE, zlib.crc32(run_id.encode()), user)
            context = entries[0][3]
            for item in draw_unseen(rng, catalogue, seqs[user], unseen_negatives):
                line = prompts.line(item)
                entries.append((item, "No", line, _with_candidate(context, line)))
            counts["negatives"] = counts.get("negatives", 0) + unseen_negatives
        shown = histories.get(user, [])[-hist_len:] if hist_len > 0 else []
        gid = group_id("train", source, user, "judgement", "logged", unseen_negatives)
        rows += [_row(
            prompts, task="judgement", protocol="logged", m=unseen_negatives, group_id=gid,
            user_id=user, item_ids=[item], history_ids=shown, prompt=chat.as_dicts(),
            assistant_prefix=chat.assistant_prefix, candidates=[line], label=label,
            correct_index=-1, source=source, split="train",
        ) for item, label, line, chat in entries]
    counts["rows"] = len(rows)
    return rows


def _parse_logged(text: str) -> tuple[ChatPrompt, str] | None:
    try:
        return to_judgement_layout(parse_flat_prompt(text))
    except ValueError:
        return None


def _with_candidate(chat: ChatPrompt, line: str) -> ChatPrompt:
    """The same logged context with another candidate line."""
    (sys_role, system), (user_role, user) = chat.messages
    context = user.rsplit(CANDIDATE_LINE, 1)[0]
    user = f"{context}{CANDIDATE_LINE}{line}"
    return ChatPrompt(messages=((sys_role, system), (user_role, user)),
                      assistant_prefix=chat.assistant_prefix)


# ------------------------------------------------------------------------------ save / load


