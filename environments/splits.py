"""Leave-one-out splits, following the MicroLens SASRec baseline.

The MicroLens baseline (``read_behaviors`` in its IDRec code) keeps users with at least
``min_seq_len`` interactions, cuts each sequence to its last ``max_seq_len + 3`` items and uses
``seq[:-2]`` for training, ``seq[-2]`` as the validation target and ``seq[-1]`` as the test
target. Here ``max_len`` is that cut length (13 = the baseline's default 10 + 3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from vragent.environments.schema import Dataset

SequencesLike = Dataset | pd.DataFrame | Mapping[int, Sequence[int]]
"""A dataset, an interactions frame (``user_id, item_id, order``) or user -> item sequence."""


@dataclass
class Split:
    """A leave-one-out split.

    Attributes:
        train: User -> training items (time order), i.e. the cut sequence minus its last two.
        valid: User -> validation target (second to last item).
        test: User -> test target (last item).
        dropped_users: Users left out for having fewer than ``min_len`` interactions.
    """

    train: dict[int, list[int]]
    valid: dict[int, int]
    test: dict[int, int]
    dropped_users: int

    @property
    def users(self) -> list[int]:
        """The kept users, sorted."""
        return sorted(self.train)

    def train_interactions(self) -> pd.DataFrame:
        """The training part as interaction rows.

        Returns:
            Columns ``user_id, item_id, order`` (int64, ``order`` 0-based within the train
            part), sorted by ``(user_id, order)``.
        """
        users = [u for u in self.users for _ in self.train[u]]
        items = [i for u in self.users for i in self.train[u]]
        order = [k for u in self.users for k in range(len(self.train[u]))]
        return pd.DataFrame({"user_id": users, "item_id": items, "order": order}, dtype="int64")

    def history(self, user: int, upto: Literal["train", "valid", "test"] = "train") -> list[int]:
        """A user's visible history for a stage.

        Args:
            user: A kept user.
            upto: ``"train"``: the training items; ``"valid"``: training items plus the
                validation target (the history a test-time model sees); ``"test"``: the full
                cut sequence.

        Returns:
            A new list of item ids in time order.

        Raises:
            KeyError: ``user`` is not in the split.
            ValueError: ``upto`` is not one of the three stages.
        """
        if user not in self.train:
            raise KeyError(f"user {user} is not in the split")
        if upto == "train":
            return list(self.train[user])
        if upto == "valid":
            return [*self.train[user], self.valid[user]]
        if upto == "test":
            return [*self.train[user], self.valid[user], self.test[user]]
        raise ValueError(f"upto must be 'train', 'valid' or 'test', not {upto!r}")


def as_sequences(data: SequencesLike) -> dict[int, list[int]]:
    """Each user's time-ordered item ids, from any accepted input.

    Args:
        data: A :class:`Dataset`, an interactions frame with ``user_id, item_id, order``, or a
            mapping user -> items.

    Returns:
        A new dict user -> list of item ids, sorted by user.
    """
    if isinstance(data, Dataset):
        data = data.interactions
    if isinstance(data, pd.DataFrame):
        frame = data.sort_values(["user_id", "order"], kind="stable")
        users = frame["user_id"].to_numpy()
        items = frame["item_id"].to_numpy()
        # One split at the user boundaries instead of a groupby: 10x faster on 50k users.
        if not len(users):
            return {}
        cuts = np.flatnonzero(users[1:] != users[:-1]) + 1
        starts = np.concatenate([[0], cuts])
        return {
            int(users[s]): seq.tolist()
            for s, seq in zip(starts, np.split(items, cuts), strict=True)
        }
    return {int(u): [int(i) for i in seq] for u, seq in sorted(data.items())}


def leave_one_out(data: SequencesLike, min_len: int = 5, max_len: int = 13) -> Split:
    """Split each user's sequence leave-one-out, MicroLens-SASRec style.

    Args:
        data: See :func:`as_sequences`.
        min_len: Users with fewer interactions are dropped (counted in ``dropped_users``).
        max_len: Each kept sequence is cut to its last ``max_len`` items before splitting.

    Returns:
        The split.

    Raises:
        ValueError: ``min_len`` or ``max_len`` is below 3 (a train part needs one item).
    """
    if min_len < 3 or max_len < 3:
        raise ValueError("min_len and max_len must be at least 3")
    train: dict[int, list[int]] = {}
    valid: dict[int, int] = {}
    test: dict[int, int] = {}
    dropped = 0
    for user, seq in as_sequences(data).items():
        if len(seq) < min_len:
            dropped += 1
            continue
        seq = seq[-max_len:]
        train[user] = seq[:-2]
        valid[user] = seq[-2]
        test[user] = seq[-1]
    return Split(train=train, valid=valid, test=test, dropped_users=dropped)


def cold_start_users(data: SequencesLike, n: int = 5) -> list[int]:
    """Users with exactly ``n`` interactions in the full data (before any cut).

    Args:
        data: See :func:`as_sequences`.
        n: The interaction count.

    Returns:
        Sorted user ids.
    """
    return [u for u, seq in as_sequences(data).items() if len(seq) == n]


def train_sequences(
    data: SequencesLike, min_len: int = 5, max_len: int = 13
) -> dict[int, list[int]]:
    """Shortcut for ``leave_one_out(data, min_len, max_len).train``."""
    return leave_one_out(data, min_len=min_len, max_len=max_len).train
