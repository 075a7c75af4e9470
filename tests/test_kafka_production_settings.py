"""Kafka production settings: created topics get their configs (checked on tansu with DescribeConfigs), the
idempotent producer follows the broker (tansu grants no producer ids: auto is off, true refuses to start),
client.id, and OAUTHBEARER with a token read from a file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.conftest import SettingsFactory
from tests.helpers import run_guardq
from worker.config.settings import Settings, SettingsError
from worker.kafka import clients as kafka
from worker.kafka import connection

WEEK_MS = 7 * 24 * 3600 * 1000


async def described(settings: Settings, topics: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        answers = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        await admin.close()
    return {
        name: {entry[0]: entry[1] for entry in entries}
        for answer in answers
        for _code, _message, _type, name, entries in answer.resources
    }


@pytest.mark.integration
async def test_created_topics_keep_dead_letters_forever_and_retries_for_their_delay(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(retry_schedule="10s,1m", kafka_max_message_bytes=str(8 * 1024 * 1024))
    created = await run_guardq(settings, "topics", "create")
    assert created.returncode == 0, created.stderr
    configs = await described(settings, kafka.worker_topics(settings))
    assert configs[settings.dlq_topic]["retention.ms"] == "-1"
    assert configs[settings.parked_topic]["retention.ms"] == "-1"
    assert configs[settings.retry_topics[0]]["retention.ms"] == str(10_000 + WEEK_MS)
    assert configs[settings.retry_topics[1]]["retention.ms"] == str(60_000 + WEEK_MS)
    assert "retention.ms" not in configs[settings.input_topic], "the input topic keeps the broker's retention"
    assert {c["max.message.bytes"] for c in configs.values()} == {str(8 * 1024 * 1024)}


@pytest.mark.integration
async def test_a_dlq_retention_setting_reaches_the_created_topic(make_settings: SettingsFactory) -> None:
    settings = make_settings(dlq_retention="30d")
    await kafka.ensure_topics(settings)
    configs = await described(settings, [settings.dlq_topic])
    assert configs[settings.dlq_topic]["retention.ms"] == str(30 * 24 * 3600 * 1000)


@pytest.mark.integration
async def test_idempotence_auto_is_off_on_a_broker_without_producer_ids_and_true_refuses(
    make_settings: SettingsFactory,
) -> None:
    connection._granted.clear()
    assert await connection.idempotence(make_settings(kafka_idempotence="auto")) is False
    assert await connection.idempotence(make_settings(kafka_idempotence="false")) is False
    with pytest.raises(SettingsError, match="GUARDQ_KAFKA_IDEMPOTENCE=true but the broker does not grant"):
        await connection.idempotence(make_settings(kafka_idempotence="true"))
    # The producer built under auto works on this broker.
    producer = await kafka.producer_for(make_settings())
    await producer.start()
    await producer.stop()


def test_client_id_reaches_every_client() -> None:
    options = connection.connection_options(Settings.load({"GUARDQ_KAFKA_CLIENT_ID": "moderation-eu-1"}))
    assert options["client_id"] == "moderation-eu-1"
    assert connection.connection_options(Settings.load({}))["client_id"] == "guardq"


async def test_oauthbearer_reads_its_token_from_the_file_at_each_connection(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("eyJ-first\n")
    settings = Settings.load(
        {
            "GUARDQ_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "GUARDQ_KAFKA_SASL_MECHANISM": "oauthbearer",
            "GUARDQ_KAFKA_SASL_OAUTH_TOKEN_FILE": str(token),
        }
    )
    options = connection.connection_options(settings)
    assert options["sasl_mechanism"] == "OAUTHBEARER" and "sasl_plain_password" not in options
    provider = options["sasl_oauth_token_provider"]
    assert await provider.token() == "eyJ-first"
    token.write_text("eyJ-rotated")
    assert await provider.token() == "eyJ-rotated"
    token.write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        await asyncio.wait_for(provider.token(), timeout=5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"GUARDQ_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "GUARDQ_KAFKA_SASL_MECHANISM": "OAUTHBEARER"},
            "OAUTHBEARER needs GUARDQ_KAFKA_SASL_OAUTH_TOKEN_FILE",
        ),
        (
            {
                "GUARDQ_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "GUARDQ_KAFKA_SASL_MECHANISM": "PLAIN",
                "GUARDQ_KAFKA_SASL_USERNAME": "u",
                "GUARDQ_KAFKA_SASL_PASSWORD": "p",
                "GUARDQ_KAFKA_SASL_OAUTH_TOKEN_FILE": "{token}",
            },
            "GUARDQ_KAFKA_SASL_OAUTH_TOKEN_FILE needs OAUTHBEARER, not PLAIN",
        ),
        ({"GUARDQ_KAFKA_SASL_OAUTH_TOKEN_FILE": "{token}"}, "uses no SASL"),
        ({"GUARDQ_KAFKA_IDEMPOTENCE": "maybe"}, "must be auto"),
        ({"GUARDQ_DLQ_RETENTION": "a while"}, "not a duration"),
    ],
)
def test_inconsistent_kafka_settings_are_one_line_errors(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    with pytest.raises(SettingsError, match=message):
        Settings.load({name: value.replace("{token}", str(token)) for name, value in env.items()})
