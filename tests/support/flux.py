"""Flux's own source-controller and kustomize-controller as processes against the test apiserver.

The binaries and Flux's CRDs come from `scripts/flux-controllers` (built from the Go module proxy into
`.cache/flux/<version>/`), or `$FLUX_CONTROLLERS_DIR`. Tests never build them: without them the tests that
need Flux skip, or fail with REQUIRE_FLUX=1 (CI).

How they run outside a cluster: the kubeconfig comes from `KUBECONFIG` (the controllers have no flag for
it); no leader election; every namespace watched; metrics, health probes and source-controller's
artifact server on 127.0.0.1 ports, kustomize-controller downloading artifacts from that server as it
would from the in-cluster Service. Each kustomize-controller gets a TMPDIR of its own, because it
deletes `kustomization-*` there when it starts.

The functions below the class build and read GitRepository and Kustomization objects (the v1 APIs).
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support import process
from tests.support.k8s_cluster import LocalCluster
from tests.support.ports import free_port
from tests.support.process import StartStop

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
FLUX_CACHE = REPO_ROOT / ".cache" / "flux"
FLUX_HINT = "Flux's source-controller and kustomize-controller not built: run scripts/flux-controllers"
CONTROLLERS = ("source-controller", "kustomize-controller")

SOURCE_API = "source.toolkit.fluxcd.io/v1"
KUSTOMIZE_API = "kustomize.toolkit.fluxcd.io/v1"
REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"
"""The annotation `flux reconcile` sets: a new value makes the controller reconcile the object now."""
_PLURALS = {"GitRepository": "gitrepositories", "Kustomization": "kustomizations"}
_APIS = {"GitRepository": SOURCE_API, "Kustomization": KUSTOMIZE_API}


class FluxNotFoundError(RuntimeError):
    """scripts/flux-controllers has not built the controllers (or $FLUX_CONTROLLERS_DIR lacks them)."""


class FluxStartError(RuntimeError):
    """A controller exited or did not become ready; the message carries the tail of its log."""


@dataclass(frozen=True)
class FluxBinaries:
    """One build of scripts/flux-controllers: both controllers and the CRDs of their APIs."""

    directory: Path
    version: str

    @property
    def source_controller(self) -> Path:
        return self.directory / "source-controller"

    @property
    def kustomize_controller(self) -> Path:
        return self.directory / "kustomize-controller"

    @property
    def crds(self) -> Path:
        return self.directory / "crds"


def _complete(directory: Path) -> bool:
    executables = all(os.access(directory / name, os.X_OK) for name in CONTROLLERS)
    return executables and any((directory / "crds").glob("*.yaml"))


def find_flux() -> FluxBinaries:
    """$FLUX_CONTROLLERS_DIR, else the newest complete build under .cache/flux/."""
    explicit = os.environ.get("FLUX_CONTROLLERS_DIR")
    candidates = (
        [Path(explicit)]
        if explicit
        else sorted(
            (p for p in FLUX_CACHE.glob("v*") if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
        )
    )
    for directory in candidates:
        if _complete(directory):
            stamp = directory / "VERSION"
            version = stamp.read_text().strip() if stamp.exists() else directory.name
            return FluxBinaries(directory, version)
    raise FluxNotFoundError(FLUX_HINT + (f" (looked in {explicit})" if explicit else ""))


class FluxControllers(StartStop):
    """source-controller + kustomize-controller for one apiserver, their files under `work_dir`."""

    def __init__(
        self,
        binaries: FluxBinaries,
        cluster: LocalCluster,
        work_dir: Path,
        *,
        start_timeout: float = 30.0,
        stop_grace: float = 10.0,
    ) -> None:
        self.binaries = binaries
        self.cluster = cluster
        self.work_dir = work_dir
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.storage_port = free_port()
        self._health_ports = {name: free_port() for name in CONTROLLERS}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: list[str] = []
        """Why a controller that exited during start was started once more (empty: none was)."""
        work_dir.mkdir(parents=True, exist_ok=True)

    def log_path(self, controller: str) -> Path:
        return self.work_dir / f"{controller}.log"

    def log_tail(self, controller: str, lines: int = 40) -> str:
        return process.log_tail(self.log_path(controller), lines)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Apply Flux's CRDs, start both controllers and wait until each answers /readyz."""
        self.install_crds()
        try:
            for name in CONTROLLERS:
                self._spawn(name)
            for name in CONTROLLERS:
                try:
                    self._wait_ready(name)
                except FluxStartError as first:
                    # source-controller was seen exiting with SIGSEGV at start, with an empty log, once in
                    # a few starts on the loaded test machine: one more start, and the first failure kept.
                    if self._procs[name].poll() is None:
                        raise
                    self.restarts.append(str(first))
                    self._spawn(name)
                    self._wait_ready(name)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str) -> None:
        self._procs[name] = process.start(self._argv(name), self.log_path(name), env=self._env(name))

    def stop(self) -> dict[str, int | None]:
        """SIGTERM each controller (SIGKILL after the grace period); their exit codes."""
        codes = {name: process.stop(proc, self.stop_grace) for name, proc in self._procs.items()}
        self._procs.clear()
        return codes

    def install_crds(self) -> None:
        """Every Flux CRD of the build, applied server-side and waited for until Established."""
        kubeconfig = f"--kubeconfig={self.cluster.admin_kubeconfig}"
        crds = str(self.binaries.crds)
        for args in (
            ("apply", "--server-side", "--force-conflicts", "-f", crds),
            ("wait", "--for=condition=Established", "--timeout=30s", "-f", crds),
        ):
            done = subprocess.run(
                ["kubectl", kubeconfig, *args], capture_output=True, text=True, timeout=60, check=False
            )
            if done.returncode != 0:
                raise FluxStartError(f"kubectl {args[0]} of Flux's CRDs failed: {done.stderr.strip()}")

    def _env(self, name: str) -> dict[str, str]:
        tmp = self.work_dir / f"{name}-tmp"
        tmp.mkdir(exist_ok=True)
        return {**os.environ, "KUBECONFIG": str(self.cluster.admin_kubeconfig), "TMPDIR": str(tmp)}

    def _argv(self, name: str) -> list[str]:
        common = [
            f"--metrics-addr=127.0.0.1:{free_port()}",
            f"--health-addr=127.0.0.1:{self._health_ports[name]}",
            "--enable-leader-election=false",
            "--watch-all-namespaces=true",
            "--log-encoding=console",
        ]
        if name == "source-controller":
            storage = f"127.0.0.1:{self.storage_port}"
            storage_path = self.work_dir / "storage"
            storage_path.mkdir(exist_ok=True)  # source-controller refuses a directory that is not there
            return [
                str(self.binaries.source_controller),
                *common,
                f"--storage-path={storage_path}",
                f"--storage-addr={storage}",
                f"--storage-adv-addr={storage}",
            ]
        return [str(self.binaries.kustomize_controller), *common]

    def _wait_ready(self, name: str) -> None:
        url = f"http://127.0.0.1:{self._health_ports[name]}/readyz"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._procs[name].poll() is not None:
                raise FluxStartError(
                    f"{name} exited with {self._procs[name].returncode}:\n{self.log_tail(name)}"
                )
            if _http_ok(url):
                return
            time.sleep(0.05)
        raise FluxStartError(f"{name} not ready after {self.start_timeout:.0f}s:\n{self.log_tail(name)}")

    def running(self) -> bool:
        return len(self._procs) == len(CONTROLLERS) and all(p.poll() is None for p in self._procs.values())


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback http only)
            return int(response.status) == 200
    except (OSError, urllib.error.URLError):
        return False


