"""A simulated guard server speaking vLLM's OpenAI-compatible wire format, for tests, benchmarks and local
development. It serves every backend's format at once: ``/v1/chat/completions`` answers as Qwen3Guard-Gen
for ``model`` and as Llama Guard for ``llamaguard_model``; ``/v1/moderations`` answers OpenAI-style
moderation results for ``moderation_model`` (one result per input; one request is one call).

Verdicts come from keywords (``verdicts``); latency, capacity queueing and faults (503, 429, resets, hangs,
garbage and truncated replies, context overflow) are driven by ``SimConfig`` knobs, a seeded RNG, and
in-text markers such as ``[[sim:503x2]]``. ``/sim/stats``, ``/sim/reset`` and ``/sim/config`` inspect and
steer a running server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import struct
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress

from aiohttp import web
from aiohttp.typedefs import Handler

from worker.dev.sim.config import (
    SimConfig,
    SimConfigError,
    apply_update,
    config_from_args,
    configure_parser,
)
from worker.dev.sim.faults import FaultKind, SimState, content_key, sample_latency_s
from worker.dev.sim.requests import (
    INVALID_REQUEST,
    ApiError,
    Chat,
    bad_request,
    error_response,
    overflow_error,
    parse_chat,
    parse_moderation,
)
from worker.dev.sim.verdicts import (
    classify,
    estimate_completion_tokens,
    estimate_prompt_tokens,
    llamaguard_reply,
    moderation_result,
)
from worker.ops import eventloop

__all__ = ["SIM_STATE", "SimConfig", "build_app", "classify", "configure_parser", "run_from_args", "serve"]

SIM_STATE = web.AppKey("guard_sim_state", SimState)

# A reply a confused model might give: valid JSON, HTTP 200, but no "Safety:" line to parse.
GARBAGE_TEXT = "I am not sure how to assess this conversation."


def _completion(chat: Chat, text: str, finish_reason: str, completion_tokens: int) -> web.Response:
    """A vLLM chat completion body around one assistant reply."""
    prompt_tokens = estimate_prompt_tokens(chat.messages)
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text, "tool_calls": []},
        "logprobs": None,
        "finish_reason": finish_reason,
        "stop_reason": None,
    }
    usage = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": chat.model,
        "choices": [choice],
        "usage": usage,
    }
    return web.json_response(body)


async def _flood(request: web.Request, megabytes: int) -> web.StreamResponse:
    """A 200 whose body never ends where a verdict would: ``megabytes`` MiB streamed without a length."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    await response.prepare(request)
    chunk = b" " * (1024 * 1024)
    with suppress(ConnectionResetError):  # the client may stop reading, as it should
        for _ in range(megabytes):
            await response.write(chunk)
        await response.write_eof()
    return response


