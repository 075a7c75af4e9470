"""Static checks of deploy/: container image, compose stack, Kubernetes manifests (the guard switch
script: ``test_guard_switch_script``).

Offline, with no container engine and no cluster. Validators: Kubernetes resources against the
schemas bundled in ``kubernetes-validate``; the compose file against the compose-spec JSON schema that
``check-jsonschema`` vendors; ``kubectl kustomize`` renders the overlays where kubectl is installed
(a small merge of the overlays' patches stands in where it is not). KEDA resources are CRDs without a bundled schema: hand-written rules check them.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from worker.config.settings import SPECS

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
SPEC_ENVS = {spec.env: spec.default for spec in SPECS}
HTTP_PORT = int(SPEC_ENVS["GUARDQ_HTTP_PORT"])
K8S_VERSION = "1.31.0"
Doc = dict[str, Any]


def _docs(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _find(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _merge(base: Any, patch: Any) -> Any:
    """Strategic-merge subset used by the overlays: maps merge, lists of named maps merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        by_name = {item["name"]: item for item in base}
        extra = [item for item in patch if item["name"] not in by_name]
        return [_merge(i, next((p for p in patch if p["name"] == i["name"]), {})) for i in base] + extra
    return patch


def _hand_render(overlay: Path) -> list[Doc]:
    """Apply an overlay as its kustomization asks: patches, namespace, images (labels left out)."""
    kust = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    docs: list[Doc] = []
    for entry in kust["resources"]:
        inner = yaml.safe_load((overlay / entry / "kustomization.yaml").read_text())
        docs += [d for r in inner["resources"] for d in _docs(overlay / entry / r)]
    for entry in kust.get("patches", []):
        for patch in _docs(overlay / entry["path"]):
            target = _find(docs, patch["kind"], patch["metadata"]["name"])
            docs[docs.index(target)] = _merge(target, patch)
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kust.get("images", [])}
    for doc in docs:
        doc["metadata"]["namespace"] = kust["namespace"]
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            container["image"] = images.get(container["image"].split(":")[0], container["image"])
    return docs


def _render(overlay: str) -> list[Doc]:
    path = K8S / "overlays" / overlay
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return _hand_render(path)
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def _worker(docs: list[Doc]) -> tuple[Doc, Doc, dict[str, str]]:
    """The worker Deployment, its container and its effective GUARDQ_* settings from the ConfigMap."""
    deployment = _find(docs, "Deployment", "guardq")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    config = _find(docs, "ConfigMap", "guardq-config")["data"]
    return deployment, container, {**SPEC_ENVS, **config}


def _compose() -> Doc:
    doc: Doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return doc


@pytest.mark.parametrize(
    "path",
    sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]),
    ids=lambda p: str(p.relative_to(DEPLOY)),
)
def test_every_yaml_file_parses(path: Path) -> None:
    docs = _docs(path)
    assert docs and all(isinstance(doc, dict) for doc in docs)


def test_kubernetes_resources_validate_against_bundled_schemas() -> None:
    raw = [
        d
        for p in sorted((K8S / "base").glob("*.yaml")) + sorted((K8S / "guard").glob("*.yaml"))
        for d in _docs(p)
    ]
    rendered = [d for overlay in OVERLAYS for d in _render(overlay)]
    validated, errors = 0, []
    for doc in raw + rendered:
        if doc["apiVersion"].startswith(("keda.sh/", "kustomize.config.k8s.io/")):
            continue  # a CRD and kustomize's own file: no bundled schema (KEDA: hand rules below)
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {str(exc).splitlines()[0]}")
        validated += 1
    assert errors == []
    assert validated >= 2 * 10  # base and guard (10 resources) plus both overlays rendered


