"""The simulated guard server's knobs: one mutable ``SimConfig``, its validation, its command-line flags and
the partial updates ``POST /sim/config`` applies while the server runs."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

ErrorShape = Literal["nested", "flat"]
LatencyDist = Literal["fixed", "lognormal"]

ERROR_SHAPES: tuple[ErrorShape, ...] = ("nested", "flat")
LATENCY_DISTS: tuple[LatencyDist, ...] = ("fixed", "lognormal")
RATE_KNOBS = (
    "fail_503_rate",
    "fail_429_rate",
    "reset_rate",
    "hang_rate",
    "garbage_rate",
    "length_rate",
    "flip_share",
)
# The listening socket is bound once; changing these at runtime would silently do nothing.
STARTUP_ONLY_KNOBS = frozenset({"host", "port"})


class SimConfigError(ValueError):
    """A knob has a bad value or does not exist; the message is one line naming it."""


@dataclass
class SimConfig:
    """Every knob of the simulated Qwen3Guard server; mutable so ``POST /sim/config`` can update it live."""

    host: str = "127.0.0.1"
    port: int = 8000
    model: str = "Qwen/Qwen3Guard-Gen-8B"  # answered in Qwen3Guard's format on /v1/chat/completions
    llamaguard_model: str = "meta-llama/Llama-Guard-4-12B"  # answered in Llama Guard's format there
    moderation_model: str = "omni-moderation-latest"  # served on /v1/moderations
    flip_share: float = 0.0  # share of texts (by hash) whose verdict is turned over: a guard that disagrees
    api_key: str | None = None
    error_shape: ErrorShape = "nested"
    max_model_len: int = 32768
    latency_ms: float = 0.0
    latency_dist: LatencyDist = "fixed"
    latency_mean_ms: float = 400.0
    latency_sigma: float = 0.5
    latency_from_text: bool = False  # lognormal draws from a hash of the text: the same set for every client
    seed: int = 0
    capacity: int = 256
    reject_above_capacity: bool = False  # answer 429 instead of queueing once `capacity` calls are served
    fail_503_rate: float = 0.0
    fail_429_rate: float = 0.0
    retry_after_s: float = 1.0
    reset_rate: float = 0.0
    hang_rate: float = 0.0
    hang_s: float = 120.0
    garbage_rate: float = 0.0
    length_rate: float = 0.0
    unhealthy: bool = False
    loading: bool = False  # a vLLM still loading its model: /v1/models lists none, calls get 404
    redirect_url: str = "http://127.0.0.1:9/elsewhere"
    flood_mb: int = 50

    def validate(self) -> None:
        """Raise ``SimConfigError`` naming the first knob whose value is out of range."""
        for name in RATE_KNOBS:
            _check(name, 0.0 <= getattr(self, name) <= 1.0, "must be a rate between 0 and 1")
        for name in ("latency_ms", "latency_mean_ms", "latency_sigma", "retry_after_s", "hang_s"):
            _check(name, 0.0 <= getattr(self, name) < float("inf"), "must be a finite number >= 0")
        _check("capacity", self.capacity >= 1, "must be >= 1")
        _check("flood_mb", 1 <= self.flood_mb <= 4096, "must be 1..4096")
        _check("max_model_len", self.max_model_len >= 1, "must be >= 1")
        _check("port", 0 <= self.port <= 65535, "must be a port number 0..65535")
        for name in ("model", "llamaguard_model", "moderation_model"):
            _check(name, bool(getattr(self, name).strip()), "must not be empty")
        _check("llamaguard_model", self.llamaguard_model != self.model, "must differ from model")
        _check("error_shape", self.error_shape in ERROR_SHAPES, f"must be one of {', '.join(ERROR_SHAPES)}")
        _check(
            "latency_dist", self.latency_dist in LATENCY_DISTS, f"must be one of {', '.join(LATENCY_DISTS)}"
        )

    def to_json(self) -> dict[str, Any]:
        """The knobs as a JSON object; the API key is masked so admin replies never echo a secret."""
        data = dataclasses.asdict(self)
        if self.api_key is not None:
            data["api_key"] = "***"
        return data


def _check(name: str, ok: bool, problem: str) -> None:
    if not ok:
        raise SimConfigError(f"{name} {problem}")


def _coerce(name: str, kind: str, value: object) -> object:
    """Check one JSON value against the knob's declared type; ints are accepted for float knobs."""
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        ok = False
    elif kind == "str | None":
        ok = value is None or isinstance(value, str)
    else:  # str and the Literal choices, whose allowed values validate() checks
        ok = isinstance(value, str)
    if not ok:
        raise SimConfigError(f"{name} must be of type {kind}, got {type(value).__name__}")
    return value


