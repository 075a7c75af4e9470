"""Security settings: Kafka TLS/SASL, Redis password/TLS and guard TLS options parse and validate with
one-line errors naming the variable (secrets hidden), reach the clients they configure, and a real TLS
round trip to an https guard shows GUARDQ_GUARD_CA_FILE and GUARDQ_GUARD_TLS_VERIFY doing what they say."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from worker.config.settings import Settings, SettingsError
from worker.core.errors import GuardConfigError, GuardError
from worker.core.guard_types import GuardRequest
from worker.dev.sim.config import SimConfig
from worker.dev.sim.server import build_app
from worker.guard.factory import build_backend
from worker.guard.http import tls_context
from worker.guard.qwen3guard import Qwen3GuardBackend
from worker.kafka import clients as kafka
from worker.store.connect import RedisSecurity, connect_redis

SASL = {
    "GUARDQ_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "GUARDQ_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "GUARDQ_KAFKA_SASL_USERNAME": "guardq",
    "GUARDQ_KAFKA_SASL_PASSWORD": "kafka-s3cr3t",
}


@dataclass(frozen=True)
class Certs:
    """A self-signed certificate for 127.0.0.1 (its own CA), its key, and a file that is not PEM."""

    cert: Path
    key: Path
    not_pem: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Certs]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    not_pem = directory / "not-a-cert.pem"
    not_pem.write_text("this is not a certificate\n")
    yield Certs(cert, key, not_pem)


def load_error(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as caught:
        Settings.load(env)
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message
    return message


# -- Kafka ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "scram-sha-256"])
def test_kafka_sasl_mechanisms_are_accepted_and_reach_the_client_options(mechanism: str) -> None:
    settings = Settings.load(SASL | {"GUARDQ_KAFKA_SASL_MECHANISM": mechanism})
    options = kafka.connection_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == mechanism.upper()
    assert options["sasl_plain_username"] == "guardq"
    assert options["sasl_plain_password"] == "kafka-s3cr3t"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert "kafka-s3cr3t" not in repr(settings.redacted())


@pytest.mark.parametrize("mechanism", ["GSSAPI", "SCRAM-SHA-1", "plain text"])
def test_unknown_kafka_sasl_mechanism_is_a_one_line_error(mechanism: str) -> None:
    message = load_error(SASL | {"GUARDQ_KAFKA_SASL_MECHANISM": mechanism})
    assert message.startswith("GUARDQ_KAFKA_SASL_MECHANISM=")
    assert "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512" in message
    assert "kafka-s3cr3t" not in message


def test_kafka_plaintext_sets_no_tls_or_sasl_options() -> None:
    options = kafka.connection_options(Settings.load({}))
    assert options["security_protocol"] == "PLAINTEXT"
    assert not {"ssl_context", "sasl_mechanism", "sasl_plain_password"} & set(options)


def test_sasl_options_without_a_sasl_protocol_are_an_error_not_ignored() -> None:
    env = {k: v for k, v in SASL.items() if k != "GUARDQ_KAFKA_SECURITY_PROTOCOL"}
    message = load_error(env)
    assert "GUARDQ_KAFKA_SASL_*" in message and "PLAINTEXT" in message
    assert "kafka-s3cr3t" not in message


@pytest.mark.parametrize("env", ["GUARDQ_KAFKA_SSL_CAFILE", "GUARDQ_KAFKA_SSL_CERTFILE"])
def test_missing_kafka_tls_file_names_the_variable(env: str, tmp_path: Path) -> None:
    message = load_error({"GUARDQ_KAFKA_SECURITY_PROTOCOL": "SSL", env: str(tmp_path / "missing.pem")})
    assert message.startswith(f"{env}=") and "cannot read the file" in message


def test_kafka_tls_files_with_a_plaintext_protocol_are_an_error(certs: Certs) -> None:
    message = load_error({"GUARDQ_KAFKA_SSL_CAFILE": str(certs.cert)})
    assert "GUARDQ_KAFKA_SSL_*" in message and "PLAINTEXT" in message


def test_kafka_key_without_its_certificate_is_an_error(certs: Certs) -> None:
    env = {"GUARDQ_KAFKA_SECURITY_PROTOCOL": "SSL", "GUARDQ_KAFKA_SSL_KEYFILE": str(certs.key)}
    assert "GUARDQ_KAFKA_SSL_CERTFILE" in load_error(env)


def test_kafka_ca_file_and_client_certificate_reach_the_ssl_context(certs: Certs) -> None:
    settings = Settings.load(
        {
            "GUARDQ_KAFKA_SECURITY_PROTOCOL": "SSL",
            "GUARDQ_KAFKA_SSL_CAFILE": str(certs.cert),
            "GUARDQ_KAFKA_SSL_CERTFILE": str(certs.cert),
            "GUARDQ_KAFKA_SSL_KEYFILE": str(certs.key),
        }
    )
    context = kafka.connection_options(settings)["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # Only our CA: the self-signed certificate is the one trusted root.
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "127.0.0.1"),),)]
    assert "sasl_mechanism" not in kafka.connection_options(settings)


def test_kafka_ca_file_that_is_not_pem_is_a_settings_error(certs: Certs) -> None:
    settings = Settings.load(
        {"GUARDQ_KAFKA_SECURITY_PROTOCOL": "SSL", "GUARDQ_KAFKA_SSL_CAFILE": str(certs.not_pem)}
    )
    with pytest.raises(SettingsError, match="GUARDQ_KAFKA_SSL_CAFILE") as caught:
        kafka.connection_options(settings)
    assert "\n" not in str(caught.value)


# -- Redis ------------------------------------------------------------------------------------------


def test_redis_password_is_secret_and_reaches_the_connection_kwargs() -> None:
    settings = Settings.load({"GUARDQ_REDIS_PASSWORD": "redis-s3cr3t"})
    assert "redis-s3cr3t" not in repr(settings.redacted())
    security = RedisSecurity.from_settings(settings)
    assert "redis-s3cr3t" not in repr(security)
    assert security.connection_kwargs(settings.redis_url) == {"password": "redis-s3cr3t"}
    client = connect_redis(settings.redis_url, max_connections=2, security=security)
    assert client.connection_pool.connection_kwargs["password"] == "redis-s3cr3t"


def test_redis_password_in_both_the_url_and_its_variable_is_an_error() -> None:
    env = {"GUARDQ_REDIS_URL": "redis://:url-s3cr3t@127.0.0.1:6379/0", "GUARDQ_REDIS_PASSWORD": "var-s3cr3t"}
    message = load_error(env)
    assert "GUARDQ_REDIS_PASSWORD" in message and "s3cr3t" not in message


def test_redis_tls_options_reach_a_rediss_connection(certs: Certs) -> None:
    settings = Settings.load(
        {
            "GUARDQ_REDIS_URL": "rediss://redis.internal:6380/0",
            "GUARDQ_REDIS_TLS_CA_FILE": str(certs.cert),
            "GUARDQ_REDIS_TLS_CERT_FILE": str(certs.cert),
            "GUARDQ_REDIS_TLS_KEY_FILE": str(certs.key),
        }
    )
    client = connect_redis(
        settings.redis_url, max_connections=2, security=RedisSecurity.from_settings(settings)
    )
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    assert kwargs["ssl_cert_reqs"] == "required" and kwargs["ssl_check_hostname"] is True
    assert kwargs["ssl_ca_certs"] == str(certs.cert)
    assert (kwargs["ssl_certfile"], kwargs["ssl_keyfile"]) == (str(certs.cert), str(certs.key))


def test_redis_tls_verification_can_be_turned_off() -> None:
    env = {"GUARDQ_REDIS_URL": "rediss://127.0.0.1:6380/0", "GUARDQ_REDIS_TLS_VERIFY": "false"}
    kwargs = RedisSecurity.from_settings(Settings.load(env)).connection_kwargs(env["GUARDQ_REDIS_URL"])
    assert kwargs == {"ssl_cert_reqs": "none", "ssl_check_hostname": False}


def test_redis_tls_options_need_a_rediss_url(certs: Certs) -> None:
    assert "rediss://" in load_error({"GUARDQ_REDIS_TLS_CA_FILE": str(certs.cert)})
    assert "rediss://" in load_error({"GUARDQ_REDIS_TLS_VERIFY": "false"})
    # Defensive too: a plain connection class would refuse ssl_* keyword arguments.
    assert RedisSecurity(tls_ca_file=str(certs.cert)).connection_kwargs("redis://h:1/0") == {}


@pytest.mark.parametrize("env", ["GUARDQ_REDIS_TLS_VERIFY", "GUARDQ_GUARD_TLS_VERIFY"])
@pytest.mark.parametrize("raw", ["maybe", "2", ""])
def test_tls_verify_flags_are_booleans(env: str, raw: str) -> None:
    base = {"GUARDQ_REDIS_URL": "rediss://127.0.0.1:6380/0"}
    assert load_error(base | {env: raw}).startswith(f"{env}={raw!r}: must be true or false")


def test_redis_key_without_its_certificate_is_an_error(certs: Certs) -> None:
    env = {"GUARDQ_REDIS_URL": "rediss://h:6380/0", "GUARDQ_REDIS_TLS_KEY_FILE": str(certs.key)}
    assert "GUARDQ_REDIS_TLS_CERT_FILE" in load_error(env)


# -- guard ------------------------------------------------------------------------------------------


def test_guard_tls_defaults_verify_with_the_system_cas() -> None:
    settings = Settings.load({})
    assert settings.guard_tls_verify is True and settings.guard_ca_file is None
    backend = build_backend(settings)
    assert isinstance(backend, Qwen3GuardBackend)
    assert backend.ssl_context.verify_mode == ssl.CERT_REQUIRED and backend.ssl_context.check_hostname


def test_guard_tls_options_reach_the_backends_ssl_context(certs: Certs) -> None:
    env = {"GUARDQ_GUARD_URL": "https://127.0.0.1:8443/v1", "GUARDQ_GUARD_CA_FILE": str(certs.cert)}
    backend = build_backend(Settings.load(env))
    assert isinstance(backend, Qwen3GuardBackend)
    assert backend.ssl_context.get_ca_certs()[0]["subject"] == ((("commonName", "127.0.0.1"),),)
    unverified = build_backend(Settings.load(env | {"GUARDQ_GUARD_TLS_VERIFY": "false"}))
    assert isinstance(unverified, Qwen3GuardBackend)
    assert unverified.ssl_context.verify_mode == ssl.CERT_NONE
    assert not unverified.ssl_context.check_hostname


def test_guard_ca_file_needs_an_https_url_and_must_exist(certs: Certs, tmp_path: Path) -> None:
    assert "https://" in load_error({"GUARDQ_GUARD_CA_FILE": str(certs.cert)})
    missing = load_error(
        {"GUARDQ_GUARD_URL": "https://g/v1", "GUARDQ_GUARD_CA_FILE": str(tmp_path / "nope.pem")}
    )
    assert missing.startswith("GUARDQ_GUARD_CA_FILE=")


def test_guard_ca_file_that_is_not_pem_is_a_guard_configuration_error(certs: Certs) -> None:
    with pytest.raises(GuardConfigError, match="GUARDQ_GUARD_CA_FILE") as caught:
        tls_context(ca_file=str(certs.not_pem))
    assert caught.value.fatal


@pytest.fixture
async def https_guard(certs: Certs) -> AsyncIterator[str]:
    """The guard simulator served over TLS with the self-signed certificate; yields its /v1 URL."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certs.cert, certs.key)
    runner = web.AppRunner(build_app(SimConfig(port=0)), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


async def _moderate(settings: Settings) -> str:
    backend = build_backend(settings)
    async with asyncio.timeout(20):
        await backend.start()
        try:
            await backend.check()
            return (await backend.moderate(GuardRequest("How do I bake bread?"))).label
        finally:
            await backend.stop()


async def test_https_guard_is_trusted_with_its_ca_file_or_without_verification_and_refused_otherwise(
    https_guard: str, certs: Certs
) -> None:
    env = {"GUARDQ_GUARD_URL": https_guard, "GUARDQ_GUARD_TIMEOUT_S": "5"}
    assert await _moderate(Settings.load(env | {"GUARDQ_GUARD_CA_FILE": str(certs.cert)})) == "safe"
    assert await _moderate(Settings.load(env | {"GUARDQ_GUARD_TLS_VERIFY": "false"})) == "safe"
    with pytest.raises(GuardError) as caught:
        await _moderate(Settings.load(env))  # verification on, system CAs only: an unknown certificate
    message = str(caught.value)
    assert "\n" not in message and "certificate" in message.lower()
