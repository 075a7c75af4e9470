"""The simulated guard's verdicts: a pure, deterministic keyword classifier that answers in each served
wire format (Qwen3Guard-Gen's text lines, Llama Guard's ``safe``/``unsafe`` + codes, OpenAI-style
moderation results), plus the token estimates the simulator uses for usage and context-length checks.

``flip_share`` makes a guard that disagrees: the verdict of that share of texts (picked by a hash of the
text, so the same texts every time) is turned over (safe ↔ unsafe).

Tests elsewhere call ``classify`` to compute the verdict the simulator will give for a request.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

from worker.core.taxonomies import LLAMA_GUARD_CODES, OPENAI_MODERATION_CATEGORIES, QWEN3GUARD_CATEGORIES

# The chat template adds the guard instructions around the text: about this many tokens.
TEMPLATE_OVERHEAD_TOKENS = 300
# Crude but stable: the simulator only needs a deterministic estimate, not a real tokenizer.
CHARS_PER_TOKEN = 4

# Replies list categories in Qwen3Guard's documented order.
CATEGORY_ORDER = QWEN3GUARD_CATEGORIES

REFUSAL_PREFIXES = ("i can't", "i cannot", "sorry", "i won't")

# Keywords match as whole words with a few inflections, so "weapons" and "hacking" count but "skill" doesn't.
_SUFFIX = r"(?:s|es|ed|ing|er|ers)?"


@dataclass(frozen=True)
class _Rule:
    category: str
    label: str
    pattern: re.Pattern[str]
    prompt_only: bool = False


def _words(*words: str) -> re.Pattern[str]:
    # Multi-word phrases tolerate any run of whitespace or hyphens between their words.
    alternatives = [r"[\s-]+".join(re.escape(part) for part in re.split(r"[\s-]+", w)) for w in words]
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")" + _SUFFIX + r"\b", re.IGNORECASE)


_RULES = (
    _Rule("Violent", "Unsafe", _words("kill", "murder", "bomb", "weapon")),
    _Rule("Non-violent Illegal Acts", "Unsafe", _words("steal", "hack", "drug")),
    _Rule("PII", "Unsafe", _words("ssn", "credit card", "password")),
    _Rule("Suicide & Self-Harm", "Unsafe", _words("suicide", "self-harm")),
    _Rule("Jailbreak", "Unsafe", _words("ignore previous instructions", "jailbreak"), prompt_only=True),
    _Rule("Politically Sensitive Topics", "Controversial", _words("election", "politics", "controversial")),
)


def is_response_moderation(messages: list[dict[str, str]]) -> bool:
    """True when the moderated (last) message is the assistant's, i.e. response moderation."""
    return bool(messages) and messages[-1].get("role") == "assistant"


def _verdict(content: str, *, response: bool) -> tuple[str, list[str]]:
    labels: set[str] = set()
    categories: set[str] = set()
    for rule in _RULES:
        if (rule.prompt_only and response) or not rule.pattern.search(content):
            continue
        labels.add(rule.label)
        categories.add(rule.category)
    # Unsafe beats Controversial beats Safe; the categories of every matched rule are kept.
    label = next((name for name in ("Unsafe", "Controversial") if name in labels), "Safe")
    return label, [c for c in CATEGORY_ORDER if c in categories]


def is_refusal(content: str) -> bool:
    """True when an assistant reply opens with a refusal phrase (case-insensitive)."""
    normalised = content.lstrip().replace("\u2019", "'").lower()
    return normalised.startswith(REFUSAL_PREFIXES)


def is_flipped(content: str, share: float) -> bool:
    """Whether ``content`` is among the ``share`` of texts whose verdict a disagreeing guard turns over."""
    if share <= 0:
        return False
    digest = hashlib.sha256(content.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def judge(content: str, *, response: bool, flip_share: float = 0.0) -> tuple[str, list[str]]:
    """The verdict on ``content`` as (Qwen3Guard label, Qwen3Guard categories); every format maps it."""
    label, categories = _verdict(content, response=response)
    if is_flipped(content, flip_share):
        return ("Safe", []) if label != "Safe" else ("Unsafe", ["Unethical Acts"])
    return label, categories


def classify(messages: list[dict[str, str]], flip_share: float = 0.0) -> str:
    """The Qwen3Guard reply text the simulator gives for ``messages``; the last message is the one moderated."""
    content = messages[-1].get("content", "") if messages else ""
    response = is_response_moderation(messages)
    label, categories = judge(content, response=response, flip_share=flip_share)
    text = f"Safety: {label}\nCategories: {', '.join(categories) if categories else 'None'}"
    if response:
        text += f"\nRefusal: {'Yes' if is_refusal(content) else 'No'}"
    return text


# How the keyword rules' categories read in the other formats (a category without one there is not
# flagged by that format; Llama Guard has no controversial: its elections hazard takes politics).
_LLAMA_CODES = {
    "Violent": "S1",
    "Non-violent Illegal Acts": "S2",
    "PII": "S7",
    "Suicide & Self-Harm": "S11",
    "Politically Sensitive Topics": "S13",
    "Unethical Acts": "S2",
}
_MODERATION_KEYS = {
    "Violent": ("violence",),
    "Non-violent Illegal Acts": ("illicit",),
    "Suicide & Self-Harm": ("self-harm", "self-harm/intent"),
    "Unethical Acts": ("harassment",),
}


def llamaguard_reply(messages: list[dict[str, str]], flip_share: float = 0.0) -> str:
    """The Llama Guard reply text for ``messages``: ``safe``, or ``unsafe`` and the codes in order."""
    content = messages[-1].get("content", "") if messages else ""
    _, categories = judge(content, response=is_response_moderation(messages), flip_share=flip_share)
    codes = sorted(
        {_LLAMA_CODES[name] for name in categories if name in _LLAMA_CODES}, key=lambda c: int(c[1:])
    )
    assert all(code in LLAMA_GUARD_CODES for code in codes)
    return f"unsafe\n{','.join(codes)}" if codes else "safe"


def moderation_result(text: str, flip_share: float = 0.0) -> dict[str, object]:
    """One OpenAI-style moderation result for ``text`` (moderated alone, as the API does)."""
    _, categories = judge(text, response=False, flip_share=flip_share)
    flagged_keys = {key for name in categories for key in _MODERATION_KEYS.get(name, ())}
    return {
        "flagged": bool(flagged_keys),
        "categories": {key: key in flagged_keys for key in OPENAI_MODERATION_CATEGORIES},
        "category_scores": {
            key: 0.97 if key in flagged_keys else 0.001 for key in OPENAI_MODERATION_CATEGORIES
        },
        "category_applied_input_types": {
            key: ["text"] if key in flagged_keys else [] for key in OPENAI_MODERATION_CATEGORIES
        },
    }


def estimate_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """Prompt tokens as the simulator counts them: ceil(chars of all contents / 4) + template overhead."""
    chars = sum(len(m.get("content", "")) for m in messages)
    return math.ceil(chars / CHARS_PER_TOKEN) + TEMPLATE_OVERHEAD_TOKENS


def estimate_completion_tokens(text: str) -> int:
    """Completion tokens for a reply text, with the same per-character estimate plus end-of-turn."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) + 1
