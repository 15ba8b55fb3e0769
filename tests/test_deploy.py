"""The manifests in deploy/ agree with the Dockerfile and with `captcha serve --help`: the image, the
ports, the probes, the user and the arguments (parsed by the real `captcha serve` parser)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from captcha.options import config_from_args
from serving import cli
from serving.config import ServeConfig

yaml = pytest.importorskip("yaml")
ROOT = Path(__file__).resolve().parent.parent
KSERVE_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts what STORAGE_URI names


def _dockerfile() -> dict:
    text = (ROOT / "Dockerfile").read_text()
    instruction = lambda name: re.search(rf"^{name}\s+(.+)$", text, re.M).group(1)  # noqa: E731
    return {
        "entrypoint": json.loads(instruction("ENTRYPOINT")),
        "expose": {int(p) for p in instruction("EXPOSE").split()},
        "tag": re.search(r"docker build -t (\S+) \.", text).group(1),
        "uid": int(re.search(r"useradd .*--uid (\d+)", text).group(1)),
        "healthcheck": json.loads(re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (.+)$", text, re.M).group(1)),
    }


def _serve_config(docker: dict, args: list[str]) -> ServeConfig:
    """What the container runs: the image's ENTRYPOINT (`captcha serve ...`) followed by `args`."""
    assert docker["entrypoint"][:2] == ["captcha", "serve"]
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    config = config_from_args(parser.parse_args(["serve", *docker["entrypoint"][2:], *args]), ServeConfig)
    config.check()
    return config


def _load(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((ROOT / "deploy" / name).read_text()) if doc]


def _check_container(container: dict, pod: dict, docker: dict) -> ServeConfig:
    """What every manifest must get right about the one container; returns its serve config."""
    assert container["image"].split(":")[0] == docker["tag"]
    config = _serve_config(docker, container["args"])
    assert config.host == "0.0.0.0" and config.port in docker["expose"] and config.metrics_port in docker["expose"]
    assert [p["containerPort"] for p in container["ports"]][0] == config.port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == config.port, probe  # grpc.health.v1, SERVING once every process is warm
    assert pod["terminationGracePeriodSeconds"] > config.grace_s + 1  # the server is gone within --grace and a second
    user = container.get("securityContext", {}).get("runAsUser") or pod.get("securityContext", {}).get("runAsUser")
    assert user == docker["uid"]
    if container.get("securityContext", {}).get("readOnlyRootFilesystem"):
        assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}  # the metrics files of the processes
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["CAPTCHA_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    return config


def test_the_dockerfile_health_check_probes_the_served_port() -> None:
    docker = _dockerfile()
    config = _serve_config(docker, ["/models/model.onnx"])
    assert docker["healthcheck"][:3] == ["python", "-m", "serving.health_probe"]
    assert docker["healthcheck"][docker["healthcheck"].index("--address") + 1] == f"127.0.0.1:{config.port}"


def test_kserve_inference_service_runs_our_server() -> None:
    docker = _dockerfile()
    (isvc,) = _load("kserve-inferenceservice.yaml")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"  # the name KServe gives its predictor container
    config = _check_container(container, predictor, docker)
    assert container["ports"][0]["name"] == "h2c"  # HTTP/2 cleartext: gRPC
    env = {e["name"]: e for e in container["env"]}
    assert env["STORAGE_URI"]["value"] and config.models[0].startswith(KSERVE_MODEL_DIR + "/")
    annotations = isvc["metadata"]["annotations"]
    assert int(annotations["prometheus.kserve.io/port"]) == config.metrics_port and annotations["prometheus.kserve.io/path"] == "/metrics"
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]


def test_kubernetes_deployment_and_service_agree() -> None:
    docker = _dockerfile()
    docs = {doc["kind"]: doc for doc in _load("kubernetes.yaml")}
    deployment, service = docs["Deployment"], docs["Service"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    config = _check_container(container, pod["spec"], docker)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert config.models[0].startswith(mounts["models"] + "/")
    assert {v["name"] for v in pod["spec"]["volumes"]} == set(mounts)
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert {p["port"] for p in service["spec"]["ports"]} == {config.port, config.metrics_port}
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == config.metrics_port
