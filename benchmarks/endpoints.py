"""How the ``openai`` backend's throughput grows with the number of endpoints it spreads over.

Each endpoint here is a small HTTP server that behaves like a saturated accelerator: it answers
a score request (chat completions with ``top_logprobs``) after ``--service-ms``, at most
``--slots`` at a time, so one endpoint serves at most ``slots / service time`` requests a
second. With N endpoints the ideal is N times that; the table shows what the backend's routing
(fewest in flight, over one asyncio loop) reaches, and so where the client itself would become
the limit. The endpoints run in a process of their own, and the client's CPU time per request
is printed: one core running the client can feed at most ``1 / that`` requests a second. No
model runs: this measures the dispatch, not vLLM (docs/scaling.md).

    .venv/bin/python benchmarks/endpoints.py [--endpoints 1 2 4 8] [--slots 8] [--service-ms 50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from vragent.agents.backends.base import ChatPrompt
from vragent.agents.backends.openai_backend import OpenAIBackend


class CapacityBoundEndpoint(ThreadingHTTPServer):
    """Answers after a fixed service time, ``slots`` requests at a time; counts requests."""

    daemon_threads = True

    def __init__(self, slots: int, service_s: float) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.slots = threading.Semaphore(slots)
        self.service_s = service_s
        self.served = 0
        self.count_lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: CapacityBoundEndpoint

    def log_message(self, *args) -> None:
        pass

    def _reply(self, payload: dict | None) -> None:
        data = json.dumps(payload).encode() if payload is not None else b""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # /health
        self._reply(None)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.slots:
            time.sleep(self.server.service_s)
        with self.server.count_lock:
            self.server.served += 1
        tops = [{"token": "Yes", "logprob": -0.4, "bytes": None},
                {"token": "No", "logprob": -1.1, "bytes": None}]
        self._reply({
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": "Yes"},
                         "logprobs": {"content": [{"token": "Yes", "logprob": -0.4,
                                                   "bytes": None, "top_logprobs": tops}]}}],
            "usage": {"prompt_tokens": 200, "completion_tokens": 1, "total_tokens": 201}})


def serve(n: int, slots: int, service_s: float) -> None:
    """Child process: start ``n`` endpoints, print their URLs, serve until stdin closes."""
    servers = [CapacityBoundEndpoint(slots, service_s) for _ in range(n)]
    print(json.dumps([s.url for s in servers]), flush=True)
    sys.stdin.read()


def measure(n: int, slots: int, service_s: float, requests: int) -> dict:
    """Score ``requests`` prompts over ``n`` endpoints in another process."""
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(n), str(slots),
                              str(service_s)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        urls = json.loads(child.stdout.readline())
        backend = OpenAIBackend(urls, model="m", score_api="chat",
                                max_concurrency=n * slots, timeout_s=30)
        prompts = [ChatPrompt((("system", "s"), ("user", f"user {i}")), "Prediction:")
                   for i in range(requests)]
        backend.score(prompts[: n * slots], ("Yes", "No"))  # warm-up: connections, health
        cpu0, t0 = time.process_time(), time.perf_counter()
        scores = backend.score(prompts, ("Yes", "No"))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        assert len(scores) == requests and all(sc.found for sc in scores)
        backend.close()
    finally:
        child.stdin.close()
        child.wait(10)
    return {"endpoints": n, "requests": requests, "wall_s": wall, "per_s": requests / wall,
            "ideal_per_s": n * slots / service_s, "client_cpu_ms": 1000 * cpu / requests}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--service-ms", type=float, default=50.0)
    ap.add_argument("--seconds", type=float, default=4.0, help="ideal duration of each row")
    ap.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(int(args.serve[0]), int(args.serve[1]), float(args.serve[2]))
        return
    service_s = args.service_ms / 1000
    print(f"endpoints: {args.slots} slots each, {args.service_ms:g} ms a request "
          f"(ideal {args.slots / service_s:.0f} requests/s per endpoint)\n")
    print("| endpoints | requests | wall s | requests/s | ideal | share of ideal | "
          "client CPU ms per request |")
    print("|---|---|---|---|---|---|---|")
    for n in args.endpoints:
        total = int(args.seconds * n * args.slots / service_s)
        r = measure(n, args.slots, service_s, total)
        print(f"| {n} | {total:,} | {r['wall_s']:.2f} | {r['per_s']:,.0f} | "
              f"{r['ideal_per_s']:,.0f} | {r['per_s'] / r['ideal_per_s']:.0%} | "
              f"{r['client_cpu_ms']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
