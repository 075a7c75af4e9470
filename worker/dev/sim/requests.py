"""What the simulated guard reads from a request (a chat completion, a moderation) and the OpenAI-style
errors it answers with: a malformed request, an unknown model, a prompt over the context window."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from worker.dev.sim.config import SimConfig

INVALID_REQUEST = "invalid request"
DEFAULT_MAX_TOKENS = 128


class ApiError(Exception):
    """An OpenAI-style error reply; ``fault`` is the key it is counted under in ``/sim/stats``."""

    def __init__(
        self, status: int, error_type: str, message: str, fault: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.fault = fault
        self.headers = headers or {}


@dataclass(frozen=True)
class Chat:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int


def error_response(config: SimConfig, error: ApiError) -> web.Response:
    """The error body in the configured shape: nested (vLLM >= 0.10.1) or flat (older vLLM)."""
    detail = {"message": error.message, "type": error.error_type, "param": None, "code": error.status}
    body = {"error": detail} if config.error_shape == "nested" else {"object": "error", **detail}
    return web.json_response(body, status=error.status, headers=error.headers)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequestError", message, "bad_request")


def overflow_error(config: SimConfig, prompt_tokens: int, max_tokens: int) -> ApiError:
    # A forced overflow still reports numbers that exceed the window, as a real one would.
    prompt_tokens = max(prompt_tokens, config.max_model_len - max_tokens + 1)
    message = (
        f"This model's maximum context length is {config.max_model_len} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
        "completion). Please reduce the length of the messages or completion."
    )
    return ApiError(400, "BadRequestError", message, "overflow")


def parse_messages(raw: object) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise bad_request("'messages' must be a non-empty list")
    messages: list[dict[str, str]] = []
    for item in raw:
        if not isinstance(item, dict):
            raise bad_request("each message must be an object")
        role, content = item.get("role"), item.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise bad_request("each message needs a string 'role' and a string 'content'")
        messages.append({"role": role, "content": content})
    return messages


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 as vLLM gives it."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad_request("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object")
    return body


async def parse_chat(request: web.Request, config: SimConfig) -> Chat:
    """Validate a chat completion request the way vLLM does: body first (400), then the model (404)."""
    body = await json_object(request)
    messages = parse_messages(body.get("messages"))
    # vLLM serves its (only) model when the request names none.
    model = body.get("model") or config.model
    max_tokens = body.get("max_tokens")
    max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    if not isinstance(model, str):
        raise bad_request("'model' must be a string")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise bad_request("'max_tokens' must be a positive integer")
    if model not in (config.model, config.llamaguard_model) or config.loading:
        raise not_found(model)
    return Chat(model, messages, max_tokens)


def not_found(model: str) -> ApiError:
    return ApiError(404, "NotFoundError", f"The model `{model}` does not exist.", "model_not_found")


async def parse_moderation(request: web.Request, config: SimConfig) -> list[str]:
    """The texts of a moderation request (``input``: a string, or a list of strings or text parts)."""
    body = await json_object(request)
    model = body.get("model") or config.moderation_model
    if model != config.moderation_model or config.loading:
        raise not_found(model if isinstance(model, str) else repr(model))
    raw = body.get("input")
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise bad_request("'input' must be a string or a non-empty list")
    texts: list[str] = []
    for item in items:
        if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
            item = item["text"]
        if not isinstance(item, str):
            raise bad_request("each input must be a string or a text part")
        texts.append(item)
    return texts
