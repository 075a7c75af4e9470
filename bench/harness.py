"""What every benchmark round uses: the services, per-run settings, filling a topic, starting a contestant
(``guardq run`` or the baseline) as a process, watching the verdict topic, and reading the simulator."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from worker.config.settings import Settings
from worker.kafka import clients as kafka
from worker.kafka.reading import records
from worker.store.connect import delete_prefix

PARTITIONS = 8
GUARDQ = (sys.executable, "-m", "worker", "run")
BASELINE = (sys.executable, "-m", "bench.baseline")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Services:
    bootstrap: str
    redis_url: str
    guard_url: str
    workdir: Path

    @property
    def sim_root(self) -> str:
        return self.guard_url.removesuffix("/v1")


def settings_for(services: Services, **overrides: str) -> Settings:
    """Settings of one run: its own topics, group and Redis prefix; ``overrides`` are GUARDQ_* values
    without the prefix (``concurrency="64"``)."""
    run = uuid.uuid4().hex[:8]
    env = {
        "GUARDQ_KAFKA_BOOTSTRAP": services.bootstrap,
        "GUARDQ_REDIS_URL": services.redis_url,
        "GUARDQ_REDIS_PREFIX": f"guardq-bench-{run}:",
        "GUARDQ_GUARD_URL": services.guard_url,
        "GUARDQ_INPUT_TOPIC": f"bench-{run}.requests",
        "GUARDQ_VERDICT_TOPIC": f"bench-{run}.verdicts",
        "GUARDQ_DLQ_TOPIC": f"bench-{run}.dlq",
        "GUARDQ_GROUP_ID": f"bench-{run}",
        "GUARDQ_TOPIC_PARTITIONS": str(PARTITIONS),
        "GUARDQ_GUARD_TIMEOUT_S": "30",
        "GUARDQ_HTTP_HOST": "127.0.0.1",
        "GUARDQ_HTTP_PORT": "0",
    }
    env |= {f"GUARDQ_{name.upper()}": value for name, value in overrides.items()}
    return Settings.load(env)


def texts(count: int) -> list[str]:
    """The benchmark's message texts, distinct (a text-keyed latency differs per message)."""
    return [f"benchmark message number {i} about cooking" for i in range(count)]


async def fill(settings: Settings, count: int) -> None:
    """Publish ``count`` requests quickly (batched sends, acks=all)."""
    await kafka.ensure_topics(settings)
    producer = kafka.make_producer(settings, linger_ms=20)
    await producer.start()
    try:
        for start in range(0, count, 5000):
            futures = []
            for i, text in enumerate(texts(min(count, start + 5000))[start:], start):
                value = orjson.dumps({"id": f"b{i}", "text": text})
                futures.append(await producer.send(settings.input_topic, value, key=f"b{i}".encode()))
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def watch(settings: Settings, count: int, timeout_s: float) -> list[float]:
    """Arrival time of each distinct verdict, in order (fewer if ``timeout_s`` passes first)."""
    seen: set[bytes | None] = set()
    arrivals: list[float] = []
    async for record in records(settings, settings.verdict_topic, from_beginning=True, timeout_s=timeout_s):
        if record.key not in seen:
            seen.add(record.key)
            arrivals.append(time.monotonic())
            if len(seen) >= count:
                break
    return arrivals


def rates(arrivals: list[float]) -> dict[str, float]:
    """Whole-run rate (first to last verdict) and steady rate (5th to 95th percentile of arrivals)."""
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Contestant:
    """One worker process (guardq or the baseline), its log, CPU time and peak RSS."""

    def __init__(self, services: Services, settings: Settings, command: tuple[str, ...], **env: str) -> None:
        self.port = free_port()
        child = settings.child_env(os.environ) | {"GUARDQ_HTTP_PORT": str(self.port)} | env
        self.log_path = services.workdir / f"{command[-1]}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("ab")
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, env=child, stdout=self._log, stderr=self._log)

    def logged_at(self, fragment: str) -> float | None:
        """Wall-clock time (epoch s) of the first JSON log line whose message contains ``fragment``."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if fragment in str(entry.get("message", "")):
                stamp = str(entry["time"]).replace("Z", "+00:00")
                return datetime.fromisoformat(stamp).timestamp()
        return None

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    async def metric(self, name: str, *labels: str) -> float:
        """The sum of a guardq metric's samples in /metrics whose labels include every ``labels`` item
        (``'outcome="moderated"'``); 0 when there is none."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.port}/metrics") as response,
        ):
            text = await response.text()
        total = 0.0
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            if series.split("{")[0] == name and all(label in series for label in labels):
                total += float(value)
        return total

    def stop(self, timeout_s: float = 60) -> float:
        """SIGTERM and wait; returns the seconds it took to exit (SIGKILL after ``timeout_s``)."""
        began = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return time.monotonic() - began


async def sim_config(services: Services, **knobs: Any) -> None:
    """Set simulator knobs and zero its counters."""
    async with aiohttp.ClientSession() as session:
        async with session.post(services.sim_root + "/sim/config", json=knobs) as response:
            response.raise_for_status()
        async with session.post(services.sim_root + "/sim/reset") as response:
            response.raise_for_status()


async def sim_stats(services: Services) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(services.sim_root + "/sim/stats?brief=1") as response,
    ):
        stats: dict[str, Any] = await response.json()
    return stats


async def sim_reaches(services: Services, field: str, at_least: int, timeout_s: float) -> bool:
    """Poll the simulator's stats (every 10 ms, at most ``timeout_s``) until ``field`` >= ``at_least``."""
    for _ in range(int(timeout_s * 100)):
        if (await sim_stats(services))[field] >= at_least:
            return True
        await asyncio.sleep(0.01)
    return False


async def sample_at_guard(services: Services, stop: asyncio.Event, samples: list[int]) -> None:
    """Every 50 ms until ``stop``: the requests at the guard (served plus queued)."""
    while not stop.is_set():
        samples.append(int((await sim_stats(services))["in_flight"]))
        await asyncio.sleep(0.05)


async def cleanup(services: Services, settings: Settings) -> None:
    await delete_prefix(services.redis_url, settings.redis_prefix)
