"""Pure functions of the Llama Guard backend (Llama Guard 3 and 4): reading its reply, and escaping
user text so it cannot step out of the chat template's frame.

A reply is ``safe``, or ``unsafe`` then one line of hazard codes (``S1,S10``). Anything else (an unknown
code, a missing or extra line, another first word) is a ``GuardBadReply``, the class a garbled
Qwen3Guard answer gets. Error messages never quote the reply: a confused guard may echo the user's text.
"""

from __future__ import annotations

import re
from typing import Final

from worker.core.errors import GuardBadReply
from worker.core.guard_types import Label
from worker.core.taxonomies import LLAMA_GUARD_CODES

# Llama 3 and 4 special tokens (<|eot_id|>, <|start_header_id|>, <|header_start|>, <|eot|>, ...): a user
# text that carries one could end its own turn and write the assistant's.
_SPECIAL_TOKEN_RE: Final = re.compile(r"<\|([A-Za-z0-9_]{1,40})\|>")
# The template frames the conversation between <BEGIN CONVERSATION> and <END CONVERSATION> (and the
# categories between <BEGIN/END UNSAFE CONTENT CATEGORIES>), each turn as "User: " or "Agent: ".
_FRAME_MARKER_RE: Final = re.compile(r"<(\s*(?:BEGIN|END)\b[^<>\n]{0,80})>", re.IGNORECASE)
_LINE_KEY_RE: Final = re.compile(r"^(\s*(?:USER|AGENT|ASSISTANT|SYSTEM)\s*):", re.IGNORECASE)
_LOOKALIKE_COLON: Final = "\ua789"  # MODIFIER LETTER COLON
_CODE_RE: Final = re.compile(r"S(\d{1,2})")
_LABELS: Final[dict[str, Label]] = {"safe": "safe", "unsafe": "unsafe"}


def escape_llamaguard(text: str) -> str:
    """``text`` with special tokens shown as ``[name]``, frame markers' angle brackets and line-leading
    role keys' colons replaced by look-alikes: it reads the same to a human and matches nothing in the
    template."""
    text = _SPECIAL_TOKEN_RE.sub(lambda match: f"[{match.group(1)}]", text)
    text = _FRAME_MARKER_RE.sub(lambda match: f"\u2039{match.group(1)}\u203a", text)
    return "".join(
        _LINE_KEY_RE.sub(lambda match: match.group(1) + _LOOKALIKE_COLON, line, count=1)
        for line in text.splitlines(keepends=True)
    )


def _category_names(line: str) -> tuple[str, ...]:
    codes: list[int] = []
    for raw in line.split(","):
        code = raw.strip().upper()
        if not code:
            continue  # a trailing comma carries no claim
        match = _CODE_RE.fullmatch(code)
        if match is None or code not in LLAMA_GUARD_CODES:
            raise GuardBadReply(f"guard reply names an unknown hazard code ({len(code)} chars)")
        if int(match.group(1)) not in codes:
            codes.append(int(match.group(1)))
    if not codes:
        raise GuardBadReply("guard reply is unsafe but names no hazard code")
    return tuple(LLAMA_GUARD_CODES[f"S{number}"] for number in sorted(codes))


def parse_llamaguard_output(content: str) -> tuple[Label, tuple[str, ...]]:
    """(label, category names in code order) from a Llama Guard reply; ``GuardBadReply`` if malformed."""
    lines = [line.strip() for line in content.splitlines() if line.strip()]
    if not lines:
        raise GuardBadReply("guard reply is empty")
    label = _LABELS.get(lines[0].lower())
    if label is None:
        raise GuardBadReply(f"guard reply does not begin with safe or unsafe ({len(lines[0])} chars)")
    if label == "safe":
        if len(lines) > 1:
            raise GuardBadReply(f"guard reply is safe but goes on for {len(lines) - 1} more line(s)")
        return "safe", ()
    if len(lines) == 1:
        raise GuardBadReply("guard reply is unsafe without its line of hazard codes")
    if len(lines) > 2:
        raise GuardBadReply(f"guard reply has {len(lines) - 2} line(s) after its hazard codes")
    return "unsafe", _category_names(lines[1])
