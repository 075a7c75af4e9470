"""The Llama Guard backend (Llama Guard 3/4 on vLLM): chat completions with the shapes Qwen3Guard gets,
answered ``safe`` or ``unsafe`` plus a line of hazard codes, reported by name. Llama Guard never says
``controversial`` and cannot tell a refusal (``refusal`` is None)."""

from __future__ import annotations

from worker.core.guard_types import GuardRequest, GuardVerdict, Kind
from worker.guard.chat import ChatBackend
from worker.guard.llamaguard_parse import escape_llamaguard, parse_llamaguard_output


class LlamaGuardBackend(ChatBackend):
    """Moderates through Llama Guard behind an OpenAI-compatible server."""

    def messages(self, request: GuardRequest) -> list[dict[str, str]]:
        text = escape_llamaguard(request.text)
        if request.kind == "prompt":
            return [{"role": "user", "content": text}]
        prompt = escape_llamaguard(request.prompt or "")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]

    def verdict(self, content: str, kind: Kind) -> GuardVerdict:
        label, categories = parse_llamaguard_output(content)
        return GuardVerdict(label=label, categories=categories, refusal=None, model=self.model)
