"""A misconfigured guard (unknown model, rejected key) stops the worker instead of dead-lettering the backlog."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, publish, running_worker, settings_env, wait_for_verdicts
from worker.app import Worker
from worker.core.errors import GuardConfigError

pytestmark = pytest.mark.integration


async def test_unknown_guard_model_refuses_to_start_with_one_line_and_exit_code_3(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(guard_model="no/such-model")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "run",
        env=settings_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 3
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("guardq: guard configuration error: guard model 'no/such-model' is not served")


async def test_key_rejected_mid_run_stops_the_worker_without_dead_letters_or_commits(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings()
    async with running_worker(settings):
        await publish(settings, [{"id": "before", "text": "served before the key change"}])
        await wait_for_verdicts(settings, ["before"], timeout_s=30)
    await guard_sim.configure(api_key="rotated-key")  # the worker's (empty) key is now rejected: 401
    worker = Worker(settings)
    stop = asyncio.Event()
    run = asyncio.create_task(worker.run(stop))
    await publish(settings, [{"id": f"after{i}", "text": f"after the key change {i}"} for i in range(5)])
    with pytest.raises(GuardConfigError):
        await asyncio.wait_for(run, timeout=60)
    assert await collect(settings, settings.dlq_topic, count=1, timeout_s=2) == []
    # Once the key is fixed, a new worker moderates all five: nothing was committed past them.
    await guard_sim.configure(api_key=None)
    async with running_worker(settings):
        stored = await wait_for_verdicts(settings, [f"after{i}" for i in range(5)], timeout_s=60)
    assert len(stored) == 5