def test_kustomizations_list_existing_paths_and_overlays_build_on_base() -> None:
    for kust_file in K8S.rglob("kustomization.yaml"):
        kust = yaml.safe_load(kust_file.read_text())
        listed = kust.get("resources", []) + [p["path"] for p in kust.get("patches", [])]
        assert listed, kust_file
        for entry in listed:
            assert (kust_file.parent / entry).exists(), f"{kust_file}: {entry} does not exist"
    for overlay in OVERLAYS:
        kust = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
        assert {"../../base", "../../guard"} <= set(kust["resources"])
        assert kust["namespace"].endswith(overlay)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hand_render_matches_kustomize(overlay: str) -> None:
    """The fallback renderer used without kubectl gives what kustomize gives, labels aside."""
    for doc in (rendered := _render(overlay)):
        doc["metadata"].pop("labels", None)
    hand = _hand_render(K8S / "overlays" / overlay)
    for doc in hand:
        doc["metadata"].pop("labels", None)
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(hand, key=key) == sorted(rendered, key=key)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scaler_follows_the_workers_lag_within_the_partition_bound(overlay: str) -> None:
    docs = _render(overlay)
    deployment, _, config = _worker(docs)
    scaled = _find(docs, "ScaledObject", "guardq")["spec"]
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "guardq"}
    assert scaled["minReplicaCount"] == deployment["spec"]["replicas"] <= scaled["maxReplicaCount"]
    assert scaled["maxReplicaCount"] <= int(config["GUARDQ_TOPIC_PARTITIONS"])
    (trigger,) = scaled["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka" and meta["allowIdleConsumers"] == "false"
    assert (
        meta["topic"] == config["GUARDQ_INPUT_TOPIC"] and meta["consumerGroup"] == config["GUARDQ_GROUP_ID"]
    )
    assert meta["bootstrapServers"] == config["GUARDQ_KAFKA_BOOTSTRAP"]
    assert int(meta["lagThreshold"]) > 0 and all(isinstance(v, str) for v in meta.values())
    auth = _find(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]
    secret = _find(docs, "Secret", "guardq-secrets")["stringData"]
    assert {ref["parameter"] for ref in auth["secretTargetRef"]} == {"username", "password"}
    assert all(ref["name"] == "guardq-secrets" and ref["key"] in secret for ref in auth["secretTargetRef"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_ports_use_the_http_port(overlay: str) -> None:
    docs = _render(overlay)
    deployment, container, config = _worker(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": HTTP_PORT} and int(config["GUARDQ_HTTP_PORT"]) == HTTP_PORT
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and ports.get(get["port"], get["port"]) == HTTP_PORT
    service = _find(docs, "Service", "guardq-metrics")["spec"]
    assert service["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert [(p["port"], p["targetPort"]) for p in service["ports"]] == [(HTTP_PORT, "http")]
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(HTTP_PORT)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_outlasts_prestop_and_drain(overlay: str) -> None:
    deployment, container, config = _worker(_render(overlay))
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert grace > int(command[1]) + float(config["GUARDQ_SHUTDOWN_TIMEOUT_S"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_pod_is_hardened_and_bounded(overlay: str) -> None:
    docs = _render(overlay)
    deployment, container, _ = _worker(docs)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(
        container["resources"]["limits"]
    )
    assert container["image"].startswith("registry.example.com/guardq:")
    pdb = _find(docs, "PodDisruptionBudget", "guardq")["spec"]
    assert pdb["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    secret = _find(docs, "Secret", "guardq-secrets")
    assert secret["metadata"]["annotations"]["guardq.io/placeholder"] == "true"
    assert {"GUARDQ_GUARD_API_KEY", "GUARDQ_KAFKA_SASL_PASSWORD", "GUARDQ_REDIS_URL"} <= set(
        secret["stringData"]
    )
    assert all("CHANGE_ME" in value for value in secret["stringData"].values())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_guard_service_selects_exactly_one_colour(overlay: str) -> None:
    docs = _render(overlay)
    selector = _find(docs, "Service", "guard")["spec"]["selector"]
    assert selector["color"] in {"blue", "green"}
    for colour in ("blue", "green"):
        deployment = _find(docs, "Deployment", f"guard-{colour}")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["color"] == colour
        selected = all(labels.get(k) == v for k, v in selector.items())
        assert selected == (colour == selector["color"])
        resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert _worker(docs)[2]["GUARDQ_GUARD_URL"] == "http://guard:8000/v1"


def test_compose_file_validates_against_compose_spec() -> None:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(_compose())
    ]
    assert errors == []


def test_compose_stack_is_wired_together() -> None:
    services: dict[str, Doc] = _compose()["services"]
    assert {"kafka", "redis", "worker", "guard-sim", "vllm", "otel-collector", "jaeger", "prometheus"} <= set(
        services
    )
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for target, rule in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            assert "profiles" not in services[target] or "profiles" in service, (
                f"{name} needs profiled {target}"
            )
            if rule["condition"] == "service_healthy":
                assert not services[target].get("healthcheck", {}).get("disable"), target
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
        for volume in service.get("volumes", []):
            if volume.startswith("./"):
                assert (DEPLOY / volume.split(":")[0]).is_file(), volume
    assert (
        DEPLOY / services["worker"]["build"]["context"] / services["worker"]["build"]["dockerfile"]
    ).is_file()
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 2 and worker["command"] == ["run"]
    assert f"127.0.0.1:{HTTP_PORT}/healthz" in " ".join(worker["healthcheck"]["test"])
    assert _seconds(worker["stop_grace_period"]) > float(worker["environment"]["GUARDQ_SHUTDOWN_TIMEOUT_S"])
    assert services["guard-sim"]["command"][:3] == ["guard-sim", "--host", "0.0.0.0"]
    vllm = services["vllm"]
    assert vllm["profiles"] == ["gpu"] and "Qwen/Qwen3Guard-Gen-8B" in vllm["command"]
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller" and services["kafka"]["image"].startswith(
        "apache/kafka:"
    )
    assert {"PLAINTEXT", "CONTROLLER"} <= {x.split("://")[0] for x in kafka["KAFKA_LISTENERS"].split(",")}


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_otel_collector_and_prometheus_configs_are_consistent() -> None:
    otel: Doc = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    for pipeline in otel["service"]["pipelines"].values():
        for section in ("receivers", "processors", "exporters"):
            assert set(pipeline.get(section, [])) <= set(otel[section]), section
    assert otel["exporters"]["otlp/jaeger"]["endpoint"].split(":")[0] in _compose()["services"]
    prometheus: Doc = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "guardq")
    assert job["metrics_path"] == "/metrics"
    assert job["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": HTTP_PORT, "refresh_interval": "15s"}
    ]


def test_every_guardq_variable_in_deploy_is_a_setting() -> None:
    used: set[str] = set()
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            used |= set(re.findall(r"\bGUARDQ_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    assert len(used) >= 10
    assert used <= set(SPEC_ENVS), f"not in worker.settings.SPECS: {sorted(used - set(SPEC_ENVS))}"


def test_dockerfile_is_multi_stage_non_root_with_healthcheck() -> None:
    lines = [ln.strip() for ln in (DEPLOY / "Dockerfile").read_text().splitlines()]
    assert len([ln for ln in lines if ln.startswith("FROM ")]) >= 2
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert any(ln.startswith("HEALTHCHECK ") for ln in lines)
    assert any("/healthz" in ln for ln in lines) and f"EXPOSE {HTTP_PORT}" in lines
    assert 'ENTRYPOINT ["guardq"]' in lines and 'CMD ["run"]' in lines
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored and {"!worker/", "!pyproject.toml"} <= set(ignored)
