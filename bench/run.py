"""`make bench`: guardq beside a plain baseline worker (``bench.baseline``), one stack, one run.

Rounds (8 partitions; tansu, Redis and the simulated guard on this machine; ``--rounds`` picks some):
- instant: an instant guard, 18,000 messages: msg/s and CPU ms per message of the baseline, guardq with
  a fixed cap of 64 and guardq on ``auto``;
- lognormal: mean 100 ms, sigma 1, each latency drawn from the text (every contestant sees the same
  set): guardq (cap 64) against the ideal 64 / 100 ms and the bound a perfect 64-slot scheduler reaches on
  that set; the baseline on a smaller set (it is slow there);
- capacity: a guard serving K = 16 at once in 50 ms (ideal 320 msg/s): one guardq on ``auto`` (and the
  requests at the guard, served plus queued), four sharing it (each one's share), and a guard that answers
  429 above K (the share of 429s, dead letters);
- start: spawn → first guard call (guardq, baseline); SIGTERM with 64 calls of 2 s in flight: the time
  to exit and the guard calls started after the signal;
- backlog: a pre-filled backlog (100k; ``--backlog 1000000`` for the full round) drained by one guardq:
  msg/s and peak RSS.

Throughput is measured on the verdict topic from the first verdict to the last, so start-up is not
counted. Results are printed and written to bench/results/latest.json. Not a test: figures, not verdicts.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import (
    BASELINE,
    GUARDQ,
    Contestant,
    Services,
    cleanup,
    fill,
    rates,
    sample_at_guard,
    settings_for,
    sim_config,
    sim_reaches,
    sim_stats,
    texts,
    watch,
)
from worker.dev import stack
from worker.dev.sim.faults import text_latency_s

RESULTS = Path(__file__).parent / "results"
CAP = 64
K, SERVICE_MS = 16, 50.0
Round = Callable[[Services, argparse.Namespace], Awaitable[dict[str, Any]]]


Probe = Callable[[list[Contestant]], Awaitable[dict[str, Any]]]


async def drain(
    services: Services,
    count: int,
    command: tuple[str, ...] = GUARDQ,
    timeout_s: float = 600,
    *,
    workers: int = 1,
    probe: Probe | None = None,
    **env: str,
) -> dict[str, Any]:
    """Fill a fresh topic with ``count`` messages and run ``workers`` contestants on it until every verdict
    is out; ``probe`` reads more figures from the fleet before it stops. CPU is the fleet's, RSS the
    largest peak of one worker."""
    settings = settings_for(services, **env)
    await fill(settings, count)
    fleet = [Contestant(services, settings, command) for _ in range(workers)]
    try:
        arrivals = await watch(settings, count, timeout_s)
        cpu_s = sum(worker.cpu_s() for worker in fleet)
        rss_mb = max(worker.peak_rss_mb() for worker in fleet)
        extra = await probe(fleet) if probe is not None else {}
    finally:
        for worker in fleet:
            worker.stop()
        await cleanup(services, settings)
    return {
        "messages": count,
        "completed": len(arrivals),
        **rates(arrivals),
        "cpu_ms_per_msg": round(cpu_s * 1000 / max(len(arrivals), 1), 3),
        "peak_rss_mb": round(rss_mb, 1),
        **extra,
    }


def show(name: str, result: dict[str, Any], note: str = "") -> None:
    print(
        f"  {name:<30}{result['completed']:>7}/{result['messages']:<7}{result['msgs_per_s']:>8.0f} msg/s"
        f" (steady {result['steady_msgs_per_s']:.0f}){result['cpu_ms_per_msg']:>7.2f} ms CPU/msg"
        f"{result['peak_rss_mb']:>6.0f} MB  {note}",
        flush=True,
    )


async def instant_round(services: Services, args: argparse.Namespace) -> dict[str, Any]:
    await sim_config(services, latency_dist="fixed", latency_ms=0, capacity=256)
    out = {
        "baseline": await drain(services, args.instant, BASELINE),
        "guardq_cap64": await drain(services, args.instant, concurrency=str(CAP)),
        "guardq_auto": await drain(services, args.instant, concurrency="auto"),
    }
    base = out["baseline"]["msgs_per_s"]
    for name, result in out.items():
        result["x_baseline"] = round(result["msgs_per_s"] / base, 2) if base else None
        show(name, result, f"{result['x_baseline']} x baseline")
    return out


def perfect_bound(latencies: list[float], slots: int) -> float:
    """msg/s of a perfect ``slots``-wide scheduler on this set: each slot takes the next call the moment
    it is free, with no overhead at all."""
    free_at = [0.0] * slots
    for latency in latencies:
        heapq.heappush(free_at, heapq.heappop(free_at) + latency)
    return len(latencies) / max(free_at)


async def lognormal_round(services: Services, args: argparse.Namespace) -> dict[str, Any]:
    mean_ms, sigma = 100.0, 1.0
    await sim_config(
        services,
        latency_dist="lognormal",
        latency_mean_ms=mean_ms,
        latency_sigma=sigma,
        latency_from_text=True,
        capacity=256,
    )
    ideal = CAP / (mean_ms / 1000)
    drawn = [text_latency_s(t, mean_ms, sigma) for t in texts(args.lognormal)]
    bound = perfect_bound(drawn, CAP)
    stop, samples = asyncio.Event(), list[int]()
    sampler = asyncio.create_task(sample_at_guard(services, stop, samples))
    try:
        guardq = await drain(services, args.lognormal, probe=guard_latency, concurrency=str(CAP))
    finally:
        stop.set()
        await sampler
    busy = [s for s in samples if s > 0]
    # Where a shortfall from the perfect bound comes from: slots left idle at the guard (scheduling), or
    # calls that take longer than drawn (the simulator's and the machine's own overhead per call).
    guardq["mean_at_guard"] = round(sum(busy) / max(len(busy), 1), 1)
    guardq["mean_drawn_latency_ms"] = round(sum(drawn) / len(drawn) * 1000, 1)
    base = await drain(services, args.lognormal // 5, BASELINE)
    for name, result in (("guardq_cap64", guardq), ("baseline", base)):
        result |= {
            "ideal_msgs_per_s": ideal,
            "perfect_scheduler_msgs_per_s": round(bound, 1),
            "ratio_to_ideal": round(result["msgs_per_s"] / ideal, 3),
        }
        show(
            name, result, f"{result['ratio_to_ideal']:.2f} x ideal {ideal:.0f}; perfect scheduler {bound:.0f}"
        )
    print(
        f"  guardq: {guardq['mean_at_guard']} of {CAP} calls at the guard on average; a call took "
        f"{guardq.get('mean_call_latency_ms')} ms where {guardq['mean_drawn_latency_ms']} ms was drawn"
    )
    return {"guardq_cap64": guardq, "baseline": base}


async def guard_latency(fleet: list[Contestant]) -> dict[str, Any]:
    """The mean guard call latency the worker measured."""
    total = await fleet[0].metric("guardq_guard_latency_seconds_sum")
    count = await fleet[0].metric("guardq_guard_latency_seconds_count")
    return {"mean_call_latency_ms": round(total / count * 1000, 1) if count else None}


async def one_auto_worker(services: Services, count: int) -> dict[str, Any]:
    stop, samples = asyncio.Event(), list[int]()
    sampler = asyncio.create_task(sample_at_guard(services, stop, samples))
    try:
        result = await drain(services, count, concurrency="auto")
    finally:
        stop.set()
        await sampler
    busy = [s for s in samples if s > 0]
    result["mean_at_guard"] = round(sum(busy) / max(len(busy), 1), 1)
    result["ratio_to_ideal"] = round(result["msgs_per_s"] / (K * 1000 / SERVICE_MS), 3)
    return result


async def moderated_per_worker(fleet: list[Contestant]) -> dict[str, Any]:
    shares = [await worker.metric("guardq_outcomes_total", 'outcome="moderated"') for worker in fleet]
    return {"per_worker_moderated": [int(share) for share in shares]}


async def dead_letters(fleet: list[Contestant]) -> dict[str, Any]:
    return {"dead_letters": int(sum([await worker.metric("guardq_dead_letters_total") for worker in fleet]))}


async def shared_guard(services: Services, count: int, workers: int) -> dict[str, Any]:
    result = await drain(services, count, workers=workers, probe=moderated_per_worker, concurrency="auto")
    result["ratio_to_ideal"] = round(result["msgs_per_s"] / (K * 1000 / SERVICE_MS), 3)
    return result


async def refusing_guard(services: Services, count: int) -> dict[str, Any]:
    result = await drain(services, count, probe=dead_letters, concurrency="auto")
    stats = await sim_stats(services)
    refused = int(stats["faults"].get("overload", 0))
    result |= {
        "guard_requests": stats["requests"],
        "answered_429": refused,
        "share_429": round(refused / max(stats["requests"], 1), 4),
    }
    return result


async def capacity_round(services: Services, args: argparse.Namespace) -> dict[str, Any]:
    ideal = K * 1000 / SERVICE_MS
    await sim_config(services, latency_dist="fixed", latency_ms=SERVICE_MS, capacity=K)
    one = await one_auto_worker(services, args.capacity)
    show(
        "auto, one worker", one, f"{one['ratio_to_ideal']:.2f} x {ideal:.0f}; at guard {one['mean_at_guard']}"
    )
    await sim_config(services, latency_dist="fixed", latency_ms=SERVICE_MS, capacity=K)
    four = await shared_guard(services, args.capacity, 4)
    show(
        "auto, four workers",
        four,
        f"{four['ratio_to_ideal']:.2f} x {ideal:.0f}; {four['per_worker_moderated']}",
    )
    await sim_config(
        services, latency_dist="fixed", latency_ms=SERVICE_MS, capacity=K, reject_above_capacity=True
    )
    refusing = await refusing_guard(services, args.capacity)
    show(
        "auto, 429 above K",
        refusing,
        f"429s {refusing['share_429']:.1%} of calls, {refusing['dead_letters']} dead letters",
    )
    await sim_config(services, reject_above_capacity=False, capacity=256)
    return {"one_worker": one, "four_workers": four, "refusing_guard": refusing}


async def first_call(services: Services, command: tuple[str, ...]) -> dict[str, float | None]:
    """Spawn → the guard's first request, for a topic that already holds work; for guardq also the
    partitions' assignment (its log) → that first request."""
    settings = settings_for(services)
    await fill(settings, 200)
    await sim_config(services, latency_dist="fixed", latency_ms=0, capacity=256)
    worker = Contestant(services, settings, command)
    try:
        await sim_reaches(services, "requests", 1, 60)
        called_at, spawn_s = time.time(), time.monotonic() - worker.started
    finally:
        worker.stop()
        await cleanup(services, settings)
    assigned_at = worker.logged_at("assigned [")
    after = None if assigned_at is None else round(called_at - assigned_at, 3)
    return {"spawn_to_first_call_s": round(spawn_s, 2), "assignment_to_first_call_s": after}


