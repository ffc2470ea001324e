"""A fault-injecting HTTP proxy on 127.0.0.1, in front of an OpenAI-compatible server.

It forwards every request to an upstream server (the stand-in of ``tests/openai_stand_in.py``)
and, on demand, breaks POST requests the way real servers and networks do. Modes, switchable at
runtime with :meth:`FaultInjectingServer.set_fault`:

==============  ==========================================================================
``ok``          pass everything through (and re-open the port if it was closed)
``refuse``      close the listening port: connections are refused
``hang``        hold the request ``hang_s`` seconds (longer than the client's timeout), then
                drop the connection without an answer
``500``/``503`` answer with that HTTP status and a JSON error
``429``         answer "too many requests" with ``Retry-After: 0``
``400``         answer "bad request" (not retryable)
``truncate``    send the upstream answer's headers with a Content-Length larger than the
                bytes that follow, then close the connection
``malformed``   answer 200 with a body that is not valid JSON
``garbage``     pass through, but rewrite chat completions' text to an unparseable answer
``down_after``  pass ``count`` POSTs, then go down (close the port) until set back to ``ok``
``drip``        send 200 headers announcing a large body, then one byte every ``drip_s``
                seconds until the client hangs up (each read is quick; the whole never ends)
``reply``       answer the status and raw body given to :meth:`FaultInjectingServer.set_reply`
``logprob``     pass through, but set every log-probability in the answer to ``bad_logprob``
                (NaN, an infinity, 1000.0 …; written as Python's json writes them)
==============  ==========================================================================

``rewrite_text``, when set, replaces the text of chat completions that pass through unharmed
(a scripted model answer, e.g. a well-formed judgement after some ``garbage``).

For every mode but ``refuse`` and ``down_after``, ``count`` is how many POSTs get the fault
(``None``: all of them until the mode changes); later POSTs pass through. GET requests
(``/health``, ``/v1/models``) always pass through while the port is open, as on a live server.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

MODES = ("ok", "refuse", "hang", "500", "503", "429", "400", "truncate", "malformed", "garbage",
         "down_after", "drip", "reply", "logprob")
GARBAGE = "garbage ~~ no tags and no prediction here"


class _Listener(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, owner: FaultInjectingServer):
        super().__init__(addr, handler)
        self.owner = owner


def free_port() -> int:
    """A port nothing listens on (bound and released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    server: _Listener

    def log_message(self, *args):
        pass

    def _reply(self, status: int, data: bytes, headers: dict[str, str] | None = None,
               length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, extra: dict[str, str] | None = None) -> None:
        data = json.dumps({"error": {"message": f"injected fault {status}", "code": status,
                                     "type": "injected"}}).encode()
        self._reply(status, data, extra)

    def _forward(self, method: str, body: bytes | None) -> tuple[int, bytes]:
        up = urlsplit(self.server.owner.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() in ("content-type", "authorization")}
            conn.request(method, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _drip(self, every_s: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(1 << 30))
        self.end_headers()
        try:
            while True:
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(every_s)
        except OSError:  # the client gave up: what the test waits for
            self.close_connection = True

    def do_GET(self):
        status, data = self._forward("GET", None)
        self._reply(status, data)

    def do_POST(self):
        owner = self.server.owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = owner._next_fault(self.path)
        if fault == "down":
            self._drop()
            return
        if fault == "hang":
            time.sleep(owner.hang_s)
            self._drop()
            return
        if fault in ("500", "503", "400"):
            self._error(int(fault))
            return
        if fault == "429":
            self._error(429, {"Retry-After": "0"})
            return
        if fault == "drip":
            self._drip(owner.drip_s)
            return
        if fault == "reply":
            self._reply(owner.reply_status, owner.reply_body)
            return
        if fault == "malformed":
            data = b'{"id": "cmpl-x", "choices": [{"index": 0, "message": {"content": "trun'
            self._reply(200, data)
            return
        status, data = self._forward("POST", body)
        if fault == "truncate":
            self._reply(status, data[: len(data) // 2], length=len(data) + 100)
            self._drop()
            return
        if fault == "logprob" and status == 200:
            data = _spoil_logprobs(data, owner.bad_logprob)
        text = GARBAGE if fault == "garbage" else owner.rewrite_text
        if text is not None and status == 200 and self.path.endswith("/chat/completions"):
            reply = json.loads(data)
            for choice in reply.get("choices", []):
                if choice.get("message") and not choice.get("logprobs"):
                    choice["message"]["content"] = text
            data = json.dumps(reply).encode()
        self._reply(status, data)


def _spoil_logprobs(data: bytes, bad: float) -> bytes:
    """Every logprob of a chat or completions answer replaced by ``bad``."""
    reply = json.loads(data)
    for choice in reply.get("choices", []):
        lp = choice.get("logprobs") or {}
        for entry in lp.get("content") or []:  # chat: top_logprobs lists
            entry["logprob"] = bad
            for t in entry.get("top_logprobs") or []:
                t["logprob"] = bad
        for top in lp.get("top_logprobs") or []:  # completions: dicts token -> logprob
            for tok in top or {}:
                top[tok] = bad
    return json.dumps(reply).encode()  # NaN and Infinity as Python writes them


class FaultInjectingServer:
    """A proxy on 127.0.0.1 that injects faults into the POSTs it forwards.

    Args:
        upstream: the upstream server's root URL (``http://127.0.0.1:PORT``; a trailing
            ``/v1`` is dropped).
        hang_s: how long ``hang`` holds a request.
        port: the port to listen on (a free one by default).
    """

    def __init__(self, upstream: str, *, hang_s: float = 3.0, port: int | None = None) -> None:
        upstream = upstream.rstrip("/")
        self.upstream = upstream[:-3] if upstream.endswith("/v1") else upstream
        self.hang_s = hang_s
        self.drip_s = 0.2  # ``drip``: seconds between bytes
        self.reply_status, self.reply_body = 200, b""  # ``reply``: see set_reply
        self.port = port or free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = self.root + "/v1"
        self._lock = threading.Lock()
        self._listener: _Listener | None = None
        self._thread: threading.Thread | None = None
        self.mode = "ok"
        self._left: int | None = None
        self.posts = 0  # POSTs received while the port was open
        self.injected = 0  # POSTs that got a fault
        self.log: list[tuple[str, str]] = []  # (path, fault or "ok")
        # When set, chat completions that pass through answer this text (a scripted model).
        self.rewrite_text: str | None = None
        self.bad_logprob = float("nan")  # what the ``logprob`` mode writes

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> FaultInjectingServer:
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def open(self) -> None:
        """Listen on the port (no-op when already listening)."""
        with self._lock:
            if self._listener is not None:
                return
            listener = _Listener(("127.0.0.1", self.port), _Handler, self)
            thread = threading.Thread(target=listener.serve_forever,
                                      kwargs={"poll_interval": 0.02}, daemon=True)
            thread.start()
            self._listener, self._thread = listener, thread

    def close(self) -> None:
        """Stop listening: new connections are refused."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown()
            listener.server_close()

    @property
    def listening(self) -> bool:
        """Whether the port is open."""
        return self._listener is not None

    # ------------------------------------------------------------------ faults

    def set_fault(self, mode: str, count: int | None = None) -> None:
        """Switch the fault mode (see the module docstring).

        Args:
            mode: one of :data:`MODES`.
            count: POSTs that get the fault (``None``: all); for ``down_after``, the POSTs
                that still pass before the server goes down.
        """
        if mode not in MODES:
            raise ValueError(f"unknown fault mode {mode!r}")
        if mode == "down_after" and count is None:
            raise ValueError("down_after needs count")
        with self._lock:
            self.mode, self._left = mode, count
        if mode == "refuse":
            self.close()
        elif mode != "down_after" or self._listener is None:
            self.open()

    def set_reply(self, status: int, body: bytes, count: int | None = None) -> None:
        """Answer POSTs with ``status`` and the raw ``body`` (mode ``reply``).

        Args:
            status: the HTTP status.
            body: the bytes sent, as they are (broken JSON, a key in an error message ...).
            count: POSTs that get this answer (``None``: all).
        """
        self.reply_status, self.reply_body = status, body
        self.set_fault("reply", count)

    def _next_fault(self, path: str) -> str | None:
        go_down = False
        with self._lock:
            self.posts += 1
            mode, fault = self.mode, None
            if mode == "down_after":
                if self._left is not None and self._left > 0:
                    self._left -= 1
                else:
                    fault, go_down = "down", True
            elif mode not in ("ok", "refuse") and (self._left is None or self._left > 0):
                fault = mode
                if self._left is not None:
                    self._left -= 1
            if fault:
                self.injected += 1
            self.log.append((path, fault or "ok"))
        if go_down:
            # Close the port from another thread: this handler still has to drop its socket.
            threading.Thread(target=self.close, daemon=True).start()
        return fault
