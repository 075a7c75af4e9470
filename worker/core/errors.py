"""The error taxonomy: every failure guardq handles is one of these classes, and policy reads their
attributes (``retriable``, ``fatal``, ``reason``) instead of parsing messages.

- transient (``retriable=True``): worth another attempt later (connection trouble, timeouts, 429, 5xx);
  an unparseable guard reply is retried once in process (``max_attempts``) and never through the retry
  topics (``reschedule=False``): the guard answered, so waiting will not change what it says;
- permanent for one message (``retriable=False``): dead-letter it with ``reason``;
- fatal for the worker (``fatal=True``): configuration is wrong (401/403, unknown model); stop consuming
  rather than dead-letter the whole backlog.
"""

from __future__ import annotations

from aiokafka.errors import KafkaError, KafkaTimeoutError
from redis.exceptions import DataError as RedisDataError
from redis.exceptions import RedisError, ResponseError

from worker.core.reasons import Reason

MESSAGE_LIMIT = 500


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Collapse white space to single spaces and bound the length, so a message fits one log line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class GuardqError(Exception):
    """Base class of guardq's own errors."""

    retriable: bool = False
    fatal: bool = False
    # The reason a message failing with this error is dead-lettered with.
    reason: Reason = Reason.INTERNAL_ERROR
    # What went wrong on one attempt, for the failure history of a dead letter when it says more than the
    # reason (a timeout and an outage both end as retries_exhausted). None: the reason says it all.
    cause: str | None = None
    # For retriable errors: whether exhausting the in-process attempts sends the message through the retry
    # topics, and how many in-process attempts this kind of failure gets at most (None: the policy's own).
    reschedule: bool = True
    max_attempts: int | None = None
    # Whether the failure says the guard is down (it counts against the circuit breaker).
    guard_down: bool = False


class InternalError(GuardqError):
    """guardq itself failed on one message (a bug): it is dead-lettered so the partition moves on."""

    reason = Reason.INTERNAL_ERROR


class GuardError(GuardqError):
    """A guard call failed; ``status`` is the HTTP status when there was a response."""

    reason = Reason.GUARD_ERROR

    def __init__(self, message: str, *, status: int | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class GuardUnavailable(GuardError):
    """Connection refused/reset, DNS failure, 429, 502/503/504 and other 5xx."""

    retriable = True
    guard_down = True
    reason = Reason.RETRIES_EXHAUSTED  # once the in-process attempts and the retry topics are spent
    cause = "guard_unavailable"


class GuardModelMissing(GuardUnavailable):
    """The guard does not serve the model (yet): an empty model list, a list without it, or a 404 on a
    call. A vLLM loading or reloading its model, or a gateway between deployments: the guard counts as
    down (the breaker opens, consumption pauses) until the model is back. Only at start-up, a list that
    names other models and not this one is a configuration error (exit 3). ``served``: what was listed."""

    cause = "guard_model_missing"

    def __init__(self, message: str, *, status: int | None = None, served: list[str] | None = None) -> None:
        super().__init__(message, status=status)
        self.served = served or []


class GuardTimeout(GuardError):
    """The call exceeded the per-call timeout."""

    retriable = True
    guard_down = True
    reason = Reason.RETRIES_EXHAUSTED  # once the in-process attempts and the retry topics are spent
    cause = "guard_timeout"


class GuardBadReply(GuardError):
    """HTTP 200 whose body is not a verdict (no Safety line, truncated, not JSON, too large). The guard
    answered (it is not down): tried once more, then dead-lettered. Its message never quotes the reply,
    which may echo the user's text."""

    retriable = True
    reschedule = False
    max_attempts = 2
    reason = Reason.GUARD_BAD_REPLY


class GuardRejected(GuardError):
    """The guard refused this input (400 other than context length, 413, 422)."""

    reason = Reason.GUARD_REJECTED


class GuardContextOverflow(GuardRejected):
    """The text does not fit the model's context window (vLLM 400 "maximum context length")."""

    reason = Reason.CONTEXT_LENGTH


class GuardConfigError(GuardError):
    """401/403 or an unknown model: the worker is misconfigured, not the message."""

    fatal = True
    reason = Reason.GUARD_ERROR  # never dead-lettered: a fatal error stops the worker


class UndecodableRecord(GuardqError):
    """A fetched record (or batch) that could not be decoded: unknown codec, bad CRC, a header name that
    is not UTF-8, an inflation past the cap. Dead-lettered with what could be read."""

    reason = Reason.UNDECODABLE


class IdConflict(GuardqError):
    """The message's id already has a verdict (or a moderation in flight) for other content."""

    reason = Reason.ID_CONFLICT


class InvalidInput(GuardqError):
    """An input message that can never be moderated, and why."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason = reason


def is_transient(exc: BaseException) -> bool:
    """The retry predicate: only errors that declare themselves retriable are retried."""
    return isinstance(exc, GuardqError) and exc.retriable


# A Redis reply that is about one key's data, not about the server: the message fails, not the store.
_REDIS_DATA_ERRORS = ("WRONGTYPE",)


def is_redis_data_error(exc: BaseException) -> bool:
    """A Redis error about one key's data (a key of the wrong type, a value redis-py cannot encode)."""
    if isinstance(exc, RedisDataError):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(_REDIS_DATA_ERRORS)


def is_infrastructure(exc: BaseException) -> bool:
    """True for failures of the services around the worker (Redis, Kafka, the network) that will pass:
    the message is fine, so it is retried later, never dead-lettered and never committed meanwhile.

    Everything Redis answers is the store's trouble, not the message's (MISCONF, BUSY, NOPERM, NOREPLICAS,
    READONLY, OOM, MOVED, CROSSSLOT, LOADING ...), except data errors on one key."""
    if isinstance(exc, KafkaTimeoutError):
        return True  # a send or request that timed out (broker unreachable); aiokafka marks it non-retriable
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False))
    if isinstance(exc, RedisError):
        return not is_redis_data_error(exc)
    return isinstance(exc, OSError | TimeoutError)
