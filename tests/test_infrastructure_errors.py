"""Which failures are the services' (retry the message, uncommitted) and which are the message's or ours."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
)
from redis.exceptions import BusyLoadingError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.core.errors import GuardUnavailable, InvalidInput, is_infrastructure


@pytest.mark.parametrize(
    "error",
    [
        RedisConnectionError("down"),
        RedisTimeoutError("slow"),
        BusyLoadingError("loading"),
        ReadOnlyError("failover"),
        OutOfMemoryError("oom"),
        KafkaConnectionError(),
        KafkaTimeoutError(),
        NotLeaderForPartitionError(),
        ConnectionResetError(),
        TimeoutError(),
    ],
)
def test_service_outages_are_infrastructure(error: BaseException) -> None:
    assert is_infrastructure(error)


@pytest.mark.parametrize(
    "error",
    [
        MessageSizeTooLargeError(),
        TopicAuthorizationFailedError(),
        ResponseError("WRONGTYPE"),
        ValueError("a bug"),
        KeyError("a bug"),
        InvalidInput("invalid_json", "bad"),
        GuardUnavailable("503"),  # the guard has its own retry policy
    ],
)
def test_permanent_errors_and_bugs_are_not_infrastructure(error: BaseException) -> None:
    assert not is_infrastructure(error)
