"""The README's `worker.client` examples, run as they are written (configured only by GUARDQ_* variables)
against tansu, Redis, the simulator and a running worker."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import running_worker, settings_env

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parent.parent / "README.md"


def example(name: str) -> str:
    """The Python block that follows ``<!-- example: NAME -->`` in the README."""
    found = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert found, f"the README has no example {name!r}"
    return found.group(1)


async def test_the_moderate_and_consume_examples_print_the_verdict(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    env = settings_env(settings)
    async with running_worker(settings):
        moderated = await asyncio.create_subprocess_exec(
            sys.executable, "-c", example("moderate"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await asyncio.wait_for(moderated.communicate(), timeout=60)
    assert moderated.returncode == 0, err.decode()[-2000:]
    message_id, action, label, *_ = out.decode().split()
    assert (action, label) == ("allow", "safe")

    consumer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", example("consume"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert consumer.stdout is not None
        line = await asyncio.wait_for(consumer.stdout.readline(), timeout=60)
        assert line.decode().split() == [message_id, "allow", "final"], line
    finally:
        consumer.kill()  # the example consumes forever: stopped by the PID this test started
        await consumer.wait()
