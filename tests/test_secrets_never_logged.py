"""Secrets and message text never reach the logs: a worker with a guard API key and a password-protected
Redis logs at DEBUG while it moderates, retries and dead-letters distinctive texts; no log line, no span
attribute and no settings display shows a secret or a text. Failure paths too: a wrong Redis password or a
wrong guard key stops `guardq run` with one line that shows neither the wrong nor the right secret."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, start_guard_sim, stop_process, wait_for_verdicts, wait_until
from tests.spans import recording_provider, worker_with_provider
from worker.config.settings import Settings
from worker.dev import stack
from worker.kafka.publish import InputProducer
from worker.telemetry import logs

pytestmark = pytest.mark.integration

REDIS_PASSWORD = f"redis-pw-{uuid.uuid4().hex}"
API_KEY = f"sk-guard-{uuid.uuid4().hex}"
SASL_PASSWORD = f"sasl-pw-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this module's own that requires REDIS_PASSWORD; its URL without the password."""
    port = stack.free_port()
    directory = tmp_path_factory.mktemp("redis-auth")
    process = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", REDIS_PASSWORD),
            *("--appendonly", "yes", "--appendfsync", "always", "--dir", str(directory)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):  # up to 10 s
            if stack.port_open("127.0.0.1", port):
                break
            if process.poll() is not None:
                raise RuntimeError("redis-server exited at start-up")
            subprocess.run(["sleep", "0.1"], check=True)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def keyed_guard() -> Iterator[GuardSim]:
    """A guard simulator of this module's own that requires API_KEY on its /v1 routes."""
    sim, process = start_guard_sim("--api-key", API_KEY)
    yield sim
    stop_process(process)


