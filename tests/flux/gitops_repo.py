"""The configuration repository of manifests/flux-example, as the tests commit it: built from the files users
start from (manifests/samples/), with the test's kas, token and namespace, and the example's
`gitlab-agents` Kustomization pointed at it.

Only what a test cannot have is changed: the kas address and token, the namespace, the GitRepository's
name and URL (a repository on loopback, without credentials), SOPS decryption (no age key here: the token
Secret is committed in clear, never do that outside a test) and `dependsOn` (the operator runs as a process,
not from Flux).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "manifests" / "flux-example"
SAMPLES = REPO_ROOT / "manifests" / "samples"
AGENT_NAME = "team-a"
"""The GitLabAgent of manifests/samples/gitlabagent.yaml."""


def _documents(path: Path) -> list[dict[str, Any]]:
    return [dict(d) for d in yaml.safe_load_all(path.read_text()) if d]


def example_kustomization(namespace: str, source: str, timeout: str = "60s") -> dict[str, Any]:
    """The example's `gitlab-agents` Kustomization, in `namespace`, reading GitRepository `source`."""
    (found,) = [
        d
        for d in _documents(EXAMPLE / "flux-kustomization.yaml")
        if d["kind"] == "Kustomization" and d["metadata"]["name"] == "gitlab-agents"
    ]
    kustomization = copy.deepcopy(found)
    kustomization["metadata"]["namespace"] = namespace
    kustomization["spec"]["sourceRef"]["name"] = source
    kustomization["spec"]["timeout"] = timeout
    kustomization["spec"].pop("decryption", None)
    kustomization["spec"].pop("dependsOn", None)
    return kustomization


def example_path() -> str:
    """Where the example's `gitlab-agents` Kustomization reads the agents (`./clusters/.../gitlab-agents`)."""
    return str(example_kustomization("x", "x")["spec"]["path"]).removeprefix("./")


def team_files(namespace: str, kas_address: str, token: str) -> dict[str, str]:
    """`<example path>/team-a/*.yaml`: manifests/samples' GitLabAgent, Secret, ServiceAccount + RBAC."""
    team = f"{example_path()}/{AGENT_NAME}"
    files: dict[str, str] = {}
    for sample in ("gitlabagent.yaml", "secret.yaml", "serviceaccount.yaml"):
        documents = _documents(SAMPLES / sample)
        for document in documents:
            document["metadata"]["namespace"] = namespace
            if document["kind"] == "GitLabAgent":
                document["spec"]["kasAddress"] = kas_address
            if document["kind"] == "Secret":
                document["stringData"]["token"] = token
            for subject in document.get("subjects", ()):
                subject["namespace"] = namespace
        files[f"{team}/{sample}"] = yaml.safe_dump_all(documents, sort_keys=False)
    return files
