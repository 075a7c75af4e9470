"""The broker SIGKILLed mid-stream and restarted on the same S3 bucket: every acknowledged publish gets
exactly one verdict, on the verdict topic too, nothing is dead-lettered, and the worker recovers by itself.

tansu runs with ``--storage-engine s3://<bucket>/`` against a local SeaweedFS server, so what the broker
acknowledged survives the kill. The worker is a subprocess that is never restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.errors import KafkaError

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, spawn_worker, stored_verdicts, wait_for_verdicts, wait_until
from tests.s3server import LocalS3
from worker.config.settings import Settings
from worker.dev import stack
from worker.kafka import clients as kafka
from worker.kafka.publish import InputProducer
from worker.kafka.reading import records

pytestmark = pytest.mark.integration

MESSAGES = 400
BUCKET = "tansu"


class DurableBroker:
    """A tansu broker on S3 storage that the test may SIGKILL and restart on the same port and bucket."""

    def __init__(self, s3: LocalS3, log_path: Path) -> None:
        self.s3 = s3
        self.log_path = log_path
        self.port = stack.free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = stack.start_broker(
            self.port, log_path=self.log_path, storage=f"s3://{BUCKET}/", env=self.s3.tansu_env()
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stack.kill(self.process.pid, expect="tansu")
            self.process.wait(timeout=10)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[DurableBroker]:
    s3 = LocalS3(tmp_path / "s3")
    broker = DurableBroker(s3, tmp_path / "tansu.log")
    try:
        s3.start()
        s3.create_bucket(BUCKET)
        broker.start()
        yield broker
    finally:
        broker.kill()
        s3.stop()


class StreamPublisher:
    """Publishes ``count`` requests one by one, retrying each until the broker acknowledges it."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.ids = [f"d{i}" for i in range(count)]
        self.acked: list[str] = []
        self.failed_sends = 0

    async def run(self, *, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        async with InputProducer(self.settings) as publisher:
            for message_id in self.ids:
                document = {"id": message_id, "text": f"durable broker test {message_id}"}
                while time.monotonic() < deadline:
                    try:
                        await asyncio.wait_for(publisher.publish(document), timeout=10)
                    except (KafkaError, TimeoutError, OSError):
                        # Unacknowledged: it may or may not be in the log, so send it again (same id).
                        self.failed_sends += 1
                        await asyncio.sleep(0.1)
                        continue
                    self.acked.append(message_id)
                    break
                await asyncio.sleep(0.02)  # a stream, not a burst: the kill must meet unpublished work


async def input_ids(settings: Settings, ids: set[str], *, timeout_s: float) -> list[str]:
    """The ids of the input topic's records in log order, read until each of ``ids`` was seen."""
    found: list[str] = []
    missing = set(ids)
    stream = records(settings, settings.input_topic, from_beginning=True, timeout_s=timeout_s)
    async with contextlib.aclosing(stream):
        async for record in stream:
            found.append(json.loads(record.value)["id"])
            missing.discard(found[-1])
            if not missing:
                break
    return found


async def verdict_documents(settings: Settings, ids: set[str], *, timeout_s: float) -> dict[str, list[str]]:
    """The processed_at of every verdict record on the verdict topic, by id, read until each id was seen."""
    found: dict[str, list[str]] = {}
    stream = records(settings, settings.verdict_topic, from_beginning=True, timeout_s=timeout_s)
    async with contextlib.aclosing(stream):
        async for record in stream:
            document = json.loads(record.value)
            found.setdefault(document["id"], []).append(document["processed_at"])
            if ids <= found.keys():
                break
    return found


async def test_broker_sigkilled_and_restarted_on_s3_storage_loses_no_acknowledged_message(
    make_settings: SettingsFactory, guard_sim: GuardSim, durable_broker: DurableBroker, tmp_path: Path
) -> None:
    # About 20 verdicts/s, half the stream's rate even on a loaded machine; a small fetch buffer keeps the
    # backlog in the broker.
    await guard_sim.configure(latency_ms=200)
    settings = make_settings(kafka_bootstrap=durable_broker.bootstrap, concurrency=4, max_buffered=20)
    await kafka.ensure_topics(settings)
    log = tmp_path / "worker.log"
    worker = spawn_worker(settings, str(log))
    stream = StreamPublisher(settings, MESSAGES)
    publishing = asyncio.create_task(stream.run(deadline_s=150))
    try:

        async def some_done() -> bool:
            return len(await stored_verdicts(settings, stream.acked)) >= 100

        await wait_until(some_done, timeout_s=60, what="100 verdicts before the broker is killed")
        durable_broker.kill()
        acked_at_kill = len(stream.acked)
        done_at_kill = len(await stored_verdicts(settings, stream.ids))
        await asyncio.sleep(1.5)  # the outage: fetches, verdict publishes and commits all fail meanwhile
        durable_broker.start()
        await asyncio.wait_for(publishing, timeout=160)
        assert acked_at_kill < MESSAGES, "the kill came after the last publish"
        assert done_at_kill < MESSAGES, "the kill came too late to test anything"
        # Acknowledged, not moderated and (beyond the fetch buffer) not even fetched at the kill: the
        # worker can only get these from what the restarted broker read back from the bucket.
        backlog = acked_at_kill - done_at_kill
        assert backlog > 2 * (settings.max_buffered + settings.concurrency), f"backlog at the kill: {backlog}"
        assert len(stream.acked) == MESSAGES, f"only {len(stream.acked)} publishes were acknowledged"

        # Read until every acknowledged id was seen: failed sends and the producer's own retries may have
        # left extra copies, so a record count says nothing about which ids are there.
        logged = await input_ids(settings, set(stream.acked), timeout_s=30)
        stored = await wait_for_verdicts(settings, stream.acked, timeout_s=120)
        on_topic = await verdict_documents(settings, set(stream.acked), timeout_s=60)
        dead = await collect(settings, settings.dlq_topic, count=1, timeout_s=3)
        assert worker.poll() is None, "the worker died: " + log.read_text()[-3000:]
    finally:
        publishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publishing
        worker.send_signal(signal.SIGTERM)
        try:
            exit_code = worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise

    lost_by_broker = set(stream.acked) - set(logged)
    assert not lost_by_broker, f"acknowledged but gone from the input topic: {sorted(lost_by_broker)[:10]}"
    assert set(stored) == set(stream.acked)
    missing = set(stream.acked) - on_topic.keys()
    assert not missing, f"{len(missing)} acknowledged id(s) never reached the verdict topic"
    # A redelivered message republishes the stored verdict: one distinct document per id, Redis's.
    differing = {i: times for i, times in on_topic.items() if set(times) != {stored[i]["processed_at"]}}
    assert not differing, f"ids with a second verdict: {dict(list(differing.items())[:5])}"
    assert dead == [], "dead letters: " + ", ".join(
        dict(r.headers)["guardq.error.reason"].decode() for r in dead
    )
    assert exit_code == 0, log.read_text()[-3000:]
    print(
        f"acked {len(stream.acked)}, acked at kill {acked_at_kill}, verdicts at kill {done_at_kill},"
        f" input records {len(logged)},"
        f" failed sends {stream.failed_sends}, verdict records {sum(map(len, on_topic.values()))}"
    )
