"""The worker's Prometheus metrics: one registry per worker, so several workers in one process (tests)
keep their own.

Events are counted where they happen (outcomes and dead letters in the pipeline, guard calls in
``guardcall``); live state (in-flight records, the concurrency limit, lag per partition, the breaker) is
read when ``/metrics`` is scraped, so the hot path pays nothing for it.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker import __version__

# Seconds; guard calls run from milliseconds (a small model) to tens of seconds (long texts, a busy GPU).
AGE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BREAKER_VALUES = {"green": 0, "yellow": 1, "red": 2}


@dataclass(frozen=True)
class PartitionLag:
    """How far one assigned partition's finished work is behind its log end."""

    topic: str
    partition: int
    done_offset: int | None  # every record below is done (the commit watermark)
    committed: int | None
    highwater: int | None

    @property
    def lag(self) -> int | None:
        start = self.done_offset if self.done_offset is not None else self.committed
        if self.highwater is None or start is None:
            return None
        return max(0, self.highwater - start)


@dataclass(frozen=True)
class LiveState:
    """What the scrape reads from the running worker."""

    in_flight: int
    guard_in_flight: int
    concurrency_limit: int
    breaker_state: str  # green / yellow / red
    partitions: list[PartitionLag]
    paused: bool
    consumed_by_topic: dict[str, int]
    infra_retries: int
    fetch_errors: int = 0
    noload_latency_s: float | None = None  # with GUARDQ_CONCURRENCY=auto, once measured
    outage_s: float = 0.0  # how long the current guard outage has lasted (0: none)
    fallback: bool = False  # provisional verdicts are being given
    ready: bool = True  # what /readyz answers


class _LiveCollector(Collector):
    def __init__(self, read: Callable[[], LiveState | None]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        state = self._read()
        if state is None:
            return
        yield _gauge("guardq_in_flight", "Fetched records not finished yet", state.in_flight)
        yield _gauge("guardq_guard_in_flight", "Guard calls in flight", state.guard_in_flight)
        yield _gauge(
            "guardq_concurrency_limit", "Current cap on guard calls in flight", state.concurrency_limit
        )
        if state.noload_latency_s is not None:
            yield _gauge(
                "guardq_guard_noload_latency_seconds",
                "The guard's latency without queueing, as GUARDQ_CONCURRENCY=auto estimates it",
                state.noload_latency_s,
            )
        yield _gauge(
            "guardq_breaker_state",
            "Guard circuit breaker: 0 closed (green), 1 half-open (yellow), 2 open (red)",
            BREAKER_VALUES[state.breaker_state],
        )
        yield _gauge(
            "guardq_fetch_paused", "1 while fetching is paused (backpressure or open breaker)", state.paused
        )
        yield _gauge("guardq_ready", "1 while the worker is ready (what /readyz answers)", state.ready)
        yield _gauge(
            "guardq_guard_outage_seconds",
            "Time since the current guard outage began (0: no outage)",
            state.outage_s,
        )
        yield _gauge(
            "guardq_outage_fallback",
            "1 while provisional verdicts are given (GUARDQ_OUTAGE_POLICY, outage past GUARDQ_OUTAGE_AFTER_S)",
            state.fallback,
        )
        lag = GaugeMetricFamily(
            "guardq_consumer_lag",
            "Records behind the log end, per assigned partition",
            labels=["topic", "partition"],
        )
        for part in state.partitions:
            if part.lag is not None:
                lag.add_metric([part.topic, str(part.partition)], part.lag)
        yield lag
        consumed = CounterMetricFamily(
            "guardq_messages_consumed", "Records taken from a topic", labels=["topic"]
        )
        for topic, count in sorted(state.consumed_by_topic.items()):
            consumed.add_metric([topic], count)
        yield consumed
        yield CounterMetricFamily(
            "guardq_infrastructure_retries",
            "Times a record was retried because Redis or Kafka failed",
            value=state.infra_retries,
        )
        yield CounterMetricFamily(
            "guardq_fetch_errors",
            "Fetches that failed (records aiokafka could not decode, broker errors); read again by guardq",
            value=state.fetch_errors,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


class Metrics:
    """Counters and histograms of one worker, plus its live state at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.outcomes = Counter("guardq_outcomes", "What became of each record", ["outcome"], registry=r)
        self.verdicts = Counter(
            "guardq_verdicts", "Verdicts published, by label and action", ["label", "action"], registry=r
        )
        self.dead_letters = Counter("guardq_dead_letters", "Dead letters, by reason", ["reason"], registry=r)
        self.dead_letters_reduced = Counter(
            "guardq_dead_letters_reduced",
            "Dead letters written reduced (value prefix, fewer headers) because the broker refused them whole",
            ["form"],
            registry=r,
        )
        self.dead_letters_unwritable = Counter(
            "guardq_dead_letters_unwritable",
            "Records skipped because no form of their dead letter could be written (coordinates in the log)",
            ["reason"],
            registry=r,
        )
        self.retry_hops = Counter("guardq_retry_hops", "Records sent to a retry topic", ["topic"], registry=r)
        self.provisional_verdicts = Counter(
            "guardq_provisional_verdicts",
            "Provisional verdicts given during a guard outage (GUARDQ_OUTAGE_POLICY), by action",
            ["action"],
            registry=r,
        )
        self.parked = Counter(
            "guardq_parked", "Messages parked for moderation once the guard is back", registry=r
        )
        self.guard_calls = Counter("guardq_guard_calls", "Guard calls made (HTTP requests)", registry=r)
        self.guard_texts = Counter(
            "guardq_guard_texts",
            "Texts sent to the guard (more than calls when a backend batches)",
            registry=r,
        )
        self.guard_retries = Counter(
            "guardq_guard_retries", "Guard calls that were in-process retries", registry=r
        )
        self.guard_errors = Counter(
            "guardq_guard_errors", "Failed guard calls, by error class", ["class"], registry=r
        )
        self.verdict_age = Histogram(
            "guardq_verdict_age_seconds",
            "Publish to verdict: from the input record's timestamp to its final verdict being published",
            buckets=AGE_BUCKETS_S,
            registry=r,
        )
        self.build_info = Gauge(
            "guardq_build_info",
            "Always 1; the labels say which guardq runs",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.guard_latency = Histogram(
            "guardq_guard_latency_seconds", "Guard call latency", buckets=LATENCY_BUCKETS_S, registry=r
        )
        self._live: Callable[[], LiveState | None] = lambda: None
        r.register(_LiveCollector(lambda: self._live()))

    def watch(self, read: Callable[[], LiveState | None]) -> None:
        """Read live state from ``read`` at scrape time (the worker sets it once its parts exist)."""
        self._live = read

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return bytes(generate_latest(self.registry))

    def total(self, counter: Counter, labels: Iterable[str] | None = None) -> float:
        """The value of a counter (summed over its labels, or of one label set), for /status and tests."""
        total = 0.0
        for metric in counter.collect():
            for sample in metric.samples:
                if not sample.name.endswith("_total"):
                    continue
                if labels is None or tuple(sample.labels.values()) == tuple(labels):
                    total += sample.value
        return total

    def by_label(self, counter: Counter, label: str | None = None) -> dict[str, float]:
        """A counter as {value of ``label`` (its first label by default): count}, summed over the others."""
        found: dict[str, float] = {}
        for metric in counter.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels:
                    value = sample.labels[label] if label else next(iter(sample.labels.values()))
                    found[value] = found.get(value, 0.0) + sample.value
        return found
