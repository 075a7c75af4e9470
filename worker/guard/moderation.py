"""The OpenAI-style moderation backend: ``POST <GUARDQ_GUARD_URL>/moderations`` with
``{"model": ..., "input": [texts]}``, for OpenAI's endpoint or a self-hosted server with its API.

It batches: ``moderate_batch`` sends many texts in one request and gives each its own answer (the
gathering of concurrent messages into batches is ``worker.processing.guardbatch``). A response is
moderated as its own text; the API judges no conversation and tells no refusal (``refusal`` is None).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from worker.core.errors import GuardBadReply, GuardError
from worker.core.guard_types import GuardRequest, GuardVerdict
from worker.guard.http import MAX_REPLY_BYTES, GuardHttp, scrub_input
from worker.guard.moderation_parse import parse_moderation_results

# What the start-up check and the heartbeat send: a one-input moderation, since a moderation server need
# not list its models (and a listing says nothing about /moderations answering).
CHECK_TEXT: Final = "guardq health check"


class OpenAIModerationBackend(GuardHttp):
    """Moderates through an OpenAI-compatible ``/moderations`` endpoint, many texts per request."""

    async def moderate(self, request: GuardRequest) -> GuardVerdict:
        """Moderate one text (a batch of one); raises a ``GuardError`` subclass on failure."""
        (answer,) = await self.moderate_batch([request])
        if isinstance(answer, GuardError):
            raise answer
        return answer

    async def moderate_batch(self, requests: Sequence[GuardRequest]) -> list[GuardVerdict | GuardError]:
        """One request for every text: each gets its verdict, or its own ``GuardBadReply`` when its entry
        of the reply is malformed. A failure of the request as a whole raises (a ``GuardError``)."""
        texts = [request.text for request in requests]
        payload = {"model": self._model, "input": texts}
        status, headers, body, whole = await self._call("POST", "/moderations", payload)
        if status != 200:
            raise self._http_error(status, headers, scrub_input(body, texts))
        try:
            if not whole:
                raise GuardBadReply(f"guard reply is larger than {MAX_REPLY_BYTES} bytes")
            entries = parse_moderation_results(body, len(texts))
        except GuardBadReply as exc:
            exc.status = status
            raise
        answers: list[GuardVerdict | GuardError] = []
        for entry in entries:
            if isinstance(entry, GuardBadReply):
                entry.status = status
                answers.append(entry)
            else:
                label, categories = entry
                answers.append(
                    GuardVerdict(label=label, categories=categories, refusal=None, model=self._model)
                )
        return answers

    async def check(self) -> None:
        """The start-up check and heartbeat: a one-text moderation answers with one result."""
        status, headers, body, whole = await self._call(
            "POST", "/moderations", {"model": self._model, "input": [CHECK_TEXT]}, probe=True
        )
        if status != 200:
            raise self._http_error(status, headers, body)
        if not whole:
            raise GuardBadReply(f"guard reply is larger than {MAX_REPLY_BYTES} bytes", status=status)
        entries = parse_moderation_results(body, 1)
        if isinstance(entries[0], GuardBadReply):
            raise entries[0]
