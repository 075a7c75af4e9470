"""`make chaos`: a soak of a worker process under guard faults, a worker SIGKILL, a Redis restart and a guard
outage with the fallback policy on.

A stream of requests (20,000 by default) is published to an embedded tansu broker while:
- the simulated guard answers with random transient faults (503, connection resets, 429 with
  Retry-After, garbage replies) and lognormal latency;
- the worker process is SIGKILLed once mid-run (at 30 % progress) and started again;
- the soak's own Redis (append-only file, fsync on every write) is SIGKILLed at 60 % progress and
  restarted on the same port and directory after a short outage;
- the guard goes down at 75 % progress (every call 503) for ``--guard-outage-s``: the worker runs with
  GUARDQ_OUTAGE_POLICY=review and GUARDQ_OUTAGE_AFTER_S=``--outage-after-s``, so messages get provisional
  verdicts and are parked, then their final verdicts once the guard is back.

At the end it checks every published id: a final verdict in Redis and on the verdict topic, or a dead
letter (a provisional verdict never counts).
It prints and writes bench/results/chaos.json, and exits 1 when an id is lost, a verdict never reached the
verdict topic, or an id got two different verdicts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench.chaos_report import Observed, committed_offsets, print_summary, stored_ids, summarize
from bench.chaos_services import GuardSimProcess, OwnRedis, Processes, WorkerProcess
from worker.config.settings import Settings
from worker.dev import stack
from worker.kafka import clients as kafka
from worker.kafka.reading import records

RESULTS = Path(__file__).parent / "results"
PARTITIONS = 8


def _settings(args: argparse.Namespace, bootstrap: str, redis_url: str, guard_url: str) -> Settings:
    run = os.urandom(4).hex()
    return Settings.load(
        {
            "GUARDQ_KAFKA_BOOTSTRAP": bootstrap,
            "GUARDQ_REDIS_URL": redis_url,
            "GUARDQ_REDIS_PREFIX": f"guardq-chaos-{run}:",
            "GUARDQ_GUARD_URL": guard_url,
            "GUARDQ_INPUT_TOPIC": f"chaos-{run}.requests",
            "GUARDQ_VERDICT_TOPIC": f"chaos-{run}.verdicts",
            "GUARDQ_DLQ_TOPIC": f"chaos-{run}.dlq",
            "GUARDQ_GROUP_ID": f"chaos-{run}",
            "GUARDQ_CONCURRENCY": str(args.concurrency),
            "GUARDQ_TOPIC_PARTITIONS": str(PARTITIONS),
            "GUARDQ_GUARD_TIMEOUT_S": "5",
            # A killed worker's partitions move after this + ~4 s; keep the soak short.
            "GUARDQ_SESSION_TIMEOUT_S": "6",
            "GUARDQ_RETRY_SCHEDULE": args.retry_schedule,
            "GUARDQ_OUTAGE_POLICY": "review",
            "GUARDQ_OUTAGE_AFTER_S": str(args.outage_after_s),
            "GUARDQ_BREAKER_OPEN_S": "1",
        }
    )


def _request(index: int) -> dict[str, Any]:
    """Request number ``index``: mostly prompts, every fifth a response with its prompt."""
    message_id = f"c{index}"
    if index % 5 == 4:
        return {
            "id": message_id,
            "kind": "response",
            "prompt": f"question {index}?",
            "text": f"answer {index}",
        }
    return {"id": message_id, "text": f"chaos soak message {index} about gardening"}


async def publish_stream(settings: Settings, count: int, rate: float, published: list[str]) -> None:
    """Publish ``count`` requests at about ``rate`` per second, in batches every 100 ms (acks=all)."""
    producer = kafka.make_producer(settings, linger_ms=5)
    await producer.start()
    try:
        per_tick = max(1, int(rate / 10))
        started = time.monotonic()
        for tick, first in enumerate(range(0, count, per_tick)):
            batch = [_request(i) for i in range(first, min(count, first + per_tick))]
            futures = [
                await producer.send(settings.input_topic, json.dumps(d).encode(), key=d["id"].encode())
                for d in batch
            ]
            await asyncio.gather(*futures)
            published.extend(d["id"] for d in batch)
            await asyncio.sleep(max(0.0, started + (tick + 1) / 10 - time.monotonic()))
    finally:
        await producer.stop()


async def watch_verdicts(settings: Settings, observed: Observed, timeout_s: float) -> None:
    """Record every verdict record's id and processed_at, from the beginning of the verdict topic."""
    stream = records(settings, settings.verdict_topic, from_beginning=True, timeout_s=timeout_s)
    async with contextlib.aclosing(stream):
        async for record in stream:
            document = json.loads(record.value)
            if document.get("provisional"):
                observed.provisional.add(document["id"])
            else:
                observed.processed_at.setdefault(document["id"], set()).add(document["processed_at"])
            observed.verdict_records += 1
            observed.records_by_phase[observed.phase] += 1


