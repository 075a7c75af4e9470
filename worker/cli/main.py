"""`guardq` subcommands: argument parsing and exit codes only; the work happens in the modules they call.

Exit codes (``worker.cli.args``, the README's table): 0 success; 1 a service failed or could not be
reached, a worker is not ready, input was refused; 2 bad usage or configuration; 3 the worker stopped on a
fatal guard configuration error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from worker import __version__
from worker.cli.args import (
    EXIT_FAILED,
    EXIT_GUARD_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    KAFKA_FIELDS,
    TOPIC_FIELDS,
    OneLineParser,
    UsageError,
    command,
    non_negative_int,
    settings_from,
)
from worker.cli.dlq import add_dlq_commands
from worker.cli.guard import add_guard_commands
from worker.config.extras import MissingExtra
from worker.config.settings import Settings, SettingsError, add_flags
from worker.telemetry.tracing import TracingConfigError

if TYPE_CHECKING:
    from worker.kafka.publish import Published

log = logging.getLogger("guardq")

# -- run --------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """Run the worker until SIGTERM/SIGINT."""
    from worker.telemetry import logs

    settings = settings_from(args)
    logs.configure(settings.log_level, secrets=logs.secrets_of(settings))
    from worker.ops import eventloop

    return eventloop.run(_run_worker(settings))


async def _run_worker(settings: Settings) -> int:
    from worker.app import Worker
    from worker.kafka import clients as kafka

    stop = asyncio.Event()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info(
                "stopping: finishing in-flight work for up to %g s (signal again to exit at once)",
                settings.shutdown_timeout_s,
            )
            stop.set()
        else:
            log.warning("second signal: exiting now; unfinished work stays uncommitted and is redelivered")
            os._exit(130)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    worker = Worker(settings)
    log.info("settings: %s", json.dumps(settings.redacted(), default=str, separators=(",", ":")))
    await kafka.wait_for_broker(settings, timeout_s=60)
    await worker.run(stop)
    return EXIT_OK


# -- publish / tail / topics ------------------------------------------------------------------------


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish JSONL lines to the input topic; bad lines are reported by number and skipped (exit 1)."""
    settings = settings_from(args)
    if args.file == "-":
        lines = sys.stdin.buffer.read().splitlines()
    else:
        try:
            lines = Path(args.file).read_bytes().splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    sent, bad = asyncio.run(_publish(settings, lines))
    if args.json:
        print(json.dumps({"topic": settings.input_topic, "published": sent, "skipped": bad}))
    else:
        print(
            f"published {sent} message(s) to {settings.input_topic}"
            + (f"; skipped {bad} bad line(s)" if bad else "")
        )
    return EXIT_FAILED if bad else EXIT_OK


# Requests queued before their acknowledgements are awaited: they share batches, and memory stays bounded.
PUBLISH_WINDOW = 1000


async def _publish(settings: Settings, lines: Sequence[bytes]) -> tuple[int, int]:
    from worker.kafka.publish import BadLine, InputProducer, read_jsonl

    sent = bad = 0
    async with InputProducer(settings) as producer:
        pending: list[asyncio.Future[Published]] = []
        for item in read_jsonl(lines, settings.max_text_chars):
            if isinstance(item, BadLine):
                bad += 1
                print(f"line {item.line}: {item.error}", file=sys.stderr)
                continue
            pending.append(await producer.enqueue_prepared(item))
            if len(pending) >= PUBLISH_WINDOW:
                sent += len(await asyncio.gather(*pending))
                pending = []
        sent += len(await asyncio.gather(*pending))
    return sent, bad


def cmd_tail(args: argparse.Namespace) -> int:
    """Print a topic as JSON lines."""
    from worker.kafka.reading import tail

    settings = settings_from(args)
    topic = {
        "verdicts": settings.verdict_topic,
        "dlq": settings.dlq_topic,
        "input": settings.input_topic,
    }.get(args.topic, args.topic)
    try:
        asyncio.run(
            tail(
                settings,
                topic,
                from_beginning=args.from_beginning,
                max_records=args.max,
                timeout_s=args.timeout,
                out=sys.stdout,
                status=sys.stderr,
            )
        )
    except LookupError as exc:
        raise UsageError(str(exc).strip("'\"")) from None
    return EXIT_OK


