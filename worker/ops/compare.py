"""`guardq guard compare`: two guards answer the same golden set; do they agree, and is B as fast as A?

Run before traffic moves to a new guard (another model version, chat template or quantisation, another
backend): every text goes to both guards at the same moment (bounded concurrency), and the report gives
label agreement (and category agreement, meaningful when both sides speak the same taxonomy), each
disagreement with both answers, and p50/p99 latency per side. A call that fails is tried again twice; one
that still fails counts as a disagreement.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

from worker.core.errors import GuardError, InvalidInput, one_line
from worker.core.guard_types import GuardRequest, GuardVerdict
from worker.core.messages import parse_request
from worker.guard.base import GuardBackend

ATTEMPTS: Final = 3
RETRY_PAUSE_S: Final = 0.5
MAX_TEXT_CHARS: Final = 100_000
SHOWN_DISAGREEMENTS: Final = 50


class CompareError(Exception):
    """The comparison could not run (a golden set that does not parse, a guard that cannot be used);
    the message is one line."""


@dataclass(frozen=True)
class Item:
    id: str
    request: GuardRequest


@dataclass(frozen=True)
class Answer:
    """One side's answer to one text: a verdict, or the error that remained after the retries."""

    verdict: GuardVerdict | None
    error: str | None
    latency_s: float

    def shown(self) -> str:
        if self.verdict is None:
            return f"error: {self.error}"
        categories = ", ".join(self.verdict.categories)
        return f"{self.verdict.label} [{categories}]" if categories else self.verdict.label


def golden_set(path: Path | None = None) -> list[Item]:
    """The texts to compare on: ``path`` (JSON Lines in the input format), or the set shipped with
    guardq. Raises ``CompareError`` naming the first line that is not a valid request, or a repeated id."""
    if path is None:
        text = resources.files("worker.guard").joinpath("data/golden.jsonl").read_bytes()
        where = "the bundled golden set"
    else:
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise CompareError(f"cannot read {path}: {exc.strerror}") from None
        where = str(path)
    items: list[Item] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            request = parse_request(line, MAX_TEXT_CHARS)
        except InvalidInput as exc:
            raise CompareError(f"{where} line {number}: {exc}") from None
        if request.id in seen:
            raise CompareError(f"{where} line {number}: id {request.id!r} is repeated")
        seen.add(request.id)
        items.append(Item(request.id, request.guard_request()))
    if not items:
        raise CompareError(f"{where} holds no request")
    return items


