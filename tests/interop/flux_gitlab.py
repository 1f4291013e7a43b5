"""The GitOps push path through GitLab's own kas, shared by tests/interop/test_flux_gitlab_kas.py and
bench/flux_push.py.

- `flux_crd(name)`: a Flux CRD file as a dict, from the scripts/flux-controllers build or else the
  source-controller module in Go's module cache (no network: the module is already there when Go built
  anything of Flux). `install_crd` applies one and waits until it is Established and served.
- `RECEIVER_CRD`: notification.toolkit.fluxcd.io/v1 Receiver, reduced to what agentk's Flux gate and
  informer need (v1 served, Established, a status subresource). notification-controller itself is not
  served by the module proxy here, so its CRD cannot be taken from its module; nothing runs it.
- `allow_gitrepository_patch`: the agent's ServiceAccount may patch GitRepositories in a namespace (the
  module checks it as the agent before it puts the namespace in scope).
- `RequestedAtWatch`: every change of `reconcile.fluxcd.io/requestedAt` on a namespace's GitRepositories,
  from one watch (so two patches in a row count twice even when the second writes the same object).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import yaml

from agent_runtime.kube import KubeAccess
from tests.support.flux import REQUESTED_AT, FluxNotFoundError, find_flux
from tests.support.k8s_cluster import LocalCluster

SOURCE_CONTROLLER: Final = "github.com/fluxcd/source-controller@v1.9.6"
GITREPOSITORIES_CRD: Final = "source.toolkit.fluxcd.io_gitrepositories.yaml"
GITREPOSITORIES: Final = "/apis/source.toolkit.fluxcd.io/v1"
CRD_PATH: Final = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"

RECEIVER_CRD: Final[dict[str, Any]] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "receivers.notification.toolkit.fluxcd.io"},
    "spec": {
        "group": "notification.toolkit.fluxcd.io",
        "names": {
            "kind": "Receiver",
            "listKind": "ReceiverList",
            "plural": "receivers",
            "singular": "receiver",
        },
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}


class FluxCrdNotFoundError(RuntimeError):
    """Neither a scripts/flux-controllers build nor Go's module cache has the CRD."""


def _module_cache_dir() -> Path | None:
    """source-controller's directory in Go's module cache (`go mod download` answers from the cache)."""
    try:
        done = subprocess.run(
            ["go", "mod", "download", "-json", SOURCE_CONTROLLER],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "GOFLAGS": "-mod=mod"},
        )
        directory = json.loads(done.stdout).get("Dir")
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    return Path(directory) / "config" / "crd" / "bases" if directory else None


def flux_crd(name: str = GITREPOSITORIES_CRD) -> dict[str, Any]:
    """The CRD file `name` of Flux's build, else of source-controller's module."""
    try:
        directory: Path | None = find_flux().crds
    except FluxNotFoundError:
        directory = _module_cache_dir()
    path = directory / name if directory is not None else None
    if path is None or not path.is_file():
        raise FluxCrdNotFoundError(f"Flux's CRD {name} not found: run scripts/flux-controllers")
    crd: dict[str, Any] = yaml.safe_load(path.read_text())
    return crd


def install_crd(cluster: LocalCluster, crd: dict[str, Any], timeout: float = 30.0) -> None:
    """Create `crd` (kept when it exists) and wait until it is Established and its v1 lists."""
    status, answer = cluster.request("POST", CRD_PATH, crd)
    if status not in (201, 409):
        raise RuntimeError(f"creating CRD {crd['metadata']['name']}: {status} {answer}")
    name, group = crd["metadata"]["name"], crd["spec"]["group"]
    plural = crd["spec"]["names"]["plural"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, current = cluster.request("GET", f"{CRD_PATH}/{name}")
        # A new CRD's status may read `conditions: null` for a moment.
        conditions = ((current or {}).get("status") or {}).get("conditions") or []
        established = any(c["type"] == "Established" and c["status"] == "True" for c in conditions)
        if established and cluster.request("GET", f"/apis/{group}/v1/{plural}")[0] == 200:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the CRD {name} did not become established in {timeout:.0f}s")


def allow_gitrepository_patch(cluster: LocalCluster, namespace: str, service_account: str) -> None:
    """ServiceAccount `service_account` of `namespace` (created) may patch GitRepositories there."""
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    objects = (
        (f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": service_account}}),
        (
            f"{rbac}/roles",
            {
                "metadata": {"name": "flux-trigger"},
                "rules": [
                    {
                        "apiGroups": ["source.toolkit.fluxcd.io"],
                        "resources": ["gitrepositories"],
                        "verbs": ["patch"],
                    }
                ],
            },
        ),
        (
            f"{rbac}/rolebindings",
            {
                "metadata": {"name": "flux-trigger"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "flux-trigger"},
                "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
            },
        ),
    )
    for path, body in objects:
        status, answer = cluster.request("POST", path, body)
        if status not in (201, 409):
            raise RuntimeError(f"POST {path}: {status} {answer}")


@dataclass(frozen=True)
class Change:
    """A GitRepository's requestedAt took a new value, seen at `at` (time.monotonic())."""

    name: str
    value: str
    at: float


class RequestedAtWatch:
    """Watches the GitRepositories of `namespace`; `changes` lists each new requestedAt value."""

    def __init__(self, kube: KubeAccess, namespace: str) -> None:
        self._kube = kube
        self._path = f"{GITREPOSITORIES}/namespaces/{namespace}/gitrepositories"
        self.changes: list[Change] = []
        self._ready = asyncio.Event()

    def of(self, name: str) -> list[Change]:
        return [c for c in self.changes if c.name == name]

    def counts(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for change in self.changes:
            totals[change.name] = totals.get(change.name, 0) + 1
        return totals

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def run(self) -> None:
        """List, then watch from the list's resourceVersion until cancelled."""
        kube = self._kube
        async with kube.session.get(kube.url(self._path), headers=kube.auth_headers()) as response:
            response.raise_for_status()
            listed = await response.json()
        last = {item["metadata"]["name"]: _requested_at(item) for item in listed["items"]}
        params = {"watch": "1", "resourceVersion": listed["metadata"]["resourceVersion"]}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with kube.session.get(
            kube.url(self._path), params=params, headers=kube.auth_headers(), timeout=timeout
        ) as response:
            response.raise_for_status()
            self._ready.set()
            async for line in response.content:
                event = json.loads(line)
                if event.get("type") not in ("ADDED", "MODIFIED"):
                    continue
                obj = event["object"]
                name, value = obj["metadata"]["name"], _requested_at(obj)
                if value is not None and value != last.get(name):
                    self.changes.append(Change(name, value, time.monotonic()))
                last[name] = value


def _requested_at(obj: dict[str, Any]) -> str | None:
    annotations: dict[str, str] = obj["metadata"].get("annotations") or {}
    return annotations.get(REQUESTED_AT)
