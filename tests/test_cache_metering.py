"""The response cache (agents/backends/caching.py, table llm_cache) and LLM metering."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from sqlalchemy import func, select
from vragent.agents.backends.base import BackendError, ChatPrompt
from vragent.agents.backends.caching import CachingBackend, prompt_hash
from vragent.agents.backends.constant import ConstantBackend
from vragent.agents.backends.hf import HFBackend
from vragent.sandbox.config import parse_scenario
from vragent.sandbox.response_cache import SqlResponseCache
from vragent.sandbox.runner import create_run, execute
from vragent.sandbox.store import Decision, ItemProfileRow, LlmCacheEntry, LlmCall, Store

from tests.conftest import tiny_scenario


class CountingHF(HFBackend):
    """The tiny hf backend, counting the prompts it receives (optionally failing on one call)."""

    def __init__(self, base: HFBackend, fail_on_call: int | None = None) -> None:
        super().__init__(model=base.model, tokenizer=base.tokenizer, model_name=base.model_id,
                         batch_size=base.batch_size, device="cpu")
        self.received = {"score": 0, "generate": 0}
        self.batches: list[tuple[str, list[ChatPrompt]]] = []
        self.fail_on_call = fail_on_call

    def _count(self, call, prompts):
        self.batches.append((call, list(prompts)))
        if self.fail_on_call is not None and len(self.batches) == self.fail_on_call:
            raise BackendError("injected fault")
        self.received[call] += len(prompts)

    def score(self, prompts, options=("Yes", "No")):
        self._count("score", prompts)
        return super().score(prompts, options)

    def generate(self, prompts, **kw):
        self._count("generate", prompts)
        return super().generate(prompts, **kw)

    @property
    def total(self) -> int:
        return sum(self.received.values())


def _scenario(**overrides):
    base = dict(
        population={"size": 4, "history_len": 4},
        simulation={"steps": 2, "slate_size": 2, "users_per_task": 2, "refit_every": 1},
        arms=[{"name": "popular", "recommender": "popular"},
              {"name": "random", "recommender": "random"}],
        backend={"kind": "tiny", "decision_mode": "score", "trace_rate": 0.5,
                 "max_new_tokens": 4, "max_prompt_tokens": 2048},
        ip_agent={"enabled": True, "items_per_step": 2, "max_new_tokens": 4},
    )
    base.update(overrides)
    return tiny_scenario(**base)


def _run(store, sc_dict, llm):
    sc = parse_scenario(sc_dict)
    run_id = create_run(store, sc, yaml.safe_dump(sc.model_dump(mode="json")), None)
    execute(store, run_id, backend=llm)
    return run_id


def _decisions(store, run_id):
    with store.session() as s:
        rows = s.execute(
            select(Decision.arm, Decision.step, Decision.user_id, Decision.position,
                   Decision.item_id, Decision.action, Decision.p_like, Decision.completion,
                   Decision.traced, Decision.cache_hit)
            .where(Decision.run_id == run_id)
        ).all()
    return {tuple(r[:4]): tuple(r[4:]) for r in rows}


def _by_arm(rows):
    return {r["arm"]: r for r in rows}


@pytest.mark.parametrize("mode", ["score", "generate"])
def test_rerun_with_the_same_seed_makes_no_llm_calls(tmp_path, tiny_backend, mode):
    store = Store(f"sqlite:///{tmp_path}/c.sqlite")
    sc = _scenario(backend={"kind": "tiny", "decision_mode": mode, "trace_rate": 0.5,
                            "max_new_tokens": 4})
    first = CountingHF(tiny_backend)
    run1 = _run(store, sc, first)
    assert first.received["generate"] > 0 and first.total > 0
    if mode == "score":
        assert first.received["score"] > 0

    d1 = _decisions(store, run1)
    meter1 = _by_arm(store.metering(run1))
    assert list(meter1) == ["popular", "random", "ip-agent"]
    # Exact: calls are what the backend received; calls + hits are what the agents asked.
    assert sum(r["calls"] for r in meter1.values()) == first.total
    requested = sum(r["calls"] + r["cache_hits"] for a, r in meter1.items() if a != "ip-agent")
    if mode == "score":  # one score per decision, one generation per traced one
        assert requested == len(d1) + sum(v[4] for v in d1.values())
    else:  # at least one generation per decision (format retries ask again)
        assert requested >= len(d1)
    with store.session() as s:
        profiles = s.scalar(select(func.count()).select_from(ItemProfileRow).where(
            ItemProfileRow.run_id == run1))
    # The staged text-only IP agent makes two calls per item: perception (CMP), then profile.
    assert profiles == 4 and meter1["ip-agent"]["calls"] == 2 * profiles
    assert all(r["tokens_in"] > 0 and r["latency_p50_ms"] is not None
               for r in meter1.values())

    again = CountingHF(tiny_backend)
    run2 = _run(store, sc, again)
    assert again.total == 0 and again.batches == []
    d2 = _decisions(store, run2)
    assert {k: v[:4] for k, v in d2.items()} == {k: v[:4] for k, v in d1.items()}
    assert all(v[5] for v in d2.values())  # every decision is a cache hit
    meter2 = _by_arm(store.metering(run2))
    assert all(r["calls"] == 0 and r["tokens_in"] == 0 and r["latency_p50_ms"] is None
               for r in meter2.values())
    assert sum(r["cache_hits"] for r in meter2.values()) == requested


def test_cache_off_different_seed_and_prices(tmp_path, tiny_backend):
    store = Store(f"sqlite:///{tmp_path}/c.sqlite")
    sc = _scenario(ip_agent={"enabled": False})
    _run(store, sc, CountingHF(tiny_backend))

    off = CountingHF(tiny_backend)
    sc_off = _scenario(ip_agent={"enabled": False},
                       backend={"kind": "tiny", "trace_rate": 0.5, "max_new_tokens": 4,
                                "cache": False,
                                "prices": {"input_per_1m": 2.0, "output_per_1m": 10.0}})
    run_off = _run(store, sc_off, off)
    meter = store.metering(run_off)
    assert off.total > 0 and sum(r["calls"] for r in meter) == off.total
    assert all(r["cache_hits"] == 0 for r in meter)
    assert [r["arm"] for r in meter] == ["popular", "random"]  # no IP agent, no row
    for r in meter:
        assert r["cost"] == pytest.approx((2.0 * r["tokens_in"] + 10.0 * r["tokens_out"]) / 1e6)

    other_seed = CountingHF(tiny_backend)
    _run(store, {**sc, "seed": 12}, other_seed)
    assert other_seed.received["generate"] > 0  # traces are sampled with another seed


def _prompt(text, prefix=""):
    return ChatPrompt((("system", "You judge videos."), ("user", text)), prefix)


def test_keys_seeds_and_order_of_misses(tmp_path, tiny_backend):
    store = Store(f"sqlite:///{tmp_path}/k.sqlite")
    inner = CountingHF(tiny_backend)
    llm = CachingBackend(inner, SqlResponseCache(store, "r"))
    a, b, c, d, e = (_prompt(f"video {x}") for x in "abcde")

    first = llm.score([a, b])
    assert inner.received["score"] == 2 and not any(s.cached for s in first)
    again = llm.score([b, a])
    assert inner.received["score"] == 2
    assert [s.probs for s in again] == [first[1].probs, first[0].probs]
    assert all(s.cached and s.latency_s == 0 for s in again)
    # Misses go to the backend in one call, in order; results come back in place.
    mixed = llm.score([c, a, d])
    assert inner.batches[-1] == ("score", [c, d])
    assert mixed[1].cached and not mixed[0].cached and not mixed[2].cached
    assert llm.stats == {"sent": 4, "cached": 3, "inner_calls": 2}
    # A changed prompt (text or assistant prefix) or other options: a miss.
    llm.score([_prompt("video a", prefix="Answer:")])
    llm.score([a], options=("No", "Yes"))
    assert inner.received["score"] == 6

    g1 = llm.generate([d, e], max_new_tokens=6, temperature=0.9, seed=5)
    g2 = llm.generate([d, e], max_new_tokens=6, temperature=0.9, seed=5)
    assert inner.received["generate"] == 2
    assert [g.text for g in g2] == [g.text for g in g1] and all(g.cached for g in g2)
    llm.generate([d, e], max_new_tokens=6, temperature=0.9, seed=6)  # another seed: misses
    assert inner.received["generate"] == 4
    llm.generate([e, d], max_new_tokens=6, temperature=0.9, seed=5)  # other positions: misses
    assert inner.received["generate"] == 6
    llm.generate([d], max_new_tokens=6, temperature=0.0, seed=1)
    llm.generate([d], max_new_tokens=6, temperature=0.0, seed=2)  # greedy: seed-free key
    assert inner.received["generate"] == 7

    # Metering scopes collect per thread; cache off still meters.
    plain = CachingBackend(inner)
    with plain.meter() as calls:
        plain.score([a])
        plain.score([a])
    assert [c.cached for c in calls] == [False, False] and inner.received["score"] == 8
    assert plain.kind == "hf" and plain.model_id == inner.model_id


def test_prompt_hash_covers_parts_and_prefix():
    p = _prompt("x")
    assert prompt_hash(p) == prompt_hash(_prompt("x"))
    assert prompt_hash(p) != prompt_hash(_prompt("x", prefix="<think>"))
    parts = ChatPrompt((("user", ("look", b"\x89PNG...")),))  # content as a tuple of parts
    assert prompt_hash(parts) != prompt_hash(ChatPrompt((("user", ("look", b"\x89PNG!..")),)))
    import vragent.agents.backends.base as base

    if hasattr(base, "ImagePart"):  # multimodal parts: every part counts, text or image
        def mm(url, text="look"):
            return ChatPrompt((("user", (base.TextPart(text), base.ImagePart(url))),))

        one = mm("data:image/png;base64,AAAA")
        assert prompt_hash(one) == prompt_hash(mm("data:image/png;base64,AAAA"))
        assert prompt_hash(one) != prompt_hash(mm("data:image/png;base64,AAAB"))
        assert prompt_hash(one) != prompt_hash(mm("data:image/png;base64,AAAA", "see"))
        assert prompt_hash(_prompt("look")) != prompt_hash(
            ChatPrompt((("system", "You judge videos."), ("user", (base.TextPart("look"),)))))


def test_concurrent_threads_share_the_sqlite_cache(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/t.sqlite")
    llm = CachingBackend(ConstantBackend(0.4), SqlResponseCache(store))
    prompts = [_prompt(f"item {i}") for i in range(40)]

    def work(k):
        with llm.meter() as calls:
            for start in range(0, 40, 8):
                chunk = prompts[(start + 8 * k) % 40 :][:8]
                res = llm.score(chunk)
                assert all(r.probs["Yes"] == pytest.approx(0.4) for r in res)
        return len(calls)

    with ThreadPoolExecutor(8) as pool:
        n_calls = list(pool.map(work, range(8)))
    assert n_calls == [40] * 8
    assert llm.stats["sent"] + llm.stats["cached"] == 320 and llm.stats["cached"] > 0
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(LlmCacheEntry)) == 40


def test_failed_run_resumes_without_double_counting(tmp_path, tiny_backend):
    sc = _scenario()
    clean_store = Store(f"sqlite:///{tmp_path}/clean.sqlite")
    clean_llm = CountingHF(tiny_backend)
    clean = _run(clean_store, sc, clean_llm)

    store = Store(f"sqlite:///{tmp_path}/crash.sqlite")
    parsed = parse_scenario(sc)
    run_id = create_run(store, parsed, yaml.safe_dump(parsed.model_dump(mode="json")), None)
    # Fail in the last step's fan-out, after some of its calls went out and were cached.
    faulty = CountingHF(tiny_backend, fail_on_call=len(clean_llm.batches) - 2)
    with pytest.raises(BackendError):
        execute(store, run_id, backend=faulty)
    assert store.get_run(run_id).steps_done == 1
    resumed = CountingHF(tiny_backend)
    execute(store, run_id, backend=resumed)
    # The resumed run re-sends only what never reached the cache.
    assert 0 < resumed.total < clean_llm.total

    want, got = _decisions(clean_store, clean), _decisions(store, run_id)
    assert got.keys() == want.keys()
    # Actions and texts exactly; p(like) to float noise: hf scoring may differ in the last bits
    # with the process's history (prefix KV reuse), which the cache changes after a crash.
    assert all(got[k][:2] + got[k][3:5] == want[k][:2] + want[k][3:5] for k in want)
    assert all(got[k][2] == pytest.approx(want[k][2], abs=1e-6) for k in want)
    meter_want, meter_got = clean_store.metering(clean), store.metering(run_id)
    for w, g in zip(meter_want, meter_got, strict=True):
        assert w["calls"] + w["cache_hits"] == g["calls"] + g["cache_hits"], w["arm"]
    # Each logged call once: sent ones never exceed what the two processes sent.
    assert sum(r["calls"] for r in meter_got) <= faulty.total + resumed.total
    assert sum(r["calls"] for r in meter_got) >= resumed.total
    with store.session() as s:
        n = s.scalar(select(func.count()).select_from(LlmCall).where(LlmCall.run_id == run_id))
    assert n == sum(r["calls"] + r["cache_hits"] for r in meter_got)


def test_log_step_replay_does_not_double_count(tmp_path):
    from tests.test_store import _run as make_run
    from tests.test_store import _step_rows

    store = Store(f"sqlite:///{tmp_path}/s.sqlite")
    make_run(store)
    calls = [{"agent": "us", "arm": "a", "step": 0, "task": 0, "seq": i, "call": "score",
              "cached": i == 3, "tokens_in": 100, "tokens_out": 0, "latency_ms": float(i)}
             for i in range(4)]
    assert store.log_step("r1", 0, **_step_rows(0), llm_calls=calls)
    assert not store.log_step("r1", 0, **_step_rows(0), llm_calls=calls)
    (row,) = store.metering("r1")
    assert (row["arm"], row["calls"], row["cache_hits"], row["tokens_in"]) == ("a", 3, 1, 300)
    assert row["latency_p50_ms"] == 1.0 and row["latency_p99_ms"] == pytest.approx(1.98)
    assert row["cost"] is None


def test_a_non_finite_score_is_never_cached_and_a_poisoned_entry_is_asked_again(tmp_path):
    """Whatever the backend, a NaN score stops the call as a backend error (never blamed on
    the store, never cached); a NaN an older version left in the cache is not served."""
    store = Store(f"sqlite:///{tmp_path}/c.sqlite")
    cache = SqlResponseCache(store, "r1")
    prompts = [_prompt("a"), _prompt("b")]
    with pytest.raises(BackendError, match="not a finite probability"):
        CachingBackend(ConstantBackend(p_yes=float("nan")), cache).score(prompts)
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(LlmCacheEntry)) == 0
    healthy = CachingBackend(ConstantBackend(p_yes=0.25), cache)
    key = healthy._key(prompts[0], "score", healthy._params({"options": ["Yes", "No"]}))
    cache.put_many([(key, {"probs": {"Yes": float("nan"), "No": 0.5}, "logits": {},
                           "found": True, "tokens_in": 1})])
    scores = healthy.score(prompts)
    assert [s.probs["Yes"] for s in scores] == [0.25, 0.25]
    assert healthy.stats["sent"] == 2  # the poisoned entry was asked again
