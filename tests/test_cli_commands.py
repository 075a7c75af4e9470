"""The `guardq` commands as a user runs them: publish, tail, topics, run with bad settings."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.conftest import SettingsFactory
from tests.helpers import collect, run_guardq, running_worker, settings_env

pytestmark = pytest.mark.integration


async def test_publish_skips_bad_lines_with_their_numbers_and_adds_missing_ids(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings()
    await run_guardq(settings, "topics", "create")
    lines = [
        '{"id": "a", "text": "hello"}',
        "not json at all",
        '{"text": "no id here"}',
        "",
        '{"id": "c", "kind": "response", "text": "sure"}',
        '{"id": "d", "kind": "response", "prompt": "hi?", "text": "hello!"}',
    ]
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = await run_guardq(settings, "publish", str(path))
    assert result.returncode == 1, "skipped lines are a failure"
    assert result.stdout.strip() == f"published 3 message(s) to {settings.input_topic}; skipped 2 bad line(s)"
    errors = result.stderr.strip().splitlines()
    assert errors[0].startswith("line 2: invalid_json")
    assert errors[1].startswith("line 5: missing_field")
    records = await collect(settings, settings.input_topic, count=3, timeout_s=15)
    documents = [json.loads(r.value) for r in records]
    assert {"a", "d"} <= {d["id"] for d in documents}
    generated = next(d for d in documents if d["text"] == "no id here")
    assert len(generated["id"]) == 36
    assert all(dict(r.headers).get("traceparent") for r in records)


async def test_publish_from_stdin_and_tail_from_beginning(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    await run_guardq(settings, "topics", "create")
    published = await run_guardq(
        settings, "publish", "-", stdin=b'{"id": "x1", "text": "one"}\n{"id": "x2", "text": "two"}\n'
    )
    assert published.returncode == 0, published.stderr
    tailed = await run_guardq(
        settings, "tail", "--topic", "input", "--from-beginning", "--max", "2", "--timeout", "20"
    )
    assert tailed.returncode == 0, tailed.stderr
    rows = [json.loads(line) for line in tailed.stdout.splitlines()]
    assert sorted(json.loads(row["value"])["id"] for row in rows) == ["x1", "x2"]
    assert all(row["topic"] == settings.input_topic and "traceparent" in row["headers"] for row in rows)


async def test_tail_without_from_beginning_starts_at_the_current_end(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    await run_guardq(settings, "topics", "create")
    await run_guardq(settings, "publish", "-", stdin=b'{"id": "old", "text": "before tail"}\n')
    tail = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "tail",
        "--topic",
        "input",
        "--max",
        "1",
        "--timeout",
        "30",
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert tail.stderr is not None
    status = await asyncio.wait_for(tail.stderr.readline(), timeout=30)
    assert status.decode().startswith(f"following {settings.input_topic} (4 partitions) from the current end")
    await run_guardq(settings, "publish", "-", stdin=b'{"id": "new", "text": "after tail"}\n')
    out, _ = await asyncio.wait_for(tail.communicate(), timeout=40)
    rows = [json.loads(line) for line in out.decode().splitlines()]
    assert [json.loads(row["value"])["id"] for row in rows] == ["new"]


async def test_topics_create_makes_input_verdict_dlq_and_retry_topics(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    result = await run_guardq(settings, "topics", "create")
    assert result.returncode == 0, result.stderr
    listed = result.stdout
    for topic in [settings.input_topic, settings.verdict_topic, settings.dlq_topic, *settings.retry_topics]:
        assert f"{topic} " in listed and "created" in listed
    again = await run_guardq(settings, "topics", "create")
    assert "created" not in again.stdout


async def test_unreachable_broker_gives_one_line_error(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    result = await run_guardq(settings, "tail", "--kafka-bootstrap", "127.0.0.1:1", "--timeout", "2")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "guardq: cannot reach Kafka: no broker answered (check GUARDQ_KAFKA_BOOTSTRAP)"
    ]


async def test_a_worker_told_never_to_create_topics_starts_without_creating_any(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(create_topics="never")
    async with running_worker(settings) as worker:
        assert worker.ready.is_set()
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
        finally:
            await admin.close()
    # The topics the consumer subscribes to may be made by a broker that creates topics on a metadata
    # request (tansu does, as Kafka does by default); the ones only guardq's own creation makes are not.
    assert settings.verdict_topic not in existing and settings.dlq_topic not in existing