async def watch_dead_letters(settings: Settings, observed: Observed, timeout_s: float) -> None:
    """Record every dead letter's id (its key) and reason."""
    stream = records(settings, settings.dlq_topic, from_beginning=True, timeout_s=timeout_s)
    async with contextlib.aclosing(stream):
        async for record in stream:
            headers = dict(record.headers)
            reason = headers.get("guardq.error.reason", b"?").decode()
            key = record.key.decode(errors="replace") if record.key else "?"
            observed.dead_reasons.setdefault(key, []).append(reason)
            observed.dead_records += 1


async def count_retry_hops(settings: Settings, observed: Observed, timeout_s: float) -> None:
    """Count the records on every delayed retry topic: how often a message hopped to retry later."""

    async def count(topic: str) -> None:
        stream = records(settings, topic, from_beginning=True, timeout_s=timeout_s)
        async with contextlib.aclosing(stream):
            async for _ in stream:
                observed.retry_records[topic.rsplit(".", 1)[1]] += 1

    await asyncio.gather(*(count(topic) for topic in settings.retry_topics))


async def _wait_progress(
    observed: Observed, worker: WorkerProcess, target: int, deadline: float, what: str
) -> None:
    while observed.finished() < target:
        if not worker.alive():
            raise RuntimeError(f"the worker exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what} ({observed.finished()} of {target} finished)")
        await asyncio.sleep(0.2)


def _event(observed: Observed, started: float, what: str) -> None:
    observed.phase = what
    observed.events.append({"at_s": round(time.monotonic() - started, 2), "event": what})
    print(f"  {time.monotonic() - started:7.1f} s  {what} ({observed.finished()} finished)", flush=True)


async def chaos(
    args: argparse.Namespace,
    observed: Observed,
    worker: WorkerProcess,
    redis: OwnRedis,
    sim: GuardSimProcess,
    started: float,
) -> None:
    """The faults in order: kill the worker at 30 % progress and restart it; kill Redis at 60 %, restart
    it after the outage; take the guard down at 75 % and bring it back; then wait until every id has a
    final verdict or a dead letter."""
    deadline = started + args.timeout
    await _wait_progress(observed, worker, int(args.messages * 0.3), deadline, "30 % before the worker kill")
    committed = await committed_offsets(worker.settings, PARTITIONS)
    while committed == 0 and time.monotonic() < deadline:
        # Until its first commit, a killed worker would only test a cold start: everything redelivered.
        await asyncio.sleep(0.5)
        committed = await committed_offsets(worker.settings, PARTITIONS)
    worker.kill()
    _event(observed, started, f"worker SIGKILLed ({committed} input offsets committed)")
    worker.start()
    _event(observed, started, "worker restarted")
    await _wait_progress(observed, worker, int(args.messages * 0.6), deadline, "60 % before the Redis kill")
    redis.kill()
    _event(observed, started, "redis SIGKILLed")
    await asyncio.sleep(args.redis_outage_s)
    await asyncio.to_thread(redis.start)
    _event(observed, started, "redis restarted")
    await _wait_progress(
        observed, worker, int(args.messages * 0.75), deadline, "75 % before the guard outage"
    )
    await asyncio.to_thread(sim.set_knobs, fail_503_rate=1.0)
    _event(observed, started, "guard down (every call 503)")
    await asyncio.sleep(args.guard_outage_s)
    await asyncio.to_thread(sim.set_knobs, fail_503_rate=0.05 * args.fault_scale)
    _event(observed, started, f"guard back ({len(observed.provisional)} provisional verdicts so far)")
    await _wait_progress(observed, worker, args.messages, deadline, "every id to finish")
    _event(observed, started, "every id has a verdict or a dead letter")


