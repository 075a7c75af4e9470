"""The simulated guard as an in-process aiohttp test server, and the requests the simulator tests send."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from worker.dev.sim.server import SimConfig, build_app

MODEL = SimConfig().model
MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """Start a simulator with the given knobs on a free 127.0.0.1 port; all are closed after the test."""
    clients: list[TestClient[Any, Any]] = []

    async def start(**knobs: Any) -> TestClient[Any, Any]:
        app = build_app(SimConfig(**knobs))
        # As `serve` runs it: no access log, and handlers of clients that hung up are cancelled.
        server = TestServer(app, host="127.0.0.1", access_log=None, handler_cancellation=True)
        client = TestClient(server)
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


def prompt(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def exchange(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


async def chat(client: TestClient[Any, Any], messages: list[dict[str, str]], **extra: Any) -> Any:
    body = {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 64, **extra}
    return await client.post("/v1/chat/completions", json=body)


async def verdict_text(client: TestClient[Any, Any], messages: list[dict[str, str]]) -> str:
    resp = await chat(client, messages)
    assert resp.status == 200
    body = await resp.json()
    return str(body["choices"][0]["message"]["content"])
