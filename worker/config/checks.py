"""Checks of settings taken together: what would be silently ignored or contradicts itself is an error."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlparse

from worker.config.spec import SettingsError
from worker.core.taxonomies import CATEGORIES

if TYPE_CHECKING:
    from worker.config.settings import Settings


def check(settings: Settings) -> None:
    """Raise ``SettingsError`` for settings that are valid one by one but not together."""
    if settings.concurrency_min > settings.concurrency_max:
        raise SettingsError("GUARDQ_CONCURRENCY_MIN must not exceed GUARDQ_CONCURRENCY_MAX")
    topics = [settings.input_topic, settings.verdict_topic, settings.dlq_topic]
    if len(set(topics)) != len(topics):
        raise SettingsError("GUARDQ_INPUT_TOPIC, GUARDQ_VERDICT_TOPIC and GUARDQ_DLQ_TOPIC must differ")
    _check_sasl(settings)
    _check_security(settings)
    known = CATEGORIES[settings.guard_backend]
    if unknown := settings.policy.unknown_categories(known):
        raise SettingsError(
            f"GUARDQ_POLICY_CATEGORIES names {unknown[0]!r}, not a category of "
            f"GUARDQ_GUARD_BACKEND={settings.guard_backend} (its categories: {', '.join(known)})"
        )


def _check_sasl(settings: Settings) -> None:
    """SASL needs a mechanism and its credentials: a username and password, or an OAUTHBEARER token file."""
    protocol, mechanism = settings.kafka_security_protocol, settings.kafka_sasl_mechanism
    password_based = bool(settings.kafka_sasl_username or settings.kafka_sasl_password)
    if not protocol.startswith("SASL"):
        if mechanism or password_based or settings.kafka_sasl_oauth_token_file:
            raise SettingsError(
                f"GUARDQ_KAFKA_SASL_* is set but GUARDQ_KAFKA_SECURITY_PROTOCOL={protocol} uses no SASL"
            )
        return
    if mechanism == "OAUTHBEARER":
        if not settings.kafka_sasl_oauth_token_file:
            raise SettingsError(
                "GUARDQ_KAFKA_SASL_MECHANISM=OAUTHBEARER needs GUARDQ_KAFKA_SASL_OAUTH_TOKEN_FILE"
            )
        if password_based:
            raise SettingsError(
                "GUARDQ_KAFKA_SASL_MECHANISM=OAUTHBEARER uses a token: unset GUARDQ_KAFKA_SASL_USERNAME"
                " and GUARDQ_KAFKA_SASL_PASSWORD"
            )
        return
    if not (mechanism and settings.kafka_sasl_username and settings.kafka_sasl_password):
        raise SettingsError(
            "GUARDQ_KAFKA_SECURITY_PROTOCOL=SASL_*: set GUARDQ_KAFKA_SASL_MECHANISM, GUARDQ_KAFKA_SASL_USERNAME"
            " and GUARDQ_KAFKA_SASL_PASSWORD (or GUARDQ_KAFKA_SASL_MECHANISM=OAUTHBEARER and"
            " GUARDQ_KAFKA_SASL_OAUTH_TOKEN_FILE)"
        )
    if settings.kafka_sasl_oauth_token_file:
        raise SettingsError(f"GUARDQ_KAFKA_SASL_OAUTH_TOKEN_FILE needs OAUTHBEARER, not {mechanism}")


def _check_security(settings: Settings) -> None:
    """Security options that would be silently ignored, or that contradict each other, are errors."""
    protocol = settings.kafka_security_protocol
    kafka_tls = (settings.kafka_ssl_cafile, settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    if any(kafka_tls) and protocol not in {"SSL", "SASL_SSL"}:
        raise SettingsError(
            f"GUARDQ_KAFKA_SSL_* is set but GUARDQ_KAFKA_SECURITY_PROTOCOL={protocol} uses no TLS"
        )
    _key_needs_cert(
        "GUARDQ_KAFKA_SSL_KEYFILE",
        settings.kafka_ssl_keyfile,
        "GUARDQ_KAFKA_SSL_CERTFILE",
        settings.kafka_ssl_certfile,
    )
    _key_needs_cert(
        "GUARDQ_REDIS_TLS_KEY_FILE",
        settings.redis_tls_key_file,
        "GUARDQ_REDIS_TLS_CERT_FILE",
        settings.redis_tls_cert_file,
    )
    url = urlparse(settings.redis_url)
    redis_tls = (settings.redis_tls_ca_file, settings.redis_tls_cert_file, settings.redis_tls_key_file)
    if (any(redis_tls) or not settings.redis_tls_verify) and url.scheme != "rediss":
        raise SettingsError("GUARDQ_REDIS_TLS_* needs a rediss:// GUARDQ_REDIS_URL")
    if settings.redis_password and url.password:
        raise SettingsError(
            "set the Redis password in GUARDQ_REDIS_URL or in GUARDQ_REDIS_PASSWORD, not both"
        )
    if settings.guard_ca_file and not settings.guard_url.startswith("https://"):
        raise SettingsError("GUARDQ_GUARD_CA_FILE needs an https:// GUARDQ_GUARD_URL")


def _key_needs_cert(key_env: str, keyfile: str | None, cert_env: str, certfile: str | None) -> None:
    if keyfile and not certfile:
        raise SettingsError(f"{key_env} needs {cert_env} (the key's certificate)")
