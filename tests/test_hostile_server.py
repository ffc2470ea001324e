"""A hostile OpenAI-compatible server (issue 16): a key echoed in error text, a body that drips
a byte at a time, JSON nested past Python's stack, log-probs no float arithmetic survives.

The server is the fault-injecting proxy (``tests/fault_injecting_server.py``) in front of the
stand-in model server, so a fault that is retried ends in a real answer.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from vragent.agents.backends.base import BackendError, ChatPrompt
from vragent.agents.backends.openai_backend import OpenAIBackend

from tests.fault_injecting_server import FaultInjectingServer
from tests.openai_stand_in import stand_in

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.02}
HI = [ChatPrompt((("user", "hi"),), "x")]


@pytest.fixture(scope="module")
def server(tiny_backend):
    with stand_in(tiny_backend, torch_threads=1) as s:
        yield s


@pytest.fixture
def fault(server):
    with FaultInjectingServer(server.url) as f:
        yield f


@pytest.fixture
def backends():
    made: list[OpenAIBackend] = []

    def make(url: str, **kw) -> OpenAIBackend:
        b = OpenAIBackend(url, "tiny", **{**FAST, **kw})
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def _leaks(text: str, key: str, window: int = 6) -> list[str]:
    """Every ``window``-character piece of ``key`` found in ``text``."""
    return [key[i:i + window] for i in range(len(key) - window + 1) if key[i:i + window] in text]


# ---------------------------------------------------------------------- secrets


@pytest.mark.parametrize("status", [400, 500])
def test_a_key_echoed_by_the_server_never_leaks_whatever_its_offset(
        fault, backends, monkeypatch, status):
    """The server's message is cut to fit one line; a key straddling the cut left a prefix.

    Every offset from the start of the message to past the longest cut is tried, so the key
    straddles each cut once (the message's own at 160 characters and the error line's).
    """
    key = f"sk-canary-{uuid.uuid4().hex}-END"
    monkeypatch.setenv("VRAGENT_CANARY_KEY", key)
    b = backends(fault.url, api_key_env="VRAGENT_CANARY_KEY", max_retries=0,
                 cooldown_s=0.0)
    for offset in range(0, 520, 1 if status == 400 else 7):
        message = "." * offset + key + " was refused"
        fault.set_reply(status, json.dumps({"error": {"message": message}}).encode())
        with pytest.raises(BackendError) as info:
            b.generate([ChatPrompt((("user", "hi"),))], max_new_tokens=2)
        text = str(info.value)
        assert not _leaks(text, key), (offset, text)
        assert not _leaks(b.endpoints[0].last_error, key), offset
    assert fault.injected == len(range(0, 520, 1 if status == 400 else 7))


# ---------------------------------------------------------------------- hangs


def test_a_server_that_drips_its_answer_times_out_on_the_whole_request(fault, backends):
    """Headers, then a byte every 0.2 s: each read is quick, the answer never ends."""
    b = backends(fault.url, timeout_s=1.0, max_retries=1)
    fault.set_fault("drip")
    result: list[BaseException | None] = []

    def call() -> None:
        try:
            b.generate([ChatPrompt((("user", "hi"),))], max_new_tokens=2)
            result.append(None)
        except BaseException as exc:  # the outcome is checked below
            result.append(exc)

    t0 = time.monotonic()
    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(timeout=30)  # 2 attempts of 1 s, a health check and backoff: well under
    assert not worker.is_alive(), "timeout_s did not bound a dripping answer"
    (exc,) = result
    assert isinstance(exc, BackendError), exc
    assert "no full answer within 1 s" in str(exc) and "2 attempts" in str(exc)
    assert time.monotonic() - t0 < 15
    assert fault.injected == 2


# ---------------------------------------------------------------------- bad answers


def _chat_logprobs(yes: float) -> bytes:
    top = [{"token": "Yes", "logprob": yes}, {"token": "No", "logprob": -1.0}]
    return json.dumps({"choices": [{"index": 0, "logprobs": {"content": [
        {"token": "Yes", "logprob": yes, "top_logprobs": top}]}}],
        "usage": {"prompt_tokens": 3}}).encode()


BAD_ANSWERS = {
    # json.loads recurses once per level: RecursionError, not ValueError.
    "nested 200,000 deep": b"[" * 200_000 + b"]" * 200_000,
    "object nested 200,000 deep": b'{"a":' * 200_000 + b"1" + b"}" * 200_000,
    # exp(1000) overflows a float: OverflowError, not ValueError.
    "logprob 1000": _chat_logprobs(1000.0),
}


@pytest.mark.parametrize("body", list(BAD_ANSWERS.values()), ids=list(BAD_ANSWERS))
def test_answers_that_break_the_parser_are_retried_as_bad_responses(fault, backends, body,
                                                                     tiny_backend):
    b = backends(fault.url, score_api="chat", max_retries=2)
    fault.set_reply(200, body, count=1)
    (score,) = b.score(HI)  # the second attempt reaches the model
    assert fault.injected == 1 and fault.posts == 2
    (ref,) = tiny_backend.score_naive(HI)
    assert score.probs["Yes"] == pytest.approx(ref.probs["Yes"], abs=1e-4)
    # A server that only ever answers so: a one-line BackendError naming the fault.
    fault.set_reply(200, body)
    with pytest.raises(BackendError, match="MalformedResponse") as info:
        b.score(HI)
    assert "\n" not in str(info.value) and "3 attempts" in str(info.value)
