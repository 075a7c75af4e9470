"""Settings: documented defaults, one-line errors naming the variable, flags over env, secrets hidden."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from worker.config.settings import SPECS, Settings, SettingsError, add_flags, overrides_from
from worker.config.values import parse_duration_s

ROOT = Path(__file__).resolve().parent.parent

CONTRACT_DEFAULTS = {
    "GUARDQ_KAFKA_BOOTSTRAP": ("kafka_bootstrap", "127.0.0.1:9092"),
    "GUARDQ_REDIS_URL": ("redis_url", "redis://127.0.0.1:6379/0"),
    "GUARDQ_REDIS_PREFIX": ("redis_prefix", "guardq:"),
    "GUARDQ_GUARD_BACKEND": ("guard_backend", "qwen3guard"),
    "GUARDQ_GUARD_URL": ("guard_url", "http://127.0.0.1:8000/v1"),
    "GUARDQ_GUARD_MODEL": ("guard_model", "Qwen/Qwen3Guard-Gen-8B"),
    "GUARDQ_GUARD_API_KEY": ("guard_api_key", None),
    "GUARDQ_GUARD_TIMEOUT_S": ("guard_timeout_s", 30),
    "GUARDQ_INPUT_TOPIC": ("input_topic", "moderation.requests"),
    "GUARDQ_VERDICT_TOPIC": ("verdict_topic", "moderation.verdicts"),
    "GUARDQ_DLQ_TOPIC": ("dlq_topic", "moderation.dlq"),
    "GUARDQ_GROUP_ID": ("group_id", "guardq"),
    "GUARDQ_CONCURRENCY": ("concurrency", None),  # auto
    "GUARDQ_MAX_TEXT_CHARS": ("max_text_chars", 100_000),
    "GUARDQ_TOPIC_PARTITIONS": ("topic_partitions", 8),
    "GUARDQ_VERDICT_TTL_S": ("verdict_ttl_s", 604_800),
    "GUARDQ_SHUTDOWN_TIMEOUT_S": ("shutdown_timeout_s", 20),
    "GUARDQ_RETRY_SCHEDULE": ("retry_schedule", ("10s", "1m", "10m")),
    "GUARDQ_MAX_REPLAYS": ("max_replays", 3),
    "GUARDQ_HTTP_PORT": ("http_port", 8080),
    "GUARDQ_HEARTBEAT_S": ("heartbeat_s", 30),
    "GUARDQ_KAFKA_SECURITY_PROTOCOL": ("kafka_security_protocol", "PLAINTEXT"),
}


@pytest.mark.parametrize(("env", "expected"), CONTRACT_DEFAULTS.items(), ids=list(CONTRACT_DEFAULTS))
def test_default_matches_the_contract_table(env: str, expected: tuple[str, object]) -> None:
    field, value = expected
    assert getattr(Settings.load({}), field) == value
    assert next(spec for spec in SPECS if spec.env == env).field == field


def test_every_setting_has_a_guardq_variable_and_a_field() -> None:
    names = {field for field in Settings.__dataclass_fields__}
    assert {spec.field for spec in SPECS} == names
    assert all(spec.env.startswith("GUARDQ_") for spec in SPECS)


BAD_VALUES = [
    ("GUARDQ_KAFKA_BOOTSTRAP", "localhost"),
    ("GUARDQ_KAFKA_BOOTSTRAP", "host:port"),
    ("GUARDQ_KAFKA_BOOTSTRAP", "a:1,:2"),
    ("GUARDQ_REDIS_URL", "http://127.0.0.1:6379"),
    ("GUARDQ_REDIS_PREFIX", "  "),
    ("GUARDQ_GUARD_BACKEND", "openai"),
    ("GUARDQ_GUARD_URL", "127.0.0.1:8000/v1"),
    ("GUARDQ_GUARD_URL", "ftp://host/v1"),
    ("GUARDQ_GUARD_MODEL", ""),
    ("GUARDQ_GUARD_TIMEOUT_S", "0"),
    ("GUARDQ_GUARD_TIMEOUT_S", "-1"),
    ("GUARDQ_GUARD_TIMEOUT_S", "nan"),
    ("GUARDQ_GUARD_TIMEOUT_S", "inf"),
    ("GUARDQ_GUARD_TIMEOUT_S", "thirty"),
    ("GUARDQ_INPUT_TOPIC", "bad topic"),
    ("GUARDQ_VERDICT_TOPIC", ""),
    ("GUARDQ_DLQ_TOPIC", "t" * 201),
    ("GUARDQ_GROUP_ID", ""),
    ("GUARDQ_CONCURRENCY", "0"),
    ("GUARDQ_CONCURRENCY", "-4"),
    ("GUARDQ_CONCURRENCY", "2.5"),
    ("GUARDQ_CONCURRENCY", "many"),
    ("GUARDQ_MAX_TEXT_CHARS", "1e5"),
    ("GUARDQ_TOPIC_PARTITIONS", ""),
    ("GUARDQ_VERDICT_TTL_S", "7d"),
    ("GUARDQ_SHUTDOWN_TIMEOUT_S", "0"),
    ("GUARDQ_RETRY_SCHEDULE", ""),
    ("GUARDQ_RETRY_SCHEDULE", ",,"),
    ("GUARDQ_RETRY_SCHEDULE", "10"),
    ("GUARDQ_RETRY_SCHEDULE", "0s"),
    ("GUARDQ_RETRY_SCHEDULE", "1m,10s"),
    ("GUARDQ_RETRY_SCHEDULE", "10 s"),
    ("GUARDQ_RETRY_SCHEDULE", "1w"),
    ("GUARDQ_MAX_REPLAYS", "0"),
    ("GUARDQ_HTTP_PORT", "65536"),
    ("GUARDQ_HTTP_PORT", "-1"),
    ("GUARDQ_HTTP_PORT", "http"),
    ("GUARDQ_HEARTBEAT_S", "0"),
    ("GUARDQ_MAX_BUFFERED", "0"),
    ("GUARDQ_SESSION_TIMEOUT_S", "x"),
    ("GUARDQ_GUARD_ATTEMPTS", "0"),
    ("GUARDQ_KAFKA_SECURITY_PROTOCOL", "TLS"),
    ("GUARDQ_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),  # without mechanism, user and password
]


@pytest.mark.parametrize(("env", "raw"), BAD_VALUES)
def test_bad_value_is_a_one_line_error_naming_the_variable(env: str, raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.load({env: raw})
    message = str(caught.value)
    assert env in message
    assert "\n" not in message
    assert message.strip() == message


def test_same_topic_twice_is_an_error_naming_the_topic_variables() -> None:
    with pytest.raises(SettingsError, match="GUARDQ_INPUT_TOPIC") as caught:
        Settings.load({"GUARDQ_VERDICT_TOPIC": "moderation.requests"})
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("env", "raw"),
    [
        ("GUARDQ_REDIS_URL", "http://user:s3cr3t-redis@host:6379"),
        ("GUARDQ_GUARD_API_KEY", "s3cr3t-key"),
        ("GUARDQ_KAFKA_SASL_PASSWORD", "s3cr3t-pw"),
    ],
)
def test_secret_value_never_appears_in_an_error(env: str, raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The API key and password parse anything: make their parser fail to see what the error would show.
    spec = next(spec for spec in SPECS if spec.env == env)
    assert spec.secret or spec.url

    def refuse(value: str) -> str:
        raise ValueError("is not acceptable")

    if env != "GUARDQ_REDIS_URL":
        patched = tuple(replace(s, parse=refuse) if s is spec else s for s in SPECS)
        monkeypatch.setattr("worker.config.settings.SPECS", patched)
    with pytest.raises(SettingsError) as caught:
        Settings.load({env: raw})
    assert "s3cr3t" not in str(caught.value)
    assert env in str(caught.value)


def test_api_key_is_hidden_from_other_settings_errors_and_from_redacted() -> None:
    env = {"GUARDQ_GUARD_API_KEY": "sk-live-abcdef", "GUARDQ_CONCURRENCY": "zero"}
    with pytest.raises(SettingsError) as caught:
        Settings.load(env)
    assert "sk-live-abcdef" not in str(caught.value)
    shown = Settings.load({"GUARDQ_GUARD_API_KEY": "sk-live-abcdef"}).redacted()
    assert shown["guard_api_key"] == "<hidden>"
    assert "sk-live-abcdef" not in repr(shown)


def test_flag_overrides_environment() -> None:
    env = {"GUARDQ_CONCURRENCY": "4", "GUARDQ_INPUT_TOPIC": "from.env"}
    settings = Settings.load(env, {"concurrency": "9", "input_topic": None})
    assert settings.concurrency == 9
    assert settings.input_topic == "from.env"


def test_command_line_flags_reach_settings_through_argparse() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    args = parser.parse_args(["--concurrency", "7", "--retry-schedule", "1s,5s", "--guard-timeout-s", "2.5"])
    settings = Settings.load({"GUARDQ_CONCURRENCY": "3"}, overrides_from(args))
    assert settings.concurrency == 7
    assert settings.retry_schedule == ("1s", "5s")
    assert settings.guard_timeout_s == 2.5


def test_bad_flag_value_names_the_flag_the_user_typed() -> None:
    with pytest.raises(SettingsError, match=r"^--http-port='99999': must be a port"):
        Settings.load({"GUARDQ_HTTP_PORT": "8080"}, {"http_port": "99999"})
    with pytest.raises(SettingsError, match=r"^GUARDQ_HTTP_PORT='99999': must be a port"):
        Settings.load({"GUARDQ_HTTP_PORT": "99999"})


def test_retry_topics_are_named_after_the_input_topic_and_delay() -> None:
    settings = Settings.load({"GUARDQ_INPUT_TOPIC": "mod.in"})
    assert settings.retry_topics == ("mod.in.retry.10s", "mod.in.retry.1m", "mod.in.retry.10m")


def test_retry_schedule_ignores_blanks_and_keeps_equal_delays() -> None:
    settings = Settings.load({"GUARDQ_RETRY_SCHEDULE": " 250ms, 1s ,1s,"})
    assert settings.retry_schedule == ("250ms", "1s", "1s")


@pytest.mark.parametrize(("raw", "seconds"), [("250ms", 0.25), ("10s", 10), ("1m", 60), ("2h", 7200)])
def test_duration_units(raw: str, seconds: float) -> None:
    assert parse_duration_s(raw) == pytest.approx(seconds)


def test_security_protocol_is_case_insensitive_and_sasl_needs_credentials() -> None:
    assert Settings.load({"GUARDQ_KAFKA_SECURITY_PROTOCOL": "ssl"}).kafka_security_protocol == "SSL"
    sasl = Settings.load(
        {
            "GUARDQ_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "GUARDQ_KAFKA_SASL_MECHANISM": "PLAIN",
            "GUARDQ_KAFKA_SASL_USERNAME": "u",
            "GUARDQ_KAFKA_SASL_PASSWORD": "p",
        }
    )
    assert sasl.kafka_sasl_mechanism == "PLAIN"


def test_guard_url_trailing_slash_is_dropped() -> None:
    assert Settings.load({"GUARDQ_GUARD_URL": "https://guard.example/v1/"}).guard_url == (
        "https://guard.example/v1"
    )


def test_guardq_run_with_a_bad_value_exits_2_with_one_line_on_stderr() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GUARDQ_")}
    env["GUARDQ_CONCURRENCY"] = "lots"
    completed = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert "GUARDQ_CONCURRENCY" in lines[0]
    assert completed.stdout == ""


def test_a_child_process_gets_each_setting_the_parent_left_unset() -> None:
    """A value meaning "unset" where the default is set (``GUARDQ_KAFKA_COMPRESSION=none``) reaches a
    child process (the bench's workers, the chaos soak's) as the same setting."""
    checked = []
    for spec in SPECS:
        for spelling in ("auto", "none", ""):
            try:
                unset = spec.parse(spelling) is None and spec.parse(spec.default) is not None
            except ValueError:
                continue
            if unset:
                parent = Settings.load({spec.env: spelling})
                assert getattr(Settings.load(parent.child_env({})), spec.field) is None, spec.env
                checked.append(spec.env)
    assert "GUARDQ_KAFKA_COMPRESSION" in checked
