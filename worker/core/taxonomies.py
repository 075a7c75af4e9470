"""What each guard backend may answer: its category names (spelled exactly as verdicts carry them) and
its default model. Settings check the policy against these; backends parse against them."""

from __future__ import annotations

from typing import Final

# Qwen3Guard-Gen, spelled as the model prints them, in its documented order.
QWEN3GUARD_CATEGORIES: Final[tuple[str, ...]] = (
    "Violent",
    "Non-violent Illegal Acts",
    "Sexual Content or Sexual Acts",
    "PII",
    "Suicide & Self-Harm",
    "Unethical Acts",
    "Politically Sensitive Topics",
    "Copyright Violation",
    "Jailbreak",
)

# Llama Guard 3/4 (MLCommons hazard taxonomy): the code the model prints, and the name a verdict carries.
LLAMA_GUARD_CODES: Final[dict[str, str]] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex-Related Crimes",
    "S4": "Child Sexual Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Suicide & Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}

# OpenAI-style /moderations (omni-moderation): category keys as the API spells them.
OPENAI_MODERATION_CATEGORIES: Final[tuple[str, ...]] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)

# The offline demo classifier: one category, for what it detects.
LOCAL_CATEGORIES: Final[tuple[str, ...]] = ("Offensive Language",)

BACKENDS: Final[tuple[str, ...]] = ("qwen3guard", "llamaguard", "openai-moderation", "local")

CATEGORIES: Final[dict[str, tuple[str, ...]]] = {
    "qwen3guard": QWEN3GUARD_CATEGORIES,
    "llamaguard": tuple(LLAMA_GUARD_CODES.values()),
    "openai-moderation": OPENAI_MODERATION_CATEGORIES,
    "local": LOCAL_CATEGORIES,
}

DEFAULT_MODELS: Final[dict[str, str]] = {
    "qwen3guard": "Qwen/Qwen3Guard-Gen-8B",
    "llamaguard": "meta-llama/Llama-Guard-4-12B",
    "openai-moderation": "omni-moderation-latest",
    "local": "profanity-check",
}
