"""Training a grounded head policy on real logs: one seeded setup, the fit, the held-out check.

The pieces it trains with (prompts, examples, hidden states, :func:`~rl.grounded.fit_head`)
live in :mod:`rl.grounded`; this module is the job that puts them together for
``vragent rl train-head`` and the head scripts in ``scripts/``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ConfigDict, Field
from vragent.agents.backends.base import LLMBackend
from vragent.environments.grounding import CollaborativeGrounding
from vragent.environments.schema import Dataset
from vragent.rl.grounded import (
    Example,
    PromptMaker,
    distracted_users,
    example_prompts,
    fit_head,
    hidden_states,
    seeded_share,
    training_examples,
    without_last,
    written_preferences,
)
from vragent.rl.negatives import NegativeSampler
from vragent.sandbox.config import ConfigModel


class HeadTrainConfig(ConfigModel):
    """What ``vragent rl train-head`` trains.

    The users are split exactly as ``vragent rl build-data`` splits them (same seed and
    ``eval_users``), so a head trained here never saw the held-out users that ``rl eval``
    scores it on.

    Attributes:
        policy: the name to register.
        dataset: a dataset kind.
        dataset_path: its files (``None``: the embedded MovieLens-100K asset for
            ``movielens-100k``, else ``$VRAGENT_DATA_DIR``).
        seed: the split, negatives, grounding and solver seed.
        eval_users: held-out users (never trained on).
        train_users: most training users.
        history_len: history titles a prompt shows.
        c: the head's inverse L2 strength.
        min_len: users with fewer interactions are left out (as in build-data).
        layer: the decoder layers the head reads after (0: all). SmolLM2's layer 18 keeps
            the evidence best (docs/results.md) and runs 18 of 30 layers.
        check_users: held-out users whose rows (last item against a uniform and a
            popularity-matched unseen item) are scored after training; their AUCs go into the
            manifest (``metrics["held_out"]``), so a reproduction can be compared with it.
        distract: share of the training users whose rows are also read with one of
            :data:`DISTRACTORS` appended to every title (history included), same labels: a
            head that saw only clean titles changed 66 % of its decisions when an instruction
            was appended to every title (docs/results.md, "Injection").
        reason: share of the training users whose rows are also read after a preference the
            model wrote for them, as a reasoned decision (a trace, generate mode) reads them:
            a head trained on plain prompts only agreed with itself on 73 % of reasoned
            decisions (docs/results.md, "Traces that decide").
        reason_invariance: weight of the penalty on the head's change between a row read
            plainly and after the written preference (:func:`fit_head`'s ``invariances``).
        distract_invariance: the same between a row's clean and distracted reads.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: str = Field(min_length=1)
    dataset: str = "movielens-100k"
    dataset_path: str | None = None
    seed: int = 0
    eval_users: int = Field(500, ge=0)
    train_users: int = Field(2000, ge=1)
    history_len: int = Field(10, ge=0)
    c: float = Field(0.03, gt=0)
    min_len: int = Field(5, ge=2)
    layer: int = Field(18, ge=0)
    check_users: int = Field(100, ge=0)
    distract: float = Field(0.5, ge=0, le=1)
    reason: float = Field(0.5, ge=0, le=1)
    reason_invariance: float = Field(1000.0, ge=0)
    distract_invariance: float = Field(100.0, ge=0)


@dataclass(frozen=True)
class HeadSetup:
    """One seeded view of a dataset that a head policy's training, check and probes share.

    The users split as ``build-data`` splits them (the held-out users are the first of the
    seeded shuffle, whatever the train cap), the evidence is fitted without any user's last
    item, and the negatives come from one seeded sampler.
    """

    data: Dataset
    sequences: dict[int, list[int]]
    train: list[int]
    held_out: list[int]
    histories: dict[int, list[int]]  # every sequence without its last item
    grounding: CollaborativeGrounding
    sampler: NegativeSampler
    maker: PromptMaker


def head_setup(dataset: str = "movielens-100k", dataset_path: str | None = None, *,
               seed: int = 0, min_len: int = 5, eval_users: int = 500,
               train_users: int | None = None, history_len: int = 10) -> HeadSetup:
    """The :class:`HeadSetup` of ``dataset`` (MovieLens-100K: the embedded asset by default).

    The embedded asset, never ``$VRAGENT_DATA_DIR``'s copy, is the default: a policy's
    command then reproduces it on any machine from the same bytes.
    """
    from vragent.rl.datasets import RLDataConfig, load_source, split_users, user_samples
    from vragent.rl.negatives import item_popularity

    if dataset_path is None and dataset == "movielens-100k":
        from vragent.sandbox.assets import require_movielens

        dataset_path = str(require_movielens())
    data = load_source(RLDataConfig(dataset=dataset, dataset_path=dataset_path))
    sequences = data.sequences()
    train, held_out = split_users(user_samples(sequences, min_len=min_len), seed, eval_users,
                                  train_users)
    histories = without_last(sequences)
    grounding = CollaborativeGrounding(histories, data.items["item_id"].astype(int).tolist(),
                                       seed=seed)
    sampler = NegativeSampler(grounding.catalogue, item_popularity(histories), seed)
    return HeadSetup(data, sequences, train, held_out, histories, grounding, sampler,
                     PromptMaker(data, history_len))


def train_head_policy(cfg: HeadTrainConfig, registry: str | None = None,
                      progress: Callable[[int, int], None] | None = None) -> Path:
    """Train a grounded head policy on real logs and register it; return its folder."""
    import datetime as dt

    import torch
    from vragent.agents.backends.hf import HFBackend
    from vragent.sandbox.assets import require_smollm2
    from vragent.sandbox.policies import PolicyManifest, policy_dir, write_manifest
    from vragent.sandbox.runner import git_revision, package_versions

    torch.manual_seed(cfg.seed)
    setup = head_setup(cfg.dataset, cfg.dataset_path, seed=cfg.seed, min_len=cfg.min_len,
                       eval_users=cfg.eval_users, train_users=cfg.train_users,
                       history_len=cfg.history_len)
    sequences, train, held_out = setup.sequences, setup.train, setup.held_out
    grounding, sampler, maker = setup.grounding, setup.sampler, setup.maker
    examples = training_examples(sequences, train, sampler)
    backend = HFBackend(require_smollm2(), model_name="SmolLM2-135M-Instruct")
    states = hidden_states(backend, example_prompts(examples, grounding, maker), progress,
                           layer=cfg.layer)
    labels = [e.label for e in examples]
    # Every variant re-reads rows the plain pass read, so each pair's difference is what the
    # head must not move with (fit_head's invariances).
    blocks, pairs = [states], []
    distractors = distracted_users(train, cfg.distract, cfg.seed)
    reasoners = seeded_share(train, cfg.reason, cfg.seed + 1)
    prefs = written_preferences(backend, examples, maker, reasoners, seed=cfg.seed) \
        if reasoners else {}
    for kw, chosen, weight in ((dict(distractors=distractors), distractors,
                                cfg.distract_invariance),
                               (dict(preferences=prefs), prefs, cfg.reason_invariance)):
        rows = [k for k, e in enumerate(examples) if e.user_id in chosen]
        if not rows:
            continue
        again = hidden_states(backend, example_prompts([examples[k] for k in rows], grounding,
                                                       maker, **kw), layer=cfg.layer)
        blocks.append(again)
        labels += [examples[k].label for k in rows]
        pairs.append((again - states[rows], weight))
    head = fit_head(np.concatenate(blocks), labels, c=cfg.c, seed=cfg.seed, layer=cfg.layer,
                    invariances=pairs)
    folder = policy_dir(cfg.policy, registry)
    head.save(folder)
    backend.score_head = head
    check = held_out_check(backend, grounding, maker, sequences,
                           sorted(held_out)[: cfg.check_users], sampler)
    stamp = dt.datetime.now(dt.UTC)
    manifest = PolicyManifest(
        name=cfg.policy, algo="head", base_model="smollm2",
        model_id=f"{cfg.policy}@{stamp:%Y%m%dT%H%M%S}", thinking=False,
        data={"dataset": cfg.dataset, "train_users": len(train), "held_out_users": len(held_out),
              "examples": len(labels)},
        config={"grounding": True, **{k: v for k, v in cfg.model_dump().items()
                                      if k not in ("policy", "dataset_path")}},
        created_at=stamp.isoformat(), git_revision=git_revision(),
        versions=package_versions(), metrics={"held_out": check})
    write_manifest(manifest, registry)
    return folder


def held_out_check(backend: LLMBackend, grounding: CollaborativeGrounding, maker: PromptMaker,
                   sequences: Mapping[int, Sequence[int]], users: Sequence[int],
                   sampler: NegativeSampler) -> dict[str, float | int]:
    """AUC of a head policy on held-out users' last items against two kinds of negatives.

    The same rows as :func:`training_examples` makes, for users the head never saw; the
    evidence comes from ``grounding`` (fitted without any user's last item).
    """
    examples = training_examples(sequences, users, sampler)
    scores = backend.score(example_prompts(examples, grounding, maker), ("Yes", "No"))
    p = np.array([s.probs["Yes"] for s in scores])
    aucs = protocol_aucs(examples, p)
    return {"users": len({e.user_id for e in examples}),
            **{f"auc_{k}": round(v, 4) for k, v in aucs.items()}}


def protocol_aucs(examples: Sequence[Example], scores: np.ndarray) -> dict[str, float]:
    """Pairwise AUC of ``scores`` per negative kind of :func:`training_examples`' rows."""
    from vragent.rl.metrics import pairwise_auc

    out = {}
    for proto in ("random", "popular"):
        keep = [k for k, e in enumerate(examples) if e.protocol in ("positive", proto)]
        out[proto] = float(pairwise_auc([examples[k].label for k in keep], scores[keep]))
    return out
