"""The habits of the `guardq` command: --version, usage on a bare call, help that lists each command's own
settings with defaults and variables, no secret flags, secrets from *_FILE variables, GUARDQ_LOG_LEVEL,
`guardq config`, --json outputs, and the exit-code table (publish, tail interrupted)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import run_guardq, settings_env
from worker import __version__
from worker.cli.main import build_parser
from worker.config.settings import SPECS, Settings, SettingsError


def guardq(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env if env is not None else dict(os.environ),
    )


def subcommand_parsers() -> dict[str, object]:
    """Every subcommand's parser by name (``dlq list`` and friends included)."""
    import argparse

    found: dict[str, object] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found[f"{prefix}{name}"] = child
                    walk(child, f"{prefix}{name} ")

    walk(build_parser(), "")
    return found


def test_version_and_usage_on_a_bare_call() -> None:
    version = guardq("--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"guardq {__version__}")
    bare = guardq()
    assert bare.returncode == 2
    assert "usage: guardq" in bare.stderr and "publish" in bare.stderr and "Exit codes" in bare.stderr


def test_help_lists_only_the_commands_settings_with_defaults_and_variables() -> None:
    run_help = guardq("run", "--help").stdout
    assert "(default: auto; env GUARDQ_CONCURRENCY)" in " ".join(run_help.split())
    assert "--guard-timeout-s SECONDS" in run_help
    publish_help = guardq("publish", "--help").stdout
    assert "--kafka-bootstrap" in publish_help and "GUARDQ_KAFKA_BOOTSTRAP" in publish_help
    for unused in ("--redis-tls-ca-file", "--concurrency", "--guard-url", "--redis-url"):
        assert unused not in publish_help, unused


def test_no_command_takes_a_secret_as_a_flag() -> None:
    secrets = {spec.flag for spec in SPECS if spec.secret}
    assert {"--guard-api-key", "--kafka-sasl-password", "--redis-password"} <= secrets
    for name, parser in subcommand_parsers().items():
        flags = {flag for action in parser._actions for flag in action.option_strings}  # type: ignore[attr-defined]
        assert not flags & secrets, f"guardq {name} takes {flags & secrets}"
    refused = guardq("run", "--guard-api-key", "sk-123")
    assert refused.returncode == 2 and "unrecognized arguments: --guard-api-key" in refused.stderr
    in_url = guardq("config", "--redis-url", "redis://:hunter2@127.0.0.1:6379/0")
    assert in_url.returncode == 2 and "--redis-url carries a password" in in_url.stderr
    assert "hunter2" not in in_url.stderr


def test_secrets_are_read_from_file_variables(tmp_path: Path) -> None:
    key = tmp_path / "guard-key"
    key.write_text("sk-from-a-file\n")
    settings = Settings.load({"GUARDQ_GUARD_API_KEY_FILE": str(key)})
    assert settings.guard_api_key == "sk-from-a-file"
    with pytest.raises(
        SettingsError, match=r"^set GUARDQ_GUARD_API_KEY or GUARDQ_GUARD_API_KEY_FILE, not both"
    ):
        Settings.load({"GUARDQ_GUARD_API_KEY_FILE": str(key), "GUARDQ_GUARD_API_KEY": "sk-env"})
    with pytest.raises(SettingsError, match=r"^GUARDQ_REDIS_PASSWORD_FILE='/nonexistent/pw': cannot read"):
        Settings.load({"GUARDQ_REDIS_PASSWORD_FILE": "/nonexistent/pw"})
    huge = tmp_path / "huge"
    huge.write_text("x" * 100_000)
    with pytest.raises(SettingsError, match="longer than 65536 characters"):
        Settings.load({"GUARDQ_GUARD_API_KEY_FILE": str(huge)})
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SettingsError, match="cannot read the file"):
        Settings.load({"GUARDQ_GUARD_API_KEY_FILE": str(binary)})
    shown = guardq("config", "--json", env=dict(os.environ) | {"GUARDQ_GUARD_API_KEY_FILE": str(key)})
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["guard_api_key"] == "<hidden>"
    assert "sk-from-a-file" not in shown.stdout


def test_log_level_is_a_setting_in_any_case() -> None:
    assert Settings.load({"GUARDQ_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    assert Settings.load({}, {"log_level": "Warning"}).log_level == "WARNING"
    with pytest.raises(SettingsError, match=r"^GUARDQ_LOG_LEVEL='loud': must be one of DEBUG, INFO"):
        Settings.load({"GUARDQ_LOG_LEVEL": "loud"})


def test_config_prints_the_effective_settings_naming_what_was_set() -> None:
    env = dict(os.environ) | {"GUARDQ_CONCURRENCY": "12", "GUARDQ_REDIS_URL": "redis://u:pw-123@h:6379/0"}
    shown = guardq("config", "--input-topic", "from.flag", env=env)
    assert shown.returncode == 0, shown.stderr
    lines = dict(line.split(None, 1) for line in shown.stdout.splitlines() if " " in line.strip())
    assert lines["GUARDQ_CONCURRENCY"].strip() == "12"
    assert lines["GUARDQ_INPUT_TOPIC"].strip() == "from.flag"
    assert lines["GUARDQ_REDIS_URL"].strip() == "redis://u:***@h:6379/0"
    bad = guardq("config", "--concurrency", "0", env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "guardq: error: --concurrency='0': must be a positive integer or 'auto'"


@pytest.mark.integration
async def test_publish_exits_0_when_every_line_is_sent_and_reports_json(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    topics = await run_guardq(settings, "topics", "create", "--json")
    assert topics.returncode == 0, topics.stderr
    states = {entry["topic"]: entry["state"] for entry in json.loads(topics.stdout)}
    assert states[settings.dlq_topic] == "created" and settings.parked_topic in states
    lines = b"".join(b'{"id": "p%d", "text": "line %d"}\n' % (n, n) for n in range(2500))
    published = await run_guardq(settings, "publish", "--json", "-", stdin=lines)
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout) == {"topic": settings.input_topic, "published": 2500, "skipped": 0}


@pytest.mark.integration
async def test_tail_interrupted_exits_130(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    await run_guardq(settings, "topics", "create")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "tail",
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    started = await asyncio.wait_for(process.stderr.readline(), timeout=30)
    assert b"following" in started, started
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), timeout=30) == 130


def test_a_password_in_a_redis_url_query_is_masked_and_refused_as_a_flag() -> None:
    env = dict(os.environ) | {"GUARDQ_REDIS_URL": "redis://h:6379/0?password=q-secret-1"}
    shown = guardq("config", env=env)
    assert shown.returncode == 0 and "q-secret-1" not in shown.stdout
    assert "password=***" in shown.stdout
    refused = guardq("config", "--redis-url", "redis://h:6379/0?password=q-secret-1")
    assert refused.returncode == 2 and "carries a password" in refused.stderr
    assert "q-secret-1" not in refused.stderr


def test_a_child_process_gets_a_file_secret_as_its_value(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-child-1\n")
    parent_env = {"GUARDQ_GUARD_API_KEY_FILE": str(key)}
    child = Settings.load(parent_env).child_env(parent_env)
    assert "GUARDQ_GUARD_API_KEY_FILE" not in child
    assert Settings.load(child).guard_api_key == "sk-child-1"
