"""Pure functions of the OpenAI-style moderation backend: reading a ``POST /moderations`` reply.

The reply's ``results`` hold one entry per input, in order. A reply that is not such a list, or that
holds fewer or more entries than inputs, fails the whole request (``GuardBadReply``); an entry that is
malformed fails only its own input. Error messages never quote the reply.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from worker.core.errors import GuardBadReply
from worker.core.guard_types import Label

# The API has 13 categories today; a newer one is kept as spelled, within these bounds.
MAX_CATEGORIES: Final = 32
MAX_CATEGORY_CHARS: Final = 100

Entry = tuple[Label, tuple[str, ...]] | GuardBadReply


def _entry(result: Any, index: int) -> Entry:
    if not isinstance(result, dict):
        return GuardBadReply(f"moderation result {index} is not an object")
    flagged = result.get("flagged")
    if not isinstance(flagged, bool):
        return GuardBadReply(f"moderation result {index} has no true/false 'flagged'")
    categories = result.get("categories")
    if not isinstance(categories, dict):
        return GuardBadReply(f"moderation result {index} has no 'categories' object")
    if any(not isinstance(value, bool | None) for value in categories.values()):
        return GuardBadReply(f"moderation result {index} has a category that is not true or false")
    named = sorted(
        name for name, value in categories.items() if value is True and 0 < len(name) <= MAX_CATEGORY_CHARS
    )
    return ("unsafe" if flagged else "safe"), tuple(named[:MAX_CATEGORIES])


def parse_moderation_results(body: bytes, inputs: int) -> list[Entry]:
    """One entry per input: (label, sorted category keys that are true), or that input's own
    ``GuardBadReply``. Raises ``GuardBadReply`` when the reply as a whole is unusable."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise GuardBadReply(f"guard reply is not JSON ({len(body)} bytes)") from None
    results = document.get("results") if isinstance(document, dict) else None
    if not isinstance(results, list):
        raise GuardBadReply(f"guard reply has no results list ({len(body)} bytes)")
    if len(results) != inputs:
        raise GuardBadReply(f"guard answered {len(results)} result(s) for {inputs} input(s)")
    return [_entry(result, index) for index, result in enumerate(results)]
