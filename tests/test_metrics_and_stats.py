"""A/B metrics against hand-computed cases; paired statistics against scipy."""

import math

import numpy as np
import pytest
from scipy import stats
from vragent.environments.metrics import (
    catalogue_coverage,
    coverage_rows,
    gini,
    gini_rows,
    intra_list_diversity,
    like_calibration_rows,
    novelty,
    profile_entropy,
)
from vragent.sandbox.stats import paired_bootstrap, paired_permutation_p, power_table, users_needed


def test_coverage_and_exposure():
    slates = [[1, 2, 3], [2, 3, 4]]
    assert catalogue_coverage(slates, 10) == 0.4
    with pytest.raises(ValueError):
        catalogue_coverage(slates, 0)


def test_intra_list_diversity_by_hand():
    emb = {1: np.array([1.0, 0.0]), 2: np.array([0.0, 1.0]), 3: np.array([1.0, 0.0])}
    # slate 1: pairs (1,2) distance 1, (1,3) 0, (2,3) 1 -> 2/3; slate 2: (1,3) -> 0
    assert intra_list_diversity([[1, 2, 3], [1, 3]], emb) == pytest.approx((2 / 3 + 0) / 2)
    assert intra_list_diversity([[1], [9, 8]], emb) is None


def test_intra_list_diversity_in_blocks_equals_slate_by_slate():
    """Slates of mixed lengths, more than one numpy block of them, a zero vector and items
    without a vector: the blocked computation equals the mean of per-slate means."""
    from vragent.environments.metrics import ILD_BLOCK_SLATES

    rng = np.random.default_rng(0)
    emb = {i: rng.standard_normal(5) for i in range(1, 200)}
    emb[7] = np.zeros(5)
    slates = [list(rng.choice(np.arange(1, 260), size=rng.integers(1, 8), replace=False))
              for _ in range(ILD_BLOCK_SLATES + 900)]

    def one(slate):
        vecs = [emb[i] / (np.linalg.norm(emb[i]) or 1.0) for i in slate if i in emb]
        if len(vecs) < 2:
            return None
        return np.mean([1 - vecs[a] @ vecs[b] for a in range(len(vecs))
                        for b in range(a + 1, len(vecs))])

    per_slate = [v for v in map(one, slates) if v is not None]
    assert intra_list_diversity(slates, emb) == pytest.approx(np.mean(per_slate), rel=1e-12)


def test_novelty_by_hand():
    pop = {1: 50, 2: 25}
    # -log2(50/100) = 1, -log2(25/100) = 2, unseen item: -log2(1/100)
    assert novelty([[1, 2], [3]], pop, 100) == pytest.approx((1 + 2 + math.log2(100)) / 3)


def test_gini_by_hand():
    assert gini([5, 5, 5, 5]) == 0.0
    assert gini([0, 0, 0, 10]) == pytest.approx(0.75)  # (n-1)/n for one item taking all
    # x = 1,2,3: sum((2k-4) x_k) = -2*1 + 0*2 + 2*3 = 4; / (3*6) = 2/9
    assert gini([3, 1, 2]) == pytest.approx(2 / 9)
    assert gini([]) == 0.0


def test_gini_rows_pad_each_row_to_the_catalogue():
    """A row of the shown items' counts, padded to the catalogue, is that catalogue's Gini."""
    rng = np.random.default_rng(0)
    shown = rng.integers(0, 9, size=(5, 7)).astype(float)
    shown[2] = 0.0
    padded = np.hstack([shown, np.zeros((5, 13))])
    np.testing.assert_allclose(gini_rows(shown, 20), [gini(r) for r in padded])
    np.testing.assert_allclose(gini_rows(shown), [gini(r) for r in shown])
    with pytest.raises(ValueError, match="smaller"):
        gini_rows(shown, 3)


def test_row_metrics_are_the_plain_metrics_of_each_row():
    """The A/B bootstrap's per-resample coverage and calibration equal the plain functions."""
    rng = np.random.default_rng(1)
    shown = rng.integers(0, 4, size=(6, 5)).astype(float)
    likes = np.minimum(shown, rng.integers(0, 3, size=(6, 5)))
    real = np.array([0.1, np.nan, 0.4, 0.0, 0.8])
    cal = like_calibration_rows(shown, likes, real)
    cov = coverage_rows(shown, 12)
    for k in range(6):
        slates = [[i for i in range(5) for _ in range(int(shown[k, i]))]]
        assert cov[k] == pytest.approx(catalogue_coverage(slates, 12))
        known = [i for i in range(5) if not np.isnan(real[i]) and shown[k, i] > 0]
        total = sum(shown[k, i] for i in known)
        want = (sum(abs(likes[k, i] / shown[k, i] - real[i]) * shown[k, i] for i in known)
                / total if total else None)
        assert (np.isnan(cal[k]) and want is None) or cal[k] == pytest.approx(want)
    assert np.isnan(like_calibration_rows(shown, likes, np.full(5, np.nan))).all()
    with pytest.raises(ValueError, match="positive"):
        coverage_rows(shown, 0)


