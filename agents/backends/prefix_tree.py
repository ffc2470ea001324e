"""Slates as prefix trees: which prompts share a prefix, and one forward's inputs for them.

:class:`agents.backends.hf.HFBackend` scores one user's slate (same instructions, persona and
history, one candidate each) by running the shared prefix once (its whole blocks from the KV
store) and the candidates behind it; several slates share one forward. This module holds the
pure parts: grouping prompts, and the tokens, positions and 4-D mask of such a forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vragent.agents.backends.prefix_cache import common_prefix_len


@dataclass
class Unit:
    """Candidates of one slate that run together behind their shared prefix."""

    kv: list | None  # per-layer (keys, values) of the prefix's whole blocks
    n_kv: int
    trunk: list[int]  # the rest of the shared prefix
    prompt_ids: list[int]  # indices into the call's prompts
    suffixes: list[list[int]]
    prompt_lens: list[int]  # untruncated prompt lengths

    @property
    def n_query(self) -> int:
        """Tokens the unit runs: its trunk and every candidate's suffix."""
        return len(self.trunk) + sum(len(x) for x in self.suffixes)


def tree_inputs(units: list[Unit], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                    list[tuple[int, int]]]:
    """Tokens, positions, attention mask and last-token cells of one tree forward.

    Each unit is one row: its trunk (the end of the shared prefix that is not in its KV),
    then its candidates end to end. The mask lets trunk tokens see the unit's cached prefix and
    the trunk causally, and each candidate token see the prefix, the whole trunk and the
    earlier tokens of its own candidate; positions restart after the trunk for each candidate.
    Rows of different prefix lengths are padded; padded keys are masked out and padded queries
    see only themselves.

    Returns:
        ``tokens`` and ``pos`` ``(rows, q_max)``, ``mask`` ``(rows, 1, q_max, l_max + q_max)``
        and the ``(row, column)`` of every candidate's last token, in unit order.
    """
    n_rows = len(units)
    l_max = max(u.n_kv for u in units)
    q_max = max(u.n_query for u in units)
    tokens = torch.full((n_rows, q_max), pad, dtype=torch.long)
    pos = torch.zeros((n_rows, q_max), dtype=torch.long)
    mask = torch.zeros((n_rows, 1, q_max, l_max + q_max), dtype=torch.bool)
    last: list[tuple[int, int]] = []
    for row, u in enumerate(units):
        t, base = len(u.trunk), u.n_kv + len(u.trunk)
        flat = [*u.trunk, *(tok for x in u.suffixes for tok in x)]
        tokens[row, : len(flat)] = torch.tensor(flat, dtype=torch.long)
        lengths = [len(x) for x in u.suffixes]
        pos[row, : len(flat)] = torch.tensor(
            [*range(u.n_kv, base), *(base + i for n in lengths for i in range(n))])
        m = mask[row, 0]
        m[: len(flat), : u.n_kv] = True
        m[:t, l_max : l_max + t] = torch.ones((t, t), dtype=torch.bool).tril()
        m[t : len(flat), l_max : l_max + t] = True
        at = t
        for n in lengths:
            m[at : at + n, l_max + at : l_max + at + n] = torch.ones(
                (n, n), dtype=torch.bool).tril()
            at += n
            last.append((row, at - 1))
        for k in range(len(flat), q_max):
            m[k, l_max + k] = True  # a padded query attends to itself: no empty softmax
    return tokens, pos, mask, last


def shared_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the prefix every sequence shares."""
    return min(common_prefix_len(seqs[0], x) for x in seqs)


def prefix_groups(ids: list[list[int]], min_shared: int) -> list[list[int]]:
    """Runs of consecutive prompts that share a long leading prefix.

    A prompt joins the current run when it shares at least ``min_shared`` tokens with the run's
    first prompt *and* does not shorten the run's common prefix. So one user's slate (same
    instructions, persona and history) forms a run, and the next user, who shares only the
    instructions, starts a new one.
    """
    groups: list[list[int]] = []
    shared: list[int] = []  # common prefix length of each group so far
    for i, x in enumerate(ids):
        if groups:
            lcp = common_prefix_len(ids[groups[-1][0]], x)
            if lcp >= min_shared and (len(groups[-1]) == 1 or lcp >= shared[-1]):
                shared[-1] = lcp if len(groups[-1]) == 1 else min(shared[-1], lcp)
                groups[-1].append(i)
                continue
        groups.append([i])
        shared.append(len(x))
    return groups
