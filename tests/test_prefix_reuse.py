"""Score-mode KV reuse: exact against the naive forward, across slates, users and steps."""

import torch
from vragent.agents.backends.prefix_cache import PrefixKVCache, common_prefix_len
from vragent.agents.prompts import PersonaView, score_prompt


def _kv(n_tokens: int, fill: float = 0.0):
    # Two layers of [1, heads=2, tokens, dim=4]: 64 bytes per layer per token.
    return [(torch.full((1, 2, n_tokens, 4), fill), torch.full((1, 2, n_tokens, 4), fill))
            for _ in range(2)]


def test_lookup_finds_the_longest_cached_prefix():
    cache = PrefixKVCache(budget_bytes=1 << 20, block=4)
    short, long_ = list(range(8)), list(range(20))
    cache.put(short, _kv(8, 1.0))
    cache.put(long_, _kv(20, 2.0))
    kv, n = cache.lookup([*range(17), 99, 98])
    assert n == 17 and kv[0][0][0, 0, 0, 0] == 2.0
    kv, n = cache.lookup([0, 1, 2, 3, 4, 5, 99, 7, 8])
    assert n == 6  # block hashes narrow the search, the exact comparison decides the length
    assert cache.lookup([5, 6, 7, 8]) == (None, 0)


def test_budget_evicts_least_recently_used():
    per_entry = 2 * 2 * 8 * 2 * 4 * 4  # layers x (k, v) x heads x tokens x dim x bytes
    cache = PrefixKVCache(budget_bytes=2 * per_entry, block=4)
    a, b, c = ([k] * 8 for k in (1, 2, 3))
    cache.put(a, _kv(8))
    cache.put(b, _kv(8))
    assert cache.lookup(a)[1] == 8  # a is now the most recently used
    cache.put(c, _kv(8))
    assert len(cache) == 2 and cache.nbytes == 2 * per_entry
    assert cache.lookup(b) == (None, 0)
    assert cache.lookup(a)[1] == 8 and cache.lookup(c)[1] == 8


def test_zero_budget_keeps_nothing():
    cache = PrefixKVCache(budget_bytes=0, block=4)
    cache.put(list(range(8)), _kv(8))
    assert len(cache) == 0 and cache.lookup(list(range(8))) == (None, 0)


def test_common_prefix_len():
    assert common_prefix_len([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_len([1, 2], [1, 2, 3]) == 2
    assert common_prefix_len([], [1]) == 0


def _persona(user: int, step: int) -> PersonaView:
    history = tuple(f"video {user}-{i} #cooking" for i in range(6))
    recent = tuple(f"watched {user}-{s} #pets" for s in range(step))
    return PersonaView(f"user {user} likes cooking", history, recent)


def _step_prompts(step: int, users=(0, 1), n_cands: int = 4):
    return [score_prompt(_persona(u, step), f"candidate {step}-{c} #pets" + " more" * c)
            for u in users for c in range(n_cands)]


def _assert_equal_to_naive(backend, prompts):
    fast = backend.score(prompts)
    naive = backend.score_naive(prompts)
    for f, n in zip(fast, naive, strict=True):
        for opt in ("Yes", "No"):
            assert abs(f.logits[opt] - n.logits[opt]) < 1e-4
        assert f.tokens_in == n.tokens_in


def test_kv_kept_across_steps_is_reused_and_exact(tiny_backend):
    tiny_backend.prefix_cache.clear()
    tiny_backend.stats.clear()
    _assert_equal_to_naive(tiny_backend, _step_prompts(0))
    first_reused = tiny_backend.stats["prefix_tokens_reused"]
    tiny_backend.stats.clear()
    # Next step: the same users with one more platform watch, new candidates.
    _assert_equal_to_naive(tiny_backend, _step_prompts(1))
    stats = tiny_backend.stats
    assert stats["prefix_tokens_reused"] > 0.7 * stats["prefix_tokens"] > 0
    # In the first call only the second user's instructions could come from the first user.
    assert first_reused < 0.5 * stats["prefix_tokens"]


def test_chunked_candidates_and_single_prompts_are_exact(tiny_backend):
    old = tiny_backend.chunk_tokens
    tiny_backend.chunk_tokens = 8  # forces one forward per candidate
    try:
        _assert_equal_to_naive(tiny_backend, _step_prompts(2, users=(3,), n_cands=5))
    finally:
        tiny_backend.chunk_tokens = old
    _assert_equal_to_naive(tiny_backend, _step_prompts(2, users=(4,), n_cands=1))


def test_cache_off_gives_the_same_scores(tiny_backend):
    prompts = _step_prompts(3, users=(5, 6))
    with_cache = tiny_backend.score(prompts)
    budget = tiny_backend.prefix_cache.budget_bytes
    tiny_backend.prefix_cache.clear()
    tiny_backend.prefix_cache.budget_bytes = 0
    try:
        without = tiny_backend.score(prompts)
    finally:
        tiny_backend.prefix_cache.budget_bytes = budget
    for a, b in zip(with_cache, without, strict=True):
        assert abs(a.logits["Yes"] - b.logits["Yes"]) < 1e-4


def test_score_prompt_puts_the_candidate_last():
    p = score_prompt(_persona(0, 1), "Toy Story [Animation]")
    system, user = (c for _, c in p.messages)
    assert "candidate video is named" in system
    assert "Toy Story" not in user and "watched 0-0" in user
    assert p.assistant_prefix.endswith("Toy Story [Animation]\nPrediction:")
