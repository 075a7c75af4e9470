"""The HTTP side every guard backend shares: one keep-alive pool for calls and one for probes
(``worker.guard.transport``), TLS, redirects never followed, replies read up to a cap, transport failures
and statuses mapped to
``worker.core.errors.GuardError`` subclasses (``wire.error_for_status``), the API key kept out of every
message, and the model check against ``GET /models``. Backends add what they send and how they read it.
This module never retries (the retry policy lives in one place above it).
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import orjson
from opentelemetry.propagate import inject

from worker.core.errors import GuardConfigError, GuardError, GuardModelMissing, GuardTimeout, GuardUnavailable
from worker.core.guard_types import GuardRequest, GuardVerdict
from worker.guard.base import AsyncLifecycle
from worker.guard.reply import ReplyError
from worker.guard.transport import HeaderError, KeepAlivePool
from worker.guard.wire import (
    context_window,
    error_for_status,
    error_message,
    model_ids,
    one_line,
    parse_retry_after,
)

# A verdict reply is well under 2 KiB; anything past this is read no further (64 calls in flight must not
# be able to hold 64 huge replies in memory). An error reply is cut there; a 200 reply is a bad reply.
MAX_REPLY_BYTES: Final = 1024 * 1024

QUOTE_PROBE_CHARS = 24
PROBE_TIMEOUT_S = 10.0  # a models listing answers fast; waiting longer only delays noticing an outage


def scrub_input(body: bytes, contents: list[str]) -> bytes:
    """``body`` with every quote of ``contents`` (whole, JSON-escaped, or cut short) replaced by «text»."""
    for content in contents:
        for variant in {content, json.dumps(content)[1:-1], json.dumps(content, ensure_ascii=False)[1:-1]}:
            raw = variant.encode("utf-8")
            if len(raw) < 4:
                continue
            body = body.replace(raw, "«text»".encode())
            probe = raw[:QUOTE_PROBE_CHARS]
            if len(probe) >= 12 and (at := body.find(probe)) >= 0:
                body = body[:at] + "«text»".encode()  # a quote cut short: drop everything from it on
    return body


def tls_context(*, verify: bool = True, ca_file: str | None = None) -> ssl.SSLContext:
    """The TLS context of an https guard: the system's CAs (or ``ca_file``), or no verification at all
    when ``verify`` is false (GUARDQ_GUARD_TLS_VERIFY=false, for a test guard with a self-signed cert).
    Raises ``GuardConfigError`` when ``ca_file`` is not a CA bundle."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise GuardConfigError(f"GUARDQ_GUARD_CA_FILE={ca_file!r} is not a usable CA bundle: {exc}") from None
    if not verify:
        context.check_hostname = False  # must go first: the SSL module refuses CERT_NONE while it is on
        context.verify_mode = ssl.CERT_NONE
    return context


