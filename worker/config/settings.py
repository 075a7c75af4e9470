"""One frozen settings object, built once from environment variables and flags, validated at start-up.

Each setting is declared once, as a field of ``Settings``: its type, default, parser and help. Its
environment variable and `guardq run` flag follow from the field's name (``SPECS`` lists them), and values
derived from settings are properties here too. A bad value raises ``SettingsError`` with a one-line
message naming the variable.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from worker.config.checks import check
from worker.config.spec import SettingsError as SettingsError
from worker.config.spec import (
    Spec,
    mask_url_password,
    secret_from_file,
    setting,
    spelled,
    spelling_of_none,
    url_passwords,
)
from worker.config.values import (
    _action,
    _backend,
    _backoff,
    _boolean,
    _bootstrap,
    _breaker_open_s,
    _chunk_chars,
    _compression,
    _concurrency,
    _create_topics,
    _http_url,
    _idempotence,
    _log_level,
    _non_negative_float,
    _optional_file,
    _optional_http_url,
    _optional_text,
    _outage_policy,
    _policy_categories,
    _port,
    _positive_float,
    _positive_int,
    _rate,
    _redis_url,
    _replication,
    _retention,
    _retry_schedule,
    _sasl_mechanism,
    _security_protocol,
    _text,
    _topic,
    parse_duration_s,
    retention_ms,
)
from worker.core.policy import Policy, overrides_map, parse_action
from worker.core.taxonomies import DEFAULT_MODELS


@dataclass(frozen=True)
class Settings:
    """Validated configuration of one guardq process; build it with ``Settings.load``.

    Each field is one setting, declared here once: its type, default, parser and help. Its environment
    variable is ``GUARDQ_<FIELD>`` and its `guardq run` flag ``--<field>`` (``SPECS`` lists them)."""

    log_level: str = setting("INFO", _log_level, "DEBUG, INFO, WARNING or ERROR (any case)")
    kafka_bootstrap: str = setting("127.0.0.1:9092", _bootstrap, "bootstrap servers")
    redis_url: str = setting("redis://127.0.0.1:6379/0", _redis_url, "verdict store", url=True)
    redis_prefix: str = setting("guardq:", _text, "Redis key prefix")
    guard_backend: str = setting(
        "qwen3guard", _backend, "qwen3guard, llamaguard, openai-moderation or local (offline demo)"
    )
    guard_url: str = setting("http://127.0.0.1:8000/v1", _http_url, "guard base URL (/v1)")
    guard_model: str = setting(
        DEFAULT_MODELS["qwen3guard"], _text, "model name sent to the guard (default: the backend's own)"
    )
    guard_api_key: str | None = setting("", _optional_text, "bearer token (never logged)", secret=True)
    guard_timeout_s: float = setting("30", _positive_float, "per-call guard timeout")
    guard_connect_timeout_s: float = setting(
        "5", _positive_float, "guard connection timeout (a black-holed guard frees a slot after it)"
    )
    guard_backoff: tuple[str, ...] = setting("1s,4s", _backoff, "initial,max of the in-process guard backoff")
    breaker_failures: int = setting("5", _positive_int, "consecutive guard failures that open the breaker")
    breaker_window_s: float = setting("60", _positive_float, "window of the breaker's failure-rate rule")
    breaker_failure_rate: float = setting(
        "0.5", _rate, "failure share in the window that opens the breaker (with >= 2 x _FAILURES calls)"
    )
    breaker_open_s: float = setting(
        "30", _breaker_open_s, "longest wait while open before a probe (probes start at 0.5 s and double)"
    )
    outage_policy: str = setting(
        "wait", _outage_policy, "during a guard outage: wait, or give provisional block/allow/review verdicts"
    )
    outage_after_s: float = setting(
        "60", _non_negative_float, "how long an outage lasts before provisional verdicts begin"
    )
    alert_webhook_url: str | None = setting(
        "", _optional_http_url, "JSON POST on breaker open, fallback start, guard back", secret=True
    )
    guard_batch_max: int = setting("32", _positive_int, "most inputs per request of a batching backend")
    guard_batch_wait_ms: float = setting(
        "5", _non_negative_float, "longest wait for a batching backend's request to fill"
    )
    policy_unsafe: str = setting("block", _action, "action for an unsafe verdict: allow, block or review")
    policy_controversial: str = setting("review", _action, "action for a controversial verdict")
    policy_categories: tuple[str, ...] = setting(
        "", _policy_categories, "per-category actions of unsafe verdicts, e.g. PII=review,Jailbreak=block"
    )
    input_topic: str = setting("moderation.requests", _topic, "input topic")
    verdict_topic: str = setting("moderation.verdicts", _topic, "verdict topic")
    dlq_topic: str = setting("moderation.dlq", _topic, "dead-letter topic")
    group_id: str = setting("guardq", _text, "consumer group")
    concurrency: int | None = setting(
        "auto",
        _concurrency,
        "auto: the cap on guard calls in flight follows the guard between _MIN and _MAX; a number fixes it",
    )
    concurrency_min: int = setting("4", _positive_int, "lowest cap on guard calls with auto")
    concurrency_max: int = setting("256", _positive_int, "highest cap on guard calls with auto")
    max_text_chars: int = setting("100000", _positive_int, "longer texts are dead-lettered")
    chunk_chars: int | None = setting(
        "auto",
        _chunk_chars,
        "chars per guard call before a text is split (auto: from the guard's context window)",
    )
    create_topics: str = setting(
        "auto", _create_topics, "auto: create missing topics at start; never: leave topics to the operator"
    )
    topic_partitions: int = setting("8", _positive_int, "partitions of created topics")
    topic_replication: int | None = setting("auto", _replication, "replicas of created topics")
    dlq_retention: str = setting(
        "forever", _retention, "retention of a created dead-letter topic: forever, or a duration like 30d"
    )
    verdict_ttl_s: int = setting("604800", _positive_int, "verdict TTL (dedup window)")
    shutdown_timeout_s: float = setting("20", _positive_float, "graceful drain deadline")
    retry_schedule: tuple[str, ...] = setting("10s,1m,10m", _retry_schedule, "delayed retry topics")
    max_replays: int = setting("3", _positive_int, "replay loop guard")
    http_host: str = setting("0.0.0.0", _text, "address of the health/metrics server")
    http_port: int = setting("8080", _port, "health/metrics port (0: any free port)")
    heartbeat_s: float = setting("30", _positive_float, "guard heartbeat period")
    max_buffered: int = setting("1000", _positive_int, "fetched-but-unfinished cap (pause)")
    max_buffered_mb: int = setting("64", _positive_int, "buffered bytes cap (pause)")
    session_timeout_s: float = setting("10", _positive_float, "consumer session timeout")
    commit_interval_s: float = setting("1", _positive_float, "periodic commit interval")
    guard_attempts: int = setting("3", _positive_int, "in-process guard attempts")
    kafka_compression: str | None = setting(
        "zstd", _compression, "codec of what guardq sends: none, gzip, snappy, lz4, zstd"
    )
    kafka_max_message_bytes: int = setting(
        str(16 * 1024 * 1024),
        _positive_int,
        "largest record guardq sends (set it to the brokers' message.max.bytes)",
    )
    max_inflate_mb: int = setting(
        "64", _positive_int, "a fetched batch that inflates past this is dead-lettered undecodable"
    )
    kafka_client_id: str = setting(
        "guardq", _text, "client.id of guardq's Kafka clients (broker logs, quotas, ACL audits)"
    )
    kafka_idempotence: str = setting(
        "auto", _idempotence, "idempotent producer: auto (on when the broker supports it), true or false"
    )
    kafka_security_protocol: str = setting(
        "PLAINTEXT", _security_protocol, "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_sasl_mechanism: str | None = setting("", _sasl_mechanism, "PLAIN, SCRAM-SHA-256/512 or OAUTHBEARER")
    kafka_sasl_username: str | None = setting("", _optional_text, "SASL user (PLAIN, SCRAM)")
    kafka_sasl_password: str | None = setting("", _optional_text, "SASL password (PLAIN, SCRAM)", secret=True)
    kafka_sasl_oauth_token_file: str | None = setting(
        "", _optional_file, "OAUTHBEARER: a file holding the token, read again at each connection"
    )
    kafka_ssl_cafile: str | None = setting("", _optional_file, "CA bundle for Kafka TLS")
    kafka_ssl_certfile: str | None = setting("", _optional_file, "client certificate")
    kafka_ssl_keyfile: str | None = setting("", _optional_file, "client key")
    redis_password: str | None = setting(
        "", _optional_text, "Redis password (AUTH), instead of one in GUARDQ_REDIS_URL", secret=True
    )
    redis_tls_ca_file: str | None = setting("", _optional_file, "CA bundle for rediss://")
    redis_tls_cert_file: str | None = setting("", _optional_file, "Redis client cert")
    redis_tls_key_file: str | None = setting("", _optional_file, "Redis client key")
    redis_tls_verify: bool = setting("true", _boolean, "verify the Redis server cert")
    guard_tls_verify: bool = setting("true", _boolean, "verify the guard's certificate")
    guard_ca_file: str | None = setting("", _optional_file, "CA bundle for an https guard")

    @classmethod
    def load(cls, env: Mapping[str, str], overrides: Mapping[str, str | None] | None = None) -> Settings:
        """Build settings from ``env`` with ``overrides`` (flag values by field name) taking precedence."""
        overrides = overrides or {}
        values: dict[str, Any] = {}
        for spec in SPECS:
            flagged = overrides.get(spec.field)
            default = spec.default
            if spec.field == "guard_model":  # each backend names its own model by default
                default = DEFAULT_MODELS[values["guard_backend"]]
            # The error names what the user set: the flag, the variable, or the variable's file.
            named, raw = spec.env, env.get(spec.env, default)
            if flagged is not None:
                named, raw = spec.flag, flagged
            elif spec.secret and (from_file := secret_from_file(spec, env)) is not None:
                named, raw = spec.file_env, from_file
            try:
                values[spec.field] = spec.parse(raw)
            except ValueError as exc:
                raise SettingsError(f"{named}={spec.shown(raw)}: {exc}") from None
        settings = cls(**values)
        check(settings)
        return settings

    @property
    def policy(self) -> Policy:
        """The verdict policy (GUARDQ_POLICY_*)."""
        return Policy(
            unsafe=parse_action(self.policy_unsafe),
            controversial=parse_action(self.policy_controversial),
            categories=overrides_map(self.policy_categories),
        )

    @property
    def guard_backoff_s(self) -> tuple[float, float]:
        """GUARDQ_GUARD_BACKOFF in seconds: (initial, max)."""
        initial, most = (parse_duration_s(step) for step in self.guard_backoff)
        return initial, most

    @property
    def parked_topic(self) -> str:
        """Where messages given a provisional verdict wait for the guard: ``<input>.parked``."""
        return f"{self.input_topic}.parked"

    @property
    def guard_batch_wait_s(self) -> float:
        """GUARDQ_GUARD_BATCH_WAIT_MS in seconds."""
        return self.guard_batch_wait_ms / 1000

    @property
    def retry_topics(self) -> tuple[str, ...]:
        """Delayed retry topics, one per step of the retry schedule: ``<input>.retry.<delay>``."""
        return tuple(f"{self.input_topic}.retry.{step}" for step in self.retry_schedule)

    @property
    def dlq_retention_ms(self) -> int:
        """GUARDQ_DLQ_RETENTION as Kafka's ``retention.ms`` (-1: forever)."""
        return retention_ms(self.dlq_retention)

    @property
    def retry_delays_s(self) -> tuple[float, ...]:
        """The delay of each retry topic, in seconds."""
        return tuple(parse_duration_s(step) for step in self.retry_schedule)

    @property
    def max_buffered_bytes(self) -> int:
        """The buffered-bytes cap of the fetch loop (GUARDQ_MAX_BUFFERED_MB)."""
        return self.max_buffered_mb * 1024 * 1024

    @property
    def max_inflate_bytes(self) -> int:
        """How far one fetched batch may inflate (GUARDQ_MAX_INFLATE_MB)."""
        return self.max_inflate_mb * 1024 * 1024

    @property
    def guard_retry_budget_s(self) -> float:
        """How long one message's in-process guard attempts may take in all: two full timeouts and the
        waits between them."""
        return 2 * self.guard_timeout_s + 10

    @property
    def concurrency_cap(self) -> int:
        """The most guard calls that may ever be in flight: the fixed cap, or the maximum with auto."""
        return self.concurrency if self.concurrency is not None else self.concurrency_max

    @property
    def redis_pool_size(self) -> int:
        """Connections of the verdict store's pool: two per guard call in flight, at least 16."""
        return max(16, self.concurrency_cap * 2)

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
                unset = spelling_of_none(spec)
                if unset is None:
                    env.pop(spec.env, None)  # the default is unset too
                else:
                    env[spec.env] = unset
            else:
                env[spec.env] = spelled(value)
            if spec.secret:
                env.pop(spec.file_env, None)  # the value itself is set (or unset) now
        return env

    def redacted(self) -> dict[str, Any]:
        """Settings for display, with secrets replaced."""
        shown: dict[str, Any] = {}
        for spec in SPECS:
            value = getattr(self, spec.field)
            if spec.secret and value:
                value = "<hidden>"
            elif spec.url and isinstance(value, str):
                value = mask_url_password(value)
            shown[spec.field] = value
        return shown


