"""manifests/flux-example: what Flux needs from it holds (no Flux here, so its references are checked as
Flux resolves them): every sourceRef and dependsOn names an object of the example, the operator's path
is a kustomization that builds, the pinned tag is this release, and both Kustomizations wait for health."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "manifests" / "flux-example"


def _objects() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(EXAMPLE.glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            found[(obj["kind"], obj["metadata"]["name"])] = obj
    return found


def test_every_reference_names_an_object_of_the_example_in_its_namespace() -> None:
    objects = _objects()
    kustomizations = [o for (kind, _), o in objects.items() if kind == "Kustomization"]
    assert len(kustomizations) == 2
    for kustomization in kustomizations:
        namespace = kustomization["metadata"]["namespace"]
        source = kustomization["spec"]["sourceRef"]
        assert objects[(source["kind"], source["name"])]["metadata"]["namespace"] == namespace
        for dependency in kustomization["spec"].get("dependsOn", []):
            assert objects[("Kustomization", dependency["name"])]["metadata"]["namespace"] == namespace
    agents = objects[("Kustomization", "gitlab-agents")]
    assert agents["spec"]["dependsOn"] == [{"name": "gitlab-agent-operator"}]  # CRD before GitLabAgents


def test_both_kustomizations_wait_for_health_and_prune() -> None:
    for (kind, name), obj in _objects().items():
        if kind == "Kustomization":
            assert obj["spec"]["wait"] is True, name  # kstatus: Ready + observedGeneration of each object
            assert obj["spec"]["prune"] is True, name


def test_the_operator_path_builds_and_the_tag_is_this_release() -> None:
    objects = _objects()
    operator = objects[("Kustomization", "gitlab-agent-operator")]
    source = objects[(operator["spec"]["sourceRef"]["kind"], operator["spec"]["sourceRef"]["name"])]
    built = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / operator["spec"]["path"])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    kinds = {o["kind"] for o in yaml.safe_load_all(built.stdout)}
    assert {"CustomResourceDefinition", "Deployment"} <= kinds
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert source["spec"]["ref"] == {"tag": f"v{version}"}
