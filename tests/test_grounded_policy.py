"""The grounded policy's parts: evidence, the learned head, head policies in the simulator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from vragent.agents.backends.base import ChatPrompt
from vragent.agents.policy_head import ScoreHead
from vragent.agents.prompts import PersonaView, score_prompt
from vragent.environments.datasets import make_synthetic_world
from vragent.environments.grounding import CollaborativeGrounding, Evidence
from vragent.environments.recommenders.neighbors import ItemKNNRecommender
from vragent.rl.grounded import (
    GroundedPolicyScorer,
    PromptMaker,
    example_prompts,
    fit_head,
    hidden_states,
    training_examples,
    without_last,
)
from vragent.rl.negatives import NegativeSampler
from vragent.sandbox.policies import PolicyManifest, load_policy, write_manifest

from tests.conftest import tiny_scenario


@pytest.fixture(scope="module")
def world():
    return make_synthetic_world(n_users=120, n_items=80, mean_history=12, seed=3)


@pytest.fixture(scope="module")
def sequences(world):
    return world.dataset.sequences()


@pytest.fixture(scope="module")
def grounding(sequences):
    return CollaborativeGrounding(without_last(sequences), seed=0)


def test_knn_similarity_to_matches_the_fitted_users_scores(sequences):
    frame = pd.DataFrame([(u, i, k) for u, s in sequences.items() for k, i in enumerate(s)],
                         columns=["user_id", "item_id", "order"])
    knn = ItemKNNRecommender(seed=0).fit(frame)
    user = next(iter(sequences))
    items = knn.item_ids
    mine = knn.similarity_to(sequences[user], items)
    full = knn.score([user])[0]
    connected = mine > 0
    assert connected.any()
    # Where the history says something, the recommender's score is the same sum.
    np.testing.assert_allclose(mine[connected], full[connected], rtol=1e-5)
    assert knn.similarity_to([], items).sum() == 0
    assert knn.similarity_to(sequences[user], [10**9])[0] == 0  # unknown item


def test_evidence_is_percentiles_and_separates_real_next_items(sequences, grounding):
    catalogue = grounding.catalogue
    rng = np.random.default_rng(0)
    real, rand = [], []
    for s in sequences.values():
        if len(s) < 3:
            continue
        pos = grounding.evidence(s[:-1], [s[-1]])[0]
        neg = grounding.evidence(s[:-1], [int(rng.choice(catalogue))])[0]
        real.append(pos.taste + pos.similar)
        rand.append(neg.taste + neg.similar)
        for ev in (pos, neg):
            assert all(0 <= v <= 99 for v in (ev.taste, ev.similar, ev.popularity))
    # The synthetic world's users follow their tastes: the logs' evidence must show it.
    assert np.mean(real) > np.mean(rand) + 10
    line = Evidence(87, 12, 3).line()
    assert line == "Evidence: taste 87, similar 12, popularity 3"


def test_evidence_follows_the_candidate_in_the_score_prompt():
    persona = PersonaView("a viewer", ("Film A",))
    plain = score_prompt(persona, "Film B")
    grounded = score_prompt(persona, "Film B", evidence=Evidence(50, 60, 70))
    # The shared prefix (system and user turns) is unchanged: prefix reuse still covers it.
    assert plain.messages == grounded.messages
    assert grounded.assistant_prefix.endswith("popularity 70\nPrediction:")
    assert "Film B" in grounded.assistant_prefix


def test_hidden_states_and_head_match_the_naive_forward(tiny_backend):
    persona = PersonaView("a viewer of films", ("Alpha", "Beta", "Gamma"))
    prompts = [score_prompt(persona, f"Candidate {k}", evidence=Evidence(k, 2 * k, 3 * k))
               for k in range(6)]
    h = tiny_backend.hidden_states(prompts)
    width = tiny_backend.model.config.hidden_size
    assert h.shape == (6, width)
    rng = np.random.default_rng(1)
    head = ScoreHead(rng.normal(size=width), 0.3, rng.normal(size=width),
                     rng.uniform(0.5, 2, size=width))
    tiny_backend.score_head = head
    try:
        fast = tiny_backend.score(prompts)
        naive = tiny_backend.score_naive(prompts)
    finally:
        tiny_backend.score_head = None
    expect = 1 / (1 + np.exp(-head.logits(h).numpy()))
    got = np.array([s.probs["Yes"] for s in fast])
    np.testing.assert_allclose(got, expect, atol=1e-4)
    np.testing.assert_allclose(got, [s.probs["Yes"] for s in naive], atol=1e-4)


def test_head_round_trips_and_rejects_bad_files(tmp_path):
    head = ScoreHead(np.arange(4.0), -0.5, np.ones(4), np.full(4, 2.0))
    head.save(tmp_path)
    back = ScoreHead.load(tmp_path)
    z = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_allclose(back.logits(z).numpy(), head.logits(z).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="no score head"):
        ScoreHead.load(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "head.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="head"):
        ScoreHead.load(tmp_path / "bad")
    with pytest.raises(ValueError, match="positive scale"):
        ScoreHead(np.ones(2), 0.0, np.zeros(2), np.zeros(2))


def test_head_fitted_on_states_separates_training_labels():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=400).astype(bool)
    x = rng.normal(size=(400, 16))
    x[:, 3] += 2.0 * y  # one unit carries the label
    head = fit_head(x, y, c=1.0)
    z = head.logits(torch.from_numpy(x)).numpy()
    assert z[y].mean() > z[~y].mean() + 1.0



def test_an_invariance_penalty_stops_the_head_moving_with_a_paired_shift():
    """Unit 5 carries the label weakly; unit 7 carries it too, but a second read of the same
    rows (a "distracted" one) shifts unit 7 by row-specific noise. A plain head leans on
    unit 7 and changes decisions between the reads; with the pairs' differences penalised
    it moves its weight off unit 7 and the reads agree, with the labels still separated."""
    rng = np.random.default_rng(1)
    n = 600
    y = rng.integers(0, 2, size=n).astype(bool)
    x = rng.normal(size=(n, 12))
    x[:, 5] += 0.8 * y
    x[:, 7] += 1.5 * y
    shifted = x.copy()
    shifted[:, 7] += rng.normal(scale=3.0, size=n)
    states, labels = np.concatenate([x, shifted]), np.concatenate([y, y])

    def flips(head):
        a = head.logits(torch.from_numpy(x)).numpy() > 0
        b = head.logits(torch.from_numpy(shifted)).numpy() > 0
        return float(np.mean(a != b))

    plain = fit_head(states, labels, c=1.0)
    fair = fit_head(states, labels, c=1.0, invariances=[(shifted - x, 1000.0)])
    assert abs(fair.weight[7]) < 0.1 * abs(plain.weight[7])
    assert flips(fair) < 0.02 < 0.1 < flips(plain)
    z = fair.logits(torch.from_numpy(x)).numpy()
    assert z[y].mean() > z[~y].mean() + 0.5
    # A zero weight is the plain head; a negative one is refused.
    same = fit_head(states, labels, c=1.0, invariances=[(shifted - x, 0.0)])
    np.testing.assert_allclose(same.weight, plain.weight, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="invariance weight"):
        fit_head(states, labels, invariances=[(shifted - x, -1.0)])

def _tiny_head_policy(tmp_path, tiny_backend, sequences, grounding, world) -> str:
    """Train a head on the tiny model's states of real training examples; register it."""
    users = sorted(sequences)[:30]
    pop = pd.Series(pd.Series([i for s in sequences.values() for i in s]).value_counts())
    sampler = NegativeSampler(grounding.catalogue, pop, seed=0)
    examples = training_examples(sequences, users, sampler)
    maker = PromptMaker(world.dataset)
    states = hidden_states(tiny_backend, example_prompts(examples, grounding, maker))
    head = fit_head(states, [e.label for e in examples], c=0.1)
    folder = tmp_path / "policies" / "tiny-grounded"
    head.save(folder)
    write_manifest(PolicyManifest(name="tiny-grounded", algo="head", base_model="tiny",
                                  model_id="tiny-grounded-test", config={"grounding": True}),
                   tmp_path / "policies")
    return "tiny-grounded"


