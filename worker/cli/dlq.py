"""`guardq dlq list|show|replay`: reading and replaying the dead-letter topic."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING

from worker.cli.args import (
    KAFKA_FIELDS,
    REDIS_FIELDS,
    TOPIC_FIELDS,
    OneLineParser,
    UsageError,
    command,
    dlq_reason,
    replay_rate,
    rfc3339_time,
    settings_from,
    whole_number,
)
from worker.config.settings import Settings, add_flags

if TYPE_CHECKING:
    from worker.failures.listing import Filter


def cmd_dlq(args: argparse.Namespace) -> int:
    """List, show or replay dead letters (list and show are read-only; replay never deletes)."""
    settings = settings_from(args)
    try:
        if args.action == "replay":
            return _dlq_replay(settings, args)
        if args.action == "show":
            return asyncio.run(_dlq_show(settings, args.target))
        return asyncio.run(_dlq_list(settings, args))
    except LookupError as exc:
        raise UsageError(str(exc).strip("'\"")) from None


async def _dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    """Print the chosen dead letters as they are read (one batch in memory at a time)."""
    from worker.failures import listing as deadletters
    from worker.failures import replay

    chosen, limit = _filter_of(args), args.max
    printed = 0
    if not args.json:
        print(deadletters.TABLE_HEADER)
    async for found in deadletters.stream(settings):
        letters = [letter for letter in found if chosen.matches(letter)]
        if args.pending:
            letters = await replay.pending(settings, letters)
        for letter in letters[: None if limit is None else limit - printed]:
            if args.json:
                print(json.dumps(deadletters.as_json(letter), ensure_ascii=False))
            else:
                print(deadletters.table_row(letter))
            printed += 1
        sys.stdout.flush()
        if limit is not None and printed >= limit:
            break
    if not args.json:
        print(f"{printed} dead letter(s)")
    return 0


async def _dlq_show(settings: Settings, target: str) -> int:
    """One dead letter by ``PARTITION:OFFSET`` (read by seeking there) or every one of a message id."""
    from worker.failures import listing as deadletters

    coordinates = deadletters.coordinates_of(target)
    if coordinates is not None:
        letter = await deadletters.read_at(settings, *coordinates)
        found = [] if letter is None else [letter]
    else:
        found = [
            letter
            async for letters in deadletters.stream(settings)
            for letter in letters
            if letter.message_id == target
        ]
    if not found:
        raise UsageError(f"no dead letter at {target!r} (give PARTITION:OFFSET or a message id)")
    for letter in found:
        print(json.dumps(deadletters.as_json(letter), ensure_ascii=False, indent=2))
    return 0


def _filter_of(args: argparse.Namespace) -> Filter:
    from worker.failures.listing import Filter

    return Filter(
        reason=args.reason,
        since=args.since,
        until=args.until,
        error_class=args.error_class,
        ids=frozenset(args.ids) if args.ids else None,
    )


def _dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    from worker.failures import replay

    options = replay.ReplayOptions(
        filter=_filter_of(args),
        limit=args.max,
        force=args.force,
        dry_run=args.dry_run,
        rate_per_s=args.rate,
    )
    summary = asyncio.run(replay.replay(settings, options, progress=sys.stderr))
    if args.json:
        print(json.dumps(summary.as_json()))
    else:
        print("\n".join(summary.lines()))
    return 0


def add_dlq_commands(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    dlq = command(sub, "dlq", cmd_dlq, "inspect and replay the dead-letter topic")
    dlq_sub = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    dlq_list = dlq_sub.add_parser("list", help="dead letters as a table (or JSON lines)")
    dlq_list.add_argument("--pending", action="store_true", help="only those not replayed yet")
    dlq_list.add_argument("--json", action="store_true", help="one JSON object a line")
    dlq_show = dlq_sub.add_parser("show", help="one dead letter with its headers decoded")
    dlq_show.add_argument("target", metavar="PARTITION:OFFSET|ID")
    replay_help = "republish dead letters not replayed yet to the input topic (never deletes; never prompts)"
    dlq_replay = dlq_sub.add_parser("replay", help=replay_help, description=replay_help)
    dlq_replay.add_argument("--json", action="store_true", help="print the summary as JSON")
    dlq_replay.add_argument(
        "--dry-run", action="store_true", help="show what would be replayed; send nothing"
    )
    dlq_replay.add_argument(
        "--force", action="store_true", help="also ids that have a verdict: moderate again, overwrite it"
    )
    dlq_replay.add_argument(
        "--rate", type=replay_rate, default=None, metavar="N/s", help="at most N records a second"
    )
    for selecting in (dlq_list, dlq_replay):
        selecting.add_argument("--max", type=whole_number, default=None, metavar="N", help="at most N")
        selecting.add_argument("--error-class", default=None, metavar="CLASS", help="only this error class")
        selecting.add_argument(
            "--id",
            dest="ids",
            action="append",
            default=None,
            metavar="ID",
            help="only this message id (repeatable)",
        )
        selecting.add_argument("--reason", type=dlq_reason, default=None, help="only this reason")
        selecting.add_argument(
            "--since", type=rfc3339_time, default=None, help="first failed at or after (RFC 3339)"
        )
        selecting.add_argument(
            "--until", type=rfc3339_time, default=None, help="first failed before (RFC 3339)"
        )
    for dlq_parser in (dlq_list, dlq_show, dlq_replay):
        add_flags(
            dlq_parser, only=KAFKA_FIELDS | REDIS_FIELDS | TOPIC_FIELDS | {"max_replays", "max_text_chars"}
        )
