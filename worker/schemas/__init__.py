"""The JSON Schemas of guardq's messages, shipped in the package so producers and consumers can validate
what they send and read: ``input`` (a moderation request), ``verdict`` and ``deadletter`` (the value of a
dead letter). The files are the ones in the project's ``schemas/`` folder."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

NAMES = ("input", "verdict", "deadletter")


def schema_text(name: str) -> str:
    """The JSON text of the schema ``name`` (one of ``NAMES``)."""
    if name not in NAMES:
        raise KeyError(f"no schema {name!r}; there are {', '.join(NAMES)}")
    return files(__name__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8")


def schema(name: str) -> dict[str, Any]:
    """The schema ``name`` (one of ``NAMES``) as a dict."""
    document: dict[str, Any] = json.loads(schema_text(name))
    return document
