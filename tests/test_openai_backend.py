"""The openai backend against the stand-in server, directly and through the fault injector."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest
from vragent.agents.backends.base import BackendError, ChatPrompt, ImagePart, TextPart
from vragent.agents.backends.openai_backend import (
    GUIDED_PREFIX,
    JUDGEMENT_REGEX,
    OpenAIBackend,
    json_to_judgement,
    judgement_regex,
    judgement_schema,
)
from vragent.agents.parsing import parse_judgement
from vragent.agents.prompts import PersonaView, judgement_prompt

from tests.fault_injecting_server import GARBAGE, FaultInjectingServer, free_port
from tests.openai_stand_in import stand_in

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5.0}
VALID_ANSWER = (" The user likes cooking. </think>\n<answer> (1) User_preference: cooking\n"
                "(2) Prediction: Yes </answer>")


def _prompts(n_users=2, n_cands=3, think=False):
    out = []
    for u in range(n_users):
        pv = PersonaView(f"user {u} likes cooking", tuple(f"video {u}-{i} #cooking"
                                                         for i in range(4)))
        out += [judgement_prompt(pv, f"candidate {c} #pets" + " more" * c, think=think)
                for c in range(n_cands)]
    return out


@pytest.fixture(scope="module")
def server(tiny_backend):
    with stand_in(tiny_backend, torch_threads=1) as s:
        yield s


@pytest.fixture
def backends():
    made: list[OpenAIBackend] = []

    def make(url, **kw):
        b = OpenAIBackend(url, "tiny", **{**FAST, **kw})
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture
def fault(server):
    with FaultInjectingServer(server.url, hang_s=1.0) as f:
        yield f


# ---------------------------------------------------------------------- concurrency


def test_concurrent_requests_keep_order_and_the_semaphore_bound(server, backends, tiny_backend):
    prompts = _prompts(n_users=3, n_cands=4)
    ref = tiny_backend.score_naive(prompts)
    b = backends(server.url, max_concurrency=3)
    server.reset()
    server.delay_s = 0.03
    try:
        scores = b.score(prompts)
        assert 2 <= server.max_in_flight <= 3
        # Three caller threads at once (LangGraph fan-out) still share the one bound.
        server.reset()
        results: dict[int, list] = {}

        def call(k):
            results[k] = b.score(prompts[k::3])

        threads = [threading.Thread(target=call, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert server.max_in_flight <= 3
    finally:
        server.delay_s = 0.0
    for s, r in zip(scores, ref, strict=True):
        assert s.probs["Yes"] == pytest.approx(r.probs["Yes"], abs=1e-4)
    for k in range(3):
        assert [s.probs for s in results[k]] == [s.probs for s in scores[k::3]]
    # Generation: prompt i is seeded with seed + i, whatever the concurrency.
    gens = b.generate(prompts[:4], max_new_tokens=5, seed=7)
    alone = [b.generate([p], max_new_tokens=5, seed=7 + i)[0] for i, p in enumerate(prompts[:4])]
    assert [g.text for g in gens] == [g.text for g in alone]

    # Called from inside a running event loop: no nested-loop error.
    async def inside():
        return b.score(prompts[:2])

    assert [s.probs for s in asyncio.run(inside())] == [s.probs for s in scores[:2]]


def test_two_endpoints_are_balanced_and_a_dead_one_fails_over(server, backends):
    prompts = _prompts(n_users=2, n_cands=4, think=True)
    dead_port = free_port()
    with FaultInjectingServer(server.url) as a, FaultInjectingServer(server.url) as c, \
            FaultInjectingServer(server.url, port=dead_port) as dead:
        dead.set_fault("refuse")
        ref = backends(server.url).generate(prompts, max_new_tokens=4, seed=1)
        b = backends([a.url, dead.url], base_urls=[c.url], max_concurrency=4, cooldown_s=0.3)
        server.delay_s = 0.02
        try:
            gens = b.generate(prompts, max_new_tokens=4, seed=1)
        finally:
            server.delay_s = 0.0
        assert [g.text for g in gens] == [g.text for g in ref]
        assert a.posts >= 3 and c.posts >= 3 and a.posts + c.posts == len(prompts)
        stats = {s["url"]: s for s in b.endpoint_stats()}
        assert not stats[dead.url]["healthy"] and stats[dead.url]["failures"] >= 1
        assert stats[a.url]["healthy"] and stats[c.url]["healthy"]
        # Back up: re-checked after its cool-down, it gets traffic again.
        dead.set_fault("ok")
        time.sleep(0.35)
        b.generate(prompts[:1], max_new_tokens=2, seed=1)  # starts the background re-check
        deadline = time.monotonic() + 10
        while not {s["url"]: s for s in b.endpoint_stats()}[dead.url]["healthy"]:
            assert time.monotonic() < deadline, "the revived endpoint was never re-checked"
            time.sleep(0.02)
        b.generate(prompts, max_new_tokens=2, seed=1)
        assert dead.posts >= 1


# ---------------------------------------------------------------------- faults


@pytest.mark.parametrize("mode", ["500", "503", "429", "truncate", "malformed", "hang"])
def test_each_fault_is_retried_then_succeeds(server, fault, backends, mode, tiny_backend):
    prompts = _prompts(n_users=1, n_cands=2)
    b = backends(fault.url, score_api="chat", max_retries=4,
                 timeout_s=0.4 if mode == "hang" else 5.0)
    fault.set_fault(mode, count=2)
    scores = b.score(prompts)
    assert fault.injected == 2 and fault.posts == len(prompts) + 2
    ref = tiny_backend.score_naive(prompts)
    for s, r in zip(scores, ref, strict=True):
        assert s.probs["Yes"] == pytest.approx(r.probs["Yes"], abs=1e-4)


BAD_LOGPROBS = [float("nan"), float("inf"), float("-inf"), 1000.0, 0.5]


@pytest.mark.parametrize("api", ["chat", "completions"])
@pytest.mark.parametrize("bad", BAD_LOGPROBS, ids=["nan", "inf", "-inf", "1000", "positive"])
def test_a_bad_logprob_is_a_bad_response_retried_never_cached(server, fault, backends,
                                                              tiny_backend, tmp_path, api, bad):
    """NaN, infinite or positive log-probs (1000.0 overflowed exp) are retried like any bad
    answer; when they persist the error names the backend, and the response cache of the
    store never holds them (issue 16)."""
    from sqlalchemy import func, select
    from vragent.sandbox.config import BackendConfig
    from vragent.sandbox.response_cache import wrap_backend
    from vragent.sandbox.store import LlmCacheEntry, Store

    prompts = _prompts(n_users=1, n_cands=2)
    ref = tiny_backend.score_naive(prompts)
    fault.bad_logprob = bad
    store = Store(f"sqlite:///{tmp_path}/cache.sqlite")
    cached = wrap_backend(backends(fault.url, score_api=api, max_retries=3), BackendConfig(
        kind="openai", base_url=fault.url), store, "r1")
    fault.set_fault("logprob", count=2)
    scores = cached.score(prompts)  # two spoiled answers, then good ones
    assert fault.injected == 2
    for s, r in zip(scores, ref, strict=True):
        assert s.probs["Yes"] == pytest.approx(r.probs["Yes"], abs=1e-4)
    fault.set_fault("logprob")  # every answer spoiled: retries run out
    with pytest.raises(BackendError, match="MalformedResponse") as info:
        cached.score(_prompts(n_users=2, n_cands=1)[1:])
    assert "\n" not in str(info.value)
    with store.session() as s:
        results = s.scalars(select(LlmCacheEntry.result)).all()
        assert s.scalar(select(func.count()).select_from(LlmCacheEntry)) == len(prompts)
    assert all(0.0 <= p <= 1.0 for r in results for p in r["probs"].values())


def test_very_negative_logprobs_do_not_underflow_to_an_error():
    from vragent.agents.backends.openai_backend import _option_score

    s = _option_score([("Yes", -1000.0), (" Yes", -1001.0), ("No", -1200.0)], ("Yes", "No"),
                      3, 0.0)
    assert s.probs["Yes"] == pytest.approx(1.0) and s.logits["Yes"] > -1000.0


def test_a_refused_port_is_retried_until_it_comes_back(server, fault, backends):
    b = backends(fault.url, max_retries=10, backoff_base_s=0.05, backoff_max_s=0.2)
    fault.set_fault("refuse")
    timer = threading.Timer(0.3, fault.set_fault, args=("ok",))
    timer.start()
    try:
        (g,) = b.generate([ChatPrompt((("user", "hi"),))], max_new_tokens=3, seed=0)
    finally:
        timer.cancel()
    assert g.tokens_out > 0 and fault.posts == 1


def test_exhausted_retries_raise_one_line_naming_endpoint_and_attempts(fault, backends):
    b = backends(fault.url, max_retries=2)
    fault.set_fault("503")
    with pytest.raises(BackendError) as info:
        b.generate([ChatPrompt((("user", "hi"),))], max_new_tokens=2)
    msg = str(info.value)
    assert "\n" not in msg and fault.url in msg and "3 attempts" in msg and "HTTP 503" in msg
    assert fault.posts == 3
    # A server that is gone: the connection error type is named.
    dead = backends(f"http://127.0.0.1:{free_port()}/v1", max_retries=1)
    with pytest.raises(BackendError, match=r"ConnectError.*") as info:
        dead.score([ChatPrompt((("user", "hi"),), "x")])
    assert "\n" not in str(info.value) and "2 attempts" in str(info.value)


def test_a_bad_request_is_not_retried(fault, backends):
    b = backends(fault.url, max_retries=4)
    fault.set_fault("400")
    with pytest.raises(BackendError, match=r"HTTP 400 \(not retried\)"):
        b.generate([ChatPrompt((("user", "hi"),))], max_new_tokens=2)
    assert fault.posts == 1


def test_the_api_key_never_leaks(server, fault, backends, monkeypatch):
    key = "sk-test-9f8e7d6c5b4a"
    monkeypatch.setenv("VRAGENT_TEST_KEY", key)
    b = backends(fault.url, api_key_env="VRAGENT_TEST_KEY", max_retries=1)
    server.reset()
    b.generate([ChatPrompt((("user", "hi"),))], max_new_tokens=2)
    sent = {k.lower(): v for k, v in server.requests[-1]["headers"].items()}
    assert sent["authorization"] == f"Bearer {key}"
    fault.set_fault("500")
    with pytest.raises(BackendError) as info:
        b.generate([ChatPrompt((("user", "hi"),))], max_new_tokens=2)
    for text in (str(info.value), repr(info.value), repr(b), str(vars(b))):
        assert key not in text
    # Without the variable no Authorization header is sent at all.
    monkeypatch.delenv("VRAGENT_TEST_KEY")
    fault.set_fault("ok")
    server.reset()
    backends(fault.url, api_key_env="VRAGENT_TEST_KEY").generate(
        [ChatPrompt((("user", "hi"),))], max_new_tokens=2)
    assert "authorization" not in {k.lower() for k in server.requests[-1]["headers"]}


# ---------------------------------------------------------------------- scoring


def test_score_through_completions_chat_and_hf_agree(server, backends, tiny_backend):
    prompts = _prompts(n_users=2, n_cands=3)
    want = tiny_backend.score(prompts)
    server.reset()
    remote = backends(server.url).score(prompts)  # completions, prompt from /tokenize
    tokenize = server.posts("/tokenize")
    completions = server.posts("/v1/completions")
    server.reset()
    local = backends(server.url, tokenizer=tiny_backend.tokenizer).score(prompts)
    local_bodies = server.posts("/v1/completions")
    chat = backends(server.url, score_api="chat").score(prompts)
    for w, *got in zip(want, remote, local, chat, strict=True):
        for g in got:
            assert g.found and g.probs["Yes"] == pytest.approx(w.probs["Yes"], abs=1e-4)
        assert got[0].tokens_in == got[1].tokens_in == w.tokens_in
    # The request shapes (sent concurrently, so in any order): /tokenize continues the
    # assistant prefix; the completions prompt is exactly what the hf backend renders.
    prefix = {"role": "assistant", "content": prompts[0].assistant_prefix}
    assert len(tokenize) == len(prompts) and all(
        t["continue_final_message"] and not t["add_generation_prompt"]
        and t["messages"][-1] == prefix for t in tokenize)
    for body in completions:
        assert body["max_tokens"] == 1 and body["logprobs"] == 20 and body["temperature"] == 0
    assert sorted(b["prompt"] for b in completions) == sorted(
        tiny_backend._token_ids(p) for p in prompts)
    assert sorted(b["prompt"] for b in local_bodies) == sorted(
        tiny_backend.render(p) for p in prompts)
    assert all(b["add_special_tokens"] is False for b in local_bodies)


def test_options_missing_from_top_logprobs_get_the_floor():
    from vragent.agents.backends.openai_backend import _option_score

    top = [("Yes", -1.0), (" Yes", -2.0), ("maybe", -0.5), (" yes", -2.5)]
    s = _option_score(top, ("Yes", "No"), 3, 0.0)
    # " yes" is another token: like the hf backend, only "Yes" and " Yes" count.
    assert s.found and s.logits["No"] == -3.5
    assert s.logits["Yes"] == pytest.approx(float(__import__("numpy").logaddexp(-1.0, -2.0)))
    none = _option_score([("maybe", -0.5)], ("Yes", "No"), 3, 0.0)
    assert not none.found and none.probs["Yes"] == pytest.approx(0.5)


# ---------------------------------------------------------------------- guided decoding


def test_guided_params_are_in_the_request_body(server, backends):
    think = _prompts(n_users=1, n_cands=1, think=True)[0]
    plain = ChatPrompt((("user", "profile this video"),))  # IP-agent style: never guided
    server.reset()
    backends(server.url, guided="regex").generate([think, plain], max_new_tokens=3, seed=2)
    bodies = server.posts("/v1/chat/completions")  # sent concurrently: any order
    (guided,) = [b for b in bodies if b["messages"][-1]["role"] == "assistant"]
    (free,) = [b for b in bodies if b is not guided]
    # The reasoning is bounded so the answer block fits max_tokens.
    assert guided["structured_outputs"] == {"regex": judgement_regex(3)}
    assert "{0,16}" in judgement_regex(3)
    assert guided["continue_final_message"] and guided["messages"][-1]["content"] == "<think>"
    assert "structured_outputs" not in free and "guided_regex" not in free
    server.reset()
    backends(server.url, guided="regex", guided_key="guided").generate([think], max_new_tokens=2)
    assert server.posts()[0]["guided_regex"] == judgement_regex(2)
    server.reset()
    backends(server.url, guided="json").generate([think], max_new_tokens=2)
    body = server.posts()[0]
    assert body["structured_outputs"] == {"json": judgement_schema(2)}
    assert "continue_final_message" not in body  # the JSON carries the reasoning itself


def test_the_guided_shapes_parse_as_judgements():
    assert re.fullmatch(JUDGEMENT_REGEX, VALID_ANSWER)
    assert re.fullmatch(judgement_regex(96), VALID_ANSWER)
    assert not re.fullmatch(judgement_regex(16), VALID_ANSWER)  # reasoning over 16 chars
    parsed = parse_judgement(VALID_ANSWER, GUIDED_PREFIX)
    assert parsed.format_ok and parsed.prediction == "Yes"
    text = json_to_judgement('{"think": "likes pets", "user_preference": "pets", '
                             '"prediction": "No"}')
    assert re.fullmatch(JUDGEMENT_REGEX, text)
    parsed = parse_judgement(text, GUIDED_PREFIX)
    assert parsed.format_ok and parsed.prediction == "No" and parsed.think == "likes pets"
    assert json_to_judgement("not json") == "not json"


# ---------------------------------------------------------------------- multimodal


def test_multimodal_messages_reach_the_server_as_content_parts(server, backends, tmp_path,
                                                               tiny_backend):
    png = tmp_path / "frame.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n fake image bytes")
    image = ImagePart.from_path(png)
    assert image.url.startswith("data:image/png;base64,")
    prompt = ChatPrompt((("system", "You judge videos."),
                         ("user", (TextPart("Would this user like it?"), image,
                                   ImagePart("https://example.org/cover.jpg")))), "<answer>")
    assert prompt.has_images and "[image]" in prompt.flat_text()
    server.reset()
    b = backends(server.url)
    b.generate([prompt], max_new_tokens=2)
    b.score([prompt])  # images go through chat completions, also with score_api=completions
    gen_body, score_body = server.posts()
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions"] * 2
    for body in (gen_body, score_body):
        assert body["messages"][0] == {"role": "system", "content": "You judge videos."}
        assert body["messages"][1]["content"] == [
            {"type": "text", "text": "Would this user like it?"},
            {"type": "image_url", "image_url": {"url": image.url}},
            {"type": "image_url", "image_url": {"url": "https://example.org/cover.jpg"}},
        ]
    with pytest.raises(ValueError, match="text-only"):
        tiny_backend.render(prompt)
    with pytest.raises(ValueError):
        ImagePart("file.png")
    with pytest.raises(ValueError):
        ImagePart.from_path(tmp_path / "notes.txt")


# ---------------------------------------------------------------------- malformed answers


def _slate_requests(n_users=2, n_items=2):
    from vragent.agents.us_agent import Candidate, SlateRequest

    return [SlateRequest("a", u, PersonaView(f"user {u}", ("video #cooking",)),
                         [Candidate(10 * u + i, f"item {i} #pets", i, 1.0)
                          for i in range(n_items)]) for u in range(n_users)]


def test_malformed_answers_are_re_asked_then_recorded_invalid(fault, backends):
    from vragent.agents.us_agent import USAgent

    b = backends(fault.url)
    agent = USAgent(b, mode="generate", seed=3, max_new_tokens=6, format_retries=2)
    fault.set_fault("garbage")
    (first, second) = agent.decide(_slate_requests(), step=0)
    decs = first.decisions + second.decisions
    assert fault.posts == 3 * len(decs)
    assert all(d.action == "skip" and d.fallback == "invalid" and not d.format_ok
               and d.attempts == 3 and d.completion == GARBAGE for d in decs)
    # Garbage in the first round only: the retry reads a well-formed answer.
    fault.set_fault("garbage", count=4)
    fault.rewrite_text = VALID_ANSWER
    seeds_before = len(fault.log)
    (first, second) = agent.decide(_slate_requests(), step=0)
    decs = first.decisions + second.decisions
    assert all(d.attempts == 2 and d.format_ok and d.fallback is None
               and d.action in ("watch", "like") and d.completion == VALID_ANSWER for d in decs)
    assert all(d.tokens_out > 0 for d in decs) and len(fault.log) - seeds_before == 8


def test_format_retries_use_new_seeds(server, fault, backends):
    from vragent.agents.us_agent import USAgent

    server.reset()
    fault.set_fault("garbage")
    USAgent(backends(fault.url), mode="generate", seed=3, max_new_tokens=4,
            format_retries=2).decide(_slate_requests(n_users=1), step=0)
    seeds = [b["seed"] for b in server.posts("/v1/chat/completions")]
    assert len(seeds) == 6 and len(set(seeds)) == 6


# ---------------------------------------------------------------------- clean stop and resume


def test_a_server_outage_stops_the_run_cleanly_and_resume_finishes_it(server, tmp_path):
    from vragent.sandbox.config import load_scenario
    from vragent.sandbox.runner import create_run, execute
    from vragent.sandbox.store import Store

    from tests.conftest import tiny_scenario, write_scenario
    from tests.test_resume import _cli, _snapshot

    with FaultInjectingServer(server.url) as fault:
        sc = tiny_scenario(
            population={"size": 3, "history_len": 4},
            simulation={"steps": 2, "slate_size": 2, "users_per_task": 2, "refit_every": 1},
            arms=[{"name": "popular", "recommender": "popular"},
                  {"name": "cooc", "recommender": "cooccurrence"}],
            backend={"kind": "openai", "base_url": fault.url, "model": "tiny",
                     "trace_rate": 0.3, "max_new_tokens": 6, "max_concurrency": 4,
                     "max_retries": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.02},
            ip_agent={"enabled": True, "items_per_step": 1, "max_new_tokens": 6})
        path = write_scenario(tmp_path, sc)
        clean = f"sqlite:///{tmp_path}/clean.sqlite"
        broken = f"sqlite:///{tmp_path}/broken.sqlite"
        # The uninterrupted reference run, in process (a CLI start costs seconds).
        sc_obj, text, _ = load_scenario(str(path))
        store = Store(clean)
        execute(store, create_run(store, sc_obj, text, str(path)))
        total = fault.posts

        fault.set_fault("down_after", count=total // 2)
        first = _cli(["run", str(path), "--db", broken])
        assert first.returncode == 1
        # One error line (beside the progress log), no traceback.
        errors = [ln for ln in first.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in first.stderr, first.stderr[-2000:]
        assert fault.url in errors[0] and "attempts" in errors[0] and "--resume" in errors[0]
        run, partial = _snapshot(broken)
        assert run.status == "failed" and run.error.startswith("BackendError")
        assert run.steps_done < 2 and not fault.listening
        assert len(partial["steps"]) == 2 * run.steps_done  # whole steps only, both arms

        fault.set_fault("ok")
        again = _cli(["run", "--resume", run.id, "--db", broken])
        assert again.returncode == 0, again.stderr[-2000:]
        _, want = _snapshot(clean)
        run_r, got = _snapshot(broken)
        assert run_r.status == "finished" and run_r.steps_done == 2
        for table in want:
            assert got[table] == want[table], f"{table} differs after resume"
        decisions = got["decisions"]
        assert len({d[:4] for d in decisions}) == len(decisions)  # no duplicates