def test_profile_entropy_by_hand():
    assert profile_entropy(["Drama", "Drama"]) == 0.0
    assert profile_entropy(["Drama|Comedy"]) == pytest.approx(1.0)
    assert profile_entropy(["a", "b", "c", "d"]) == pytest.approx(2.0)
    assert profile_entropy([]) == 0.0


def test_like_rate_calibration_by_hand():
    # Three items shown 4, 4, 2 times and liked 1, 3, 1: rates 0.25, 0.75; item 3 has no real
    # rate, so it does not count.
    shown, likes = np.array([[4.0, 4.0, 2.0]]), np.array([[1.0, 3.0, 1.0]])
    got = like_calibration_rows(shown, likes, np.array([0.05, 0.5, np.nan]))
    assert got[0] == pytest.approx((0.2 * 4 + 0.25 * 4) / 8)
    assert np.isnan(like_calibration_rows(shown, likes, np.full(3, np.nan))[0])


def test_paired_bootstrap_matches_scipy():
    rng = np.random.default_rng(1)
    a = rng.normal(0.3, 1, 200)
    b = a - rng.normal(0.2, 0.5, 200)
    ours = paired_bootstrap(a, b, n_resamples=20_000, seed=3)
    ref = stats.bootstrap((a - b,), np.mean, n_resamples=20_000, method="percentile",
                          random_state=4).confidence_interval
    assert ours.mean == pytest.approx(np.mean(a - b))
    assert ours.low == pytest.approx(ref.low, abs=0.01)
    assert ours.high == pytest.approx(ref.high, abs=0.01)
    assert ours.low < ours.mean < ours.high and ours.n == 200
    with pytest.raises(ValueError):
        paired_bootstrap([1, 2], [1])
    one = paired_bootstrap([0.7], [0.2])  # one pair: nothing to resample
    assert (one.mean, one.low, one.high, one.n) == pytest.approx((0.5, 0.5, 0.5, 1))


def test_paired_permutation_matches_scipy_exactly_and_by_sampling():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.5, 1, 10), rng.normal(0, 1, 10)

    def mean_diff(x, y):
        return np.mean(x - y)

    # By hand: d = (1, 1, 1) has 8 sign patterns; only the two all-equal ones reach |mean| = 1.
    assert paired_permutation_p([2, 2, 2], [1, 1, 1]) == pytest.approx(0.25)
    assert paired_permutation_p([1, 2], [1, 2]) == pytest.approx(1.0)
    ref = stats.permutation_test((a, b), mean_diff, permutation_type="samples",
                                 n_resamples=np.inf).pvalue
    assert paired_permutation_p(a, b) == pytest.approx(ref)
    a2, b2 = rng.normal(0.3, 1, 40), rng.normal(0, 1, 40)
    ref2 = stats.permutation_test((a2, b2), mean_diff, permutation_type="samples",
                                  n_resamples=20_000, random_state=5).pvalue
    assert paired_permutation_p(a2, b2, n_resamples=20_000, seed=6) == pytest.approx(ref2,
                                                                                    abs=0.01)


def test_power_table():
    # z_{0.975} + z_{0.8} = 1.95996 + 0.84162 = 2.80158; (2.80158 * 1 / 0.1)^2 = 784.9 -> 785
    assert users_needed(1.0, 0.1) == 785
    rows = power_table(1.0, [0.1, 0.2])
    assert rows[0]["power 0.8"] == 785 and rows[1]["power 0.8"] == 197
    assert rows[0]["power 0.9"] > rows[0]["power 0.8"]
    with pytest.raises(ValueError):
        users_needed(1.0, 0.0)