def cmd_topics(args: argparse.Namespace) -> int:
    """Create the input, verdict, DLQ and retry topics when missing."""
    from worker.kafka import clients as kafka

    settings = settings_from(args)
    created = asyncio.run(kafka.ensure_topics(settings))
    states = {name: "created" if name in created else "exists" for name in kafka.worker_topics(settings)}
    if args.json:
        print(json.dumps([{"topic": name, "state": state} for name, state in states.items()]))
    else:
        for name, state in states.items():
            print(f"{name:<48} {state}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Show a worker's state and the group's lag per partition."""

    from worker.ops.status import as_json, gather_status, render

    settings = settings_from(args)
    url = args.url or f"http://127.0.0.1:{settings.http_port}"
    worker, broker = asyncio.run(gather_status(settings, url))
    print(json.dumps(as_json(url, worker, broker), indent=2) if args.json else render(url, worker, broker))
    healthy = isinstance(worker, dict) and bool(worker.get("ready")) and not isinstance(broker, str)
    return EXIT_OK if healthy else EXIT_FAILED


# -- stack / demo / guard-sim -----------------------------------------------------------------------


def cmd_stack(args: argparse.Namespace) -> int:
    """Start, stop or show a local broker + Redis for development."""
    from worker.dev import stack

    settings = settings_from(args)
    directory = Path(args.dir)
    healthy = True
    if args.action == "up":
        _, report = stack.stack_up(
            directory, bootstrap=settings.kafka_bootstrap, redis_url=settings.redis_url
        )
    elif args.action == "down":
        report = stack.stack_down(directory)
    else:
        healthy, report = stack.stack_status(
            directory, bootstrap=settings.kafka_bootstrap, redis_url=settings.redis_url
        )
    print("\n".join(report))
    return EXIT_OK if healthy else EXIT_FAILED


def cmd_config(args: argparse.Namespace) -> int:
    """Print the effective settings (defaults, environment, flags), secrets hidden."""
    from worker.config.settings import SPECS
    from worker.config.spec import spelled

    settings = settings_from(args)
    shown = settings.redacted()
    if args.json:
        print(json.dumps(shown, default=str, indent=2))
        return EXIT_OK
    for spec in SPECS:
        value = shown[spec.field]
        print(f"{spec.env:<40} {'' if value is None else spelled(value)}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Moderate the bundled sample set end to end on an embedded stack."""
    from worker.dev.demo import run_demo

    return run_demo(guard_url=args.guard_url, guard_model=args.guard_model, redis_url=args.redis_url)


def cmd_guard_sim(args: argparse.Namespace) -> int:
    """Serve the simulated guard server (every backend's wire format)."""
    from worker.dev.sim.server import run_from_args

    return run_from_args(args)


# -- parser -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `guardq` argument parser."""
    from worker.dev.sim.config import configure_parser as configure_sim

    parser = OneLineParser(
        prog="guardq",
        description="Kafka moderation worker for LLM traffic.",
        epilog="Exit codes: 0 ok, 1 failure or not ready, 2 usage, 3 guard configuration, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"guardq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    kafka_and_topics = KAFKA_FIELDS | TOPIC_FIELDS

    run = command(sub, "run", cmd_run, "run the worker (every setting is an env var; most are flags too)")
    add_flags(run)

    publish = command(
        sub, "publish", cmd_publish, "publish JSONL requests (FILE or - for stdin) to the input topic"
    )
    publish.add_argument("file", nargs="?", default="-", metavar="FILE|-")
    publish.add_argument("--json", action="store_true", help="print the counts as JSON")
    add_flags(publish, only=KAFKA_FIELDS | {"input_topic", "max_text_chars"})

    tail = command(sub, "tail", cmd_tail, "print a topic as JSON lines (default: verdicts, from now on)")
    tail.add_argument("--topic", default="verdicts", help="verdicts, dlq, input or a topic name")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    tail.add_argument("--max", type=non_negative_int, default=None, metavar="N", help="stop after N records")
    tail.add_argument("--timeout", type=float, default=None, metavar="S", help="stop after S seconds in all")
    add_flags(tail, only=kafka_and_topics)

    topics = command(sub, "topics", cmd_topics, "manage guardq's topics")
    topics.add_argument(
        "action", choices=["create"], help="create the input, verdict, DLQ, retry and parked topics"
    )
    topics.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_flags(
        topics,
        only=kafka_and_topics | {"topic_partitions", "topic_replication", "retry_schedule", "dlq_retention"},
    )

    add_dlq_commands(sub)
    add_guard_commands(sub)

    status = command(sub, "status", cmd_status, "a worker's state and the group's lag per partition")
    status.add_argument(
        "--url", default=None, help="the worker's HTTP address (default http://127.0.0.1:GUARDQ_HTTP_PORT)"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_flags(status, only=kafka_and_topics | {"group_id", "retry_schedule", "http_port"})

    config = command(sub, "config", cmd_config, "print the effective settings, secrets hidden")
    config.add_argument("--json", action="store_true", help="print JSON instead of VARIABLE value lines")
    add_flags(config)

    stack = command(sub, "stack", cmd_stack, "start/stop a local broker + Redis in the background")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--dir", default=".guardq/stack", help="where state and logs are kept")
    add_flags(stack, only={"kafka_bootstrap", "redis_url"})

    demo = command(sub, "demo", cmd_demo, "moderate a bundled sample set end to end on an embedded stack")
    demo.add_argument(
        "--guard-url", default=None, help="use a real Qwen3Guard server instead of the local model"
    )
    demo.add_argument("--guard-model", default="Qwen/Qwen3Guard-Gen-8B", help="model name with --guard-url")
    demo.add_argument("--redis-url", default=os.environ.get("GUARDQ_REDIS_URL", "redis://127.0.0.1:6379/0"))

    sim = command(
        sub, "guard-sim", cmd_guard_sim, "serve a simulated guard: Qwen3Guard, Llama Guard, /v1/moderations"
    )
    configure_sim(sim)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `guardq` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command != "run":
        # Client libraries log connection trouble on their own; these commands report it in one line.
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return int(args.handler(args))
    except (SettingsError, UsageError, MissingExtra, TracingConfigError) as exc:
        print(f"guardq: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # the last line of defence: one clear line, no traceback wall
        return _report_failure(exc)


def _report_failure(exc: Exception) -> int:
    from aiokafka.errors import KafkaConnectionError
    from redis.exceptions import ConnectionError as RedisConnectionError

    from worker.store.checks import StoreConfigError

    fatal = bool(getattr(exc, "fatal", False))
    kind = "guard configuration error" if fatal else type(exc).__name__
    if isinstance(exc, StoreConfigError):
        kind = "Redis configuration error"
    message = " ".join(str(exc).split())[:500]
    if isinstance(exc, KafkaConnectionError):
        kind, message = "cannot reach Kafka", "no broker answered (check GUARDQ_KAFKA_BOOTSTRAP)"
    elif isinstance(exc, RedisConnectionError):
        kind = "cannot reach Redis"
    print(f"guardq: {kind}: {message}", file=sys.stderr)
    if os.environ.get("GUARDQ_DEBUG"):
        raise exc
    return EXIT_GUARD_CONFIG if fatal else EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
