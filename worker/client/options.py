"""The keyword options of the client classes: each stands for one of the worker's settings, so a value is
checked by the same parser and a mistake reads as the keyword the caller wrote."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.config.settings import SPECS, Settings, SettingsError

# A client keyword -> the setting it stands for (its parser checks the value, as the worker's would).
_KEYWORDS = {
    "bootstrap": "kafka_bootstrap",
    "topic": "input_topic",
    "verdict_topic": "verdict_topic",
    "redis_url": "redis_url",
    "redis_prefix": "redis_prefix",
    "client_id": "kafka_client_id",
    "security_protocol": "kafka_security_protocol",
    "sasl_mechanism": "kafka_sasl_mechanism",
    "sasl_username": "kafka_sasl_username",
    "sasl_password": "kafka_sasl_password",
    "sasl_oauth_token_file": "kafka_sasl_oauth_token_file",
    "ssl_cafile": "kafka_ssl_cafile",
    "ssl_certfile": "kafka_ssl_certfile",
    "ssl_keyfile": "kafka_ssl_keyfile",
    "compression": "kafka_compression",
    "idempotence": "kafka_idempotence",
    "max_text_chars": "max_text_chars",
}


def settings_from_keywords(owner: str, given: Mapping[str, Any]) -> Settings:
    """Settings from ``owner``'s keywords (None: the default); ``TypeError`` for an unknown keyword,
    ``ValueError`` naming the keyword for a bad value."""
    unknown = sorted(set(given) - set(_KEYWORDS))
    if unknown:
        raise TypeError(f"{owner}() got unknown options: {', '.join(unknown)}")
    overrides = {_KEYWORDS[name]: str(value) for name, value in given.items() if value is not None}
    try:
        return Settings.load({}, overrides)
    except SettingsError as exc:
        raise ValueError(_keyword_names(str(exc))) from None


# Groups of settings that errors name together (``GUARDQ_KAFKA_SASL_* is set but ...``).
_GROUPS = {"GUARDQ_KAFKA_SASL_*": "sasl_*", "GUARDQ_KAFKA_SSL_*": "ssl_*"}


def _keyword_names(message: str) -> str:
    """A settings error as the keywords the caller passed would name it (``bootstrap=...``; a check of
    settings together: ``security_protocol=SASL_*: set sasl_mechanism, ...``)."""
    specs = {spec.field: spec for spec in SPECS}
    # Longest names first: GUARDQ_KAFKA_SASL_OAUTH_TOKEN_FILE before a name it starts with.
    for keyword, field in sorted(_KEYWORDS.items(), key=lambda item: -len(specs[item[1]].env)):
        message = message.replace(f"{specs[field].flag}=", f"{keyword}=")
        message = message.replace(specs[field].env, keyword)
    for group, keywords in _GROUPS.items():
        message = message.replace(group, keywords)
    return message
