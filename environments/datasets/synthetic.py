"""A seeded synthetic micro-video world with known ground truth.

The generative story (all numpy, vectorised, deterministic for a seed):

1. Topics get names ("cooking", "gaming", ...; ``"cooking_2"`` once the list runs out) and a
   global share.
2. Creators each have a main topic and a popularity; items belong to a creator, mostly on the
   creator's main topic, and get a latent quality.
3. Item popularity is lognormal (creator x item x quality), so it is heavy-tailed: the top
   10% of items draw most of the views.
4. Users have Dirichlet topic tastes and a heavy-tailed activity level (history length, at
   least :data:`MIN_HISTORY`).
5. Each user's history is sampled without repeats with probability proportional to
   ``taste[user, topic(item)] * popularity[item]``; ``like`` is drawn from
   :meth:`SyntheticWorld.true_like_prob`.

Ids are 1-based like the real datasets (0 stays free for padding in sequence models):
user ``u`` is row ``u - 1`` of :attr:`SyntheticWorld.user_taste`, item ``i`` is entry
``i - 1`` of :attr:`SyntheticWorld.item_topic`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from vragent.environments.datasets._io import tags_column
from vragent.environments.schema import Dataset, LoadReport

MIN_HISTORY = 5
"""Every synthetic user has at least this many interactions."""

LIKE_BIAS = -0.5
LIKE_TASTE_WEIGHT = 0.8
"""``logit p(like) = LIKE_BIAS + LIKE_TASTE_WEIGHT * log(n_topics * taste) + quality``:
a user with average taste for the topic likes an average item ~38% of the time."""

_TASTE_FLOOR = 1e-4  # keeps log(taste) finite so probabilities stay strictly inside (0, 1)
_MAX_ROUNDS = 8  # rejection-sampling rounds before the uniform fallback
_BASE_TIME = 1_700_000_000  # synthetic timestamps start here (Nov 2023), in seconds

# Topic -> (subjects used in titles, extra hashtags). Order = the order topics are named in.
_TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cooking": (("pasta", "ramen", "sourdough", "dumplings", "curry", "street food"),
                ("food", "recipe", "homecooking")),
    "gaming": (("speedrun", "boss fight", "minecraft build", "retro console", "ranked match"),
               ("gamer", "gameplay", "esports")),
    "pets": (("puppy", "cat", "parrot", "hamster", "golden retriever", "kitten"),
             ("cute", "dogsoftiktok", "catlover")),
    "travel": (("Tokyo", "road trip", "hostel", "island", "mountain village", "night market"),
               ("wanderlust", "travelvlog", "explore")),
    "fitness": (("leg day", "push-up", "yoga flow", "home workout", "marathon", "stretching"),
                ("gym", "workout", "fitnessmotivation")),
    "music": (("guitar riff", "piano cover", "beatbox", "street busking", "vocal run"),
              ("cover", "musician", "newmusic")),
    "comedy": (("prank", "sketch", "office meme", "dad joke", "blooper"),
               ("funny", "lol", "unexpected_ending")),
    "diy": (("shelf", "upcycled jeans", "epoxy table", "phone stand", "garden bed"),
            ("handmade", "crafts", "lifehack")),
    "beauty": (("skincare", "eyeliner", "no-makeup look", "hair curl", "nail art"),
               ("makeup", "glowup", "skincareroutine")),
    "dance": (("choreo", "shuffle", "k-pop routine", "ballet turn", "breaking"),
              ("dancechallenge", "choreography", "dancer")),
    "tech": (("phone", "laptop", "AI tool", "mechanical keyboard", "smart home"),
             ("gadgets", "techreview", "unboxing")),
    "sports": (("free kick", "three-pointer", "skate trick", "table tennis", "surf"),
               ("highlights", "athlete", "sportslife")),
    "fashion": (("thrift haul", "capsule wardrobe", "sneaker", "streetwear", "outfit"),
                ("ootd", "style", "fashiontips")),
    "education": (("math trick", "history fact", "physics demo", "language tip", "study"),
                  ("learnontiktok", "didyouknow", "studytok")),
    "nature": (("waterfall", "sunset", "wild fox", "forest walk", "thunderstorm"),
               ("naturelovers", "outdoors", "earth")),
    "cars": (("drift", "engine swap", "classic car", "EV", "detailing"),
             ("carsoftiktok", "carspotting", "motorsport")),
}  # fmt: skip

_TEMPLATES = (
    "Quick {n}-minute {s} hack",
    "I tried {s} for {n} days and this happened",
    "Top {n} {s} mistakes everyone makes",
    "{S} challenge gone wrong",
    "Why nobody talks about {s}",
    "Rating every {s} so you don't have to",
    "Day {n} of learning {s}",
    "POV: your first time with {s}",
    "The {s} trick that changed everything",
    "{S} in {n} seconds",
    "You won't believe this {s}",
    "Honest {s} review after {n} weeks",
)


@dataclass
class SyntheticWorld:
    """A synthetic platform plus the ground truth that generated it.

    Attributes:
        dataset: The observable data in the normalised schema.
        topics: Topic names; topic ``t`` is ``topics[t]`` and the items' ``category``.
        user_taste: ``(n_users, n_topics)`` topic preferences, rows sum to 1 (row ``u - 1`` is
            user ``u``).
        item_topic: ``(n_items,)`` topic index of each item (entry ``i - 1`` is item ``i``).
        item_quality: ``(n_items,)`` latent appeal added to every user's like logit.
        item_popularity: ``(n_items,)`` exposure weights, summing to 1.
        item_creator: ``(n_items,)`` creator id (1-based) of each item.
        creator_topic: ``(n_creators,)`` main topic index of each creator.
        seed: The seed the world was built from.
    """

    dataset: Dataset
    topics: list[str]
    user_taste: np.ndarray
    item_topic: np.ndarray
    item_quality: np.ndarray
    item_popularity: np.ndarray
    item_creator: np.ndarray
    creator_topic: np.ndarray
    seed: int

    @property
    def n_users(self) -> int:
        """Number of users."""
        return int(self.user_taste.shape[0])

    @property
    def n_items(self) -> int:
        """Number of items."""
        return int(self.item_topic.shape[0])

    def true_like_prob(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """Probability that each user likes each item, from the hidden ground truth.

        ``sigmoid(LIKE_BIAS + LIKE_TASTE_WEIGHT * log(n_topics * taste) + quality)``, which is
        strictly increasing in the user's taste for the item's topic.

        Args:
            user_ids: 1-based user ids (any shape).
            item_ids: 1-based item ids, broadcastable against ``user_ids`` (e.g. pass
                ``users[:, None]`` and ``items[None, :]`` for a matrix).

        Returns:
            Probabilities in (0, 1), of the broadcast shape.

        Raises:
            IndexError: An id is outside ``1..n``.
        """
        u = self._index(user_ids, self.n_users, "user")
        i = self._index(item_ids, self.n_items, "item")
        taste = self.user_taste[u, self.item_topic[i]]
        return _like_prob(taste, self.item_quality[i], len(self.topics))

    @staticmethod
    def _index(ids: np.ndarray, n: int, what: str) -> np.ndarray:
        idx = np.asarray(ids, dtype="int64") - 1
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"{what} ids must be in 1..{n}")
        return idx


def _like_prob(taste: np.ndarray, quality: np.ndarray, n_topics: int) -> np.ndarray:
    logit = (
        LIKE_BIAS + LIKE_TASTE_WEIGHT * np.log(n_topics * np.maximum(taste, _TASTE_FLOOR)) + quality
    )
    return 1.0 / (1.0 + np.exp(-logit))


# ------------------------------------------------------------------------- builder


def topic_names(n_topics: int) -> list[str]:
    """``n_topics`` distinct names, cycling the base list with ``_2``, ``_3`` ... suffixes."""
    base = list(_TOPICS)
    return [
        base[t % len(base)] + (f"_{t // len(base) + 1}" if t >= len(base) else "")
        for t in range(n_topics)
    ]


def make_synthetic_world(
    n_users: int = 200,
    n_items: int = 300,
    n_topics: int = 8,
    n_creators: int = 40,
    mean_history: float = 20,
    seed: int = 0,
) -> SyntheticWorld:
    """Build a seeded synthetic micro-video world.

    Args:
        n_users: Number of users (ids ``1..n_users``).
        n_items: Number of items (ids ``1..n_items``); at least :data:`MIN_HISTORY`.
        n_topics: Number of topics.
        n_creators: Number of creators.
        mean_history: Target mean history length (lengths are heavy-tailed, min 5).
        seed: Random seed; the same arguments give the same world.

    Returns:
        The world with its :class:`Dataset` and ground truth.

    Raises:
        ValueError: A size is not positive or ``n_items < MIN_HISTORY``.
    """
    if min(n_users, n_topics, n_creators) < 1:
        raise ValueError("n_users, n_topics and n_creators must be positive")
    if n_items < MIN_HISTORY:
        raise ValueError(f"n_items must be at least {MIN_HISTORY}")
    rng = np.random.default_rng(seed)
    topics = topic_names(n_topics)
    topic_share = rng.dirichlet(np.full(n_topics, 4.0))

    creator_topic, creator_pop = _creators(rng, n_creators, topic_share)
    item_creator, item_topic, item_quality, item_pop = _items(
        rng, n_items, n_topics, creator_topic, creator_pop
    )
    user_taste = rng.dirichlet(np.maximum(0.3 * n_topics * topic_share, 1e-3), size=n_users)
    z = rng.standard_normal(n_users)
    lengths = _history_lengths(z, mean_history, n_items)

    users_idx, items_idx = _sample_histories(
        rng, user_taste, item_topic, item_pop, lengths, n_topics
    )
    like_p = _like_prob(
        user_taste[users_idx, item_topic[items_idx]], item_quality[items_idx], n_topics
    )
    like = rng.random(len(users_idx)) < like_p
    timestamps = _timestamps(rng, users_idx, n_users)

    interactions = pd.DataFrame(
        {
            "user_id": users_idx + 1,
            "item_id": items_idx + 1,
            "order": _order_within(users_idx),
            "timestamp": timestamps,
            "like": like,
            "watch": True,
        }
    ).astype({"user_id": "int64", "item_id": "int64", "order": "int64"})
    items = _items_frame(rng, topics, item_topic, item_creator, item_pop, item_quality, user_taste)
    users = _users_frame(rng, topics, user_taste, z)
    dataset = Dataset("synthetic", users, items, interactions, LoadReport()).validate()
    return SyntheticWorld(
        dataset=dataset,
        topics=topics,
        user_taste=user_taste,
        item_topic=item_topic,
        item_quality=item_quality,
        item_popularity=item_pop,
        item_creator=item_creator + 1,
        creator_topic=creator_topic,
        seed=seed,
    )


def _creators(
    rng: np.random.Generator, n_creators: int, topic_share: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Main topic and popularity per creator; every topic gets a creator when possible."""
    n_topics = len(topic_share)
    covered = rng.permutation(n_topics)[: min(n_creators, n_topics)]
    rest = rng.choice(n_topics, size=n_creators - len(covered), p=topic_share)
    creator_topic = np.concatenate([covered, rest]).astype("int64")
    creator_pop = rng.lognormal(0.0, 1.0, size=n_creators)
    return creator_topic, creator_pop