def _redirect_note(location: str) -> str:
    """Where a redirect pointed, without path or query (they may carry tokens)."""
    parts = urlsplit(location)
    return f"to {parts.scheme}://{parts.hostname}" if parts.hostname else "without a usable Location"


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class GuardHttp(AsyncLifecycle):
    """An OpenAI-compatible guard server behind a keep-alive connection pool; subclasses add ``moderate``."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None,
        timeout_s: float,
        pool_size: int,
        tls_verify: bool = True,
        ca_file: str | None = None,
        connect_timeout_s: float | None = None,
    ):
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if not timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        self._base_url = base_url.rstrip("/")
        # For messages and logs: no user:password@ and no query string, where credentials may hide.
        self._shown_url = _without_credentials(self._base_url)
        self._model = model
        self._context_window: int | None = None
        self._probe_pool: KeepAlivePool | None = None
        # The key is kept only to build the header and to scrub it from server-echoed messages.
        self._api_key = api_key or None
        self._timeout_s = timeout_s
        # A black-holed guard frees the slot after this, not after the whole call's timeout.
        self._connect_timeout_s = min(connect_timeout_s or timeout_s, timeout_s)
        self._pool_size = pool_size
        self._pool: KeepAlivePool | None = None
        # Built now, so a bad CA bundle stops the start-up rather than every later call.
        self._ssl = tls_context(verify=tls_verify, ca_file=ca_file)

    def __repr__(self) -> str:
        key = "'***'" if self._api_key else "None"
        return (
            f"{type(self).__name__}(base_url={self._shown_url!r}, model={self._model!r}, api_key={key}, "
            f"timeout_s={self._timeout_s}, pool_size={self._pool_size})"
        )

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context of the connections to an https guard."""
        return self._ssl

    @property
    def model(self) -> str:
        """The configured model name, as sent in requests and reported in verdicts."""
        return self._model

    async def start(self) -> None:
        """Open the connection pools; calling it again is a no-op."""
        if self._pool is not None:
            return
        # The pool limit caps in-flight calls: vLLM queues without limit, so the client must.
        self._pool = self._pool_of(self._pool_size, self._timeout_s)
        # Start-up checks, probes and heartbeats get connections of their own: a pool full of slow
        # moderation calls must not make a healthy guard look down.
        self._probe_pool = self._pool_of(2, min(self._timeout_s, PROBE_TIMEOUT_S))

    def _pool_of(self, limit: int, timeout_s: float) -> KeepAlivePool:
        return KeepAlivePool(
            self._base_url,
            limit=limit,
            timeout_s=timeout_s,
            connect_timeout_s=self._connect_timeout_s,
            ssl_context=self._ssl,
            max_reply_bytes=MAX_REPLY_BYTES,
        )

    @property
    def timeouts_s(self) -> tuple[float, float]:
        """(the whole call, its connect) in seconds."""
        return self._timeout_s, self._connect_timeout_s

    async def stop(self) -> None:
        """Close the pools and their connections; calling it again is a no-op."""
        pool, self._pool = self._pool, None
        probe, self._probe_pool = self._probe_pool, None
        for each in (pool, probe):
            if each is not None:
                await each.close()

    async def moderate(self, request: GuardRequest) -> GuardVerdict:
        """Moderate one text; raises a ``GuardError`` subclass on failure (each backend's own)."""
        raise NotImplementedError

    async def check(self) -> None:
        """The start-up check: the server answers and serves the configured model."""
        await self.check_models()

    async def check_models(self) -> None:
        """Check that the server is reachable and serves the configured model (start-up and heartbeat).

        Raises GuardConfigError if the model is not listed, GuardUnavailable/GuardTimeout if unreachable.
        """
        status, headers, body, _ = await self._call("GET", "/models", probe=True)
        if status != 200:
            raise self._http_error(status, headers, body)
        served = model_ids(body)
        if served is None:
            raise GuardConfigError(
                f"{self._shown_url}/models is not an OpenAI model list: {error_message(body)}", status=status
            )
        if not served:
            raise GuardModelMissing(
                f"{self._shown_url}/models lists no model yet (still loading?)", status=status
            )
        if self._model not in served:
            listed = one_line(", ".join(served), 200)
            raise GuardModelMissing(
                f"guard model {self._model!r} is not served at {self._shown_url}; served: {listed}",
                status=status,
                served=served,
            )
        self._context_window = context_window(body, self._model)

    @property
    def context_window(self) -> int | None:
        """The model's context window in tokens, as the server last reported it (None before that)."""
        return self._context_window

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        inject(headers)  # traceparent of the current span, so the guard call joins the message's trace
        return headers

    async def _call(
        self, method: str, path: str, payload: Mapping[str, Any] | None = None, *, probe: bool = False
    ) -> tuple[int, Mapping[str, str], bytes, bool]:
        """One HTTP exchange: (status, headers, body, whether the body is whole), with transport failures
        mapped to GuardErrors. Redirects are never followed (they would re-send the user's text to another
        origin); the body is read up to ``MAX_REPLY_BYTES``."""
        pool = self._probe_pool if probe else self._pool
        if pool is None:
            raise RuntimeError(f"{type(self).__name__}.start() was not called")
        headers = self._headers()
        data = None
        if payload is not None:
            data = orjson.dumps(payload)
            headers["Content-Type"] = "application/json"
        try:
            reply = await pool.request(method, path, data, headers)
        except TimeoutError as exc:
            raise GuardTimeout(
                f"guard call timed out after {self._timeout_s:g}s: {method} {self._shown_url}{path}"
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            # A certificate the guard's CA bundle does not accept will not fix itself: configuration.
            raise GuardConfigError(
                f"guard TLS certificate rejected (check GUARDQ_GUARD_CA_FILE): {one_line(str(exc), 300)}"
            ) from exc
        except HeaderError as exc:
            raise GuardConfigError(f"guard request refused before sending: {self._scrub(str(exc))}") from exc
        except (OSError, ReplyError) as exc:
            raise GuardUnavailable(
                f"guard unreachable: {type(exc).__name__}: {one_line(self._scrub(str(exc)))}"
            ) from exc
        body = reply.body
        if 300 <= reply.status < 400:
            body = _redirect_note(reply.headers.get("Location", "")).encode()
        return reply.status, reply.headers, body, reply.whole

    def _http_error(self, status: int, headers: Mapping[str, str], body: bytes) -> GuardError:
        retry_after = headers.get("Retry-After")
        retry_after_s = parse_retry_after(retry_after, time.time()) if retry_after else None
        if self._api_key:
            # Scrubbed before the message is cut, so no prefix of the key survives a truncation.
            body = body.replace(self._api_key.encode(), b"***")
        return error_for_status(status, error_message(body), retry_after_s)

    def _scrub(self, text: str) -> str:
        """Hide the API key should it ever appear in a transport error's text."""
        return text.replace(self._api_key, "***") if self._api_key else text