def test_grounded_scorer_reads_the_head(tmp_path, tiny_backend, sequences, grounding, world):
    name = _tiny_head_policy(tmp_path, tiny_backend, sequences, grounding, world)
    pol = load_policy(name, tmp_path / "policies")
    assert pol.is_head and pol.grounded
    tiny_backend.score_head = ScoreHead.load(pol.path)
    try:
        scorer = GroundedPolicyScorer(tiny_backend, grounding, without_last(sequences),
                                      PromptMaker(world.dataset))
        user = sorted(sequences)[40]
        rows = [{"task": "selection", "group_id": "g", "user_id": user,
                 "item_ids": [sequences[user][-1], 1, 2], "history_ids": sequences[user][-4:-1]}]
        scores = scorer.item_scores(rows)
    finally:
        tiny_backend.score_head = None
    assert len(scores) == 1 and scores[0].shape == (3,)
    assert ((scores[0] > 0) & (scores[0] < 1)).all()


def test_a_head_policy_runs_in_the_simulator_with_evidence(tmp_path, monkeypatch, tiny_backend,
                                                           sequences, grounding, world):
    import yaml
    from sqlalchemy import select
    from vragent.sandbox.config import parse_scenario
    from vragent.sandbox.runner import create_run, execute
    from vragent.sandbox.store import Decision, Store

    name = _tiny_head_policy(tmp_path, tiny_backend, sequences, grounding, world)
    monkeypatch.setenv("VRAGENT_POLICIES", str(tmp_path / "policies"))
    sc = parse_scenario(tiny_scenario(policy=name, ip_agent={"enabled": False},
                                      simulation={"steps": 2, "slate_size": 3,
                                                  "users_per_task": 2}))
    store = Store(f"sqlite:///{tmp_path / 'run.sqlite'}")
    run_id = create_run(store, sc, yaml.safe_dump(sc.model_dump(mode="json")), None)
    execute(store, run_id)
    with store.session() as s:
        decisions = s.scalars(select(Decision).where(Decision.run_id == run_id)).all()
    assert decisions
    assert {d.model_id for d in decisions} == {"tiny-grounded-test"}
    prompts = [d.prompt for d in decisions if not d.traced]
    assert prompts and all("Evidence: taste " in p for p in prompts)
    assert all(0 < d.p_like < 1 for d in decisions)