async def soak(args: argparse.Namespace, processes: Processes, workdir: Path) -> dict[str, Any]:
    """Start the services, run the stream and the faults, and return the figures."""
    port = stack.free_port()
    broker = await asyncio.to_thread(stack.start_broker, port, log_path=workdir / "broker.log")
    processes.add(broker, "tansu")
    redis = OwnRedis(workdir / "redis", processes)
    await asyncio.to_thread(redis.start)
    sim = GuardSimProcess(processes, workdir / "guard-sim.log", seed=args.seed)
    scale = args.fault_scale
    sim.configure(
        latency_dist="lognormal",
        latency_mean_ms=args.latency_ms,
        latency_sigma=0.5,
        fail_503_rate=0.05 * scale,
        reset_rate=0.05 * scale,
        fail_429_rate=0.01 * scale,
        retry_after_s=args.retry_after_s,
        garbage_rate=0.01 * scale,
    )
    settings = _settings(args, f"127.0.0.1:{port}", redis.url, sim.base_url)
    await kafka.ensure_topics(settings)
    worker = WorkerProcess(settings, processes, workdir / "worker.log")
    worker.start()
    observed, published = Observed(), list[str]()
    started = time.monotonic()
    watchers = [
        asyncio.create_task(watch_verdicts(settings, observed, args.timeout + 60)),
        asyncio.create_task(watch_dead_letters(settings, observed, args.timeout + 60)),
        asyncio.create_task(count_retry_hops(settings, observed, args.timeout + 60)),
    ]
    publishing = asyncio.create_task(publish_stream(settings, args.messages, args.rate, published))
    try:
        # Together, so a failed publish stops the soak at once instead of at the progress deadline.
        await asyncio.gather(chaos(args, observed, worker, redis, sim, started), publishing)
        elapsed = time.monotonic() - started
        exit_code = await asyncio.to_thread(worker.stop, 40)
        _event(observed, started, f"worker stopped with exit code {exit_code}")
    except BaseException:
        sys.stderr.write("worker log (end):\n" + worker.log_tail() + "\n")
        raise
    finally:
        for task in [publishing, *watchers]:
            task.cancel()
        await asyncio.gather(publishing, *watchers, return_exceptions=True)
    stored = await stored_ids(redis.url, settings.redis_prefix, published)
    extra = {"worker_starts": worker.starts, "worker_exit_code": exit_code}
    return summarize(published, stored, observed, sim.stats(), elapsed) | extra


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--messages", type=int, default=20_000, help="requests to publish (default %(default)s)"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="publish rate, msg/s (default %(default)s)")
    parser.add_argument(
        "--concurrency", type=int, default=64, help="GUARDQ_CONCURRENCY (default %(default)s)"
    )
    parser.add_argument("--latency-ms", type=float, default=20.0, help="mean guard latency (lognormal)")
    parser.add_argument(
        "--fault-scale", type=float, default=1.0, help="multiplies the fault rates 5/5/1/1 %% (0: no faults)"
    )
    parser.add_argument("--retry-after-s", type=float, default=1.0, help="Retry-After of the simulated 429s")
    parser.add_argument("--retry-schedule", default="1s,3s,5s", help="GUARDQ_RETRY_SCHEDULE of the worker")
    parser.add_argument("--redis-outage-s", type=float, default=2.0, help="how long Redis stays down")
    parser.add_argument("--guard-outage-s", type=float, default=10.0, help="how long the guard stays down")
    parser.add_argument(
        "--outage-after-s", type=float, default=3.0, help="GUARDQ_OUTAGE_AFTER_S: provisional verdicts after"
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the simulator's fault RNG")
    parser.add_argument("--workdir", type=Path, help="keep logs and Redis data here (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    return parser.parse_args()


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # run the same cleanup as Ctrl-C


def main() -> int:
    """Run the soak; exit 1 if an id was lost, missed the verdict topic or got two verdicts."""
    args = _parse_args()
    signal.signal(signal.SIGTERM, _sigterm)
    processes = Processes()
    print(f"chaos soak: {args.messages} messages at {args.rate:.0f}/s, faults on; events:", flush=True)
    with contextlib.ExitStack() as cleanup:
        workdir = args.workdir or Path(
            cleanup.enter_context(tempfile.TemporaryDirectory(prefix="guardq-chaos-"))
        )
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            result = asyncio.run(soak(args, processes, workdir))
        finally:
            # Before the directory goes: Redis and the broker write into it until they are stopped.
            processes.stop_all()
    print_summary(result)
    RESULTS.mkdir(exist_ok=True)
    document = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {
            key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
        },
        "results": result,
    }
    (RESULTS / "chaos.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"written to {RESULTS / 'chaos.json'}")
    failed = (
        result["lost"]
        or result["stored_but_not_on_topic"]
        or result["duplicate_verdicts"]
        or result["provisional_without_final"]
    )
    if failed:
        print("FAILED: lost, unpublished or duplicate verdicts (see above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
