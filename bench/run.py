"""`make bench`: throughput and memory of a real worker process against the simulated guard.

Scenarios (8 partitions, GUARDQ_CONCURRENCY=64, tansu + Redis on this machine):
1. lognormal guard latency, mean 100 ms, sigma 1: throughput against the ideal 64 / mean latency;
2. instant guard: pipeline msgs/s beside the raw rate of bare aiohttp requests to the same server;
3. a 100k-message backlog drained by one worker: its peak RSS (VmHWM).

Throughput is measured on the verdict topic, from the first verdict to the last, so consumer-group
start-up is not counted. Results are printed as a table and written to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from worker.config.settings import Settings
from worker.dev import stack
from worker.kafka import clients as kafka
from worker.kafka.reading import records
from worker.store.verdicts import delete_prefix

CONCURRENCY = 64
PARTITIONS = 8
RESULTS = Path(__file__).parent / "results"


@dataclass
class Services:
    bootstrap: str
    redis_url: str
    guard_url: str
    sim: subprocess.Popen[str]
    workdir: Path


def _settings(services: Services, run: str) -> Settings:
    return Settings.load(
        {
            "GUARDQ_KAFKA_BOOTSTRAP": services.bootstrap,
            "GUARDQ_REDIS_URL": services.redis_url,
            "GUARDQ_REDIS_PREFIX": f"guardq-bench-{run}:",
            "GUARDQ_GUARD_URL": services.guard_url,
            "GUARDQ_INPUT_TOPIC": f"bench-{run}.requests",
            "GUARDQ_VERDICT_TOPIC": f"bench-{run}.verdicts",
            "GUARDQ_DLQ_TOPIC": f"bench-{run}.dlq",
            "GUARDQ_GROUP_ID": f"bench-{run}",
            "GUARDQ_CONCURRENCY": str(CONCURRENCY),
            "GUARDQ_TOPIC_PARTITIONS": str(PARTITIONS),
            "GUARDQ_GUARD_TIMEOUT_S": "30",
            "GUARDQ_HTTP_HOST": "127.0.0.1",
            "GUARDQ_HTTP_PORT": "0",
        }
    )


async def _sim_config(services: Services, **knobs: Any) -> None:
    root = services.guard_url.removesuffix("/v1")
    async with aiohttp.ClientSession() as session:
        async with session.post(root + "/sim/config", json=knobs) as response:
            response.raise_for_status()
        async with session.post(root + "/sim/reset") as response:
            response.raise_for_status()


async def _fill(settings: Settings, count: int) -> None:
    """Publish ``count`` requests quickly (batched sends, acks=all)."""
    await kafka.ensure_topics(settings)
    producer = kafka.make_producer(settings, linger_ms=20)
    await producer.start()
    try:
        for start in range(0, count, 2000):
            futures = []
            for i in range(start, min(count, start + 2000)):
                value = json.dumps(
                    {"id": f"b{i}", "text": f"benchmark message number {i} about cooking"}
                ).encode()
                futures.append(await producer.send(settings.input_topic, value, key=f"b{i}".encode()))
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _watch(settings: Settings, count: int, timeout_s: float) -> list[float]:
    """Arrival time of each distinct verdict, in order."""
    seen: set[bytes] = set()
    arrivals: list[float] = []
    async for record in records(settings, settings.verdict_topic, from_beginning=True, timeout_s=timeout_s):
        if record.key not in seen:
            seen.add(record.key)
            arrivals.append(time.monotonic())
            if len(seen) >= count:
                break
    return arrivals


def _rates(arrivals: list[float]) -> dict[str, float]:
    """Whole-run rate (first to last verdict) and steady-state rate (5th to 95th percentile of arrivals):
    the steady figure leaves out the ramp-up and the drain of the slowest calls at the very end."""
    if len(arrivals) < 20:
        return {"seconds": 0.0, "msgs_per_s": 0.0, "steady_msgs_per_s": 0.0}
    whole = max(arrivals[-1] - arrivals[0], 1e-9)
    low, high = len(arrivals) * 5 // 100, len(arrivals) * 95 // 100
    steady = max(arrivals[high] - arrivals[low], 1e-9)
    return {
        "seconds": round(whole, 2),
        "msgs_per_s": round((len(arrivals) - 1) / whole, 1),
        "steady_msgs_per_s": round((high - low) / steady, 1),
    }


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _drain_with_worker(
    services: Services, settings: Settings, count: int, timeout_s: float
) -> dict[str, Any]:
    """Run `guardq run` on a pre-filled backlog of ``count`` and time the verdicts."""
    await _fill(settings, count)
    log = (services.workdir / f"worker-{settings.group_id}.log").open("ab")
    worker = subprocess.Popen(  # noqa: ASYNC220 - started once; the benchmark's own loop is not latency-bound here
        [sys.executable, "-m", "worker", "run"], env=settings.child_env(os.environ), stdout=log, stderr=log
    )
    try:
        arrivals = await _watch(settings, count, timeout_s)
        rss_mb = _peak_rss_mb(worker.pid)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        log.close()
        await delete_prefix(services.redis_url, settings.redis_prefix)
    return {
        "messages": count,
        "completed": len(arrivals),
        **_rates(arrivals),
        "peak_rss_mb": round(rss_mb, 1),
    }


async def _raw_http_rate(guard_url: str, seconds: float) -> float:
    """Bare aiohttp chat-completion requests from this process, 64 at a time: the HTTP path's ceiling."""
    body = {
        "model": "Qwen/Qwen3Guard-Gen-8B",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 128,
    }
    done = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def loop() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                async with session.post(guard_url + "/chat/completions", json=body) as response:
                    await response.read()
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(CONCURRENCY)))
        return done / (time.monotonic() - started)


