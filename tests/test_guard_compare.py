"""`guardq guard compare` against two simulators that disagree on a known share of texts: the share is
reported and the exit code follows the thresholds; the bundled golden set is a usable one."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import GuardSim, start_guard_sim, stop_process
from worker.dev.sim.verdicts import is_flipped
from worker.ops.compare import golden_set

pytestmark = pytest.mark.integration

SHARE = 0.1
TEXTS = [f"an ordinary question, number {i}" for i in range(200)]


@pytest.fixture(scope="module")
def disagreeing() -> Iterator[GuardSim]:
    """A second simulator whose verdict on SHARE of the texts is turned over, and 20 ms slower."""
    sim, process = start_guard_sim("--flip-share", str(SHARE), "--latency-ms", "20")
    yield sim
    stop_process(process)


@pytest.fixture(scope="module")
def slow() -> Iterator[GuardSim]:
    """A simulator that agrees, but takes a second per call."""
    sim, process = start_guard_sim("--latency-ms", "1000")
    yield sim
    stop_process(process)


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    path = tmp_path / "golden.jsonl"
    path.write_text("".join(json.dumps({"id": f"g{i}", "text": text}) + "\n" for i, text in enumerate(TEXTS)))
    return path


def _compare(a: GuardSim, b: GuardSim, *flags: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "worker",
        "guard",
        "compare",
        "--a",
        a.base_url,
        "--b",
        b.base_url,
        *flags,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_share_of_disagreement_is_reported_with_every_disagreement(
    guard_sim_process: GuardSim, disagreeing: GuardSim, golden: Path
) -> None:
    flipped = {f"g{i}" for i, text in enumerate(TEXTS) if is_flipped(text, SHARE)}
    assert 10 <= len(flipped) <= 30  # the known share, for this set
    result = _compare(
        guard_sim_process, disagreeing, "--golden", str(golden), "--json", "--max-p99-ratio", "1000"
    )
    report = json.loads(result.stdout)
    assert report["texts"] == len(TEXTS)
    assert report["label_agreement"] == pytest.approx(1 - len(flipped) / len(TEXTS), abs=1e-4)
    assert {entry["id"] for entry in report["disagreements"]} == flipped
    assert all(entry["a"] == "safe" and entry["b"].startswith("unsafe") for entry in report["disagreements"])
    assert report["latency"]["b"]["p50_ms"] >= 20
    assert result.returncode == 1 and not report["passed"]


def test_the_exit_code_follows_the_agreement_threshold(
    guard_sim_process: GuardSim, disagreeing: GuardSim, golden: Path
) -> None:
    agreement = 1 - sum(is_flipped(text, SHARE) for text in TEXTS) / len(TEXTS)
    lenient = _compare(
        guard_sim_process,
        disagreeing,
        "--golden",
        str(golden),
        "--min-agreement",
        f"{agreement - 0.01:.4f}",
        "--max-p99-ratio",
        "1000",
    )
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    assert "PASS" in lenient.stdout
    strict = _compare(
        guard_sim_process,
        disagreeing,
        "--golden",
        str(golden),
        "--min-agreement",
        f"{agreement + 0.01:.4f}",
        "--max-p99-ratio",
        "1000",
    )
    assert strict.returncode == 1
    assert "label agreement" in strict.stdout and "below the minimum" in strict.stdout


def test_the_exit_code_follows_the_p99_threshold(
    guard_sim_process: GuardSim, slow: GuardSim, tmp_path: Path
) -> None:
    few = tmp_path / "few.jsonl"
    few.write_text("".join(json.dumps({"id": f"g{i}", "text": TEXTS[i]}) + "\n" for i in range(16)))
    too_slow = _compare(guard_sim_process, slow, "--golden", str(few), "--concurrency", "16")
    assert too_slow.returncode == 1
    assert "B's p99" in too_slow.stdout and "label agreement:    100.0%" in too_slow.stdout
    tolerated = _compare(
        guard_sim_process, slow, "--golden", str(few), "--concurrency", "16", "--max-p99-ratio", "1e6"
    )
    assert tolerated.returncode == 0, tolerated.stdout


def test_another_backend_is_compared_on_labels(guard_sim_process: GuardSim, golden: Path) -> None:
    result = _compare(
        guard_sim_process,
        guard_sim_process,
        "--golden",
        str(golden),
        "--b-backend",
        "llamaguard",
        "--json",
        "--max-p99-ratio",
        "100",
    )
    report = json.loads(result.stdout)
    assert "llamaguard meta-llama/Llama-Guard-4-12B" in report["b"]
    assert report["label_agreement"] == 1.0 and result.returncode == 0


def test_an_unusable_guard_or_golden_set_is_one_line_and_exit_1(
    guard_sim_process: GuardSim, tmp_path: Path
) -> None:
    down = _compare(guard_sim_process, GuardSim("http://127.0.0.1:9/v1"), "--timeout", "2")
    assert down.returncode == 1 and "guard B cannot be used" in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok"}\n{"id": "b"}\n')
    result = _compare(guard_sim_process, guard_sim_process, "--golden", str(bad))
    assert result.returncode == 1 and "line 2" in result.stderr and "'text'" in result.stderr


def test_bad_flags_are_usage_errors() -> None:
    for flags in (
        ["--a", "ftp://x", "--b", "http://x/v1"],
        ["--a", "http://x/v1"],
        ["--a", "http://x/v1", "--b", "http://y/v1", "--min-agreement", "2"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "worker", "guard", "compare", *flags],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, flags


def test_the_bundled_golden_set_covers_what_a_switch_must_be_checked_on() -> None:
    items = golden_set()
    assert len(items) >= 200
    path = Path(__file__).resolve().parent.parent / "worker" / "guard" / "data" / "golden.jsonl"
    groups = Counter(json.loads(line)["metadata"]["group"] for line in path.read_text().splitlines())
    assert groups["safe"] >= 50
    assert groups["political"] >= 20 and groups["mixed-language"] >= 20 and groups["jailbreak"] >= 20
    kinds = Counter(item.request.kind for item in items)
    assert kinds["response"] >= 40 and kinds["prompt"] >= 150
    assert any(any(ord(char) > 0x3000 for char in item.request.text) for item in items)  # CJK among them
