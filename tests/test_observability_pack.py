"""deploy/monitoring and deploy/k8s/monitoring: the Grafana dashboard, the alert rules (plain and as a
PrometheusRule, kept equal) and the PodMonitor are well formed, and every metric they name is exported by
a running worker."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, publish, running_worker, wait_for_verdicts

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "monitoring" / "guardq-dashboard.json"
RULES = ROOT / "deploy" / "monitoring" / "guardq-rules.yml"
K8S = ROOT / "deploy" / "k8s"
METRIC = re.compile(r"\bguardq_[a-z_]+\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def _rules() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return document


def _expressions() -> list[str]:
    exprs = [target["expr"] for panel in _dashboard()["panels"] for target in panel["targets"]]
    return exprs + [rule["expr"] for group in _rules()["groups"] for rule in group["rules"]]


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = _dashboard()
    assert dashboard["title"] == "guardq" and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    panels = dashboard["panels"]
    assert len(panels) >= 10 and len({panel["id"] for panel in panels}) == len(panels)
    assert all(panel["targets"] and panel["gridPos"]["w"] > 0 for panel in panels)
    titles = " ".join(panel["title"].lower() for panel in panels)
    for topic in (
        "verdicts",
        "outcomes",
        "dead letters",
        "guard latency",
        "guard errors",
        "breaker",
        "concurrency",
        "lag",
        "age",
    ):
        assert topic in titles, topic


def test_every_alert_the_issue_asks_for_is_a_rule_with_a_summary() -> None:
    rules = {rule["alert"]: rule for group in _rules()["groups"] for rule in group["rules"]}
    for name in (
        "GuardqBreakerOpen",
        "GuardqLagGrowing",
        "GuardqDeadLettersRising",
        "GuardqNoVerdicts",
        "GuardqWorkerNotReady",
    ):
        assert name in rules, name
        assert rules[name]["annotations"]["summary"] and rules[name]["labels"]["severity"] in {
            "warning",
            "critical",
        }
        assert re.fullmatch(r"\d+[smh]", rules[name]["for"])


def test_the_prometheus_rule_holds_exactly_the_plain_rules() -> None:
    rule = yaml.safe_load((K8S / "monitoring" / "prometheusrule.yaml").read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"] == _rules()


def test_the_pod_monitor_scrapes_the_workers_http_port() -> None:
    monitor = yaml.safe_load((K8S / "monitoring" / "podmonitor.yaml").read_text())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    deployment = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ports = {
        port["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for port in c["ports"]
    }
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    kustomization = yaml.safe_load((K8S / "monitoring" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == ["podmonitor.yaml", "prometheusrule.yaml"]


def test_the_pdb_lets_a_drain_evict_unready_workers() -> None:
    pdb = yaml.safe_load((K8S / "base" / "pdb.yaml").read_text())
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def _exported(exposition: str) -> set[str]:
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.mark.integration
async def test_every_metric_the_dashboard_and_rules_name_is_exported(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    named = {name for expr in _expressions() for name in METRIC.findall(expr)}
    assert len(named) >= 12
    settings = make_settings()
    async with running_worker(settings) as worker:
        await publish(settings, [{"id": f"o{i}", "text": f"observed {i}"} for i in range(5)])
        await wait_for_verdicts(settings, [f"o{i}" for i in range(5)], timeout_s=30)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{worker.http_port}/metrics") as reply,
        ):
            exported = _exported(await reply.text())
    missing = []
    for name in sorted(named):
        base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
        if name not in exported and base not in exported:
            missing.append(name)
    assert missing == []
    assert "guardq_build_info" in exported and "guardq_verdict_age_seconds_bucket" in exported