def _items(
    rng: np.random.Generator,
    n_items: int,
    n_topics: int,
    creator_topic: np.ndarray,
    creator_pop: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Creator, topic, quality and normalised popularity of each item."""
    n_creators = len(creator_topic)
    output = rng.lognormal(0.0, 0.7, size=n_creators)  # some creators post far more
    item_creator = rng.choice(n_creators, size=n_items, p=output / output.sum())
    off_topic = rng.random(n_items) < 0.15  # creators sometimes post outside their niche
    item_topic = np.where(
        off_topic, rng.integers(0, n_topics, size=n_items), creator_topic[item_creator]
    ).astype("int64")
    quality = rng.normal(0.0, 0.5, size=n_items)
    # Lognormal popularity (sigma ~1.6 in total): heavy-tailed, and better items travel further.
    log_pop = np.log(creator_pop[item_creator]) + rng.normal(0.0, 1.2, n_items) + 0.5 * quality
    pop = np.exp(log_pop - log_pop.max())
    return item_creator, item_topic, quality, pop / pop.sum()


def _history_lengths(z: np.ndarray, mean_history: float, n_items: int) -> np.ndarray:
    """Heavy-tailed (lognormal) history lengths >= MIN_HISTORY with about the given mean."""
    extra_mean = float(mean_history) - MIN_HISTORY
    if extra_mean <= 0:
        lengths = np.full(len(z), MIN_HISTORY)
    else:
        sigma = 1.0
        mu = np.log(extra_mean) - sigma**2 / 2  # mean of exp(N(mu, sigma^2)) = extra_mean
        lengths = MIN_HISTORY + np.round(np.exp(mu + sigma * z)).astype("int64")
    return np.minimum(lengths, n_items).astype("int64")


def _sample_histories(
    rng: np.random.Generator,
    taste: np.ndarray,
    item_topic: np.ndarray,
    item_pop: np.ndarray,
    lengths: np.ndarray,
    n_topics: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw each user's items without repeats, p(item) ~ taste[topic(item)] * popularity.

    The draw is factorised (topic first, then item within the topic) so no
    users x items matrix is ever built. Duplicates are rejected and the shortfall redrawn
    in a few rounds; the rare user still short after that is topped up uniformly.

    Returns:
        0-based ``(user_index, item_index)`` arrays grouped by user in draw order.
    """
    n_users, n_items = len(lengths), len(item_topic)
    topic_items = [np.flatnonzero(item_topic == t) for t in range(n_topics)]
    topic_mass = np.array([item_pop[ix].sum() for ix in topic_items])
    topic_cdf = [np.cumsum(item_pop[ix]) / max(item_pop[ix].sum(), 1e-300) for ix in topic_items]
    user_topic = taste * topic_mass
    user_cdf = np.cumsum(user_topic / user_topic.sum(axis=1, keepdims=True), axis=1)

    need = lengths.copy()
    seen = np.empty(0, dtype="int64")  # sorted keys user * n_items + item
    for _ in range(_MAX_ROUNDS):
        if not need.any():
            break
        draws = np.where(need > 0, np.ceil(need * 1.5).astype("int64") + 2, 0)
        users = np.repeat(np.arange(n_users), draws)
        r = rng.random(len(users))
        topic = np.zeros(len(users), dtype="int64")
        for t in range(n_topics - 1):
            topic += r > user_cdf[users, t]
        items = np.empty(len(users), dtype="int64")
        for t in range(n_topics):
            mask = topic == t
            if mask.any():
                pick = np.searchsorted(topic_cdf[t], rng.random(int(mask.sum())), side="right")
                items[mask] = topic_items[t][np.minimum(pick, len(topic_items[t]) - 1)]
        keys = users * n_items + items
        _, first = np.unique(keys, return_index=True)
        first.sort()  # back to draw order, still grouped by user
        keys, users = keys[first], users[first]
        fresh = ~np.isin(keys, seen, assume_unique=True)
        keys, users = keys[fresh], users[fresh]
        rank = np.arange(len(users)) - np.searchsorted(users, users, side="left")
        take = rank < need[users]
        keys = keys[take]
        need -= np.bincount(users[take], minlength=n_users)
        # keys are fresh, so a sorted concatenation is the union (np.union1d is much slower).
        seen = np.sort(np.concatenate([seen, keys]))
    seen = _top_up(rng, seen, need, n_items)
    # Sorting by key (user-major) lost the draw order within a user; that order was random
    # anyway, so shuffle within users for a random sequence order.
    users, items = np.divmod(seen, n_items)
    perm = np.lexsort((rng.random(len(users)), users))
    return users[perm], items[perm]


def _top_up(
    rng: np.random.Generator, seen: np.ndarray, need: np.ndarray, n_items: int
) -> np.ndarray:
    """Fill the remaining need with uniformly drawn unseen items (rarely used)."""
    short = np.flatnonzero(need > 0)
    if not len(short):
        return seen
    extra = []
    for u in short:
        mine = seen[(seen >= u * n_items) & (seen < (u + 1) * n_items)] - u * n_items
        free = np.setdiff1d(np.arange(n_items), mine)
        extra.append(u * n_items + rng.choice(free, size=int(need[u]), replace=False))
    need[short] = 0
    return np.sort(np.concatenate([seen, *extra]))


def _order_within(users: np.ndarray) -> np.ndarray:
    """0-based position of each row within its (contiguous) user group."""
    return np.arange(len(users)) - np.searchsorted(users, users, side="left")


def _timestamps(rng: np.random.Generator, users: np.ndarray, n_users: int) -> np.ndarray:
    """Increasing per-user times: a random start in a 30-day window plus ~2h gaps."""
    start = _BASE_TIME + rng.integers(0, 30 * 86_400, size=n_users)
    gaps = rng.exponential(7_200.0, size=len(users))
    csum = np.cumsum(gaps)
    group_start = np.searchsorted(users, users, side="left")
    within = csum - csum[group_start] + gaps[group_start]
    return (start[users] + within).astype("int64")


def _items_frame(
    rng: np.random.Generator,
    topics: list[str],
    item_topic: np.ndarray,
    item_creator: np.ndarray,
    item_pop: np.ndarray,
    item_quality: np.ndarray,
    user_taste: np.ndarray,
) -> pd.DataFrame:
    n_items = len(item_topic)
    titles = _titles(rng, topics, item_topic)
    # Views follow popularity (mean 5k per item, mild noise); likes use the population's
    # average like probability, estimated on a sample of users to stay O(sample x items).
    views = np.maximum(
        1, np.round(item_pop * n_items * 5_000 * rng.lognormal(0.0, 0.2, n_items))
    ).astype("int64")
    sample = rng.choice(len(user_taste), size=min(256, len(user_taste)), replace=False)
    mean_like = _like_prob(
        user_taste[sample][:, item_topic], item_quality[None, :], len(topics)
    ).mean(axis=0)
    likes = rng.binomial(views, mean_like).astype("int64")
    frame = pd.DataFrame(
        {
            "item_id": np.arange(1, n_items + 1, dtype="int64"),
            "title": pd.Series(titles, dtype=object),
            "category": pd.Series(np.asarray(topics, dtype=object)[item_topic], dtype=object),
        }
    )
    frame["tags"] = tags_column(frame["title"])
    frame["creator_id"] = (item_creator + 1).astype("int64")
    frame["likes"] = likes
    frame["views"] = views
    return frame


def _titles(rng: np.random.Generator, topics: list[str], item_topic: np.ndarray) -> list[str]:
    """Template titles with the topic hashtag plus one topic-flavoured hashtag."""
    n = len(item_topic)
    template = rng.integers(0, len(_TEMPLATES), size=n)
    subject_r = rng.random(n)
    tag_r = rng.random(n)
    number = rng.choice(np.array([3, 5, 7, 10, 15, 30]), size=n)
    base = list(_TOPICS)
    out = []
    for j in range(n):
        name = topics[item_topic[j]]
        subjects, tags = _TOPICS[base[item_topic[j] % len(base)]]
        s = subjects[int(subject_r[j] * len(subjects))]
        text = _TEMPLATES[template[j]].format(n=number[j], s=s, S=s[:1].upper() + s[1:])
        out.append(f"{text} #{name} #{tags[int(tag_r[j] * len(tags))]}")
    return out


def _users_frame(
    rng: np.random.Generator, topics: list[str], user_taste: np.ndarray, z: np.ndarray
) -> pd.DataFrame:
    """Persona columns: age, gender, activity tier and top-2 interests."""
    n_users = len(user_taste)
    # Terciles of the activity draw z: history length is increasing in z.
    activity = np.where(z < -0.4307, "light", np.where(z > 0.4307, "heavy", "medium"))
    age = np.clip(np.round(rng.normal(29.0, 9.0, n_users)), 13, 70).astype("int64")
    gender = rng.choice(np.array(["F", "M", "X"]), size=n_users, p=[0.49, 0.49, 0.02])
    names = np.asarray(topics, dtype=object)
    top = np.argsort(-user_taste, axis=1, kind="stable")[:, :2]
    interests = names[top[:, 0]]
    if user_taste.shape[1] > 1:
        interests = interests + "|" + names[top[:, 1]]
    return pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1, dtype="int64"),
            "age": age,
            "gender": gender.astype(object),
            "activity": activity.astype(object),
            "interests": interests.astype(object),
        }
    )
