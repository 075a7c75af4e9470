"""The ``local`` backend: the offline offensive-language classifier of alt-profanity-check, micro-batched.

It is a TF-IDF + linear SVM trained on offensive language, not a safety model: it knows nothing of
violence, self-harm, PII or jailbreaks, and its verdicts name it so. It needs no server, which is what it
is for (development, demos, a degraded mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
from collections.abc import Callable, Sequence
from typing import Final

from worker.config.extras import check_installed
from worker.core.errors import GuardBadReply, GuardUnavailable
from worker.core.guard_types import GuardRequest, GuardVerdict
from worker.guard.base import AsyncLifecycle

__all__ = ["CATEGORY", "LocalBackend", "check_local_installed"]

CATEGORY: Final = "Offensive Language"
_PACKAGE: Final = "alt-profanity-check"

Predict = Callable[[list[str]], Sequence[float]]
_Item = tuple[str, "asyncio.Future[float]"]


def check_local_installed() -> None:
    """Raise ``MissingExtra`` when the classifier (the ``local`` extra) is not installed."""
    check_installed("profanity_check", feature="the local guard backend", extra="local")


def _load_predict() -> Predict:
    """Import the classifier; slow (scikit-learn and the pickled model), so it runs in a thread."""
    from profanity_check import predict_prob

    def predict(texts: list[str]) -> Sequence[float]:
        return [float(p) for p in predict_prob(texts)]

    return predict


def _package_version() -> str:
    try:
        return importlib.metadata.version(_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class LocalBackend(AsyncLifecycle):
    """Offline offensive-language guard; concurrent ``moderate`` calls are batched into one predict call.

    ``batches_run`` counts predict calls, so callers and tests can see the batching work.
    """

    def __init__(self, *, threshold: float = 0.5, max_batch: int = 64, max_wait_ms: float = 5) -> None:
        if not 0 < threshold <= 1:
            raise ValueError("threshold must be in (0, 1]")
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        check_local_installed()
        self._threshold = threshold
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000
        self._model = (
            f"{_PACKAGE} {_package_version()} (offensive-language classifier, not a full safety model)"
        )
        self._predict: Predict | None = None
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._getter: asyncio.Task[_Item] | None = None
        self._task: asyncio.Task[None] | None = None
        # The batch being predicted, so stop() can fail it instead of leaving its callers waiting.
        self._in_flight: list[_Item] = []
        self._lock = asyncio.Lock()
        self.batches_run = 0

    def __repr__(self) -> str:
        return f"LocalBackend(threshold={self._threshold}, max_batch={self._max_batch})"

    @property
    def model(self) -> str:
        """Package, version and an honest description of what the classifier can judge."""
        return self._model

    async def start(self) -> None:
        """Load the classifier off the event loop and start the batcher; calling it again is a no-op."""
        async with self._lock:
            if self._task is not None:
                return
            if self._predict is None:
                self._predict = await asyncio.to_thread(_load_predict)
            # A fresh queue per run: a queue binds to the event loop it is first used in.
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._run_batches(), name="guardq-local-batcher")
            self._task.add_done_callback(self._on_batcher_done)

    async def stop(self) -> None:
        """Stop the batcher and fail calls still waiting; calling it again is a no-op."""
        async with self._lock:
            task, self._task = self._task, None
            if task is None:
                return
            task.cancel()
            # asyncio.wait, not `await task`: a cancellation of stop()'s own caller must not be swallowed.
            await asyncio.wait({task})
            self._fail_waiting("local guard backend stopped")

    def _fail_waiting(self, message: str) -> None:
        """Fail every caller still waiting (in the batch being predicted or queued), so none hangs."""
        stranded, self._in_flight = self._in_flight, []
        while not self._queue.empty():
            stranded.append(self._queue.get_nowait())
        for _, future in stranded:
            if not future.done():
                future.set_exception(GuardUnavailable(message))

    def _on_batcher_done(self, task: asyncio.Task[None]) -> None:
        """A batcher that died of a bug fails its callers loudly instead of leaving them waiting."""
        if task.cancelled() or task.exception() is None:
            return
        self._fail_waiting(f"local guard batcher crashed: {task.exception()!r}")

    async def check(self) -> None:
        """Nothing to check: the classifier ships inside the installed wheel."""

    @property
    def context_window(self) -> int | None:
        """None: the classifier takes any length (texts are bounded by GUARDQ_MAX_TEXT_CHARS)."""
        return None

    async def moderate(self, request: GuardRequest) -> GuardVerdict:
        """Classify the request's text (the response text, for responses); refusal is always None."""
        if self._task is None:
            raise RuntimeError("LocalBackend.start() was not called")
        if self._task.done():
            raise GuardUnavailable("local guard batcher is not running")
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((request.text, future))
        probability = await future
        if probability >= self._threshold:
            return GuardVerdict(label="unsafe", categories=(CATEGORY,), refusal=None, model=self._model)
        return GuardVerdict(label="safe", categories=(), refusal=None, model=self._model)

    async def _run_batches(self) -> None:
        """The batcher: collect a batch, predict it in a thread, resolve its futures; until cancelled."""
        try:
            while True:
                # Collected straight into _in_flight so that stop() sees every item taken off the queue.
                batch: list[_Item] = []
                self._in_flight = batch
                await self._collect(batch)
                await self._predict_batch(batch)
                self._in_flight = []
        finally:
            getter, self._getter = self._getter, None
            if getter is not None and getter.done() and not getter.cancelled():
                self._in_flight.append(getter.result())
            elif getter is not None:
                getter.cancel()  # Queue.get is cancel-safe: a get that has not finished took nothing

    async def _collect(self, batch: list[_Item]) -> None:
        """Fill ``batch`` with up to max_batch items, waiting at most max_wait after the first."""
        first = await self._next_item(None)
        assert first is not None  # no timeout: waits for an item
        batch.append(first)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait_s
        while len(batch) < self._max_batch:
            item = await self._next_item(max(0.0, deadline - loop.time()))
            if item is None:
                return
            batch.append(item)

    async def _next_item(self, timeout_s: float | None) -> _Item | None:
        """The next queued item, or None after ``timeout_s``.

        An unfinished get is kept for the next call rather than cancelled on timeout, so an item that
        arrives just as the window closes is never dropped.
        """
        if self._getter is None:
            with contextlib.suppress(asyncio.QueueEmpty):
                return self._queue.get_nowait()
            self._getter = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait({self._getter}, timeout=timeout_s)
        if not done:
            return None
        item = self._getter.result()
        self._getter = None
        return item

    async def _predict_batch(self, batch: list[_Item]) -> None:
        """Predict one batch; a classifier failure fails every caller in it rather than hanging them."""
        assert self._predict is not None  # set by start() before the batcher runs
        live = [(text, future) for text, future in batch if not future.done()]
        if not live:
            return
        self.batches_run += 1
        try:
            probabilities = await asyncio.to_thread(self._predict, [text for text, _ in live])
            if len(probabilities) != len(live):
                raise ValueError(f"{len(probabilities)} scores for {len(live)} texts")
        except Exception as exc:  # any classifier failure is a bad reply for every caller in the batch
            message = f"local classifier failed: {type(exc).__name__}: {exc}"
            for _, future in live:
                if not future.done():  # one exception object per caller: raising shares its traceback
                    future.set_exception(GuardBadReply(message))
            return
        for (_, future), probability in zip(live, probabilities, strict=True):
            if not future.done():  # the caller may have been cancelled while we predicted
                future.set_result(probability)
