"""deploy/: the Kubernetes manifests and the compose file are valid against their published schemas (bundled
in kubernetes-validate and check-jsonschema: no network) and agree with the image and with each other."""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate (the test extra)")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("check_jsonschema", reason="needs check-jsonschema (the test extra)")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest release still maintained upstream when these were written


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _image_defaults() -> tuple[set[int], dict[str, str]]:
    """The ports the Containerfile exposes and the serve options its ENV sets."""
    text = (ROOT / "Containerfile").read_text()
    ports = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()}
    env = dict(re.findall(r"(ANGER_STREAM_SERVE_\w+)=(\S+)", text))
    return ports, env


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _resources() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in _documents(K8S / name)]


def test_kustomization_names_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_kubernetes_manifests_are_valid() -> None:
    kinds = []
    for resource in _resources():
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)  # raises with the path if not
        kinds.append(resource["kind"])
    assert sorted(kinds) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]


def test_the_validator_refuses_a_broken_manifest() -> None:
    (deployment,) = _documents(K8S / "deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = [8765]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["misspelt"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_deployment_matches_the_image() -> None:
    exposed, env = _image_defaults()
    by_kind = {r["kind"]: r for r in _resources()}
    deployment, service, budget = by_kind["Deployment"], by_kind["Service"], by_kind["PodDisruptionBudget"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(ports.values()) == exposed
    assert ports == {name: _port(env[f"ANGER_STREAM_SERVE_{name.upper()}"]) for name in ports}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001 and "USER 10001" in (ROOT / "Containerfile").read_text()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    labels = pod["metadata"]["labels"]
    for selector in (deployment["spec"]["selector"], service["spec"], budget["spec"]["selector"]):
        assert (selector.get("matchLabels") or selector["selector"]).items() <= labels.items()
    workers = next(int(e["value"]) for e in container["env"] if e["name"] == "ANGER_STREAM_SERVE_WORKERS")
    assert float(container["resources"]["limits"]["cpu"]) == workers  # one worker per core (docs/telephony.md)
    settings = json.loads(by_kind["ConfigMap"]["data"]["settings.json"])
    assert settings.keys() <= {"threshold", "patience", "hysteresis", "min_dbfs", "model"}


def test_compose_file_is_valid_and_consistent() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # the YAML anchors resolved
    schema = json.loads(files("check_jsonschema.builtin_schemas").joinpath("vendor/compose-spec.json").read_text())
    jsonschema.validate(compose, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**compose, "services": {"anger1": {**compose["services"]["anger1"], "port": [1]}}}, schema)
    services = compose["services"]
    replicas = sorted(name for name, s in services.items() if "Containerfile" in str(s.get("build")))
    assert replicas == ["anger1", "anger2"]
    exposed, env = _image_defaults()
    for name, protocol in (("lb-audiosocket", "AUDIOSOCKET"), ("lb-mediastream", "MEDIASTREAM")):
        lb = services[name]
        cfg = lb["volumes"][0].split(":")[0]
        assert (DEPLOY / cfg).is_file() and "${ANGER1" in (DEPLOY / cfg).read_text()
        port = _port(env[f"ANGER_STREAM_SERVE_{protocol}"])
        assert {lb["environment"]["ANGER1"], lb["environment"]["ANGER2"]} == {f"{r}:{port}" for r in replicas}
        assert _port(lb["environment"]["LB_BIND"]) == port
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    metrics = _port(env["ANGER_STREAM_SERVE_METRICS"])
    assert job["static_configs"][0]["targets"] == [f"{r}:{metrics}" for r in replicas]
    assert {metrics} | {_port(env[f"ANGER_STREAM_SERVE_{p}"]) for p in ("AUDIOSOCKET", "MEDIASTREAM")} == exposed
