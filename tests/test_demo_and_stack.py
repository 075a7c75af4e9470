"""The first-run experience: `guardq demo` end to end, and `guardq stack up|status|down`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from worker.dev import stack

pytestmark = pytest.mark.integration


def _guardq(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_demo_moderates_the_sample_set_and_leaves_nothing_behind(redis_url: str) -> None:
    result = _guardq("demo", "--redis-url", redis_url)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["verdicts", "270"] for line in lines), result.stdout
    assert any(line.split()[:3] == ["dead", "letters", "8"] for line in lines), result.stdout
    assert any(line.split()[:2] == ["unsafe", "75"] for line in lines), result.stdout
    assert "offensive-language classifier, not a full safety model" in result.stdout
    assert "INCOMPLETE" not in result.stdout
    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter(match="guardq-demo-*", count=1000)) == []
    finally:
        client.close()


def test_stack_up_status_down_manages_only_what_it_started(tmp_path: Path, redis_url: str) -> None:
    port = stack.free_port()
    env = {"GUARDQ_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "GUARDQ_REDIS_URL": redis_url}
    directory = str(tmp_path / "stack")
    up = _guardq("stack", "up", "--dir", directory, env=env)
    assert up.returncode == 0, up.stderr
    assert f"tansu started on 127.0.0.1:{port}" in up.stdout
    assert "redis: already answering" in up.stdout  # the shared Redis is used, not replaced
    state = stack.StackState.load(Path(directory))
    assert state is not None and state.broker_pid is not None and state.redis_pid is None
    try:
        status = _guardq("stack", "status", "--dir", directory, env=env)
        assert status.stdout.splitlines()[0].split()[2] == "up", status.stdout
        assert status.returncode == 0
    finally:
        down = _guardq("stack", "down", "--dir", directory, env=env)
    assert f"broker: stopped (pid {state.broker_pid})" in down.stdout
    deadline = time.monotonic() + 10
    while stack.port_open("127.0.0.1", port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not stack.port_open("127.0.0.1", port), "the broker still listens after stack down"
    status = _guardq("stack", "status", "--dir", directory, env=env)
    assert status.returncode == 1 and status.stdout.splitlines()[0].split()[2] == "down", status.stdout
    assert stack.redis_reachable(redis_url), "stack down must not stop a Redis it did not start"