def apply_update(config: SimConfig, patch: Mapping[str, object]) -> None:
    """Apply a partial update of knobs to ``config`` in place, all or nothing; raises ``SimConfigError``."""
    kinds = {f.name: str(f.type) for f in dataclasses.fields(SimConfig)}
    changes: dict[str, Any] = {}
    for name, value in patch.items():
        if name not in kinds:
            raise SimConfigError(f"unknown knob {name!r}")
        if name in STARTUP_ONLY_KNOBS:
            raise SimConfigError(f"{name} can only be set at start-up")
        changes[name] = _coerce(name, kinds[name], value)
    # Validate a copy first so a bad patch leaves the live config untouched.
    dataclasses.replace(config, **changes).validate()
    for name, value in changes.items():
        setattr(config, name, value)


def _typed(parse: Callable[[str], Any], check: Callable[[Any], bool], problem: str) -> Callable[[str], Any]:
    def convert(raw: str) -> Any:
        try:
            value = parse(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} {problem}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{raw!r} {problem}")
        return value

    return convert


_RATE = _typed(float, lambda v: 0.0 <= v <= 1.0, "must be a rate between 0 and 1")
_NON_NEGATIVE = _typed(float, lambda v: 0.0 <= v < float("inf"), "must be a finite number >= 0")
_POSITIVE_INT = _typed(int, lambda v: v >= 1, "must be an integer >= 1")
_PORT = _typed(int, lambda v: 0 <= v <= 65535, "must be a port number 0..65535")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add one flag per ``SimConfig`` knob; each flag's dest is the knob's name."""
    d = SimConfig()
    add = parser.add_argument
    add("--host", default=d.host, help="address to bind (default %(default)s)")
    add("--port", type=_PORT, default=d.port, help="port to bind, 0 picks a free one (default %(default)s)")
    add("--model", default=d.model, help="Qwen3Guard model served (default %(default)s)")
    add(
        "--llamaguard-model",
        default=d.llamaguard_model,
        help="Llama Guard model served (default %(default)s)",
    )
    add(
        "--moderation-model",
        default=d.moderation_model,
        help="model of /v1/moderations (default %(default)s)",
    )
    add(
        "--flip-share",
        type=_RATE,
        default=d.flip_share,
        help="share of texts whose verdict is turned over (a guard that disagrees)",
    )
    add("--api-key", default=d.api_key, help="require 'Authorization: Bearer KEY' on /v1 routes")
    add(
        "--error-shape",
        choices=ERROR_SHAPES,
        default=d.error_shape,
        help="nested: vLLM >= 0.10.1; flat: older",
    )
    add("--max-model-len", type=_POSITIVE_INT, default=d.max_model_len, help="context window in tokens")
    add("--latency-ms", type=_NON_NEGATIVE, default=d.latency_ms, help="fixed latency per call")
    add("--latency-dist", choices=LATENCY_DISTS, default=d.latency_dist, help="latency distribution")
    add("--latency-mean-ms", type=_NON_NEGATIVE, default=d.latency_mean_ms, help="lognormal mean latency")
    add("--latency-sigma", type=_NON_NEGATIVE, default=d.latency_sigma, help="lognormal sigma")
    add(
        "--latency-from-text",
        action="store_true",
        default=d.latency_from_text,
        help="draw each lognormal latency from a hash of the text, not the RNG",
    )
    add("--seed", type=int, default=d.seed, help="seed of the latency and fault RNG")
    add("--capacity", type=_POSITIVE_INT, default=d.capacity, help="calls processed at once; others queue")
    add(
        "--reject-above-capacity",
        action="store_true",
        default=d.reject_above_capacity,
        help="answer 429 instead of queueing when --capacity calls are being served",
    )
    add("--fail-503-rate", type=_RATE, default=d.fail_503_rate, help="share of calls answered 503")
    add("--fail-429-rate", type=_RATE, default=d.fail_429_rate, help="share of calls answered 429")
    add("--retry-after-s", type=_NON_NEGATIVE, default=d.retry_after_s, help="Retry-After sent with 429")
    add("--reset-rate", type=_RATE, default=d.reset_rate, help="share of connections dropped unanswered")
    add("--hang-rate", type=_RATE, default=d.hang_rate, help="share of calls delayed by --hang-s")
    add("--hang-s", type=_NON_NEGATIVE, default=d.hang_s, help="delay of a hanging call")
    add("--garbage-rate", type=_RATE, default=d.garbage_rate, help="share of 200s without a Safety line")
    add(
        "--length-rate",
        type=_RATE,
        default=d.length_rate,
        help="share of 200s cut off (finish_reason length)",
    )
    add("--unhealthy", action="store_true", default=d.unhealthy, help="GET /health answers 503")
    add("--loading", action="store_true", default=d.loading, help="list no model and 404 every call")
    add("--redirect-url", default=d.redirect_url, help="Location of the [[sim:redirect]] fault's 307")
    add("--flood-mb", type=_POSITIVE_INT, default=d.flood_mb, help="MiB the [[sim:flood]] fault streams")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The ``SimConfig`` described by flags added with ``configure_parser``; validated."""
    config = SimConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SimConfig)})
    config.validate()
    return config