def percentile_ms(latencies_s: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile of ``latencies_s`` in milliseconds (None for none)."""
    if not latencies_s:
        return None
    ordered = sorted(latencies_s)
    rank = max(1, math.ceil(share * len(ordered)))
    return round(ordered[rank - 1] * 1000, 1)


@dataclass
class Report:
    """Both sides' answers, item by item, and what follows from them."""

    a_name: str
    b_name: str
    pairs: list[tuple[Item, Answer, Answer]] = field(default_factory=list)

    @property
    def label_agreement(self) -> float:
        return self._share(lambda a, b: a.label == b.label)

    @property
    def category_agreement(self) -> float:
        return self._share(lambda a, b: a.label == b.label and set(a.categories) == set(b.categories))

    def _share(self, same: Any) -> float:
        agreeing = sum(
            1
            for _, a, b in self.pairs
            if a.verdict is not None and b.verdict is not None and same(a.verdict, b.verdict)
        )
        return agreeing / len(self.pairs) if self.pairs else 0.0

    def disagreements(self) -> list[tuple[Item, Answer, Answer]]:
        return [
            (item, a, b)
            for item, a, b in self.pairs
            if a.verdict is None or b.verdict is None or a.verdict.label != b.verdict.label
        ]

    def latency(self, side: int) -> dict[str, Any]:
        answers = [pair[side] for pair in self.pairs]
        timed = [answer.latency_s for answer in answers if isinstance(answer, Answer) and answer.verdict]
        errors = sum(1 for answer in answers if isinstance(answer, Answer) and answer.verdict is None)
        return {"p50_ms": percentile_ms(timed, 0.5), "p99_ms": percentile_ms(timed, 0.99), "errors": errors}

    def failures(self, *, min_agreement: float, max_p99_ratio: float) -> list[str]:
        """Why B must not replace A (empty: it may)."""
        found = []
        if self.label_agreement < min_agreement:
            found.append(
                f"label agreement {self.label_agreement:.1%} is below the minimum {min_agreement:.1%}"
            )
        a_p99, b_p99 = self.latency(1)["p99_ms"], self.latency(2)["p99_ms"]
        if a_p99 is not None and b_p99 is not None and b_p99 > a_p99 * max_p99_ratio:
            found.append(f"B's p99 {b_p99:g} ms exceeds A's {a_p99:g} ms by more than {max_p99_ratio:g}x")
        return found

    def as_json(self, *, min_agreement: float, max_p99_ratio: float) -> dict[str, Any]:
        failures = self.failures(min_agreement=min_agreement, max_p99_ratio=max_p99_ratio)
        return {
            "a": self.a_name,
            "b": self.b_name,
            "texts": len(self.pairs),
            "label_agreement": round(self.label_agreement, 4),
            "category_agreement": round(self.category_agreement, 4),
            "latency": {"a": self.latency(1), "b": self.latency(2)},
            "disagreements": [
                {"id": item.id, "a": a.shown(), "b": b.shown()} for item, a, b in self.disagreements()
            ],
            "passed": not failures,
            "failures": failures,
        }

    def text(self, *, min_agreement: float, max_p99_ratio: float) -> str:
        lines = [f"A: {self.a_name}", f"B: {self.b_name}", f"texts: {len(self.pairs)}"]
        lines.append(f"label agreement:    {self.label_agreement:.1%}")
        lines.append(
            f"category agreement: {self.category_agreement:.1%} (comparable when both speak one taxonomy)"
        )
        for name, side in (("A", 1), ("B", 2)):
            figures = self.latency(side)
            lines.append(
                f"latency {name}: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, errors {figures['errors']}"
            )
        disagreements = self.disagreements()
        if disagreements:
            lines.append(f"disagreements ({len(disagreements)}):")
            for item, a, b in disagreements[:SHOWN_DISAGREEMENTS]:
                lines.append(f"  {item.id}: A={a.shown()} | B={b.shown()}")
            if len(disagreements) > SHOWN_DISAGREEMENTS:
                lines.append(f"  ... and {len(disagreements) - SHOWN_DISAGREEMENTS} more (--json lists all)")
        failures = self.failures(min_agreement=min_agreement, max_p99_ratio=max_p99_ratio)
        lines.extend(f"FAIL: {reason}" for reason in failures)
        lines.append("PASS: B may replace A" if not failures else "B must not replace A")
        return "\n".join(lines)


async def _ask(guard: GuardBackend, request: GuardRequest) -> Answer:
    error = "not called"
    for attempt in range(1, ATTEMPTS + 1):
        started = time.monotonic()
        try:
            verdict = await guard.moderate(request)
        except GuardError as exc:
            error = one_line(f"{type(exc).__name__}: {exc}", 200)
            if exc.fatal or attempt == ATTEMPTS:
                break
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        return Answer(verdict, None, time.monotonic() - started)
    return Answer(None, error, 0.0)


async def _check(name: str, guard: GuardBackend) -> None:
    try:
        await guard.check()
    except GuardError as exc:
        raise CompareError(f"guard {name} cannot be used: {exc}") from None


async def compare(
    a: GuardBackend, b: GuardBackend, items: Sequence[Item], *, names: tuple[str, str], concurrency: int = 8
) -> Report:
    """Send every item to both guards at once, ``concurrency`` items at a time."""
    report = Report(*names)
    async with contextlib.AsyncExitStack() as stack:
        for guard in (a, b):
            await guard.start()
            stack.push_async_callback(guard.stop)
        await asyncio.gather(_check("A", a), _check("B", b))
        gate = asyncio.Semaphore(concurrency)

        async def one(item: Item) -> tuple[Item, Answer, Answer]:
            async with gate:
                answer_a, answer_b = await asyncio.gather(_ask(a, item.request), _ask(b, item.request))
            return item, answer_a, answer_b

        report.pairs = list(await asyncio.gather(*(one(item) for item in items)))
    return report
