"""What every `guardq` subcommand shares: one-line usage errors, settings from flags and environment,
the connection flags, and argument types."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import datetime
from typing import NoReturn

from worker.config.settings import SPECS, Settings, overrides_from
from worker.config.values import _http_url
from worker.core.times import parse_rfc3339

# The settings each command reads, so its --help lists those and no others.
KAFKA_FIELDS = {spec.field for spec in SPECS if spec.field.startswith("kafka_")}
REDIS_FIELDS = {spec.field for spec in SPECS if spec.field.startswith("redis_")}
TOPIC_FIELDS = {"input_topic", "verdict_topic", "dlq_topic"}


class UsageError(Exception):
    """A one-line problem with what the user asked for (exit code 2)."""


# The exit codes of every command (the README's table).
EXIT_OK = 0
EXIT_FAILED = 1  # a service failed or could not be reached, a worker is not ready, input was refused
EXIT_USAGE = 2  # bad usage or configuration
EXIT_GUARD_CONFIG = 3  # the worker stopped on a fatal guard configuration error
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings of one command: its flags over the environment over the defaults."""
    return Settings.load(os.environ, overrides_from(args))


class OneLineParser(argparse.ArgumentParser):
    """A parser whose usage errors are one line (``guardq dlq replay: error: ...``) with exit code 2;
    ``add_subparsers`` gives every subcommand's parser the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def rfc3339_time(raw: str) -> datetime:
    try:
        return parse_rfc3339(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not an RFC 3339 time like 2026-11-23T13:00:00Z"
        ) from None


def dlq_reason(raw: str) -> str:
    from worker.failures.envelope import REASONS

    if raw not in REASONS:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a reason; one of: {', '.join(REASONS)}")
    return raw


def replay_rate(raw: str) -> float:
    from worker.failures.pacing import parse_rate

    try:
        return parse_rate(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def whole_number(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number (0 or more)")
    return int(raw)


def command(
    subparsers: argparse._SubParsersAction[OneLineParser],
    name: str,
    handler: Callable[[argparse.Namespace], int],
    help_text: str,
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=handler)
    return parser


def non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def share(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number between 0 and 1") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number between 0 and 1")
    return value


def positive_number(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a positive number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a positive number")
    return value


def http_url(raw: str) -> str:
    try:
        return _http_url(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{raw!r}: {exc}") from None


def positive_int(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit() and int(raw) > 0):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a positive whole number")
    return int(raw)