def test_a_head_policy_needs_an_in_process_backend(tmp_path, monkeypatch, tiny_backend,
                                                   sequences, grounding, world):
    from vragent.sandbox.backend_factory import policy_backend
    from vragent.sandbox.config import Scenario

    name = _tiny_head_policy(tmp_path, tiny_backend, sequences, grounding, world)
    monkeypatch.setenv("VRAGENT_POLICIES", str(tmp_path / "policies"))
    sc = Scenario.model_validate(tiny_scenario(policy=name, backend={"kind": "constant"}))
    with pytest.raises(ValueError, match="hidden state"):
        policy_backend(sc)


def test_example_prompts_share_one_evidence_call_per_user(sequences, grounding, world):
    maker = PromptMaker(world.dataset)
    user = sorted(sequences)[0]
    hist = tuple(sequences[user][:-1])
    from vragent.rl.grounded import Example

    examples = [Example(user, hist, i, False, "x") for i in (1, 2, 3)]
    prompts = example_prompts(examples, grounding, maker)
    assert len(prompts) == 3 and all(isinstance(p, ChatPrompt) for p in prompts)
    assert len({p.messages for p in prompts}) == 1  # one shared prefix
    evs = grounding.evidence(hist, [1, 2, 3])
    for p, ev in zip(prompts, evs, strict=True):
        assert ev.line() in p.assistant_prefix


def test_distracted_training_users_see_the_text_on_every_title_others_do_not(
        sequences, grounding, world):
    """Training against injected titles (issue 18, acceptance 6): a seeded share of the users
    carries one distractor on all its titles, history and candidate alike."""
    from vragent.agents.text_safety import clean_item_text
    from vragent.rl.grounded import DISTRACTORS, distracted_users

    users = sorted(sequences)[:20]
    chosen = distracted_users(users, 0.5, seed=4)
    assert len(chosen) == 10 and set(chosen) <= set(users)
    assert chosen == distracted_users(users, 0.5, seed=4) != distracted_users(users, 0.5, seed=5)
    assert set(chosen.values()) <= set(DISTRACTORS)
    assert distracted_users(users, 0.0, seed=4) == {}
    # The probe's own sentence is never trained on (scripts/injection_probe.py).
    assert not any("Ignore previous instructions" in d for d in DISTRACTORS)
    from vragent.rl.negatives import item_popularity

    sampler = NegativeSampler(grounding.catalogue, item_popularity(without_last(sequences)), 0)
    examples = training_examples(sequences, users, sampler)
    prompts = example_prompts(examples, grounding, PromptMaker(world.dataset), chosen)
    for e, p in zip(examples, prompts, strict=True):
        user_turn, candidate = p.messages[1][1], p.assistant_prefix
        if e.user_id in chosen:  # inside the title's quotes, whose '"' became "'"
            text = clean_item_text(chosen[e.user_id]).text.replace('"', "'")
            assert text in candidate and user_turn.count(text) >= 2
        else:
            assert not any(clean_item_text(d).text.replace('"', "'") in user_turn + candidate
                           for d in DISTRACTORS)