# -- objects -------------------------------------------------------------------------------------------


def git_repository(
    namespace: str, name: str, url: str, *, branch: str = "main", interval: str = "10m"
) -> dict[str, Any]:
    """A GitRepository following `branch` of `url`, polled every `interval` (Flux's own poll)."""
    return {
        "apiVersion": SOURCE_API,
        "kind": "GitRepository",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"url": url, "ref": {"branch": branch}, "interval": interval, "timeout": "20s"},
    }


def kustomization(
    namespace: str,
    name: str,
    source: str,
    *,
    path: str = "./",
    wait: bool = True,
    timeout: str = "60s",
    interval: str = "10m",
    target_namespace: str | None = None,
) -> dict[str, Any]:
    """A Kustomization applying `path` of GitRepository `source` (same namespace), pruning what is gone.

    `wait`: the health check of every applied object (kstatus), bounded by `timeout`.
    """
    spec: dict[str, Any] = {
        "sourceRef": {"kind": "GitRepository", "name": source},
        "path": path,
        "prune": True,
        "wait": wait,
        "timeout": timeout,
        "interval": interval,
    }
    if target_namespace:
        spec["targetNamespace"] = target_namespace
    return {
        "apiVersion": KUSTOMIZE_API,
        "kind": "Kustomization",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def _path(kind: str, namespace: str, name: str = "") -> str:
    base = f"/apis/{_APIS[kind]}/namespaces/{urllib.parse.quote(namespace)}/{_PLURALS[kind]}"
    return f"{base}/{urllib.parse.quote(name)}" if name else base


def create(cluster: LocalCluster, *objects: Mapping[str, Any]) -> None:
    """POST each GitRepository or Kustomization (as admin)."""
    for obj in objects:
        status, answer = cluster.request("POST", _path(obj["kind"], obj["metadata"]["namespace"]), obj)
        if status != 201:
            raise RuntimeError(f"creating {obj['kind']} {obj['metadata']['name']}: {status} {answer}")


def get(cluster: LocalCluster, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    status, body = cluster.request("GET", _path(kind, namespace, name))
    if status == 404:
        return None
    if status != 200:
        raise RuntimeError(f"reading {kind} {namespace}/{name}: {status} {body}")
    return dict(body)


def request_reconcile(cluster: LocalCluster, namespace: str, name: str, kind: str = "GitRepository") -> str:
    """What `flux reconcile` does: set `reconcile.fluxcd.io/requestedAt` to a new value; the value."""
    value = datetime.now(UTC).isoformat(timespec="microseconds")
    patch = {"metadata": {"annotations": {REQUESTED_AT: value}}}
    status, answer = cluster.request(
        "PATCH",
        _path(kind, namespace, name),
        patch,
        headers={"Content-Type": "application/merge-patch+json"},
    )
    if status != 200:
        raise RuntimeError(f"annotating {kind} {namespace}/{name}: {status} {answer}")
    return value


def condition(obj: Mapping[str, Any] | None, type_: str = "Ready") -> dict[str, Any] | None:
    for item in ((obj or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == type_:
            return dict(item)
    return None


def is_ready(obj: Mapping[str, Any] | None) -> bool:
    """Ready=True for the object's current generation."""
    ready = condition(obj, "Ready") or {}
    current = (obj or {}).get("metadata", {}).get("generation")
    observed = ((obj or {}).get("status") or {}).get("observedGeneration")
    return ready.get("status") == "True" and observed == current


def revision(branch: str, commit: str) -> str:
    """How Flux v1 writes a Git revision (artifact revision, lastAppliedRevision)."""
    return f"{branch}@sha1:{commit}"


def artifact_revision(repository: Mapping[str, Any] | None) -> str | None:
    """The revision source-controller has fetched and stored for a GitRepository."""
    return (((repository or {}).get("status") or {}).get("artifact") or {}).get("revision")


def applied_revision(kust: Mapping[str, Any] | None) -> str | None:
    """The revision kustomize-controller last applied successfully (health checks included)."""
    return ((kust or {}).get("status") or {}).get("lastAppliedRevision")


def attempted_revision(kust: Mapping[str, Any] | None) -> str | None:
    """The revision kustomize-controller last tried, whether or not it became healthy."""
    return ((kust or {}).get("status") or {}).get("lastAttemptedRevision")
