"""`guardq guard compare`: two guards on one golden set before traffic moves from A to B."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from worker.cli.args import OneLineParser, UsageError, command, http_url, positive_int, positive_number, share
from worker.config.settings import Settings
from worker.config.values import _backend
from worker.core.taxonomies import BACKENDS, DEFAULT_MODELS


def cmd_guard_compare(args: argparse.Namespace) -> int:
    """Exit 0 when B may replace A, 1 when it may not (or a guard cannot be used), 2 on bad usage."""
    from worker.guard.factory import backend_for
    from worker.ops.compare import CompareError, compare, golden_set

    settings = Settings.load(os.environ)  # the API key, TLS and timeout of the worker's guard
    sides = []
    for side in ("a", "b"):
        backend = getattr(args, f"{side}_backend") or settings.guard_backend
        if backend == "local":
            raise UsageError(f"--{side}-backend local is not a guard server; compare needs two URLs")
        model = getattr(args, f"{side}_model") or (
            settings.guard_model if backend == settings.guard_backend else DEFAULT_MODELS[backend]
        )
        url = getattr(args, side)
        guard = backend_for(
            backend,
            base_url=url,
            model=model,
            api_key=settings.guard_api_key,
            timeout_s=args.timeout,
            pool_size=args.concurrency,
            tls_verify=settings.guard_tls_verify,
            ca_file=settings.guard_ca_file,
        )
        sides.append((f"{backend} {model} at {url}", guard))
    (a_name, a), (b_name, b) = sides
    try:
        items = golden_set(Path(args.golden) if args.golden else None)
        report = asyncio.run(compare(a, b, items, names=(a_name, b_name), concurrency=args.concurrency))
    except CompareError as exc:
        print(f"guardq: error: {exc}", file=sys.stderr)
        return 1
    limits = {"min_agreement": args.min_agreement, "max_p99_ratio": args.max_p99_ratio}
    if args.json:
        print(json.dumps(report.as_json(**limits), ensure_ascii=False, indent=2))
    else:
        print(report.text(**limits))
    return 1 if report.failures(**limits) else 0


def add_guard_commands(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    guard = sub.add_parser("guard", help="work with guard servers", description="work with guard servers")
    actions = guard.add_subparsers(dest="guard_command", required=True, metavar="ACTION")
    compare = command(
        actions,
        "compare",
        cmd_guard_compare,
        "send a golden set to guards A and B; exit 1 if they disagree too often or B is too slow",
    )
    compare.add_argument(
        "--a",
        required=True,
        type=http_url,
        metavar="URL",
        help="guard A (the live one), e.g. http://host:8000/v1",
    )
    compare.add_argument("--b", required=True, type=http_url, metavar="URL", help="guard B (the candidate)")
    for side in ("a", "b"):
        compare.add_argument(
            f"--{side}-backend",
            type=_backend,
            choices=[name for name in BACKENDS if name != "local"],
            default=None,
            help="its backend (default GUARDQ_GUARD_BACKEND)",
        )
        compare.add_argument(
            f"--{side}-model",
            default=None,
            metavar="NAME",
            help="its model (default GUARDQ_GUARD_MODEL, or the backend's)",
        )
    compare.add_argument(
        "--golden", default=None, metavar="FILE", help="JSON Lines requests (default: the bundled set)"
    )
    compare.add_argument(
        "--min-agreement",
        type=share,
        default=0.98,
        metavar="SHARE",
        help="least label agreement (default 0.98)",
    )
    compare.add_argument(
        "--max-p99-ratio",
        type=positive_number,
        default=1.5,
        metavar="X",
        help="most B's p99 may exceed A's, as a factor (default 1.5)",
    )
    compare.add_argument(
        "--concurrency", type=positive_int, default=8, metavar="N", help="texts in flight (default 8)"
    )
    compare.add_argument(
        "--timeout", type=positive_number, default=30.0, metavar="S", help="per-call timeout (default 30)"
    )
    compare.add_argument("--json", action="store_true", help="print JSON")