def _reply(state: SimState, chat: Chat, fault: FaultKind | None) -> web.Response:
    """The 200 reply: a verdict, or the garbage / truncated / echoed reply a fault asks for."""
    if fault == "garbage":
        return _completion(chat, GARBAGE_TEXT, "stop", estimate_completion_tokens(GARBAGE_TEXT))
    if fault == "echo":
        echoed = chat.messages[-1]["content"]
        return _completion(chat, echoed, "stop", estimate_completion_tokens(echoed))
    config = state.config
    if chat.model == config.llamaguard_model:
        text = llamaguard_reply(chat.messages, config.flip_share)
    else:
        text = classify(chat.messages, config.flip_share)
    if fault == "length":
        # Cut mid-reply, as a too-small max_tokens would; the client must not trust what is left.
        return _completion(chat, text[: len(text) // 2], "length", chat.max_tokens)
    state.stats.verdicts += 1
    return _completion(chat, text, "stop", estimate_completion_tokens(text))


def _drop_connection(request: web.Request) -> None:
    """Close the connection without a response; SO_LINGER 0 makes it a TCP reset, as a gateway's would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Not a TCP socket, or already gone: a plain close still drops the call.
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _gateway_rejection(state: SimState, fault: FaultKind | None) -> ApiError | None:
    """The error reply of an injected gateway-style fault (503, 429, 400, redirect), or None."""
    if fault == "503":
        return ApiError(503, "ServiceUnavailableError", "Service Unavailable", "503")
    if fault == "429":
        retry_after = f"{state.config.retry_after_s:g}"
        return ApiError(429, "RateLimitError", "Too Many Requests", "429", {"Retry-After": retry_after})
    if fault == "400":
        return ApiError(400, "BadRequestError", INVALID_REQUEST, "400")
    if fault == "redirect":
        headers = {"Location": state.config.redirect_url}
        return ApiError(307, "TemporaryRedirect", "moved", "redirect", headers)
    return None


def _rejection(state: SimState, chat: Chat, fault: FaultKind | None) -> ApiError | None:
    """The error reply for this call (an injected fault, or a real context overflow), or None to process it.

    Gateway-style faults (503, 429) come first: a gateway answers before vLLM validates anything.
    """
    error = _gateway_rejection(state, fault)
    if error is not None:
        return error
    prompt_tokens = estimate_prompt_tokens(chat.messages)
    if fault == "overflow" or prompt_tokens + chat.max_tokens > state.config.max_model_len:
        return overflow_error(state.config, prompt_tokens, chat.max_tokens)
    return None


async def _process(state: SimState, request: web.Request) -> web.StreamResponse:
    """One chat call: validate, maybe inject a fault, queue for capacity, sleep the latency, reply."""
    chat = await parse_chat(request, state.config)
    content = chat.messages[-1]["content"]
    key = content_key(content)
    state.stats.record_call(key, request.headers.get("traceparent"))
    fault = state.decide_fault(key, content)
    if fault == "reset":
        state.stats.faults["reset"] += 1
        _drop_connection(request)
        return web.Response(status=499)  # never sent: the transport is gone
    error = _rejection(state, chat, fault)
    if error is not None:
        raise error
    early = await _serve_time(state, request, fault, content)
    return early if early is not None else _reply(state, chat, fault)


async def _serve_time(
    state: SimState, request: web.Request, fault: FaultKind | None, content: str
) -> web.StreamResponse | None:
    """Count the fault, then spend the call's time: a hang, a flood (returned), a refusal above capacity,
    or the latency in a capacity slot."""
    if fault is not None:
        state.stats.faults[fault] += 1
    if fault == "hang":
        await asyncio.sleep(state.config.hang_s)
    if fault == "flood":
        return await _flood(request, state.config.flood_mb)
    if state.config.reject_above_capacity and not state.gate.has_room():
        raise ApiError(429, "RateLimitError", "Too Many Requests", "overload")
    # Sampled on arrival, before queueing, so a sequential run draws the same latencies every time.
    latency_s = sample_latency_s(state.config, state.rng, content)
    await state.gate.acquire()
    try:
        await asyncio.sleep(latency_s)
    finally:
        state.gate.release()
    return None


async def _moderate(state: SimState, request: web.Request) -> web.StreamResponse:
    """One moderation request: every input counts as a call; the first input's fault that concerns the
    whole request (gateway faults, reset, hang, flood) applies to it, while garbage gives only that input
    a malformed result and echo leaves its result out (a count mismatch)."""
    texts = await parse_moderation(request, state.config)
    faults = []
    for text in texts:
        key = content_key(text)
        state.stats.record_call(key, request.headers.get("traceparent"))
        faults.append(state.decide_fault(key, text))
    whole = next((f for f in faults if f not in (None, "garbage", "echo", "length")), None)
    if whole == "reset":
        state.stats.faults["reset"] += 1
        _drop_connection(request)
        return web.Response(status=499)
    error = _gateway_rejection(state, whole)
    if error is None and whole == "overflow":
        error = bad_request("This model's maximum context length is exceeded by an input")
    if error is not None:
        raise error
    early = await _serve_time(state, request, whole, texts[0])
    if early is not None:
        return early
    config = state.config
    results: list[object] = []
    for text, fault in zip(texts, faults, strict=True):
        if fault in ("garbage", "length"):
            state.stats.faults[fault] += 1
            results.append({"flagged": "maybe", "categories": None})
        elif fault == "echo":
            state.stats.faults[fault] += 1
        else:
            state.stats.verdicts += 1
            results.append(moderation_result(text, config.flip_share))
    body = {"id": f"modr-{uuid.uuid4().hex}", "model": config.moderation_model, "results": results}
    return web.json_response(body)


async def _answer(
    request: web.Request, process: Callable[[SimState, web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    state.stats.request_started()
    try:
        return await process(state, request)
    except ApiError as error:
        state.stats.faults[error.fault] += 1
        return error_response(state.config, error)
    finally:
        # Looked up again: a /sim/reset during this call swapped in fresh counters.
        request.app[SIM_STATE].stats.request_finished()


async def _moderations(request: web.Request) -> web.StreamResponse:
    """``POST /v1/moderations``."""
    return await _answer(request, _moderate)


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    return await _answer(request, _process)


async def _models(request: web.Request) -> web.Response:
    """``GET /v1/models``: the chat models served, with their context window."""
    config = request.app[SIM_STATE].config
    cards = [
        {
            "id": model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": model,
            "parent": None,
            "max_model_len": config.max_model_len,
        }
        for model in (config.model, config.llamaguard_model)
        if not config.loading
    ]
    return web.json_response({"object": "list", "data": cards})


async def _health(request: web.Request) -> web.Response:
    """``GET /health``: 200 with an empty body, or 503 while the ``unhealthy`` knob is on."""
    return web.Response(status=503 if request.app[SIM_STATE].config.unhealthy else 200)


async def _stats(request: web.Request) -> web.Response:
    """``GET /sim/stats``; ``?brief=1`` leaves out the per-content maps (cheap enough to poll)."""
    state = request.app[SIM_STATE]
    brief = request.query.get("brief") == "1"
    return web.json_response(state.stats.to_json(state.gate.max_active, brief=brief))


async def _reset(request: web.Request) -> web.Response:
    """``POST /sim/reset``: zero the counters and marker counts; answers the fresh stats."""
    state = request.app[SIM_STATE]
    state.reset()
    return web.json_response(state.stats.to_json(state.gate.max_active))


async def _update_config(request: web.Request) -> web.Response:
    """``POST /sim/config``: apply a partial object of knobs, all or nothing; answers the live config."""
    state = request.app[SIM_STATE]
    old_seed = state.config.seed
    try:
        patch = await request.json()
        if not isinstance(patch, dict):
            raise SimConfigError("the body must be a JSON object of knobs")
        apply_update(state.config, patch)
    except (json.JSONDecodeError, UnicodeDecodeError, SimConfigError) as exc:
        message = str(exc) if isinstance(exc, SimConfigError) else "The request body is not valid JSON"
        return error_response(state.config, bad_request(message))
    if state.config.seed != old_seed:
        state.rng.seed(state.config.seed)
    state.gate.admit()  # capacity may have grown: let queued calls in now
    return web.json_response(state.config.to_json())


async def _show_config(request: web.Request) -> web.Response:
    """``GET /sim/config``: the live config."""
    return web.json_response(request.app[SIM_STATE].config.to_json())


@web.middleware
async def _require_api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Like vLLM's ``--api-key``: only ``/v1`` routes need ``Authorization: Bearer KEY``."""
    state = request.app[SIM_STATE]
    api_key = state.config.api_key
    protected = api_key is not None and request.path.startswith("/v1")
    if protected and request.headers.get("Authorization") != f"Bearer {api_key}":
        state.stats.faults["unauthorized"] += 1
        return web.json_response({"error": "Unauthorized"}, status=401)
    return await handler(request)


def build_app(config: SimConfig) -> web.Application:
    """The simulator's aiohttp application; ``config`` stays live (``POST /sim/config`` mutates it)."""
    config.validate()
    app = web.Application(middlewares=[_require_api_key])
    app[SIM_STATE] = SimState(config)
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/moderations", _moderations)
    app.router.add_get("/health", _health)
    app.router.add_get("/sim/stats", _stats)
    app.router.add_post("/sim/reset", _reset)
    app.router.add_get("/sim/config", _show_config)
    app.router.add_post("/sim/config", _update_config)
    return app


async def serve(config: SimConfig, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set, printing the one ``guard-sim listening on ...`` line once bound."""
    # No access log (it would swamp benchmarks); cancel handlers of clients that hung up, so a hang
    # fault does not outlive its caller; do not wait long for in-flight calls on shutdown.
    runner = web.AppRunner(
        build_app(config), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        port = runner.addresses[0][1]
        host = f"[{config.host}]" if ":" in config.host else config.host
        print(f"guard-sim listening on http://{host}:{port}/v1", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


async def _serve_until_signal(config: SimConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await serve(config, stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def run_from_args(args: argparse.Namespace) -> int:
    """Run the simulator described by ``configure_parser`` flags until SIGINT/SIGTERM; returns 0."""
    try:
        config = config_from_args(args)
    except SimConfigError as exc:
        print(f"guard-sim: {exc}", file=sys.stderr)
        return 2
    eventloop.run(_serve_until_signal(config))
    return 0