@contextlib.contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """guardq's own JSON log configuration at DEBUG, writing into a buffer; the root logger is restored."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffer = io.StringIO()
    real_stderr = sys.stderr
    sys.stderr = buffer  # logs.configure binds its handler to sys.stderr as it is now
    try:
        logs.configure("DEBUG")
    finally:
        sys.stderr = real_stderr
    try:
        yield buffer
    finally:
        root.handlers[:], root.level = saved


def span_texts(spans: tuple[ReadableSpan, ...]) -> list[str]:
    """Everything a span exports as text: name, attributes, events and status."""
    texts = []
    for span in spans:
        texts.append(span.name)
        texts.extend(f"{k}={v!r}" for k, v in (span.attributes or {}).items())
        texts.extend(f"{e.name} {dict(e.attributes or {})}" for e in span.events)
        texts.append(str(span.status.description))
    return texts


def keyed_settings(
    make_settings: SettingsFactory, redis_host: str, guard: GuardSim, **extra: Any
) -> Settings:
    return make_settings(
        redis_url=f"redis://:{REDIS_PASSWORD}@{redis_host}/0",
        guard_url=guard.base_url,
        guard_api_key=API_KEY,
        **extra,
    )


async def test_secrets_and_texts_never_reach_logs_or_spans(
    make_settings: SettingsFactory, private_redis: str, keyed_guard: GuardSim
) -> None:
    await keyed_guard.reset()
    settings = keyed_settings(make_settings, private_redis, keyed_guard, guard_attempts=2, max_text_chars=300)
    word = uuid.uuid4().hex  # in every text, and nowhere else
    documents = [
        {"id": "m-safe", "text": f"how do I bake bread {word}"},
        {"id": "m-resp", "kind": "response", "prompt": f"question {word}", "text": f"answer {word}"},
        {"id": "m-flaky", "text": f"[[sim:503x1]] flaky {word}"},  # one retry in process, logged
        {"id": "m-rejected", "text": f"[[sim:400x1]] rejected {word}"},  # dead-lettered, logged
    ]
    raw = [
        (b"m-bad-json", f'{{"id": "m-bad-json", "text": "{word}"'.encode()),
        (b"m-big", json.dumps({"id": "m-big", "text": f"big {word} " * 20}).encode()),
    ]
    provider, exporter = recording_provider()
    with captured_logs() as buffer:
        async with worker_with_provider(settings, provider):
            async with InputProducer(settings, tracer_provider=provider) as publisher:
                for document in documents:
                    await publisher.publish(document)
                for key, value in raw:
                    await publisher.publish_raw(key, value)
            await wait_for_verdicts(settings, ["m-safe", "m-resp", "m-flaky"], timeout_s=30)
            dead = await collect(settings, settings.dlq_topic, count=3, timeout_s=30)
    assert sorted(record.key for record in dead) == [b"m-bad-json", b"m-big", b"m-rejected"]

    lines = buffer.getvalue().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    messages = [entry["message"] for entry in entries]
    # The capture saw the whole run, DEBUG included, and the failure paths' lines.
    assert any(m.startswith("worker started") for m in messages)
    assert any(m.startswith("verdict id=m-safe") for m in messages)
    assert any("dead-lettering" in m and "guard HTTP 400" in m for m in messages)
    assert sum("dead-lettering" in m for m in messages) >= 3
    assert any(entry.get("trace_id") for entry in entries)
    for secret in (REDIS_PASSWORD, API_KEY, word):
        assert not [line for line in lines if secret in line], f"{secret[:12]}... appears in the logs"

    texts = span_texts(exporter.get_finished_spans())
    assert len(texts) > 20
    for secret in (REDIS_PASSWORD, API_KEY, word):
        assert not [text for text in texts if secret in text], f"{secret[:12]}... appears in a span"

    shown = repr(settings.redacted())
    assert REDIS_PASSWORD not in shown and API_KEY not in shown


def test_kafka_sasl_password_is_hidden_from_redacted_settings_and_errors() -> None:
    # tansu has no SASL: the password's handling is checked where it could show, settings display and errors.
    env = {
        "GUARDQ_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "GUARDQ_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "GUARDQ_KAFKA_SASL_USERNAME": "guardq",
        "GUARDQ_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
        "GUARDQ_REDIS_PASSWORD": REDIS_PASSWORD,
        "GUARDQ_GUARD_API_KEY": API_KEY,
    }
    settings = Settings.load(env)
    shown = repr(settings.redacted())
    assert not [s for s in (SASL_PASSWORD, REDIS_PASSWORD, API_KEY) if s in shown]
    assert settings.redacted()["kafka_sasl_password"] == "<hidden>"
    for broken in ({"GUARDQ_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}, {"GUARDQ_CONCURRENCY": "none"}):
        with pytest.raises(ValueError) as caught:
            Settings.load(env | broken)
        assert not [s for s in (SASL_PASSWORD, REDIS_PASSWORD, API_KEY) if s in str(caught.value)]


def test_log_formatter_masks_secret_values_in_messages_and_tracebacks() -> None:
    # The defence in depth behind the run above (which logs with no mask at all, to prove guardq itself
    # never logs a secret): should a library's message quote one, the line shows *** instead.
    settings = Settings.load(
        {
            "GUARDQ_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0",
            "GUARDQ_GUARD_API_KEY": API_KEY,
            "GUARDQ_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "GUARDQ_KAFKA_SASL_MECHANISM": "PLAIN",
            "GUARDQ_KAFKA_SASL_USERNAME": "guardq",
            "GUARDQ_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
        }
    )
    assert set(logs.secrets_of(settings)) == {REDIS_PASSWORD, API_KEY, SASL_PASSWORD}
    formatter = logs.JsonFormatter(logs.secrets_of(settings))
    try:
        raise RuntimeError(f"AUTH {REDIS_PASSWORD} refused")
    except RuntimeError:
        record = logging.LogRecord(
            "redis", logging.ERROR, __file__, 1, "key %s / %s", (API_KEY, SASL_PASSWORD), sys.exc_info()
        )
    line = formatter.format(record)
    entry = json.loads(line)
    assert entry["message"] == "key *** / ***" and "AUTH *** refused" in entry["error"]
    assert not [s for s in (REDIS_PASSWORD, API_KEY, SASL_PASSWORD) if s in line]


async def guardq_run(settings: Settings, log_path: Path, *, timeout_s: float = 90) -> int:
    """`guardq run --log-level DEBUG` as a subprocess, all output to ``log_path``; killed by PID if it
    has not exited within ``timeout_s``. Returns its exit code."""
    with open(log_path, "wb") as log:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "worker", "run", "--log-level", "DEBUG"),
            env=settings.child_env(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        return await asyncio.wait_for(process.wait(), timeout=timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"guardq run did not exit within {timeout_s} s") from None


async def test_wrong_redis_password_stops_the_worker_with_a_line_that_shows_no_password(
    make_settings: SettingsFactory, private_redis: str, keyed_guard: GuardSim, tmp_path: Path
) -> None:
    wrong = f"wrong-pw-{uuid.uuid4().hex}"
    settings = make_settings(
        redis_url=f"redis://:{wrong}@{private_redis}/0", guard_url=keyed_guard.base_url, guard_api_key=API_KEY
    )
    code = await guardq_run(settings, tmp_path / "run.log")
    output = (tmp_path / "run.log").read_text(errors="replace")
    assert code != 0
    last = output.strip().splitlines()[-1]
    assert last.startswith("guardq: cannot reach Redis:"), output[-2000:]
    assert "password" in last.lower()  # says what is wrong, not what was sent
    for secret in (wrong, REDIS_PASSWORD, API_KEY):
        assert secret not in output


async def test_wrong_guard_key_stops_the_worker_with_exit_3_and_shows_no_key(
    make_settings: SettingsFactory, private_redis: str, keyed_guard: GuardSim, tmp_path: Path
) -> None:
    wrong = f"sk-wrong-{uuid.uuid4().hex}"
    settings = make_settings(
        redis_url=f"redis://:{REDIS_PASSWORD}@{private_redis}/0",
        guard_url=keyed_guard.base_url,
        guard_api_key=wrong,
    )
    code = await guardq_run(settings, tmp_path / "run.log")
    output = (tmp_path / "run.log").read_text(errors="replace")
    assert code == 3, output[-2000:]
    assert "401" in output and "check the guard API key" in output
    for secret in (wrong, API_KEY, REDIS_PASSWORD):
        assert secret not in output


@pytest.fixture
async def echoing_guard() -> AsyncIterator[str]:
    """A guard that refuses every chat call with a 400 quoting the input, as some servers' validation
    errors do; yields its /v1 URL."""

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "Qwen/Qwen3Guard-Gen-8B"}]})

    async def chat(request: web.Request) -> web.Response:
        content = (await request.json())["messages"][-1]["content"]
        error = {"message": f"Input validation error: {content!r} is not valid", "type": "BadRequestError"}
        return web.json_response({"error": error}, status=400)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


async def test_guard_error_that_quotes_the_input_does_not_put_the_text_in_the_logs(
    make_settings: SettingsFactory, echoing_guard: str
) -> None:
    settings = make_settings(guard_url=echoing_guard)
    word = uuid.uuid4().hex
    provider, _ = recording_provider()
    with captured_logs() as buffer:
        async with worker_with_provider(settings, provider):
            async with InputProducer(settings, tracer_provider=provider) as publisher:
                await publisher.publish({"id": "m-echo", "text": f"quoted back {word}"})
            (dead,) = await collect(settings, settings.dlq_topic, count=1, timeout_s=30)
    assert dict(dead.headers)["guardq.error.reason"] == b"guard_rejected"
    lines = buffer.getvalue().splitlines()
    assert any("guard HTTP 400" in line for line in lines)
    assert not [line for line in lines if word in line]


async def _redis_answers_with_password(host: str) -> bool:
    client = aioredis.Redis.from_url(f"redis://{host}/0", password=REDIS_PASSWORD)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


async def test_private_redis_requires_the_password(private_redis: str) -> None:
    # The failure-path tests above rely on it: without the password, Redis refuses.
    await wait_until(lambda: _redis_answers_with_password(private_redis), timeout_s=10, what="redis")
    client = aioredis.Redis.from_url(f"redis://{private_redis}/0")
    try:
        with pytest.raises(Exception, match=r"(?i)auth"):
            await client.set("guardq-test-probe", "1")
    finally:
        await client.aclose()


async def test_redis_password_variable_authenticates_the_worker(
    make_settings: SettingsFactory, private_redis: str, keyed_guard: GuardSim
) -> None:
    await keyed_guard.reset()
    settings = make_settings(
        redis_url=f"redis://{private_redis}/0",
        redis_password=REDIS_PASSWORD,
        guard_url=keyed_guard.base_url,
        guard_api_key=API_KEY,
    )
    provider, _ = recording_provider()
    async with worker_with_provider(settings, provider):
        async with InputProducer(settings, tracer_provider=provider) as publisher:
            await publisher.publish({"id": "m-pw", "text": "hello"})
        found = await collect(settings, settings.verdict_topic, count=1, timeout_s=30)
    assert [record.key for record in found] == [b"m-pw"]
