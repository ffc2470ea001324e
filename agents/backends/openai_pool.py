"""The HTTP layer of the OpenAI-compatible backend: endpoints, a request pool, retries.

:class:`EndpointPool` sends every request of :class:`~agents.backends.openai_backend.
OpenAIBackend` (which builds the bodies and reads the answers):

* **Concurrency.** Requests go out from one private asyncio loop (a daemon thread), bounded by
  one semaphore of ``max_concurrency`` slots shared by every caller, so LangGraph's worker
  threads can all call the backend at once and the servers still see at most
  ``max_concurrency`` requests. Results keep prompt order.
* **Many endpoints.** Each request goes to the healthy endpoint with the fewest requests in
  flight (round-robin among ties). An endpoint that fails (connection refused, timeout, 5xx,
  broken response) is marked unhealthy for ``cooldown_s``; traffic goes to the others and the
  endpoint is re-checked (``GET {root}/health``, vLLM's, with ``GET {base_url}/models`` as the
  fallback) once its cool-down is over. With every endpoint down, the one that failed longest
  ago is probed and used as soon as it answers.
* **Retries.** Connection errors, timeouts, HTTP 408/429/5xx and truncated or malformed
  responses are retried up to ``max_retries`` times with exponential backoff and full jitter
  (``uniform(0, min(backoff_max_s, backoff_base_s * 2**n))``), at least ``Retry-After``. Other
  4xx are not retried. What escapes is a :class:`~agents.backends.base.BackendError` whose
  message is one line naming the endpoints, the last error and the attempts, with the API key
  scrubbed out.

Why this is written on ``httpx`` rather than the official ``openai`` client: the client talks to
one ``base_url`` (no failover, no health checks, no least-loaded choice among servers); its
timeout is httpx's per-read timeout, which a server dripping one byte a second never trips (here
a deadline bounds the whole answer); vLLM's ``/tokenize`` and ``/health`` live at the server
root, outside the client's API; and its own retries would multiply with the failover's. Each of
these is tested against a fault-injecting server (tests/test_openai_backend.py,
tests/test_hostile_server.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from vragent.agents.backends.base import BackendError


class Secret:
    """Holds the API key; its repr never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value

    def get(self) -> str | None:
        """The key itself (for the request header and for scrubbing messages)."""
        return self._value

    def __repr__(self) -> str:
        return "<secret>" if self._value else "<none>"