SPECS: tuple[Spec, ...] = tuple(
    Spec(item.name, "GUARDQ_" + item.name.upper(), *item.metadata["setting"]) for item in fields(Settings)
)


def add_flags(parser: argparse.ArgumentParser, only: set[str] | None = None) -> None:
    """Add one flag per setting (or per setting named in ``only``), its help naming the default and the
    variable; each flag defaults to None so the environment applies. Secrets get no flag (a flag is seen
    by every user of the machine, in ``ps`` and in shell history): the help's epilog names their variables."""
    secrets = []
    for spec in SPECS:
        if only is not None and spec.field not in only:
            continue
        if spec.secret:
            secrets.append(f"{spec.env} (or {spec.file_env})")
            continue
        default = "guard backend's own" if spec.field == "guard_model" else spec.default or "unset"
        parser.add_argument(
            spec.flag,
            dest=spec.field,
            default=None,
            metavar=_metavar(spec),
            help=f"{spec.help} (default: {default}; env {spec.env})".replace("%", "%%"),
        )
    if secrets:
        parser.epilog = "Secrets are read only from the environment or a file: " + ", ".join(secrets) + "."


def _metavar(spec: Spec) -> str:
    name = spec.field
    for suffix, shown in (
        ("_s", "SECONDS"),
        ("_ms", "MS"),
        ("_url", "URL"),
        ("file", "PATH"),
        ("topic", "TOPIC"),
    ):
        if name.endswith(suffix):
            return shown
    return "N" if spec.default.isdigit() else "VALUE"


def overrides_from(args: argparse.Namespace) -> dict[str, str | None]:
    """The flag values given on the command line, by field name. A URL flag carrying a password is
    refused: any user of the machine can read a command line (``ps``, shell history)."""
    given = {spec.field: getattr(args, spec.field, None) for spec in SPECS}
    for spec in SPECS:
        value = given[spec.field]
        if spec.url and value is not None and url_passwords(value):
            raise SettingsError(
                f"{spec.flag} carries a password, which any user of the machine can read (ps, "
                f"shell history): give that URL in {spec.env} instead"
            )
    return given
