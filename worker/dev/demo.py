"""`guardq demo`: the whole path on an embedded stack, in one command.

An in-memory tansu broker, Redis (the one at GUARDQ_REDIS_URL if it answers, else an embedded Valkey),
a worker with the `local` backend (or a real guard with --guard-url), the bundled sample set published,
verdicts and dead letters watched with a progress bar, then a summary. Everything started is stopped and
the run's Redis keys are deleted, so a second run moderates afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.app import Worker
from worker.config.settings import Settings
from worker.dev import stack
from worker.failures.envelope import H_ERROR_REASON
from worker.guard.local import check_local_installed
from worker.kafka.publish import BadLine, InputProducer, read_jsonl
from worker.kafka.reading import records
from worker.store.connect import delete_prefix
from worker.telemetry import logs

DEMO_MAX_TEXT_CHARS = 2000
DEADLINE_S = 120


@dataclass
class Tally:
    """What the demo saw on the verdict and dead-letter topics."""

    expected_ids: set[str]
    expected_dead: int
    published_at: dict[str, float] = field(default_factory=dict)
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    end_to_end_ms: list[float] = field(default_factory=list)
    dead_reasons: Counter[str] = field(default_factory=Counter)
    first_publish: float = 0.0
    last_result: float = 0.0
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def total(self) -> int:
        return len(self.expected_ids) + self.expected_dead

    @property
    def seen(self) -> int:
        return len(self.verdicts) + sum(self.dead_reasons.values())

    @property
    def complete(self) -> bool:
        return self.seen >= self.total

    def result_arrived(self) -> None:
        self.last_result = time.monotonic()
        if self.complete:
            self.finished.set()


def sample_lines() -> list[bytes]:
    """The bundled sample set: JSONL, including duplicates and a few malformed lines on purpose."""
    return (Path(__file__).parent / "data" / "samples.jsonl").read_bytes().splitlines()


def run_demo(*, guard_url: str | None, guard_model: str, redis_url: str) -> int:
    """Run the demo; returns the exit code."""
    stack.check_stack_installed()
    if guard_url is None:
        check_local_installed()
    print("guardq demo: embedded broker + Redis, worker, bundled sample set", file=sys.stderr)
    with stack.embedded_services(redis_url) as (bootstrap, url):
        env = {
            "GUARDQ_KAFKA_BOOTSTRAP": bootstrap,
            "GUARDQ_REDIS_URL": url,
            "GUARDQ_REDIS_PREFIX": f"guardq-demo-{uuid.uuid4().hex[:8]}:",
            "GUARDQ_GUARD_BACKEND": "qwen3guard" if guard_url else "local",
            "GUARDQ_GUARD_URL": guard_url or "http://127.0.0.1:8000/v1",
            "GUARDQ_GUARD_MODEL": guard_model,
            "GUARDQ_MAX_TEXT_CHARS": str(DEMO_MAX_TEXT_CHARS),
            "GUARDQ_TOPIC_PARTITIONS": "4",
            "GUARDQ_GROUP_ID": "guardq-demo",
            # The demo's worker needs no fixed health port (and must not clash with a real worker's).
            "GUARDQ_HTTP_HOST": "127.0.0.1",
            "GUARDQ_HTTP_PORT": "0",
        }
        settings = Settings.load(env)
        # The summary reports dead letters; per-message warnings would only break the progress bar.
        logs.configure("ERROR", json_lines=False)
        return asyncio.run(_demo(settings))


async def _demo(settings: Settings) -> int:
    worker = Worker(settings)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await _wait_ready(worker, running)
        print(f"worker ready: backend={settings.guard_backend}", file=sys.stderr)
        tally = await _publish_and_watch(settings)
    finally:
        stop.set()
        await running
        await delete_prefix(settings.redis_url, settings.redis_prefix)
    _print_summary(tally, settings)
    return 0 if tally.complete else 1


async def _wait_ready(worker: Worker, running: asyncio.Task[None]) -> None:
    ready = asyncio.create_task(worker.ready.wait())
    await asyncio.wait({running, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        ready.cancel()
        running.result()
    if not worker.ready.is_set():
        raise TimeoutError("the worker did not start within 60 s")


async def _publish_and_watch(settings: Settings) -> Tally:
    items = list(read_jsonl(sample_lines(), settings.max_text_chars))
    good = [item for item in items if not isinstance(item, BadLine)]
    tally = Tally(expected_ids={item.request.id for item in good}, expected_dead=len(items) - len(good))
    watchers = [
        asyncio.create_task(_watch_verdicts(settings, tally)),
        asyncio.create_task(_watch_dead_letters(settings, tally)),
    ]
    progress = asyncio.create_task(_progress(tally))
    try:
        await _publish_samples(settings, tally)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tally.finished.wait(), DEADLINE_S)
    finally:
        for task in [*watchers, progress]:
            task.cancel()
        await asyncio.gather(*watchers, progress, return_exceptions=True)
        _draw_bar(tally, final=True)
    return tally


async def _publish_samples(settings: Settings, tally: Tally) -> None:
    """Valid lines go through the validating publisher; malformed ones are sent raw, as a buggy client would."""
    tally.first_publish = time.monotonic()
    async with InputProducer(settings) as publisher:
        for number, raw in enumerate(sample_lines(), start=1):
            parsed = next(iter(read_jsonl([raw], settings.max_text_chars)), None)
            if parsed is None:
                continue
            if isinstance(parsed, BadLine):
                await publisher.publish_raw(f"demo-bad-line-{number}".encode(), raw)
                continue
            tally.published_at.setdefault(parsed.request.id, time.monotonic())
            await (await publisher.enqueue_prepared(parsed))


async def _watch_verdicts(settings: Settings, tally: Tally) -> None:
    async for record in records(settings, settings.verdict_topic, from_beginning=True, timeout_s=DEADLINE_S):
        verdict = json.loads(record.value)
        if verdict["id"] not in tally.verdicts:
            tally.verdicts[verdict["id"]] = verdict
            started = tally.published_at.get(verdict["id"])
            if started is not None:
                tally.end_to_end_ms.append((time.monotonic() - started) * 1000)
            tally.result_arrived()


async def _watch_dead_letters(settings: Settings, tally: Tally) -> None:
    async for record in records(settings, settings.dlq_topic, from_beginning=True, timeout_s=DEADLINE_S):
        headers = dict(record.headers)
        tally.dead_reasons[headers.get(H_ERROR_REASON, b"?").decode()] += 1
        tally.result_arrived()


async def _progress(tally: Tally) -> None:
    # On a terminal the bar redraws in place; in a log it is written once per second.
    interval_s = 0.1 if sys.stderr.isatty() else 1.0
    while True:
        _draw_bar(tally)
        await asyncio.sleep(interval_s)


def _draw_bar(tally: Tally, *, final: bool = False) -> None:
    width = 40
    filled = int(width * min(tally.seen, tally.total) / max(1, tally.total))
    bar = "#" * filled + "." * (width - filled)
    line = f"[{bar}] {tally.seen}/{tally.total} results (verdicts + dead letters)"
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line + ("\n" if final else ""))
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(share * 100) - 1]


def _print_summary(tally: Tally, settings: Settings) -> None:
    labels = Counter(v["label"] for v in tally.verdicts.values())
    elapsed = max(1e-9, tally.last_result - tally.first_publish)
    model = next(iter(tally.verdicts.values()), {}).get("model", "?")
    out = [
        "",
        f"model: {model}",
        f"{'verdicts':<24}{len(tally.verdicts):>8}   (distinct ids; duplicates cost no guard call)",
    ]
    out += [f"  {label:<22}{labels.get(label, 0):>8}" for label in ("safe", "unsafe", "controversial")]
    out.append(f"{'dead letters':<24}{sum(tally.dead_reasons.values()):>8}")
    out += [f"  {reason:<22}{count:>8}" for reason, count in sorted(tally.dead_reasons.items())]
    out.append(f"{'throughput':<24}{tally.seen / elapsed:>8.1f}   results/s over {elapsed:.1f} s")
    worker_ms = [float(v["latency_ms"]) for v in tally.verdicts.values()]
    out.append(
        f"{'worker latency p50/p99':<24}{_percentile(worker_ms, 0.5):>8.1f} / {_percentile(worker_ms, 0.99):.1f} ms"
    )
    out.append(
        f"{'publish→verdict p50/p99':<24}{_percentile(tally.end_to_end_ms, 0.5):>8.1f} / "
        f"{_percentile(tally.end_to_end_ms, 0.99):.1f} ms"
    )
    out += ["", "a few verdicts:"]
    out += [json.dumps(_trim(v)) for v in _examples(tally)]
    if not tally.complete:
        out.append(f"INCOMPLETE: saw {tally.seen} of {tally.total} results within {DEADLINE_S} s")
    print("\n".join(out))


def _examples(tally: Tally) -> list[dict[str, Any]]:
    chosen: list[dict[str, Any]] = []
    for wanted in ("safe", "unsafe"):
        chosen += [v for v in tally.verdicts.values() if v["label"] == wanted and v["refusal"] is None][:1]
    chosen += [
        v for v in tally.verdicts.values() if v["label"] == "unsafe" and "conversation" in v["metadata"]
    ][:1]
    return chosen


def _trim(verdict: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "label", "categories", "refusal", "trace_id", "attempts", "latency_ms", "metadata")
    return {key: verdict[key] for key in keep}