class RetryableError(Exception):
    """An attempt failed in a way another attempt (or another endpoint) may not."""

    def __init__(self, kind: str, detail: str = "", *, mark_down: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(kind)
        self.kind, self.detail, self.mark_down, self.retry_after = (
            kind, detail, mark_down, retry_after)


class FatalError(Exception):
    """An attempt failed in a way no retry fixes (a 4xx other than 408 and 429)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(kind)
        self.kind, self.detail = kind, detail


@dataclass
class Endpoint:
    """One server: its URLs, health and counters."""

    url: str  # the API base, e.g. http://host:8000/v1
    root: str  # the server root (url without /v1), where vLLM serves /health and /tokenize
    in_flight: int = 0
    down: bool = False
    down_until: float = 0.0  # time.monotonic() after which it is worth re-checking
    served: int = 0
    failures: int = 0
    last_error: str = ""
    probe: asyncio.Task | None = field(default=None, repr=False)


class LoopThread:
    """A private event loop in a daemon thread; sync code submits coroutines to it.

    Works from any thread, including threads that run their own loop (no nested-loop errors).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the private loop and wait for its result in the calling thread."""
        loop = self._ensure()
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("OpenAIBackend's sync API was called from its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def stop(self, final: Coroutine[Any, Any, Any] | None = None) -> None:
        """Run ``final`` (closing connections), then stop the loop and join its thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None:
            if final is not None:
                final.close()
            return
        if final is not None:
            with contextlib.suppress(Exception):  # closing is best effort
                asyncio.run_coroutine_threadsafe(final, loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        loop.close()


def one_line(text: str, limit: int = 200, scrub: Callable[[str], str] | None = None) -> str:
    """``text`` on one line, cut at ``limit`` characters, scrubbed of secrets *before* the cut.

    Scrubbing after the cut would miss a key that straddles it, leaving its prefix behind.
    """
    text = str(text)
    if scrub is not None:
        text = scrub(text)
    # Square brackets would be read as markup by a console that has it on.
    text = " ".join(text.split()).replace("[", "(").replace("]", ")")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def root_of(url: str) -> str:
    """The server root of an API base URL (``…/v1`` cut off), where vLLM serves ``/health``."""
    return url[: -len("/v1")] if url.endswith("/v1") else url


class EndpointPool:
    """Sends JSON requests to one or more OpenAI-compatible servers with retries and failover.

    Args:
        urls: API base URLs (``http://host:8000/v1``), checked and de-duplicated by the caller.
        api_key: the key sent as a bearer token (``None``: no header); never in a message.
        max_concurrency: requests in flight at once, over all endpoints and callers.
        timeout_s: deadline of each attempt, the whole answer included.
        max_retries: retries after the first attempt of each request.
        backoff_base_s: first backoff ceiling; it doubles per retry (full jitter).
        backoff_max_s: backoff ceiling.
        cooldown_s: how long a failed endpoint is avoided before it is re-checked.
        seed: seeds the backoff jitter (results never depend on it).
        unique_cache_salt: a fresh vLLM ``cache_salt`` in every request body sent to the API
            base (benchmarks: no prefix is ever reused).
    """

    def __init__(self, urls: Sequence[str], *, api_key: str | None, max_concurrency: int,
                 timeout_s: float, max_retries: int, backoff_base_s: float,
                 backoff_max_s: float, cooldown_s: float, seed: int = 0,
                 unique_cache_salt: bool = False) -> None:
        self.endpoints = [Endpoint(u, root_of(u)) for u in urls]
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.cooldown_s = cooldown_s
        self.unique_cache_salt = unique_cache_salt
        self._key = Secret(api_key)
        self._rng = random.Random(seed)
        self._rr = 0
        self._loop = LoopThread(f"openai-backend-{id(self):x}")
        self._client: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None

    def close(self) -> None:
        """Close the HTTP connections and stop the private event loop."""
        self._loop.stop(self._aclose())

    async def _aclose(self) -> None:
        for ep in self.endpoints:
            if ep.probe is not None and not ep.probe.done():
                ep.probe.cancel()
            ep.probe = None
        if self._client is not None:
            await self._client.aclose()
        self._client = self._sem = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0)),
                limits=httpx.Limits(max_connections=self.max_concurrency + len(self.endpoints),
                                    max_keepalive_connections=self.max_concurrency),
            )
            self._sem = asyncio.Semaphore(self.max_concurrency)
        return self._client

    def _headers(self) -> dict[str, str]:
        key = self._key.get()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def scrub(self, text: str) -> str:
        """``text`` with the API key replaced by ``***``."""
        key = self._key.get()
        return text.replace(key, "***") if key else text

    def endpoint_stats(self) -> list[dict[str, Any]]:
        """Per endpoint: URL, health, requests served, failures and requests in flight."""
        return [{"url": e.url, "healthy": not e.down, "served": e.served,
                 "failures": e.failures, "in_flight": e.in_flight} for e in self.endpoints]

    def health(self) -> dict[str, bool]:
        """Check every endpoint now (``/health``, else ``/v1/models``); URL -> healthy."""

        async def check() -> dict[str, bool]:
            self._http()
            oks = await asyncio.gather(*(self._probe_once(e) for e in self.endpoints))
            return {e.url: ok for e, ok in zip(self.endpoints, oks, strict=True)}

        return self._loop.run(check())

    # ------------------------------------------------------------------ endpoints

    def _mark_down(self, ep: Endpoint) -> None:
        ep.down = True
        ep.down_until = time.monotonic() + self.cooldown_s

    async def _probe_once(self, ep: Endpoint) -> bool:
        client = self._http()
        timeout = min(self.timeout_s, 5.0)
        for url in (ep.root + "/health", ep.url + "/models"):
            try:
                async with asyncio.timeout(timeout):  # the whole answer, not each read
                    resp = await client.get(url, headers=self._headers(), timeout=timeout)
            except (httpx.HTTPError, TimeoutError) as exc:
                ep.last_error = f"{type(exc).__name__}: {one_line(str(exc), 120, self.scrub)}"
                break  # unreachable: the other path is on the same server
            if 200 <= resp.status_code < 300:
                ep.down = False
                return True
            ep.last_error = f"HTTP {resp.status_code} from {url.removeprefix(ep.root)}"
        self._mark_down(ep)
        return False

    def _probe(self, ep: Endpoint) -> asyncio.Task:
        if ep.probe is None or ep.probe.done():
            ep.probe = asyncio.get_running_loop().create_task(self._probe_once(ep))
        return ep.probe

    async def _choose(self) -> Endpoint | None:
        """The endpoint for the next attempt, or ``None`` when none answers a health check."""
        now = time.monotonic()
        for ep in self.endpoints:  # re-check in the background once a cool-down is over
            if ep.down and ep.down_until <= now and (ep.probe is None or ep.probe.done()):
                self._probe(ep)
        healthy = [e for e in self.endpoints if not e.down]
        if healthy:
            self._rr += 1
            n = len(self.endpoints)
            # Fewest in flight; ties go round-robin.
            return min(healthy, key=lambda e: (
                e.in_flight, (self.endpoints.index(e) - self._rr) % n))
        # All down: wait for the one that failed longest ago to answer a health check.
        for ep in sorted(self.endpoints, key=lambda e: e.down_until):
            if await self._probe(ep):
                return ep
        return None


    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        delay = self._rng.uniform(0.0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        return delay

    async def post(self, path: str, body: dict[str, Any], parse: Callable[[Any], Any], *,
                    at_root: bool = False) -> Any:
        """POST ``body`` with retries and failover; return ``parse(json)``.

        Raises:
            BackendError: retries exhausted, or a non-retryable HTTP error.
        """
        client = self._http()
        assert self._sem is not None
        tried: list[str] = []
        last, retry_after = "no attempt", None
        attempts = 0
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff(attempt, retry_after))
            retry_after = None
            attempts += 1
            ep = await self._choose()
            if ep is None:
                for e in self.endpoints:
                    if e.url not in tried:
                        tried.append(e.url)
                errs = sorted({e.last_error for e in self.endpoints if e.last_error})
                last = f"{'; '.join(errs) or 'unhealthy'} (health check)"
                continue
            if ep.url not in tried:
                tried.append(ep.url)
            async with self._sem:
                ep.in_flight += 1
                try:
                    result = await self._attempt(client, ep, path, body, parse, at_root)
                except RetryableError as exc:
                    ep.failures += 1
                    if exc.mark_down:
                        self._mark_down(ep)
                    last = f"{exc.kind}: {exc.detail}" if exc.detail else exc.kind
                    ep.last_error = last
                    retry_after = exc.retry_after
                    continue
                except FatalError as exc:
                    ep.failures += 1
                    raise BackendError(one_line(
                        f"openai backend: POST {path} to {ep.url} failed with {exc.kind} "
                        f"(not retried): {exc.detail}", 400, self.scrub)) from None
                finally:
                    ep.in_flight -= 1
            ep.served += 1
            return result
        raise BackendError(one_line(
            f"openai backend: POST {path} failed after {attempts} "
            f"attempt{'s' if attempts != 1 else ''} on "
            f"{', '.join(tried)} (last error: {last})", 500, self.scrub))

    async def _attempt(self, client: httpx.AsyncClient, ep: Endpoint, path: str,
                       body: dict[str, Any], parse: Callable[[Any], Any], at_root: bool) -> Any:
        url = (ep.root if at_root else ep.url) + path
        if self.unique_cache_salt and not at_root:
            body = {**body, "cache_salt": uuid.uuid4().hex}
        try:
            # httpx's timeout bounds each read, so a server that drips a byte a second never
            # trips it: the deadline bounds the whole request, headers and body.
            async with asyncio.timeout(self.timeout_s):
                resp = await client.post(url, json=body, headers=self._headers())
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise RetryableError(type(exc).__name__, f"no full answer within "
                                  f"{self.timeout_s:g} s", mark_down=True) from None
        except httpx.RequestError as exc:  # refused, reset, truncated body, protocol errors
            raise RetryableError(type(exc).__name__, one_line(str(exc), 120, self.scrub),
                                  mark_down=True) from None
        status = resp.status_code
        if status >= 500 or status == 408:
            raise RetryableError(f"HTTP {status}", server_message(resp, self.scrub),
                                  mark_down=status >= 500)
        if status == 429:
            raise RetryableError("HTTP 429", server_message(resp, self.scrub),
                                  retry_after=parse_retry_after(resp.headers.get("retry-after")))
        if status >= 400:
            raise FatalError(f"HTTP {status}", server_message(resp, self.scrub))
        try:
            return parse(resp.json())
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError,
                OverflowError) as exc:
            # RecursionError: JSON nested deeper than Python's stack; OverflowError: a
            # number no float holds (a log-prob of 1000 under exp). Both are broken answers.
            raise RetryableError("MalformedResponse", type(exc).__name__) from None

    def run_all(self, coros: list[Coroutine[Any, Any, Any]]) -> list[Any]:
        """Run request coroutines concurrently on the pool's loop; results in their order.

        One failure cancels the rest and is raised.
        """
        async def gather() -> list[Any]:
            self._http()
            tasks = [asyncio.ensure_future(c) for c in coros]
            try:
                return await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

        if not coros:
            return []
        return self._loop.run(gather())


def server_message(resp: httpx.Response, scrub: Callable[[str], str]) -> str:
    """A short one-line form of an error response's message, scrubbed before it is cut."""
    try:
        data = resp.json()
        msg = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(msg, dict):
            msg = msg.get("message", msg)
        text = str(msg)
    except (ValueError, RecursionError):
        text = resp.text
    return one_line(text, 160, scrub)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (``None`` when absent or not a number)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