async def _scenarios(services: Services, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    # The HTTP path's ceiling first, while nothing else runs.
    await _sim_config(services, latency_dist="fixed", latency_ms=0, capacity=256)
    raw = await _raw_http_rate(services.guard_url, 8.0)
    mean_ms, sigma = 100.0, 1.0
    await _sim_config(
        services, latency_dist="lognormal", latency_mean_ms=mean_ms, latency_sigma=sigma, capacity=256
    )
    lognormal = await _drain_with_worker(
        services, _settings(services, uuid.uuid4().hex[:8]), args.lognormal, 300
    )
    ideal = CONCURRENCY / (mean_ms / 1000)
    lognormal |= {
        "ideal_msgs_per_s": ideal,
        "ratio_to_ideal": round(lognormal["msgs_per_s"] / ideal, 3),
        "steady_ratio_to_ideal": round(lognormal["steady_msgs_per_s"] / ideal, 3),
    }
    results["lognormal_100ms_sigma1"] = lognormal
    print_row(
        "lognormal 100 ms, s=1",
        lognormal,
        f"{lognormal['ratio_to_ideal']:.2f} (steady {lognormal['steady_ratio_to_ideal']:.2f}) x ideal {ideal:.0f}/s,"
        " target >= 0.85",
    )

    await _sim_config(services, latency_dist="fixed", latency_ms=0, capacity=256)
    instant = await _drain_with_worker(services, _settings(services, uuid.uuid4().hex[:8]), args.instant, 300)
    instant |= {
        "raw_http_req_per_s": round(raw, 1),
        "ratio_to_raw_http": round(instant["msgs_per_s"] / raw, 3),
    }
    results["instant_guard"] = instant
    print_row("instant guard", instant, f"{instant['ratio_to_raw_http']:.2f} x raw aiohttp {raw:.0f} req/s")

    backlog = await _drain_with_worker(services, _settings(services, uuid.uuid4().hex[:8]), args.backlog, 600)
    results["backlog_100k_rss"] = backlog
    print_row(
        f"{args.backlog // 1000}k backlog",
        backlog,
        f"peak RSS {backlog['peak_rss_mb']:.0f} MB, target <= 150",
    )
    return results


def print_row(name: str, result: dict[str, Any], verdict: str) -> None:
    print(
        f"{name:<24}{result['completed']:>8}/{result['messages']:<8}{result['msgs_per_s']:>8.0f} msg/s"
        f" ({result['steady_msgs_per_s']:.0f} steady)"
        f"{result['peak_rss_mb']:>9.0f} MB   {verdict}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lognormal", type=int, default=15000, help="messages in the lognormal scenario")
    parser.add_argument("--instant", type=int, default=15000, help="messages in the instant-guard scenario")
    parser.add_argument("--backlog", type=int, default=100_000, help="messages in the RSS scenario")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="guardq-bench-") as tmp,
        stack.embedded_services("redis://127.0.0.1:6379/0") as (bootstrap, redis_url),
    ):
        workdir = Path(tmp)
        sim = subprocess.Popen(
            [sys.executable, "-m", "worker", "guard-sim", "--port", "0", "--capacity", "256"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert sim.stdout is not None
        guard_url = sim.stdout.readline().strip().removeprefix("guard-sim listening on ")
        services = Services(bootstrap, redis_url, guard_url, sim, workdir)
        print(
            f"{'scenario':<24}{'done/total':<16}{'throughput (steady)':<27}{'RSS':>6}   against target",
            flush=True,
        )
        try:
            results = asyncio.run(_scenarios(services, args))
        finally:
            sim.terminate()
            sim.wait(timeout=10)
    RESULTS.mkdir(exist_ok=True)
    document = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "concurrency": CONCURRENCY,
        "partitions": PARTITIONS,
        "results": results,
    }
    (RESULTS / "latest.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"written to {RESULTS / 'latest.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
