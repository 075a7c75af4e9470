"""What a guard is asked and what it answers, as plain data: every backend, the pipeline and the
message documents share these types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["prompt", "response"]
Label = Literal["safe", "unsafe", "controversial"]


@dataclass(frozen=True)
class GuardRequest:
    """What to moderate: a prompt (``text``), or a response (``text``) to the user turn ``prompt``."""

    text: str
    kind: Kind = "prompt"
    prompt: str | None = None


@dataclass(frozen=True)
class GuardVerdict:
    """A guard's answer; ``refusal`` is None for prompts and when the backend cannot tell."""

    label: Label
    categories: tuple[str, ...]
    refusal: bool | None
    model: str
