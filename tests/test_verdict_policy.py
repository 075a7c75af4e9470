"""The verdict policy: every verdict gets allow, block or review, decided from GUARDQ_POLICY_* in one place."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from worker.config.settings import Settings, SettingsError
from worker.core.policy import Policy, parse_overrides
from worker.core.verdict import stored_for_publish


def _policy(**env: str) -> Policy:
    return Settings.load({f"GUARDQ_{name.upper()}": value for name, value in env.items()}).policy


def test_defaults_allow_safe_review_controversial_and_block_unsafe() -> None:
    policy = _policy()
    assert policy.action("safe", []) == "allow"
    assert policy.action("controversial", ["Politically Sensitive Topics"]) == "review"
    assert policy.action("unsafe", ["Violent"]) == "block"
    assert policy.action("unsafe", []) == "block"


def test_a_category_override_alone_decides_and_the_strictest_category_wins() -> None:
    policy = _policy(policy_categories="PII=review,Jailbreak=block")
    assert policy.action("unsafe", ["PII"]) == "review"
    assert policy.action("unsafe", ["PII", "Violent"]) == "block"  # Violent takes POLICY_UNSAFE
    assert policy.action("unsafe", ["PII", "Jailbreak"]) == "block"


def test_overrides_apply_to_unsafe_verdicts_only() -> None:
    policy = _policy(policy_categories="Politically Sensitive Topics=allow", policy_controversial="block")
    assert policy.action("controversial", ["Politically Sensitive Topics"]) == "block"
    assert policy.action("unsafe", ["Politically Sensitive Topics"]) == "allow"
    assert policy.action("safe", ["Politically Sensitive Topics"]) == "allow"


def test_a_lenient_unsafe_policy_is_still_overridden_upwards_by_a_category() -> None:
    policy = _policy(policy_unsafe="review", policy_categories="Violent=block")
    assert policy.action("unsafe", ["PII"]) == "review"
    assert policy.action("unsafe", ["PII", "Violent"]) == "block"


def test_actions_are_read_case_insensitively_and_spaces_around_pairs_are_ignored() -> None:
    assert parse_overrides(" PII = Review , Jailbreak=BLOCK ,") == ("PII=review", "Jailbreak=block")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GUARDQ_POLICY_UNSAFE": "deny"}, "GUARDQ_POLICY_UNSAFE='deny'"),
        ({"GUARDQ_POLICY_CONTROVERSIAL": ""}, "GUARDQ_POLICY_CONTROVERSIAL=''"),
        ({"GUARDQ_POLICY_CATEGORIES": "PII"}, "is not Category=action"),
        ({"GUARDQ_POLICY_CATEGORIES": "PII=review,PII=block"}, "given twice"),
        (
            {"GUARDQ_POLICY_CATEGORIES": "Privacy=review"},
            "'Privacy', not a category of GUARDQ_GUARD_BACKEND=qwen3guard",
        ),
        (
            {"GUARDQ_GUARD_BACKEND": "llamaguard", "GUARDQ_POLICY_CATEGORIES": "PII=review"},
            "'PII', not a category of GUARDQ_GUARD_BACKEND=llamaguard",
        ),
    ],
)
def test_a_bad_policy_is_one_line_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.load(env)
    assert named in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("backend", "overrides", "categories", "action"),
    [
        ("llamaguard", "Privacy=review", ["Privacy"], "review"),
        ("llamaguard", "Privacy=review", ["Violent Crimes", "Privacy"], "block"),
        ("openai-moderation", "harassment=review,self-harm/intent=block", ["harassment"], "review"),
        ("openai-moderation", "harassment=allow", ["harassment", "self-harm/intent"], "block"),
    ],
)
def test_each_backend_s_taxonomy_is_accepted(
    backend: str, overrides: str, categories: list[str], action: str
) -> None:
    assert _policy(guard_backend=backend, policy_categories=overrides).action("unsafe", categories) == action


def test_each_backend_names_its_own_default_model_unless_one_is_set() -> None:
    assert Settings.load({"GUARDQ_GUARD_BACKEND": "llamaguard"}).guard_model == "meta-llama/Llama-Guard-4-12B"
    assert (
        Settings.load({"GUARDQ_GUARD_BACKEND": "openai-moderation"}).guard_model == "omni-moderation-latest"
    )
    assert Settings.load({}).guard_model == "Qwen/Qwen3Guard-Gen-8B"
    assert Settings.load({"GUARDQ_GUARD_BACKEND": "llamaguard", "GUARDQ_GUARD_MODEL": "m"}).guard_model == "m"


def test_a_verdict_stored_before_policies_gains_the_current_action_when_published_again() -> None:
    legacy = {
        "id": "a",
        "label": "unsafe",
        "categories": ["PII"],
        "trace_id": "ab" * 16,
        "metadata": {"n": 2**70},
    }
    document, trace_id = stored_for_publish(
        json.dumps(legacy).encode(), _policy(policy_categories="PII=review")
    )
    assert trace_id == "ab" * 16
    assert json.loads(document) == legacy | {"action": "review"}


def test_a_stored_action_is_never_changed_by_a_later_policy() -> None:
    stored = json.dumps({"id": "a", "label": "unsafe", "action": "block", "categories": ["PII"]}).encode()
    document, _ = stored_for_publish(stored, _policy(policy_categories="PII=allow"))
    assert document == stored


def test_guardq_run_with_a_category_the_backend_lacks_exits_2_in_one_line() -> None:
    env = {**os.environ, "GUARDQ_GUARD_BACKEND": "llamaguard", "GUARDQ_POLICY_CATEGORIES": "PII=review"}
    result = subprocess.run(
        [sys.executable, "-m", "worker", "run"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "'PII', not a category of" in result.stderr
    assert "Privacy" in result.stderr  # the categories it does have are listed
