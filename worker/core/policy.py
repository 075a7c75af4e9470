"""The verdict policy: what to do with a verdict (``allow``, ``block`` or ``review``), decided here only.

``safe`` → allow; ``controversial`` → GUARDQ_POLICY_CONTROVERSIAL; ``unsafe`` → the strictest action
among its categories, each category taking its override from GUARDQ_POLICY_CATEGORIES or else
GUARDQ_POLICY_UNSAFE (an unsafe verdict without categories takes GUARDQ_POLICY_UNSAFE).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, cast

from worker.core.guard_types import Label

Action = Literal["allow", "block", "review"]
ACTIONS: Final[tuple[Action, ...]] = ("allow", "review", "block")  # from the mildest to the strictest
_STRICTNESS: Final[dict[str, int]] = {action: rank for rank, action in enumerate(ACTIONS)}


def parse_action(raw: str) -> Action:
    """An action from its name (case and surrounding blanks ignored); ValueError names the choices."""
    value = raw.strip().lower()
    if value not in _STRICTNESS:
        raise ValueError(f"{raw.strip()!r} is not an action: use allow, block or review")
    return cast(Action, value)


def parse_overrides(raw: str) -> tuple[str, ...]:
    """``Category=action`` pairs, comma-separated, as ``("Category=action", ...)`` with the action
    normalised; ValueError on a pair without ``=``, an empty name, a repeated name or an unknown action."""
    pairs: dict[str, Action] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        name, sep, action = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"{item.strip()!r} is not Category=action")
        if name in pairs:
            raise ValueError(f"category {name!r} is given twice")
        pairs[name] = parse_action(action)
    return tuple(f"{name}={action}" for name, action in pairs.items())


def overrides_map(pairs: Iterable[str]) -> dict[str, Action]:
    """``parse_overrides``' output as a mapping."""
    mapping: dict[str, Action] = {}
    for pair in pairs:
        name, _, action = pair.rpartition("=")
        mapping[name] = parse_action(action)
    return mapping


def strictest(actions: Iterable[Action]) -> Action:
    """block > review > allow; ``allow`` for none."""
    return max(actions, key=_STRICTNESS.__getitem__, default="allow")


@dataclass(frozen=True)
class Policy:
    """GUARDQ_POLICY_UNSAFE, GUARDQ_POLICY_CONTROVERSIAL and the per-category overrides."""

    unsafe: Action = "block"
    controversial: Action = "review"
    categories: Mapping[str, Action] = field(default_factory=dict)

    def action(self, label: Label, categories: Iterable[str]) -> Action:
        """What to do with a verdict of ``label`` naming ``categories``."""
        if label == "safe":
            return "allow"
        if label == "controversial":
            return self.controversial
        return strictest([self.categories.get(name, self.unsafe) for name in categories] or [self.unsafe])

    def unknown_categories(self, known: Iterable[str]) -> list[str]:
        """Overridden categories that are not in ``known`` (the backend's taxonomy)."""
        names = set(known)
        return [name for name in self.categories if name not in names]
