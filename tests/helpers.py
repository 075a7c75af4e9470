"""Test helpers: the simulated guard as a subprocess, an in-process worker, publishing and collecting.

Every wait here polls with a deadline; nothing sleeps a fixed time and hopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiokafka.structs import ConsumerRecord
from opentelemetry.sdk.trace import TracerProvider

from worker.app import Worker
from worker.config.settings import Settings
from worker.guard.base import GuardBackend
from worker.kafka.publish import InputProducer, Published
from worker.kafka.reading import records
from worker.schemas import schema
from worker.store.keys import RedisKeys

SIM_MODEL = "Qwen/Qwen3Guard-Gen-8B"


@dataclass
class GuardSim:
    """Handle on a running guard simulator."""

    base_url: str  # http://127.0.0.1:PORT/v1

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.root + path, json=body) as response,
        ):
            response.raise_for_status()
            return await response.json()

    async def reset(self) -> None:
        """Clear stats and restore default knobs."""
        defaults = {"latency_ms": 0, "latency_dist": "fixed", "capacity": 256, "fail_503_rate": 0.0}
        defaults |= {"fail_429_rate": 0.0, "reset_rate": 0.0, "hang_rate": 0.0, "garbage_rate": 0.0}
        defaults |= {"max_model_len": 32768, "flip_share": 0.0, "loading": False, "model": SIM_MODEL}
        await self._call("POST", "/sim/config", defaults)
        await self._call("POST", "/sim/reset")

    async def configure(self, **knobs: Any) -> None:
        await self._call("POST", "/sim/config", knobs)

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/sim/stats")
        return result

    async def calls_for(self, content: str) -> int:
        """How many chat calls moderated exactly ``content``."""
        digest = hashlib.sha1(content.encode("utf-8")).hexdigest()
        return int((await self.stats())["calls_by_content"].get(digest, 0))


def start_guard_sim(*extra: str) -> tuple[GuardSim, subprocess.Popen[str]]:
    """Start `guardq guard-sim --port 0` and read the address it prints."""
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "guard-sim", "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("guard-sim listening on "):
        process.kill()
        raise RuntimeError(f"guard-sim did not start: {line!r}")
    return GuardSim(line.removeprefix("guard-sim listening on ")), process


def stop_process(process: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """Terminate a process the test started, killing it if it does not exit within 5 s."""
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str) -> None:
    """Poll ``check`` every 50 ms until it is true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, *, guard: GuardBackend | None = None, tracer_provider: TracerProvider | None = None
) -> AsyncIterator[Worker]:
    """A worker running in this event loop (its spans to ``tracer_provider`` if given); stopped gracefully
    (and checked for errors) on exit."""
    worker = Worker(settings, guard=guard, tracer_provider=tracer_provider)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    ready = asyncio.create_task(worker.ready.wait())
    await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # raises the start-up error
    assert worker.ready.is_set(), "worker did not become ready within 30 s"
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=settings.shutdown_timeout_s + 15)


async def publish(settings: Settings, documents: Iterable[dict[str, Any]]) -> list[Published]:
    """Publish validated requests to the input topic."""
    async with InputProducer(settings) as publisher:
        return [await publisher.publish(document) for document in documents]


async def publish_raw(settings: Settings, items: Iterable[tuple[bytes | None, bytes]]) -> None:
    """Publish (key, value) bytes to the input topic without validation."""
    async with InputProducer(settings) as publisher:
        for key, value in items:
            await publisher.publish_raw(key, value)


async def collect(settings: Settings, topic: str, *, count: int, timeout_s: float) -> list[ConsumerRecord]:
    """Read ``topic`` from the beginning until ``count`` records arrived or ``timeout_s`` passed."""
    found: list[ConsumerRecord] = []
    stream = records(settings, topic, from_beginning=True, timeout_s=timeout_s)
    async with contextlib.aclosing(stream):
        async for record in stream:
            found.append(record)
            if len(found) >= count:
                break
    return found


async def distinct_verdict_ids(
    settings: Settings, *, expected: int, timeout_s: float
) -> dict[str, dict[str, Any]]:
    """Verdicts on the verdict topic by id, read until ``expected`` distinct ids were seen (or time ran out)."""
    by_id: dict[str, dict[str, Any]] = {}
    stream = records(settings, settings.verdict_topic, from_beginning=True, timeout_s=timeout_s)
    async with contextlib.aclosing(stream):
        async for record in stream:
            document = json.loads(record.value)
            by_id[document["id"]] = document | {"_headers": dict(record.headers)}
            if len(by_id) >= expected:
                break
    return by_id


async def stored_verdicts(settings: Settings, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The verdicts in Redis for ``ids`` (missing ones are absent)."""
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        keys = [RedisKeys(settings.redis_prefix).verdict(message_id) for message_id in ids]
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), 500):
            values = await client.mget(keys[start : start + 500])
            for value in values:
                if value is not None:
                    document = json.loads(value)
                    found[document["id"]] = document
        return found
    finally:
        await client.aclose()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that reproduce ``settings`` in a worker subprocess."""
    return settings.child_env(os.environ)


def spawn_worker(
    settings: Settings, log_path: str, extra_env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`guardq run` as a subprocess (so it can be SIGKILLed), logging to ``log_path``; ``extra_env`` adds
    variables that are not settings (OTEL_* for instance)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env=settings_env(settings) | dict(extra_env or {}),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


async def wait_for_verdicts(
    settings: Settings, ids: Iterable[str], *, timeout_s: float
) -> dict[str, dict[str, Any]]:
    """Wait until Redis holds a verdict for every id; return them."""
    wanted = list(ids)
    found: dict[str, dict[str, Any]] = {}

    async def complete() -> bool:
        found.update(await stored_verdicts(settings, [i for i in wanted if i not in found]))
        return len(found) == len(set(wanted))

    await wait_until(complete, timeout_s=timeout_s, what=f"verdicts for {len(set(wanted))} id(s) in Redis")
    return found


def schema_errors(name: str, document: Any) -> list[str]:
    """Validation errors of ``document`` against the shipped schema ``name`` (``worker.schemas``)."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [error.message for error in validator.iter_errors(document)]


async def run_guardq(
    settings: Settings, *args: str, stdin: bytes | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """`guardq ARGS` as a subprocess configured by ``settings``; output decoded as text."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env=settings_env(settings),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=timeout_s)
    assert process.returncode is not None
    return subprocess.CompletedProcess(args, process.returncode, out.decode(), err.decode())


class InProcessBackend:
    """The lifecycle of a guard backend made in a test (nothing to start, stop or check); a subclass adds
    ``moderate`` (and ``moderate_batch`` for a batching one)."""

    model = "test-backend"
    context_window = None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def check(self) -> None:
        return None
