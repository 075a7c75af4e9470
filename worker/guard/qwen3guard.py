"""The Qwen3Guard-Gen backend: chat completions on vLLM or SGLang, answered in ``Safety:`` /
``Categories:`` / ``Refusal:`` lines. Parsing is pure code in ``qwen3guard_parse``; the HTTP side is
``worker.guard.http``.
"""

from __future__ import annotations

import logging

from worker.core.guard_types import GuardRequest, GuardVerdict, Kind
from worker.guard.chat import ChatBackend
from worker.guard.qwen3guard_parse import escape_frame, parse_guard_output, unknown_categories

__all__ = ["Qwen3GuardBackend", "build_messages"]

log = logging.getLogger(__name__)


def build_messages(request: GuardRequest) -> list[dict[str, str]]:
    """The chat messages for one request; no system prompt, the guard's chat template supplies it. Control
    tokens and the template's frame markers in the texts are escaped (``escape_frame``)."""
    text = escape_frame(request.text)
    if request.kind == "prompt":
        return [{"role": "user", "content": text}]
    # Response moderation needs a user turn; a response without its prompt is judged on its own.
    prompt = escape_frame(request.prompt or "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]


class Qwen3GuardBackend(ChatBackend):
    """Moderates through Qwen3Guard-Gen behind an OpenAI-compatible server."""

    def messages(self, request: GuardRequest) -> list[dict[str, str]]:
        return build_messages(request)

    def verdict(self, content: str, kind: Kind) -> GuardVerdict:
        label, categories, refusal = parse_guard_output(content, kind)
        if unknown := unknown_categories(categories):
            log.warning("guard named categories outside Qwen3Guard's list, kept as given: %s", unknown)
        return GuardVerdict(label=label, categories=categories, refusal=refusal, model=self.model)
