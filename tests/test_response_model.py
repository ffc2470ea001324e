"""The learned (non-LLM) response model: it learns from real logs and drives the simulator."""

import numpy as np
import pytest
from scipy.stats import spearmanr
from sqlalchemy import select
from vragent.environments.response_model import LogisticResponseModel, auc
from vragent.sandbox.config import parse_scenario
from vragent.sandbox.runner import start
from vragent.sandbox.store import Decision, Store
from vragent.sandbox.world import item_vectors, load_world, make_split, synthetic_world

from tests.conftest import tiny_scenario, write_scenario


def _fit(sc_dict):
    sc = parse_scenario(sc_dict, "s")
    ds, _ = load_world(sc)
    split = make_split(sc, ds)
    pop = split.train_interactions()["item_id"].value_counts().to_dict()
    model = LogisticResponseModel(item_vectors(sc, ds), pop, seed=0)
    report = model.fit(split.train)
    return sc, ds, split, model, report


def _heldout_auc(model, split, catalogue, seed=0):
    rng = np.random.default_rng(seed)
    scores, labels = [], []
    for u in split.users:
        hist = split.history(u, "valid")
        uv = model.user_vector(hist)
        negs = [i for i in rng.choice(catalogue, 12) if i not in set(hist)][:4]
        p = model.predict(np.stack([uv] * (1 + len(negs))), [split.test[u], *negs])
        scores += p.tolist()
        labels += [1] + [0] * len(negs)
    return auc(np.array(scores), np.array(labels))


def test_learned_model_ranks_real_next_items_above_random_ones():
    _sc, ds, split, model, report = _fit(tiny_scenario(
        dataset={"kind": "movielens-100k", "min_len": 5, "max_len": 50},
        metrics={"embeddings": "category"}))
    assert report.converged and report.train_auc > 0.7
    catalogue = ds.items["item_id"].to_numpy()
    held = _heldout_auc(model, split, catalogue)
    assert held > 0.75, held  # popularity and genre taste: far above chance (0.5)


def test_learned_model_follows_the_synthetic_truth():
    sc_dict = tiny_scenario(dataset={"kind": "synthetic",
                                     "synthetic": {"n_users": 600, "n_items": 200,
                                                   "mean_history": 15}})
    sc, _ds, split, model, _ = _fit(sc_dict)
    world = synthetic_world(sc)
    users = np.array(split.users[:50])
    items = np.arange(1, 201)
    truth = world.true_like_prob(users[:, None], items[None, :])
    pred = np.stack([model.predict(np.stack([model.user_vector(split.train[u])] * len(items)),
                                   items) for u in users])
    rho = spearmanr(truth.ravel(), pred.ravel()).statistic
    assert rho > 0.3, rho


def test_unfitted_model_refuses_to_predict():
    model = LogisticResponseModel({1: np.ones(3)}, {1: 2})
    with pytest.raises(RuntimeError, match="fit the response model first"):
        model.predict(np.ones((1, 3)), [1])
    with pytest.raises(ValueError, match="two or more items"):
        model.fit({1: [1]})


def _learned_run_decisions(tmp_path, trace_rate: float, *columns):
    """Run the tiny scenario on the learned model; return the chosen columns of its decisions."""
    sc = tiny_scenario(response_model="learned",
                       backend={"kind": "tiny", "trace_rate": trace_rate},
                       ip_agent={"enabled": False})
    path = write_scenario(tmp_path, sc)
    url = f"sqlite:///{tmp_path}/s.sqlite"
    run_id, _rows = start(str(path), url)
    with Store(url).session() as s:
        return s.execute(select(*columns).where(Decision.run_id == run_id)).all()


def test_simulation_runs_on_the_learned_model_without_llm_calls(tmp_path):
    decs = _learned_run_decisions(tmp_path, 0.0, Decision.model_id, Decision.tokens_in,
                                  Decision.p_like)
    assert decs and {d[0] for d in decs} == {"learned-logistic"}
    assert all(d[1] == 0 and 0 < d[2] < 1 for d in decs)
    assert len({round(d[2], 6) for d in decs}) > 10  # personal, not one constant


def test_response_model_decisions_store_a_prompt_only_when_one_was_read(tmp_path):
    """With a response model no LLM reads the score prompt, so none is built or stored; the
    traced decisions keep the chain-of-thought prompt the LLM did read."""
    decs = _learned_run_decisions(tmp_path, 0.4, Decision.traced, Decision.prompt,
                                  Decision.completion)
    traced = [d for d in decs if d.traced]
    untraced = [d for d in decs if not d.traced]
    assert traced and untraced
    assert all(d.prompt == "" and d.completion is None for d in untraced)
    assert all(d.prompt.startswith("<|system|>") and "User profile:" in d.prompt
               and d.completion is not None for d in traced)

