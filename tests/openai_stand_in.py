"""A stand-in OpenAI-compatible server over a local hf backend, for tests.

It is a real (minimal) server: requests are rendered with the model's chat template and
answered by the model. It speaks the parts of vLLM's API the ``openai`` backend uses:

* ``POST /v1/chat/completions``: sampling, or first-token ``top_logprobs`` (chat layout);
  ``continue_final_message`` continues a final assistant message;
* ``POST /v1/completions``: ``prompt`` as text or token ids; ``logprobs: k`` gives
  ``choices[0].logprobs.top_logprobs[0]`` as a dict token -> logprob, like vLLM;
* ``POST /tokenize`` (chat messages, ``add_generation_prompt``, ``continue_final_message``);
* ``GET /health`` and ``GET /v1/models``.

It records every request (method, path, body, headers) and the most requests it had in flight
at once; ``delay_s`` adds server latency so concurrency shows. Multipart message contents are
flattened to text with ``[image]`` placeholders (the tiny model is text-only). vLLM itself is
exercised by the serving tests; this one keeps the default suite fast and offline.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from vragent.agents.backends.base import ChatPrompt

OPTION_WORDS = ("Yes", "No", " Yes", " No")


def _flatten(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(p["text"] if p.get("type") == "text" else "[image]" for p in content)


def _messages(body: dict) -> list[tuple[str, str]]:
    return [(m["role"], _flatten(m["content"])) for m in body["messages"]]


def _prompt(body: dict) -> ChatPrompt:
    msgs = _messages(body)
    prefix = ""
    if body.get("continue_final_message") and msgs and msgs[-1][0] == "assistant":
        prefix = msgs.pop()[1]
    return ChatPrompt(tuple(msgs), prefix)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, handler, backend, delay_s: float):
        super().__init__(addr, handler)
        self.backend = backend
        self.delay_s = delay_s
        self.model_lock = threading.Lock()
        self.stats_lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0


def _option_logprobs(backend, logp: torch.Tensor, k: int) -> list[tuple[str, float]]:
    """Top-k (decoded token, logprob), plus the option words a real server lists when high."""
    top = torch.topk(logp, k)
    pairs = [(backend.tokenizer.decode([int(i)]), float(v))
             for v, i in zip(top.values, top.indices, strict=True)]
    seen = {t for t, _ in pairs}
    for word in OPTION_WORDS:
        if word not in seen:
            tid = backend.tokenizer(word, add_special_tokens=False)["input_ids"][0]
            pairs.append((word, float(logp[tid])))
            seen.add(word)
    return pairs


class Handler(BaseHTTPRequestHandler):
    """Routes requests to the tiny model."""

    server: _Server

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status: int, payload: Any) -> None:
        # A request stops counting as in flight before its answer goes out: the client may
        # send its next request as soon as it has read this one, and must not be counted twice.
        self._untrack()
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _track(self, method: str, body: Any) -> None:
        s = self.server
        self._tracked = True
        with s.stats_lock:
            s.requests.append({"method": method, "path": self.path, "body": body,
                               "headers": dict(self.headers.items())})
            s.in_flight += 1
            s.max_in_flight = max(s.max_in_flight, s.in_flight)

    def _untrack(self) -> None:
        if getattr(self, "_tracked", False):
            self._tracked = False
            with self.server.stats_lock:
                self.server.in_flight -= 1

    def do_GET(self):
        self._track("GET", None)
        try:
            if self.path == "/health":
                self._untrack()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [
                    {"id": "stand-in", "object": "model", "owned_by": "tests"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}", "code": 404}})
        finally:
            self._untrack()

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self._track("POST", body)
        try:
            if not isinstance(body, dict):
                self._send(400, {"error": {"message": "body is not a JSON object", "code": 400}})
                return
            if self.server.delay_s:
                time.sleep(self.server.delay_s)
            routes = {"/v1/chat/completions": self._chat, "/v1/completions": self._completions,
                      "/tokenize": self._tokenize}
            route = routes.get(self.path)
            if route is None:
                self._send(404, {"error": {"message": f"no route {self.path}", "code": 404}})
                return
            try:
                with self.server.model_lock:
                    reply = route(body)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                self._send(400, {"error": {"message": f"bad request: {exc!r}", "code": 400}})
                return
            self._send(200, reply)
        finally:
            self._untrack()

    # ------------------------------------------------------------------ routes

    def _chat(self, body: dict) -> dict:
        backend = self.server.backend
        prompt = _prompt(body)
        text = backend.render(prompt)
        n_in = len(backend.tokenizer(text, add_special_tokens=False)["input_ids"])
        choice: dict = {"index": 0, "finish_reason": "stop", "logprobs": None}
        if body.get("logprobs"):
            enc, _ = backend._encode([prompt])
            with torch.inference_mode():
                logits = backend.model(**enc).logits[0, -1].float()
            logp = torch.log_softmax(logits, -1)
            pairs = _option_logprobs(backend, logp, int(body.get("top_logprobs") or 5))
            tops = [{"token": t, "logprob": v, "bytes": None} for t, v in pairs]
            content = tops[0]["token"]
            choice["logprobs"] = {"content": [{"token": content, "logprob": tops[0]["logprob"],
                                               "bytes": None, "top_logprobs": tops}]}
            n_out = 1
        else:
            (gen,) = backend.generate([prompt], max_new_tokens=int(body.get("max_tokens") or 16),
                                      temperature=float(body.get("temperature", 0.7)),
                                      seed=int(body.get("seed") or 0))
            content, n_out = gen.text, gen.tokens_out
        choice["message"] = {"role": "assistant", "content": content}
        return {"id": "chatcmpl-standin", "object": "chat.completion",
                "created": int(time.time()), "model": body.get("model", "stand-in"),
                "choices": [choice],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out,
                          "total_tokens": n_in + n_out}}

    def _completions(self, body: dict) -> dict:
        backend = self.server.backend
        tok = backend.tokenizer
        prompt = body["prompt"]
        if isinstance(prompt, str):
            ids = tok(prompt, add_special_tokens=bool(body.get("add_special_tokens", True)))[
                "input_ids"]
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            ids = list(prompt)
        else:
            raise ValueError("prompt must be a string or a list of token ids")
        inp = torch.tensor([ids], dtype=torch.long)
        max_tokens = int(body.get("max_tokens") or 16)
        k = body.get("logprobs")
        with torch.inference_mode():
            if max_tokens == 1 or k:
                logits = backend.model(input_ids=inp).logits[0, -1].float()
                logp = torch.log_softmax(logits, -1)
                new = [int(torch.argmax(logp))]
            else:
                temperature = float(body.get("temperature", 1.0))
                torch.manual_seed(int(body.get("seed") or 0))
                kwargs: dict[str, Any] = {"max_new_tokens": max_tokens,
                                          "do_sample": temperature > 0,
                                          "pad_token_id": tok.pad_token_id}
                if temperature > 0:
                    kwargs.update(temperature=temperature, top_k=0)
                out = backend.model.generate(input_ids=inp, attention_mask=torch.ones_like(inp),
                                             **kwargs)
                new = out[0, len(ids):].tolist()
        logprobs = None
        if k:
            pairs = _option_logprobs(backend, logp, int(k))
            first = tok.decode(new[:1])
            logprobs = {"text_offset": [0], "tokens": [first],
                        "token_logprobs": [float(logp[new[0]])],
                        "top_logprobs": [dict(pairs)]}
        return {"id": "cmpl-standin", "object": "text_completion", "created": int(time.time()),
                "model": body.get("model", "stand-in"),
                "choices": [{"index": 0, "text": tok.decode(new, skip_special_tokens=True),
                             "logprobs": logprobs, "finish_reason": "length"}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new),
                          "total_tokens": len(ids) + len(new)}}

    def _tokenize(self, body: dict) -> dict:
        tok = self.server.backend.tokenizer
        msgs = [{"role": r, "content": c} for r, c in _messages(body)]
        text = tok.apply_chat_template(
            msgs, tokenize=False,
            add_generation_prompt=bool(body.get("add_generation_prompt", True)),
            continue_final_message=bool(body.get("continue_final_message", False)),
        )
        ids = tok(text, add_special_tokens=bool(body.get("add_special_tokens", False)))[
            "input_ids"]
        return {"count": len(ids), "max_model_len": 4096, "tokens": ids}


class StandIn:
    """A running stand-in server: its URLs and what it saw."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        port = server.server_address[1]
        self.root = f"http://127.0.0.1:{port}"
        self.url = self.root + "/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request so far: ``{"method", "path", "body", "headers"}``."""
        with self._server.stats_lock:
            return list(self._server.requests)

    @property
    def max_in_flight(self) -> int:
        """The most requests that were being handled at once."""
        return self._server.max_in_flight

    @property
    def delay_s(self) -> float:
        """Added latency per POST."""
        return self._server.delay_s

    @delay_s.setter
    def delay_s(self, value: float) -> None:
        self._server.delay_s = value

    def posts(self, path: str | None = None) -> list[dict[str, Any]]:
        """The recorded POST bodies (to ``path`` only, when given)."""
        return [r["body"] for r in self.requests
                if r["method"] == "POST" and (path is None or r["path"] == path)]

    def reset(self) -> None:
        """Forget the recorded requests and the in-flight maximum."""
        with self._server.stats_lock:
            self._server.requests.clear()
            self._server.max_in_flight = self._server.in_flight


@contextlib.contextmanager
def stand_in(backend, delay_s: float = 0.0, torch_threads: int | None = None):
    """Serve ``backend`` on 127.0.0.1 (a free port); yields a :class:`StandIn`.

    ``torch_threads`` sets torch's (process-wide) thread count while the server runs: the tiny
    model's forward pass takes milliseconds on one thread, but can take hundreds of
    milliseconds on two busy cores, where intra-op threads wait for each other.
    """
    old_threads = torch.get_num_threads()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    server = _Server(("127.0.0.1", 0), Handler, backend, delay_s)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield StandIn(server)
    finally:
        server.shutdown()
        server.server_close()
        torch.set_num_threads(old_threads)


@contextlib.contextmanager
def serve_stand_in(backend):
    """Serve ``backend`` on 127.0.0.1 (a free port); yields the ``/v1`` base URL."""
    with stand_in(backend) as s:
        yield s.url
