"""GUARDQ_ALERT_WEBHOOK_URL: tell someone when the guard's circuit opens, when a fallback begins (provisional
verdicts) and when the guard is back.

Each event is one JSON POST with a ``text`` line (what a Slack-style incoming webhook shows) and the
details for a generic receiver: ``state``, ``since`` (when the outage began), ``reason``, ``worker`` and
``counts``. Posts go out in the background with a timeout and no retries: a receiver that fails or hangs
is logged, never waited for, and never stops the worker. At most a few posts are under way at once; an
event beyond that is logged and dropped. A flapping guard does not flood the receiver: at most one post
a minute (``fallback`` always at once); what happened meanwhile is summed up by the latest state, posted
when the minute is over, so the receiver's last message is always the current state.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Final

import aiohttp

from worker.core.errors import one_line
from worker.core.times import epoch_rfc3339

log = logging.getLogger(__name__)

TIMEOUT_S: Final = 5.0
MAX_PENDING: Final = 8
QUIET_S: Final = 60.0  # the least time between two alerts of one state (but fallback)
_SUMMARY: Final = {
    "open": "guard circuit OPEN: moderation paused",
    "fallback": "guard outage: giving PROVISIONAL verdicts",
    "back": "guard is BACK: moderation resumed",
}


def worker_id() -> str:
    """This process: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class AlertWebhook:
    """Posts breaker events to one URL; ``notify`` never blocks and never raises."""

    def __init__(
        self,
        url: str,
        *,
        worker: str,
        counts: Callable[[], dict[str, Any]] = dict,
        timeout_s: float = TIMEOUT_S,
        quiet_s: float = QUIET_S,
    ) -> None:
        self._url = url
        self._worker = worker
        self._counts = counts
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._pending: set[asyncio.Task[None]] = set()
        self._quiet_s = quiet_s
        self._last_state = ""  # the state the receiver heard last
        self._last_at = -quiet_s
        self._deferred: tuple[str, dict[str, Any]] | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        self._session: aiohttp.ClientSession | None = None
        self.sent = 0
        self.failed = 0

    def notify(self, event: str, details: dict[str, Any]) -> None:
        """Post ``event`` in the background (a breaker listener). Within a minute of the last post, the
        event waits, and only the latest waiting one is posted when the minute is over (if it changes
        what the receiver heard last); ``fallback`` is always posted at once."""
        now = time.monotonic()
        if event == "fallback" or now - self._last_at >= self._quiet_s:
            self._send(event, details)
            return
        self._deferred = (event, details)
        if self._flush_handle is None:
            delay_s = self._last_at + self._quiet_s - now
            self._flush_handle = asyncio.get_running_loop().call_later(delay_s, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        deferred, self._deferred = self._deferred, None
        if deferred is not None and deferred[0] != self._last_state:
            self._send(*deferred)

    def _send(self, event: str, details: dict[str, Any]) -> None:
        if len(self._pending) >= MAX_PENDING:
            log.warning("alert webhook: %d posts under way; dropping the %r alert", len(self._pending), event)
            return
        self._last_state, self._last_at = event, time.monotonic()
        task = asyncio.get_running_loop().create_task(self._post(self.body(event, details)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def body(self, event: str, details: dict[str, Any]) -> dict[str, Any]:
        """The JSON document of one event."""
        outage_s = details.get("since_s", details.get("outage_s"))
        since = epoch_rfc3339(time.time() - outage_s) if isinstance(outage_s, int | float) else None
        reason = details.get("reason")
        summary = _SUMMARY.get(event, event)
        text = f"guardq {self._worker}: {summary}" + (f" ({one_line(str(reason), 200)})" if reason else "")
        return {
            "text": text,
            "source": "guardq",
            "state": event,
            "since": since,
            "reason": reason,
            "worker": self._worker,
            "details": details,
            "counts": self._counts(),
        }

    async def _post(self, body: dict[str, Any]) -> None:
        try:
            if self._session is None:
                self._session = aiohttp.ClientSession(timeout=self._timeout)
            async with self._session.post(self._url, json=body, allow_redirects=False) as reply:
                status = reply.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # The error's text may hold the URL, and a webhook URL is a secret: the class alone is logged.
            self.failed += 1
            log.warning("alert webhook of %r failed: %s", body["state"], type(exc).__name__)
            return
        if status >= 300:
            self.failed += 1
            log.warning("alert webhook of %r answered HTTP %d", body["state"], status)
            return
        self.sent += 1

    async def close(self) -> None:
        """Post a waiting event at once (the receiver hears the last state), give posts under way a
        moment, then close."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()
        if self._pending:
            await asyncio.wait(self._pending, timeout=1.0)
        for task in self._pending:
            task.cancel()
        if self._session is not None:
            await self._session.close()
