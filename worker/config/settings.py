"""One frozen settings object, built once from environment variables and flags, validated at start-up.

Each setting is declared once in ``SPECS``: its environment variable, its `guardq run` flag, its default and
its parser. A bad value raises ``SettingsError`` with a one-line message naming the variable.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlparse

from worker.config.values import (
    _backend,
    _boolean,
    _bootstrap,
    _chunk_chars,
    _compression,
    _http_url,
    _optional_file,
    _optional_text,
    _port,
    _positive_float,
    _positive_int,
    _redis_url,
    _replication,
    _retry_schedule,
    _sasl_mechanism,
    _security_protocol,
    _text,
    _topic,
)


class SettingsError(ValueError):
    """A setting has a bad value; the message is one line naming the variable."""


@dataclass(frozen=True)
class Spec:
    """How one setting is read: environment variable, default, parser and help text."""

    field: str
    env: str
    default: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.env.removeprefix("GUARDQ_").lower().replace("_", "-")


SPECS: tuple[Spec, ...] = (
    Spec("kafka_bootstrap", "GUARDQ_KAFKA_BOOTSTRAP", "127.0.0.1:9092", _bootstrap, "bootstrap servers"),
    Spec("redis_url", "GUARDQ_REDIS_URL", "redis://127.0.0.1:6379/0", _redis_url, "verdict store", True),
    Spec("redis_prefix", "GUARDQ_REDIS_PREFIX", "guardq:", _text, "Redis key prefix"),
    Spec("guard_backend", "GUARDQ_GUARD_BACKEND", "qwen3guard", _backend, "qwen3guard or local"),
    Spec("guard_url", "GUARDQ_GUARD_URL", "http://127.0.0.1:8000/v1", _http_url, "guard base URL (/v1)"),
    Spec(
        "guard_model", "GUARDQ_GUARD_MODEL", "Qwen/Qwen3Guard-Gen-8B", _text, "model name sent to the guard"
    ),
    Spec("guard_api_key", "GUARDQ_GUARD_API_KEY", "", _optional_text, "bearer token (never logged)", True),
    Spec("guard_timeout_s", "GUARDQ_GUARD_TIMEOUT_S", "30", _positive_float, "per-call guard timeout"),
    Spec("input_topic", "GUARDQ_INPUT_TOPIC", "moderation.requests", _topic, "input topic"),
    Spec("verdict_topic", "GUARDQ_VERDICT_TOPIC", "moderation.verdicts", _topic, "verdict topic"),
    Spec("dlq_topic", "GUARDQ_DLQ_TOPIC", "moderation.dlq", _topic, "dead-letter topic"),
    Spec("group_id", "GUARDQ_GROUP_ID", "guardq", _text, "consumer group"),
    Spec("concurrency", "GUARDQ_CONCURRENCY", "32", _positive_int, "max guard calls in flight"),
    Spec(
        "max_text_chars", "GUARDQ_MAX_TEXT_CHARS", "100000", _positive_int, "longer texts are dead-lettered"
    ),
    Spec(
        "chunk_chars",
        "GUARDQ_CHUNK_CHARS",
        "auto",
        _chunk_chars,
        "chars per guard call before a text is split (auto: from the guard's context window)",
    ),
    Spec("topic_partitions", "GUARDQ_TOPIC_PARTITIONS", "8", _positive_int, "partitions of created topics"),
    Spec("topic_replication", "GUARDQ_TOPIC_REPLICATION", "auto", _replication, "replicas of created topics"),
    Spec("verdict_ttl_s", "GUARDQ_VERDICT_TTL_S", "604800", _positive_int, "verdict TTL (dedup window)"),
    Spec("shutdown_timeout_s", "GUARDQ_SHUTDOWN_TIMEOUT_S", "20", _positive_float, "graceful drain deadline"),
    Spec("retry_schedule", "GUARDQ_RETRY_SCHEDULE", "10s,1m,10m", _retry_schedule, "delayed retry topics"),
    Spec("max_replays", "GUARDQ_MAX_REPLAYS", "3", _positive_int, "replay loop guard"),
    Spec("http_host", "GUARDQ_HTTP_HOST", "0.0.0.0", _text, "address of the health/metrics server"),
    Spec("http_port", "GUARDQ_HTTP_PORT", "8080", _port, "health/metrics port (0: any free port)"),
    Spec("heartbeat_s", "GUARDQ_HEARTBEAT_S", "30", _positive_float, "guard heartbeat period"),
    Spec("max_buffered", "GUARDQ_MAX_BUFFERED", "1000", _positive_int, "fetched-but-unfinished cap (pause)"),
    Spec("max_buffered_mb", "GUARDQ_MAX_BUFFERED_MB", "64", _positive_int, "buffered bytes cap (pause)"),
    Spec("session_timeout_s", "GUARDQ_SESSION_TIMEOUT_S", "10", _positive_float, "consumer session timeout"),
    Spec("commit_interval_s", "GUARDQ_COMMIT_INTERVAL_S", "1", _positive_float, "periodic commit interval"),
    Spec("guard_attempts", "GUARDQ_GUARD_ATTEMPTS", "3", _positive_int, "in-process guard attempts"),
    Spec(
        "kafka_compression",
        "GUARDQ_KAFKA_COMPRESSION",
        "zstd",
        _compression,
        "codec of what guardq sends: none, gzip, snappy, lz4, zstd",
    ),
    Spec(
        "kafka_max_message_bytes",
        "GUARDQ_KAFKA_MAX_MESSAGE_BYTES",
        str(16 * 1024 * 1024),
        _positive_int,
        "largest record guardq sends (set it to the brokers' message.max.bytes)",
    ),
    Spec(
        "max_inflate_mb",
        "GUARDQ_MAX_INFLATE_MB",
        "64",
        _positive_int,
        "a fetched batch that inflates past this is dead-lettered undecodable",
    ),
    Spec(
        "kafka_security_protocol", "GUARDQ_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", _security_protocol, "Kafka"
    ),
    Spec(
        "kafka_sasl_mechanism", "GUARDQ_KAFKA_SASL_MECHANISM", "", _sasl_mechanism, "PLAIN, SCRAM-SHA-256/512"
    ),
    Spec("kafka_sasl_username", "GUARDQ_KAFKA_SASL_USERNAME", "", _optional_text, "SASL user"),
    Spec("kafka_sasl_password", "GUARDQ_KAFKA_SASL_PASSWORD", "", _optional_text, "SASL password", True),
    Spec("kafka_ssl_cafile", "GUARDQ_KAFKA_SSL_CAFILE", "", _optional_file, "CA bundle for Kafka TLS"),
    Spec("kafka_ssl_certfile", "GUARDQ_KAFKA_SSL_CERTFILE", "", _optional_file, "client certificate"),
    Spec("kafka_ssl_keyfile", "GUARDQ_KAFKA_SSL_KEYFILE", "", _optional_file, "client key"),
    Spec(
        "redis_password",
        "GUARDQ_REDIS_PASSWORD",
        "",
        _optional_text,
        "Redis password (AUTH), instead of one in GUARDQ_REDIS_URL",
        True,
    ),
    Spec("redis_tls_ca_file", "GUARDQ_REDIS_TLS_CA_FILE", "", _optional_file, "CA bundle for rediss://"),
    Spec("redis_tls_cert_file", "GUARDQ_REDIS_TLS_CERT_FILE", "", _optional_file, "Redis client cert"),
    Spec("redis_tls_key_file", "GUARDQ_REDIS_TLS_KEY_FILE", "", _optional_file, "Redis client key"),
    Spec("redis_tls_verify", "GUARDQ_REDIS_TLS_VERIFY", "true", _boolean, "verify the Redis server cert"),
    Spec("guard_tls_verify", "GUARDQ_GUARD_TLS_VERIFY", "true", _boolean, "verify the guard's certificate"),
    Spec("guard_ca_file", "GUARDQ_GUARD_CA_FILE", "", _optional_file, "CA bundle for an https guard"),
)


def _key_needs_cert(key_env: str, keyfile: str | None, cert_env: str, certfile: str | None) -> None:
    if keyfile and not certfile:
        raise SettingsError(f"{key_env} needs {cert_env} (the key's certificate)")


@dataclass(frozen=True)
class Settings:
    """Validated configuration of one guardq process; build it with ``Settings.load``."""

    kafka_bootstrap: str
    redis_url: str
    redis_prefix: str
    guard_backend: str
    guard_url: str
    guard_model: str
    guard_api_key: str | None
    guard_timeout_s: float
    input_topic: str
    verdict_topic: str
    dlq_topic: str
    group_id: str
    concurrency: int
    max_text_chars: int
    chunk_chars: int | None
    topic_partitions: int
    topic_replication: int | None
    verdict_ttl_s: int
    shutdown_timeout_s: float
    retry_schedule: tuple[str, ...]
    max_replays: int
    http_host: str
    http_port: int
    heartbeat_s: float
    max_buffered: int
    max_buffered_mb: int
    session_timeout_s: float
    commit_interval_s: float
    guard_attempts: int
    kafka_compression: str | None
    kafka_max_message_bytes: int
    max_inflate_mb: int
    kafka_security_protocol: str
    kafka_sasl_mechanism: str | None
    kafka_sasl_username: str | None
    kafka_sasl_password: str | None
    kafka_ssl_cafile: str | None
    kafka_ssl_certfile: str | None
    kafka_ssl_keyfile: str | None
    redis_password: str | None
    redis_tls_ca_file: str | None
    redis_tls_cert_file: str | None
    redis_tls_key_file: str | None
    redis_tls_verify: bool
    guard_tls_verify: bool
    guard_ca_file: str | None

    @classmethod
    def load(cls, env: Mapping[str, str], overrides: Mapping[str, str | None] | None = None) -> Settings:
        """Build settings from ``env`` with ``overrides`` (flag values by field name) taking precedence."""
        overrides = overrides or {}
        values: dict[str, Any] = {}
        for spec in SPECS:
            flagged = overrides.get(spec.field)
            raw = flagged if flagged is not None else env.get(spec.env, spec.default)
            try:
                values[spec.field] = spec.parse(raw)
            except ValueError as exc:
                shown = "<hidden>" if spec.secret else repr(raw)
                raise SettingsError(f"{spec.env}={shown}: {exc}") from None
        settings = cls(**values)
        settings._check_consistency()
        return settings

    def _check_consistency(self) -> None:
        topics = [self.input_topic, self.verdict_topic, self.dlq_topic]
        if len(set(topics)) != len(topics):
            raise SettingsError("GUARDQ_INPUT_TOPIC, GUARDQ_VERDICT_TOPIC and GUARDQ_DLQ_TOPIC must differ")
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise SettingsError(
                "GUARDQ_KAFKA_SECURITY_PROTOCOL=SASL_*: set GUARDQ_KAFKA_SASL_MECHANISM, _USERNAME and _PASSWORD"
            )
        self._check_security()

    def _check_security(self) -> None:
        """Security options that would be silently ignored, or that contradict each other, are errors."""
        protocol = self.kafka_security_protocol
        kafka_tls = (self.kafka_ssl_cafile, self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        if any(kafka_tls) and protocol not in {"SSL", "SASL_SSL"}:
            raise SettingsError(
                f"GUARDQ_KAFKA_SSL_* is set but GUARDQ_KAFKA_SECURITY_PROTOCOL={protocol} uses no TLS"
            )
        sasl = (self.kafka_sasl_mechanism, self.kafka_sasl_username, self.kafka_sasl_password)
        if any(sasl) and not protocol.startswith("SASL"):
            raise SettingsError(
                f"GUARDQ_KAFKA_SASL_* is set but GUARDQ_KAFKA_SECURITY_PROTOCOL={protocol} uses no SASL"
            )
        _key_needs_cert(
            "GUARDQ_KAFKA_SSL_KEYFILE",
            self.kafka_ssl_keyfile,
            "GUARDQ_KAFKA_SSL_CERTFILE",
            self.kafka_ssl_certfile,
        )
        _key_needs_cert(
            "GUARDQ_REDIS_TLS_KEY_FILE",
            self.redis_tls_key_file,
            "GUARDQ_REDIS_TLS_CERT_FILE",
            self.redis_tls_cert_file,
        )
        url = urlparse(self.redis_url)
        redis_tls = (self.redis_tls_ca_file, self.redis_tls_cert_file, self.redis_tls_key_file)
        if (any(redis_tls) or not self.redis_tls_verify) and url.scheme != "rediss":
            raise SettingsError("GUARDQ_REDIS_TLS_* needs a rediss:// GUARDQ_REDIS_URL")
        if self.redis_password and url.password:
            raise SettingsError(
                "set the Redis password in GUARDQ_REDIS_URL or in GUARDQ_REDIS_PASSWORD, not both"
            )
        if self.guard_ca_file and not self.guard_url.startswith("https://"):
            raise SettingsError("GUARDQ_GUARD_CA_FILE needs an https:// GUARDQ_GUARD_URL")

    @property
    def retry_topics(self) -> tuple[str, ...]:
        """Delayed retry topics, one per step of the retry schedule: ``<input>.retry.<delay>``."""
        return tuple(f"{self.input_topic}.retry.{step}" for step in self.retry_schedule)

    @property
    def lease_ttl_s(self) -> float:
        """In-flight lease TTL: about the guard timeout, renewed by its holder while the work is alive."""
        return max(5.0, self.guard_timeout_s)

    def child_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """The environment that reproduces these settings in a child process: ``base`` with every
        setting's variable set, or removed where the setting is unset (so its default applies)."""
        env = dict(base)
        for spec in SPECS:
            value = getattr(self, spec.field)
            if value is None:
                env.pop(spec.env, None)
            else:
                env[spec.env] = ",".join(value) if isinstance(value, tuple) else str(value)
        return env

    def redacted(self) -> dict[str, Any]:
        """Settings for display, with secrets replaced."""
        secret = {spec.field for spec in SPECS if spec.secret}
        shown: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            shown[item.name] = "<hidden>" if item.name in secret and value else value
        return shown


def add_flags(parser: argparse.ArgumentParser, only: set[str] | None = None) -> None:
    """Add one flag per setting (or per setting named in ``only``); each defaults to None so the
    environment applies."""
    for spec in SPECS:
        if only is not None and spec.field not in only:
            continue
        parser.add_argument(
            spec.flag, dest=spec.field, default=None, metavar="V", help=f"{spec.help} [{spec.env}]"
        )


def overrides_from(args: argparse.Namespace) -> dict[str, str | None]:
    """The flag values given on the command line, by field name."""
    return {spec.field: getattr(args, spec.field, None) for spec in SPECS}