def test_a_head_on_an_earlier_layer_runs_only_that_many_layers(tiny_backend):
    """hidden_states(layer=k) is the final norm of the k-th layer's output of the full model,
    and scoring with a layer-k head matches it through the prefix path and the naive path."""
    persona = PersonaView("a viewer of films", ("Alpha", "Beta", "Gamma"))
    prompts = [score_prompt(persona, f"Candidate {k}", evidence=Evidence(k, 2 * k, 3 * k))
               for k in range(5)]
    body = tiny_backend.model.model
    assert len(body.layers) >= 2
    enc = tiny_backend.tokenizer([tiny_backend.render(p) for p in prompts[:1]],
                                 add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        states = body(**enc, output_hidden_states=True).hidden_states
        expect = body.norm(states[1])[0, -1].float()
    got = tiny_backend.hidden_states(prompts, layer=1)
    torch.testing.assert_close(got[0], expect, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, tiny_backend.hidden_states(prompts), atol=1e-3)
    assert len(body.layers) == tiny_backend.model.config.num_hidden_layers  # model untouched
    width = tiny_backend.model.config.hidden_size
    rng = np.random.default_rng(2)
    head = ScoreHead(rng.normal(size=width), -0.2, rng.normal(size=width),
                     rng.uniform(0.5, 2, size=width), layer=1)
    tiny_backend.score_head = head
    try:
        fast = [s.probs["Yes"] for s in tiny_backend.score(prompts)]
        naive = [s.probs["Yes"] for s in tiny_backend.score_naive(prompts)]
    finally:
        tiny_backend.score_head = None
    want = 1 / (1 + np.exp(-head.logits(got).numpy()))
    np.testing.assert_allclose(fast, want, atol=1e-4)
    np.testing.assert_allclose(naive, want, atol=1e-4)


def test_head_layer_round_trips_and_must_exist(tmp_path, tiny_backend):
    from vragent.agents.backends.depth import truncated_body

    head = ScoreHead(np.arange(4.0), 0.1, np.zeros(4), np.ones(4), layer=3)
    head.save(tmp_path)
    assert ScoreHead.load(tmp_path).layer == 3
    with pytest.raises(ValueError, match="layer 99"):
        truncated_body(tiny_backend.model.model, 99)


BUNDLED_POLICY = "grounded-smollm2"


@pytest.mark.slow
def test_the_bundled_policy_reproduces_from_its_seed(tmp_path):
    """The shipped head is what its manifest's command trains, and scores the same.

    ``vragent rl train-head`` with the manifest's configuration (docs/rl.md gives the command)
    is rerun from scratch: the head's weights and its held-out AUCs must match the shipped ones.
    Then ``rl eval`` scores the reproduced policy beside the baselines (the LLM tasks only).
    """
    import subprocess
    import sys

    from vragent.sandbox.policies import BUNDLED

    shipped = load_policy(BUNDLED_POLICY, tmp_path / "empty-registry")
    assert shipped.path.parent == BUNDLED and shipped.is_head and shipped.grounded
    assert sum(f.stat().st_size for f in shipped.path.iterdir()) < 2_000_000  # a small artefact
    conf = shipped.manifest.config
    assert conf["dataset"] == "movielens-100k" and conf["min_len"] == 5  # the CLI's defaults
    reg = tmp_path / "reg"
    args = ["--policy", "reproduced", "--registry", str(reg)]
    for key in ("seed", "eval_users", "train_users", "c", "layer", "history_len",
                "check_users", "distract", "reason", "reason_invariance",
                "distract_invariance"):
        args += [f"--{key.replace('_', '-')}", str(conf[key])]
    done = subprocess.run([sys.executable, "-m", "vragent.sandbox.cli", "rl", "train-head", *args],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = load_policy("reproduced", reg).path
    ours, theirs = ScoreHead.load(folder), ScoreHead.load(shipped.path)
    assert ours.layer == theirs.layer == 18
    np.testing.assert_allclose(ours.mean, theirs.mean, rtol=1e-3, atol=1e-3)
    # lbfgs is deterministic; float32 states from another CPU's kernels differ in the last bits.
    assert np.corrcoef(ours.weight, theirs.weight)[0, 1] > 0.999
    got = load_policy("reproduced", reg).manifest.metrics["held_out"]
    want = shipped.manifest.metrics["held_out"]
    assert got["users"] == want["users"]
    for key in ("auc_random", "auc_popular"):
        assert got[key] == pytest.approx(want[key], abs=0.005), key

    # rl eval scores a head policy on held-out rows beside the baselines, on the same rows.
    from vragent.rl.datasets import RLDataConfig, build_and_save
    from vragent.rl.policy_eval import EvalConfig, run_eval

    cfg = RLDataConfig(dataset="synthetic", eval_users=20, train_users=24, seed=0,
                       protocols=("random",), train_protocols=("random",), judgement_ms=(1,))
    build_and_save(cfg, tmp_path / "data")
    table, _ = run_eval(EvalConfig(data=str(tmp_path / "data"), policies=("reproduced",),
                                   base_model=None, generate_groups=0, registry=str(reg),
                                   threads=1, recommenders=("mf",), llm_tasks=("judgement",)),
                        log=lambda *a: None)
    # --llm-task applies to head policies too: the baselines run selection, the policy does not.
    assert table[(table.model == "reproduced") & (table.task == "selection")].empty
    assert not table[table.task == "selection"].empty
    mine = table[(table.model == "reproduced") & (table.task == "judgement")]
    assert len(mine) == 1 and mine.iloc[0]["n"] == 40
    assert 0.0 <= mine.iloc[0]["auc"] <= 1.0 and mine.iloc[0]["vs"] is not None


def _random_head(backend, seed: int = 0) -> ScoreHead:
    width = backend.model.config.hidden_size
    rng = np.random.default_rng(seed)
    return ScoreHead(rng.normal(size=width), 0.0, np.zeros(width), np.ones(width))


@pytest.mark.parametrize("mode", ["generate", "score"])
def test_a_head_policy_decides_after_the_preference_it_wrote(tiny_backend, mode):
    """Traces that decide: the model writes one preference per slate, each candidate is read
    after it, and the head's p(Yes) from that state is the stored answer and the action's
    source (generate: the answer; score: the seeded draw from p)."""
    from vragent.agents.parsing import parse_judgement
    from vragent.agents.prompts import PREFERENCE_PREFIX, PersonaView
    from vragent.agents.us_agent import Candidate, SlateRequest, USAgent

    calls = []
    inner_generate = tiny_backend.generate

    def counting_generate(prompts, **kw):
        calls.append([p.assistant_prefix for p in prompts])
        return inner_generate(prompts, **kw)

    requests = [SlateRequest(arm=arm, user_id=u, persona=PersonaView(f"user {u}", ("A", "B")),
                             candidates=[Candidate(i, f'"Film {i}"', k, 0.0)
                                         for k, i in enumerate((u, u + 1, u + 2))])
                for arm in ("a", "b") for u in (1, 2)]
    tiny_backend.score_head = _random_head(tiny_backend)
    tiny_backend.generate = counting_generate
    try:
        agent = USAgent(tiny_backend, mode=mode, seed=3, trace_rate=1.0 if mode == "score" else 0,
                        preference_tokens=8)
        outcomes = agent.decide(requests, step=0)
        agent_untraced = USAgent(tiny_backend, mode="score", seed=3)
        plain = agent_untraced.decide(requests, step=0)
    finally:
        tiny_backend.score_head = None
        tiny_backend.generate = inner_generate
    assert calls and len(calls[0]) == len(requests)  # one preference per slate, one call
    assert all(p == PREFERENCE_PREFIX for p in calls[0])
    assert len(calls) == 1  # the untraced score-mode agent generated nothing
    for out in outcomes:
        for d in out.decisions:
            parsed = parse_judgement(d.completion, "<answer>")
            assert parsed.prediction == ("Yes" if d.p_like > 0.5 else "No")
            # The stored reasoning is the whole preference sentence the candidate was read after.
            assert d.think is None or (d.think.startswith("This user likes")
                                       and d.think == parsed.user_preference)
            # Once in the system prompt's format line, once where the model wrote it.
            assert d.prompt.count("(1) User_preference:") == 2 and d.traced
            assert d.prompt.rstrip().endswith("Prediction:")
            if mode == "generate":
                assert (d.action != "skip") == (parsed.prediction == "Yes")
    # The plain decision is read without a preference: a different state, another p.
    reasoned = [d.p_like for o in outcomes for d in o.decisions]
    untraced = [d.p_like for o in plain for d in o.decisions]
    assert all(d.prompt.count("(1) User_preference:") == 1 for o in plain for d in o.decisions)
    assert reasoned != untraced