async def sigterm_in_flight(services: Services) -> dict[str, Any]:
    """64 calls of 2 s in flight, a 2,000-message backlog behind them: SIGTERM."""
    await sim_config(services, latency_dist="fixed", latency_ms=2000, capacity=256)
    settings = settings_for(services, concurrency=str(CAP))
    await fill(settings, 2000)
    worker = Contestant(services, settings, GUARDQ)
    try:
        await sim_reaches(services, "in_flight", CAP, 60)
        before = (await sim_stats(services))["requests"]
        exit_s = await asyncio.to_thread(worker.stop, 60)
        after = (await sim_stats(services))["requests"]
    finally:
        worker.stop()
        await cleanup(services, settings)
    return {"exit_s": round(exit_s, 2), "calls_started_after_sigterm": after - before}


async def start_round(services: Services, args: argparse.Namespace) -> dict[str, Any]:
    out = {
        "first_call": {
            "guardq": await first_call(services, GUARDQ),
            "baseline": await first_call(services, BASELINE),
        },
        "sigterm_64_in_flight": await sigterm_in_flight(services),
    }
    print(f"  first guard call: {out['first_call']}", flush=True)
    print(f"  SIGTERM, 64 x 2 s in flight: {out['sigterm_64_in_flight']}", flush=True)
    return out


