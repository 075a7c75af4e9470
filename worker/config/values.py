"""How each setting's text becomes a value: the parsers ``worker.config.settings.Settings`` names. Each raises
``ValueError`` with a short reason; ``Settings.load`` turns that into a one-line error naming the variable."""

from __future__ import annotations

import re
from urllib.parse import urlparse

from worker.core.policy import Action, parse_action, parse_overrides
from worker.core.taxonomies import BACKENDS

# The smallest chunk that still carries enough context to be judged (worker.processing.chunking.MIN_CHUNK_CHARS).
MIN_CHUNK_CHARS = 512


def _number(raw: str, kind: type[int] | type[float], what: str) -> float:
    try:
        return kind(raw.strip())
    except ValueError:
        raise ValueError(f"must be {what}") from None


def _positive_int(raw: str) -> int:
    value = int(_number(raw, int, "a positive integer"))
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _concurrency(raw: str) -> int | None:
    """A fixed cap on guard calls, or ``auto`` (None): a cap that follows the guard."""
    if raw.strip().lower() == "auto":
        return None
    try:
        return _positive_int(raw)
    except ValueError:
        raise ValueError("must be a positive integer or 'auto'") from None


def _positive_float(raw: str) -> float:
    value = _number(raw, float, "a positive number")
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number")
    return value


def _port(raw: str) -> int:
    value = int(_number(raw, int, "a port number 0..65535"))
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number 0..65535")
    return value


def _replication(raw: str) -> int | None:
    if raw.strip().lower() == "auto":
        return None  # min(3, brokers in the cluster)
    return _positive_int(raw)


def _chunk_chars(raw: str) -> int | None:
    if raw.strip().lower() == "auto":
        return None
    value = _positive_int(raw)
    if value < MIN_CHUNK_CHARS:
        raise ValueError(f"must be 'auto' or at least {MIN_CHUNK_CHARS}")
    return value


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _optional_text(raw: str) -> str | None:
    return raw or None


def _topic(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", raw):
        raise ValueError("must be a Kafka topic name (letters, digits, '.', '_', '-')")
    return raw


def _bootstrap(raw: str) -> str:
    for server in raw.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{server.strip()!r} is not host:port")
    return raw


def _redis_url(raw: str) -> str:
    if urlparse(raw).scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return raw


def _http_url(raw: str) -> str:
    parsed = urlparse(raw)
    if parsed.scheme not in {"http", "https"} or not parsed.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return raw.rstrip("/")


def _backend(raw: str) -> str:
    if raw not in BACKENDS:
        raise ValueError(f"must be one of {', '.join(BACKENDS)}")
    return raw


def _action(raw: str) -> Action:
    return parse_action(raw)


def _policy_categories(raw: str) -> tuple[str, ...]:
    return parse_overrides(raw)


def _non_negative_float(raw: str) -> float:
    value = float(_number(raw, float, "a number"))
    if not 0 <= value < float("inf"):
        raise ValueError("must be a finite number >= 0")
    return value


def _create_topics(raw: str) -> str:
    value = raw.strip().lower()
    if value not in {"auto", "never"}:
        raise ValueError("must be 'auto' (create the topics that are missing) or 'never'")
    return value


def _security_protocol(raw: str) -> str:
    value = raw.upper()
    if value not in {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}:
        raise ValueError("must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    return value


_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _sasl_mechanism(raw: str) -> str | None:
    value = raw.strip().upper()
    if not value:
        return None
    if value not in _SASL_MECHANISMS:
        raise ValueError(f"must be one of {', '.join(_SASL_MECHANISMS)}")
    return value


def _boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("must be true or false")


def _optional_file(raw: str) -> str | None:
    """A path to a readable file (a CA bundle, certificate or key), checked now rather than at the first
    TLS handshake, where the error would name neither the file nor the variable."""
    path = raw.strip()
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ValueError(f"cannot read the file: {exc.strerror or exc}") from None
    return path


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration_s(raw: str) -> float:
    """Parse ``250ms``, ``10s``, ``1m``, ``2h`` or ``7d`` into seconds."""
    match = _DURATION.fullmatch(raw.strip())
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"{raw.strip()!r} is not a duration like 10s, 1m, 2h, 7d")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def _retention(raw: str) -> str:
    """``forever`` or a duration (``30d``), as written."""
    value = raw.strip().lower()
    if value != "forever":
        parse_duration_s(value)
    return value


def retention_ms(value: str) -> int:
    """A retention (``_retention``) as Kafka's ``retention.ms``: -1 for forever."""
    return -1 if value == "forever" else int(parse_duration_s(value) * 1000)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return value


def _idempotence(raw: str) -> str:
    value = raw.strip().lower()
    if value in _TRUE:
        return "true"
    if value in _FALSE:
        return "false"
    if value != "auto":
        raise ValueError("must be auto (on when the broker supports it), true or false")
    return value


def _retry_schedule(raw: str) -> tuple[str, ...]:
    steps = tuple(step.strip() for step in raw.split(",") if step.strip())
    if not steps:
        raise ValueError("must list at least one delay, like 10s,1m,10m")
    delays = [parse_duration_s(step) for step in steps]
    if delays != sorted(delays):
        raise ValueError("delays must not decrease")
    return steps


COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")


def _compression(raw: str) -> str | None:
    value = raw.strip().lower()
    if value not in COMPRESSIONS:
        raise ValueError(f"must be one of {', '.join(COMPRESSIONS)}")
    return None if value == "none" else value


def _outage_policy(raw: str) -> str:
    value = raw.strip().lower()
    if value not in {"wait", "block", "allow", "review"}:
        raise ValueError("must be wait, block, allow or review")
    return value


def _backoff(raw: str) -> tuple[str, ...]:
    """``initial,max`` of the in-process guard backoff, as durations (``1s,4s``)."""
    steps = tuple(step.strip() for step in raw.split(","))
    if len(steps) != 2:
        raise ValueError("must be initial,max, like 1s,4s")
    initial, most = (parse_duration_s(step) for step in steps)
    if initial > most:
        raise ValueError("the initial backoff must not exceed the max")
    return steps


def _rate(raw: str) -> float:
    value = float(_number(raw, float, "a number"))
    if not 0 < value <= 1:
        raise ValueError("must be a rate in (0, 1]")
    return value


def _breaker_open_s(raw: str) -> float:
    value = float(_number(raw, float, "a number of seconds"))
    if not 0.5 <= value < float("inf"):
        raise ValueError("must be at least 0.5 (seconds)")
    return value


def _optional_http_url(raw: str) -> str | None:
    return _http_url(raw) if raw.strip() else None
