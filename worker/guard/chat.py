"""Guards that answer through chat completions (Qwen3Guard-Gen, Llama Guard): one user turn for a
prompt, user and assistant turns for a response, ``temperature`` 0, a short ``max_tokens``; the reply's
text is the verdict. Subclasses say how to frame the texts and how to read the reply.
"""

from __future__ import annotations

from typing import Final

from worker.core.errors import GuardBadReply
from worker.core.guard_types import GuardRequest, GuardVerdict, Kind
from worker.guard.http import MAX_REPLY_BYTES, GuardHttp, scrub_input
from worker.guard.wire import reply_content

# A verdict is a few short lines; 128 tokens leaves room without letting a confused model ramble.
MAX_TOKENS: Final = 128


class ChatBackend(GuardHttp):
    """``moderate`` over ``POST /chat/completions``; ``messages`` and ``verdict`` are the model's own."""

    def messages(self, request: GuardRequest) -> list[dict[str, str]]:
        """The chat turns sent for ``request``, its texts escaped for the model's template."""
        raise NotImplementedError

    def verdict(self, content: str, kind: Kind) -> GuardVerdict:
        """The verdict the reply text states; ``GuardBadReply`` when it states none clearly."""
        raise NotImplementedError

    async def moderate(self, request: GuardRequest) -> GuardVerdict:
        """Moderate one prompt or response; raises a ``GuardError`` subclass on failure."""
        messages = self.messages(request)
        payload = {
            "model": self._model,
            "messages": messages,
            "temperature": 0,
            "max_tokens": MAX_TOKENS,
        }
        status, headers, body, whole = await self._call("POST", "/chat/completions", payload)
        if status != 200:
            # Error replies may quote the input; message text must never reach logs or dead-letter headers.
            contents = [message["content"] for message in messages]
            raise self._http_error(status, headers, scrub_input(body, contents))
        try:
            if not whole:
                raise GuardBadReply(f"guard reply is larger than {MAX_REPLY_BYTES} bytes")
            return self.verdict(reply_content(body), request.kind)
        except GuardBadReply as exc:
            exc.status = status
            raise
