"""How every Kafka client of guardq connects: bootstrap, client id, TLS and SASL (PLAIN, SCRAM or an
OAUTHBEARER token read from a file), and whether the broker grants an idempotent producer."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

from aiokafka.abc import AbstractTokenProvider
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.transaction import InitProducerIdRequest

from worker.config.settings import Settings, SettingsError

log = logging.getLogger(__name__)


class TokenFile(AbstractTokenProvider):  # type: ignore[misc]
    """An OAUTHBEARER token kept in a file by something else (a sidecar, a projected service-account
    token): read again at every (re)connection, so a rotated token is picked up without a restart."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    async def token(self) -> str:
        text = await asyncio.to_thread(self._path.read_text, encoding="utf-8")
        token = text.strip()
        if not token:
            raise ValueError(f"the OAUTHBEARER token file {self._path} is empty")
        return token


def connection_options(settings: Settings) -> dict[str, Any]:
    """Bootstrap, client id, TLS and SASL options shared by every client."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "client_id": settings.kafka_client_id,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in {"SSL", "SASL_SSL"}:
        options["ssl_context"] = _ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        if settings.kafka_sasl_mechanism == "OAUTHBEARER":
            assert settings.kafka_sasl_oauth_token_file is not None  # checked with the settings
            options["sasl_oauth_token_provider"] = TokenFile(settings.kafka_sasl_oauth_token_file)
        else:
            # aiokafka takes the SCRAM credentials under the same two names as PLAIN's.
            options["sasl_plain_username"] = settings.kafka_sasl_username
            options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context of every Kafka client (the system's CAs unless GUARDQ_KAFKA_SSL_CAFILE is set);
    a file that is not PEM is a one-line settings error here, not a handshake failure later."""
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )
    except (ssl.SSLError, OSError) as exc:
        raise SettingsError(f"GUARDQ_KAFKA_SSL_CAFILE/_CERTFILE/_KEYFILE cannot be loaded: {exc}") from None
    return context


# Per bootstrap list: whether its brokers grant producer ids, as they answered (asked once per process).
_granted: dict[str, bool] = {}


async def idempotence(settings: Settings) -> bool:
    """Whether guardq's producers are idempotent: GUARDQ_KAFKA_IDEMPOTENCE=true or false as set, and with
    ``auto``, whether the broker grants a producer id (InitProducerId). ``true`` on a broker that answers
    that it does not is a ``SettingsError``, not a producer that fails at its first send. A broker that
    cannot be asked (not reachable yet) decides nothing: ``auto`` goes without for this producer and asks
    again next time; ``true`` raises the connection error."""
    wanted = settings.kafka_idempotence
    if wanted == "false":
        return False
    granted = _granted.get(settings.kafka_bootstrap)
    if granted is None:
        try:
            granted = await _grants_producer_ids(settings)
        except (TimeoutError, KafkaConnectionError, OSError) as exc:
            if wanted == "true":
                raise
            log.warning(
                "could not ask the broker for a producer id (%r): this producer is not idempotent", exc
            )
            return False
        _granted[settings.kafka_bootstrap] = granted
        log.info(
            "idempotent producer %s (GUARDQ_KAFKA_IDEMPOTENCE=%s; the broker %s producer ids)",
            "on" if granted else "off",
            wanted,
            "grants" if granted else "does not grant",
        )
    if wanted == "true" and not granted:
        raise SettingsError(
            "GUARDQ_KAFKA_IDEMPOTENCE=true but the broker does not grant producer ids (InitProducerId); "
            "set it to auto or false"
        )
    return granted


async def _grants_producer_ids(settings: Settings) -> bool:
    """The broker's answer to InitProducerId; raises when it cannot be asked."""
    client = AIOKafkaClient(**connection_options(settings), request_timeout_ms=10_000)
    try:
        await client.bootstrap()
        request = InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=60_000)
        try:
            response = await client.send(client.get_random_node(), request)
        except KafkaConnectionError:
            raise
        except KafkaError as exc:  # an API the broker does not have: an answer, and a no
            log.info("the broker refused InitProducerId: %r", exc)
            return False
        return int(response.error_code) == 0
    finally:
        await client.close()
