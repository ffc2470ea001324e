"""A stand-in OpenAI-compatible chat server over a local hf backend, for tests.

It is a real (minimal) server: requests are rendered with the model's chat template and
answered by the model, including first-token ``top_logprobs``. vLLM itself is exercised by the
serving tests; this one keeps the default suite fast and offline.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from agents.backends.base import ChatPrompt


def _prompt(body: dict) -> ChatPrompt:
    msgs = [(m["role"], m["content"]) for m in body["messages"]]
    prefix = ""
    if body.get("continue_final_message") and msgs and msgs[-1][0] == "assistant":
        prefix = msgs.pop()[1]
    return ChatPrompt(tuple(msgs), prefix)


def _handler(backend, lock):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = _prompt(body)
            with lock:
                text = backend.render(prompt)
                n_in = len(backend.tokenizer(text, add_special_tokens=False)["input_ids"])
                choice: dict = {"index": 0, "finish_reason": "stop", "logprobs": None}
                if body.get("logprobs"):
                    enc, _ = backend._encode([prompt])
                    with torch.inference_mode():
                        logits = backend.model(**enc).logits[0, -1].float()
                    logp = torch.log_softmax(logits, -1)
                    top = torch.topk(logp, int(body.get("top_logprobs") or 5))
                    tops = [{"token": backend.tokenizer.decode([int(i)]), "logprob": float(v),
                             "bytes": None} for v, i in zip(top.values, top.indices, strict=True)]
                    # Also list the option words, as a real server would if they rank high.
                    for word in ("Yes", "No", " Yes", " No"):
                        tid = backend.tokenizer(word, add_special_tokens=False)["input_ids"][0]
                        tops.append({"token": word, "logprob": float(logp[tid]), "bytes": None})
                    content = tops[0]["token"]
                    choice["logprobs"] = {"content": [{"token": content, "logprob": tops[0][
                        "logprob"], "bytes": None, "top_logprobs": tops}]}
                    n_out = 1
                else:
                    (gen,) = backend.generate([prompt], max_new_tokens=int(
                        body.get("max_tokens") or 16), temperature=float(
                        body.get("temperature", 0.7)), seed=int(body.get("seed") or 0))
                    content, n_out = gen.text, gen.tokens_out
            choice["message"] = {"role": "assistant", "content": content}
            reply = {
                "id": "chatcmpl-standin", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "stand-in"), "choices": [choice],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out,
                          "total_tokens": n_in + n_out},
            }
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@contextlib.contextmanager
def serve_stand_in(backend):
    """Serve ``backend`` on 127.0.0.1 (a free port); yields the ``/v1`` base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(backend, threading.Lock()))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


