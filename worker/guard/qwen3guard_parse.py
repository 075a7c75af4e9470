"""Pure functions of the Qwen3Guard client: the guard's text output, and neutralising chat-template
control tokens and frame markers in user text (the wire shared with other backends is ``wire``).

Kept free of I/O so every rule is unit-tested without a server.
"""

from __future__ import annotations

import re
from typing import Final

from worker.core.errors import GuardBadReply
from worker.core.guard_types import Kind, Label
from worker.core.taxonomies import QWEN3GUARD_CATEGORIES

CATEGORIES: Final[frozenset[str]] = frozenset(QWEN3GUARD_CATEGORIES)

_LABELS: Final[dict[str, Label]] = {"safe": "safe", "unsafe": "unsafe", "controversial": "controversial"}
_REFUSALS: Final[dict[str, bool]] = {"yes": True, "no": False}

# A user text carrying these would let it close its own turn and forge the guard's answer.
_CONTROL_TOKENS: Final[dict[str, str]] = {
    "<|im_start|>": "[im_start]",
    "<|im_end|>": "[im_end]",
    "<|endoftext|>": "[endoftext]",
    "<think>": "[think]",
    "</think>": "[/think]",
}
_CONTROL_RE: Final = re.compile("|".join(re.escape(token) for token in _CONTROL_TOKENS))

_KEY_LINE_RE: Final = re.compile(r"^\s*(safety|categories|refusal)\s*:(.*)$", re.IGNORECASE)
_KEY_ORDER: Final = ("safety", "categories", "refusal")


# Qwen3Guard's chat template frames the text with plain-text markers (``<BEGIN CONVERSATION>``, ``USER:``,
# ``<END CONVERSATION>``) and asks for ``Safety:``/``Categories:``/``Refusal:`` lines. A text that writes
# them could try to close the frame and write its own verdict, so they are escaped: the angle brackets of
# ``<BEGIN ...>``/``<END ...>`` and the colon of a line-leading role or verdict key become look-alikes
# that read the same to a human and match nothing in the template.
_FRAME_MARKER_RE: Final = re.compile(r"<(\s*(?:BEGIN|END)\b[^<>\n]{0,80})>", re.IGNORECASE)
_LINE_KEY_RE: Final = re.compile(
    r"^(\s*(?:USER|ASSISTANT|SYSTEM|SAFETY|CATEGORIES|REFUSAL)\s*):", re.IGNORECASE
)
_LOOKALIKE_COLON: Final = "\ua789"  # MODIFIER LETTER COLON
# The most categories a reply may list, and the longest name kept: an unknown category is kept as the
# guard wrote it, so a confused guard must not write an unbounded verdict.
MAX_CATEGORIES: Final = 16
MAX_CATEGORY_CHARS: Final = 100


def neutralise(text: str) -> str:
    """Replace chat-template control tokens with visible, harmless look-alikes (one pass, exact match)."""
    return _CONTROL_RE.sub(lambda match: _CONTROL_TOKENS[match.group(0)], text)


def escape_frame(text: str) -> str:
    """``neutralise`` plus the escaping of Qwen3Guard's frame markers and line-leading keys (see above)."""
    text = _FRAME_MARKER_RE.sub(lambda match: f"\u2039{match.group(1)}\u203a", neutralise(text))
    # Lines as the parser splits them (\n, \r, \u2028, \x85 ...), so no line break slips past either.
    return "".join(
        _LINE_KEY_RE.sub(lambda match: match.group(1) + _LOOKALIKE_COLON, line, count=1)
        for line in text.splitlines(keepends=True)
    )


def _verdict_lines(content: str) -> dict[str, str]:
    """The ``Safety``/``Categories``/``Refusal`` lines, keys lower-cased. The reply must be exactly these:
    the Safety line first (where the model writes it), then Categories, then Refusal, nothing else; a
    verdict written anywhere else (echoed from the text) is not the model's."""
    lines = [line for line in content.splitlines() if line.strip()]
    matches = [_KEY_LINE_RE.match(line) for line in lines]
    keys = [match.group(1).lower() if match else None for match in matches]
    if "safety" not in keys:
        raise GuardBadReply(f"guard reply has no Safety line ({len(content)} chars)")
    if keys[0] != "safety":
        raise GuardBadReply("guard reply does not begin with its Safety line")
    if None in keys:
        raise GuardBadReply(f"guard reply has {keys.count(None)} line(s) that are not part of a verdict")
    if len(set(keys)) != len(keys):
        repeated = next(key for key in keys if keys.count(key) > 1)
        raise GuardBadReply(f"guard reply repeats the {repeated!r} line")
    if keys != sorted(keys, key=_KEY_ORDER.index):
        raise GuardBadReply("guard reply has its lines out of order")
    return {key: match.group(2).strip() for key, match in zip(keys, matches, strict=True) if key and match}


def _category_name(raw: str) -> str:
    """A category as the guard wrote it, on one line, without control characters, bounded."""
    printable = "".join(char for char in raw if char.isprintable())
    return " ".join(printable.split())[:MAX_CATEGORY_CHARS]


def _parse_categories(value: str | None) -> tuple[str, ...]:
    """The names on the Categories line. One outside Qwen3Guard's list is kept as given (a newer model's
    category, a spelling variant): dropping it could turn an unsafe verdict's reasons into none."""
    if value is None or value.lower() == "none":
        return ()
    names: list[str] = []
    for raw in value.split(","):
        name = _category_name(raw)
        if not name:
            continue  # tolerate a trailing comma; an empty name carries no claim
        if name not in names:
            names.append(name)
    return tuple(names[:MAX_CATEGORIES])


def unknown_categories(categories: tuple[str, ...]) -> list[str]:
    """The names in ``categories`` that are not in Qwen3Guard's documented list."""
    return [name for name in categories if name not in CATEGORIES]


def parse_guard_output(content: str, kind: Kind) -> tuple[Label, tuple[str, ...], bool | None]:
    """Parse Qwen3Guard-Gen output into (label, categories, refusal); raises GuardBadReply if malformed.

    Refusal is only read for response moderation, and is None when the line is absent. Error messages
    never quote the reply: a confused guard may echo the user's text.
    """
    values = _verdict_lines(content)
    safety = values["safety"]
    label = _LABELS.get(safety.lower())
    if label is None:
        raise GuardBadReply(f"guard reply has an unknown Safety value ({len(safety)} chars)")
    categories = _parse_categories(values.get("categories"))
    refusal: bool | None = None
    if kind == "response" and "refusal" in values:
        refusal = _REFUSALS.get(values["refusal"].lower())
        if refusal is None:
            raise GuardBadReply("guard reply has an unknown Refusal value")
    return label, categories, refusal