def test_stratified_population_has_light_and_heavy_users():
    from vragent.environments.splits import Split
    from vragent.sandbox.world import sample_population

    # 30 users with train histories of 1..30 items.
    split = Split(train={u: list(range(u)) for u in range(1, 31)}, valid={}, test={},
                  dropped_users=0)
    picked = sample_population(split, 9, "stratified", seed=0)
    assert len(picked) == len(set(picked)) == 9
    lengths = sorted(len(split.train[u]) for u in picked)
    assert sum(n <= 10 for n in lengths) == 3 and sum(n > 20 for n in lengths) == 3
    assert picked == sample_population(split, 9, "stratified", seed=0)
    assert picked != sample_population(split, 9, "stratified", seed=1)
    assert len(sample_population(split, 10, "stratified", seed=0)) == 10


def test_cowatch_graph_links_users_who_watched_the_same_items():
    from vragent.sandbox.population import cowatch_graph

    hist = {1: [10, 11, 12], 2: [10, 11], 3: [11, 12, 13], 4: [50, 51], 5: [50, 51, 52], 6: [99]}
    g = cowatch_graph(hist, k=1)
    assert set(g.nodes) == {1, 2, 3, 4, 5, 6}
    # 1: J(1,2)=2/3, J(1,3)=2/4 -> 2; 2: J(2,1)=2/3 -> 1; 3: J(3,1)=1/2 -> 1; 4 <-> 5; 6 alone.
    assert {frozenset(e) for e in g.edges} == {frozenset((1, 2)), frozenset((1, 3)),
                                               frozenset((4, 5))}
    assert g.degree(6) == 0


def test_population_model_builds_the_cowatch_graph():
    from vragent.sandbox.population import PopulationModel

    users = [(1, {}, [10, 11]), (2, {}, [10, 11, 12]), (3, {}, [40]), (4, {}, [40, 41])]
    model = PopulationModel(users, ["a"], seed=0, graph="cowatch", k=1)
    assert model.friends(1) == [2] and model.friends(3) == [4]


def test_one_rule_calls_differences_after_the_multiple_comparison_adjustment() -> None:
    from vragent.sandbox.ab_analysis import call_differences
    from vragent.sandbox.stats import adjusted_p

    # BH by hand: sorted p (0.001, 0.02, 0.03, 0.5) → q = min over k ≥ i of p_k · m / k.
    q = adjusted_p([0.03, 0.001, None, 0.5, 0.02])
    assert q[2] is None
    assert q[1] == pytest.approx(0.004) and q[0] == pytest.approx(0.04)
    assert q[4] == pytest.approx(0.04) and q[3] == pytest.approx(0.5)
    comps = [
        {"seed": None, "metric": "exit_rate", "arm": "b", "diff": -0.1, "p_value": 0.001},
        {"seed": None, "metric": "like_rate", "arm": "b", "diff": 0.02, "p_value": 0.04},
        {"seed": None, "metric": "coverage", "arm": "b", "diff": 0.3, "p_value": 0.5},
        {"seed": None, "metric": "novelty", "arm": "b", "diff": 0.3, "p_value": 0.3},
        {"seed": 7, "metric": "like_rate", "arm": "b", "diff": 0.02, "p_value": 0.04},
    ]
    out = {(c["seed"], c["metric"]): c for c in call_differences(comps, confidence=0.95)}
    exit_ = out[(None, "exit_rate")]
    assert exit_["verdict"] == "▼ lower" and exit_["better"] is True
    # p = 0.04 < 0.05 alone, but not after adjusting over its family of four.
    assert out[(None, "like_rate")]["verdict"] == "≈ no clear difference"
    assert out[(None, "like_rate")]["better"] is None
    # The same p in a family of one (the seed's scope) is called.
    assert out[(7, "like_rate")]["verdict"] == "▲ higher" and out[(7, "like_rate")]["better"]


def test_lorenz_curve_matches_the_gini() -> None:
    from vragent.environments.metrics import gini_rows, lorenz

    rng = np.random.default_rng(0)
    counts = rng.zipf(1.7, size=300).astype(float)
    x, y = lorenz(counts, n_total=1000, points=2001)
    assert x[0] == 0 and y[0] == 0 and x[-1] == 1 and y[-1] == pytest.approx(1)
    assert np.all(np.diff(y) >= -1e-12) and np.all(y <= x + 1e-12)  # convex, under the diagonal
    area = np.trapezoid(x - y, x)
    assert 2 * area == pytest.approx(gini_rows(counts[None, :], 1000)[0], abs=2e-3)
    assert np.allclose(lorenz(np.ones(10), points=11)[1], np.linspace(0, 1, 11))  # equal