async def backlog_round(services: Services, args: argparse.Namespace) -> dict[str, Any]:
    await sim_config(services, latency_dist="fixed", latency_ms=0, capacity=256)
    result = await drain(services, args.backlog, timeout_s=3600)
    show(f"{args.backlog:,} backlog", result, "peak RSS target <= 150 MB")
    return result


ROUNDS: dict[str, Round] = {
    "instant": instant_round,
    "lognormal": lognormal_round,
    "capacity": capacity_round,
    "start": start_round,
    "backlog": backlog_round,
}


async def run_rounds(services: Services, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in args.rounds:
        print(name, flush=True)
        results[name] = await ROUNDS[name](services, args)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds",
        type=lambda text: [name for name in text.split(",") if name],
        default=list(ROUNDS),
        help=f"comma-separated, of: {', '.join(ROUNDS)}",
    )
    parser.add_argument("--instant", type=int, default=18_000, help="messages per instant contestant")
    parser.add_argument("--lognormal", type=int, default=15_000, help="messages in the lognormal round")
    parser.add_argument("--capacity", type=int, default=9_000, help="messages per capacity-K round")
    parser.add_argument("--backlog", type=int, default=100_000, help="messages in the backlog round")
    args = parser.parse_args()
    unknown = [name for name in args.rounds if name not in ROUNDS]
    if unknown:
        parser.error(f"unknown round(s): {', '.join(unknown)}")
    with (
        tempfile.TemporaryDirectory(prefix="guardq-bench-") as tmp,
        stack.embedded_services("redis://127.0.0.1:6379/0") as (bootstrap, redis_url),
    ):
        sim = subprocess.Popen(
            [sys.executable, "-m", "worker", "guard-sim", "--port", "0", "--capacity", "256"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert sim.stdout is not None
        guard_url = sim.stdout.readline().strip().removeprefix("guard-sim listening on ")
        try:
            results = asyncio.run(run_rounds(Services(bootstrap, redis_url, guard_url, Path(tmp)), args))
        finally:
            sim.terminate()
            sim.wait(timeout=10)
    RESULTS.mkdir(exist_ok=True)
    document = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    (RESULTS / "latest.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"written to {RESULTS / 'latest.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
