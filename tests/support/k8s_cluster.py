"""A real Kubernetes control plane on loopback: etcd + kube-apiserver, started and stopped by tests.

The binaries come from `scripts/k8s-assets` (built from Go modules) or any envtest asset directory:
`$KUBEBUILDER_ASSETS`, else the newest directory under `.cache/k8s-assets/`.

Authentication is a static token file with two users: `admin` (group `system:masters`) and `alice`
(no groups: only what RBAC gives every authenticated user, i.e. discovery). Authorization is RBAC.
There is no kube-controller-manager, so nothing garbage-collects and no namespace controller empties a
deleted namespace: `delete_namespace()` does that job itself.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support import process
from tests.support.ports import free_port
from tests.support.process import StartStop

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache" / "k8s-assets"
ASSETS_HINT = "kube-apiserver not found in KUBEBUILDER_ASSETS or .cache/k8s-assets: run scripts/k8s-assets"

ADMIN_USER = "admin"
ADMIN_TOKEN = "substrate-admin-token"
USER_NAME = "alice"
USER_TOKEN = "substrate-alice-token"

_DISCOVERY_ACCEPT = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"


class AssetsNotFoundError(RuntimeError):
    """The kube-apiserver/etcd binaries are not where tests look for them."""


class ClusterStartError(RuntimeError):
    """etcd or kube-apiserver did not become ready; the message carries the tail of its log."""


@dataclass(frozen=True)
class Assets:
    directory: Path
    kube_apiserver: Path
    etcd: Path


def _assets_in(directory: Path) -> Assets | None:
    apiserver, etcd = directory / "kube-apiserver", directory / "etcd"
    if all(p.is_file() and os.access(p, os.X_OK) for p in (apiserver, etcd)):
        return Assets(directory, apiserver, etcd)
    return None


def _version_key(directory: Path) -> tuple[tuple[int, ...], float]:
    match = re.match(r"v?(\d+(?:\.\d+)*)", directory.name)
    numbers = tuple(int(n) for n in match.group(1).split(".")) if match else ()
    return numbers, directory.stat().st_mtime


def find_assets(env: Mapping[str, str] | None = None, cache_dir: Path = CACHE_DIR) -> Assets:
    """$KUBEBUILDER_ASSETS if it holds both binaries, else the newest complete dir under the cache."""
    env = os.environ if env is None else env
    looked_at: list[str] = []
    if configured := env.get("KUBEBUILDER_ASSETS"):
        looked_at.append(configured)
        if found := _assets_in(Path(configured)):
            return found
    candidates = sorted((d for d in cache_dir.glob("*") if d.is_dir()), key=_version_key, reverse=True)
    for candidate in candidates:
        looked_at.append(str(candidate))
        if found := _assets_in(candidate):
            return found
    where = f" (looked in: {', '.join(looked_at)})" if looked_at else ""
    raise AssetsNotFoundError(ASSETS_HINT + where)


def _generate_rsa_key(private_path: Path, public_path: Path) -> None:
    """Service-account signing key pair. `cryptography` is not a dependency here; openssl is everywhere."""
    if shutil.which("openssl") is None:
        raise ClusterStartError("openssl not found on PATH: needed to generate the service-account key")
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", private_path],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["openssl", "pkey", "-in", private_path, "-pubout", "-out", public_path],
        check=True,
        capture_output=True,
    )
    private_path.chmod(0o600)


def _ca_from_bundle(bundle: str) -> str:
    """kube-apiserver writes `apiserver.crt` as serving cert + the throw-away CA that signed it.

    The CA is the last certificate; an older single self-signed certificate is its own CA.
    """
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", bundle, re.DOTALL)
    if not blocks:
        raise ClusterStartError("kube-apiserver wrote no certificate into its --cert-dir")
    return str(blocks[-1]) + "\n"


class LocalCluster(StartStop):
    """etcd + kube-apiserver on loopback, in a temp dir that `stop()` removes."""

    def __init__(
        self,
        assets: Assets,
        *,
        start_timeout: float = 45.0,
        stop_grace: float = 10.0,
        extra_apiserver_args: tuple[str, ...] = (),
    ) -> None:
        self.assets = assets
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.extra_apiserver_args = extra_apiserver_args
        self.work_dir: Path | None = None
        self.url = ""
        self.etcd_url = ""
        self.version = ""
        self.startup_seconds = 0.0
        self.etcd_seconds = 0.0
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._ssl: ssl.SSLContext | None = None

    # -- paths -------------------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if self.work_dir is None:
            raise RuntimeError("LocalCluster is not started")
        return self.work_dir / name

    @property
    def ca_file(self) -> Path:
        return self._path("ca.crt")

    @property
    def admin_kubeconfig(self) -> Path:
        return self._path("admin.kubeconfig")

    @property
    def user_kubeconfig(self) -> Path:
        """Kubeconfig of `alice`, a user with no RBAC rights beyond discovery."""
        return self._path("alice.kubeconfig")

    @property
    def apiserver_log(self) -> Path:
        return self._path("kube-apiserver.log")

    @property
    def etcd_log(self) -> Path:
        return self._path("etcd.log")

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        began = time.monotonic()
        self.work_dir = Path(tempfile.mkdtemp(prefix="k8s-substrate-"))
        try:
            self._start_etcd()
            self.etcd_seconds = time.monotonic() - began
            self._start_apiserver()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        log.info(
            "kube-apiserver %s ready at %s in %.2fs (etcd %.2fs)",
            self.version,
            self.url,
            self.startup_seconds,
            self.etcd_seconds,
        )

    def stop(self) -> None:
        """Stop the apiserver, then etcd (SIGTERM, SIGKILL after the grace period); remove the temp dir."""
        try:
            process.stop(self._apiserver, self.stop_grace)
            process.stop(self._etcd, self.stop_grace)
        finally:
            self._apiserver = self._etcd = None
            if self.work_dir is not None:
                shutil.rmtree(self.work_dir, ignore_errors=True)
                self.work_dir = None

    def apiserver_pid(self) -> int:
        """The kube-apiserver's process id (benchmarks read its CPU time)."""
        if self._apiserver is None:
            raise RuntimeError("the kube-apiserver is not running")
        return int(self._apiserver.pid)

    def stop_apiserver(self) -> None:
        """Stop only the kube-apiserver (SIGTERM); etcd keeps the data. See `start_apiserver()`."""
        process.stop(self._apiserver, self.stop_grace)
        self._apiserver = None

    def start_apiserver(self) -> None:
        """Start the kube-apiserver again after `stop_apiserver()`: same port, keys, certificate, tokens,
        so clients holding the old URL and credentials reconnect as to a restarted apiserver."""
        port = urllib.parse.urlsplit(self.url).port
        assert port is not None
        self._start_apiserver(port)

    def _start_etcd(self) -> None:
        client_port, peer_port = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        self.etcd_url = client_url
        self._etcd = process.start(
            [
                str(self.assets.etcd),
                "--name=substrate",
                f"--data-dir={self._path('etcd-data')}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=substrate={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            self.etcd_log,
        )
        self._wait(
            "etcd",
            self._etcd,
            self.etcd_log,
            lambda: _http_ok(f"{client_url}/health", None, lambda body: b'"health":"true"' in body),
        )

    def _start_apiserver(self, port: int | None = None) -> None:
        tokens = self._path("tokens.csv")
        tokens.write_text(
            f'{ADMIN_TOKEN},{ADMIN_USER},uid-admin,"system:masters"\n{USER_TOKEN},{USER_NAME},uid-alice\n'
        )
        tokens.chmod(0o600)
        sa_key, sa_pub = self._path("sa.key"), self._path("sa.pub")
        if not sa_key.exists():  # a restart keeps the key: issued ServiceAccount tokens stay valid
            _generate_rsa_key(sa_key, sa_pub)
        cert_dir = self._path("pki")
        port = port or free_port()
        self.url = f"https://127.0.0.1:{port}"
        self._apiserver = process.start(
            [
                str(self.assets.kube_apiserver),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={cert_dir}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                # No controller-manager creates the `default` ServiceAccount in new namespaces, and
                # this admission plugin would reject every Pod without it.
                "--disable-admission-plugins=ServiceAccount",
                # Nothing else runs against this apiserver; the lease-based endpoint reconciler only
                # adds writes.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                *self.extra_apiserver_args,
            ],
            self.apiserver_log,
        )
        # Until the apiserver has written its certificate we cannot verify it; /readyz is public.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self._wait(
            "kube-apiserver",
            self._apiserver,
            self.apiserver_log,
            lambda: _http_ok(f"{self.url}/readyz", insecure, lambda body: body.strip() == b"ok"),
        )
        self.ca_file.write_text(_ca_from_bundle((cert_dir / "apiserver.crt").read_text()))
        self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        status, info = self.request("GET", "/version")  # verified TLS + admin token, end to end
        if status != 200:
            raise ClusterStartError(f"GET /version as admin answered {status}: {info}")
        self.version = str(info["gitVersion"])
        self._write_kubeconfig(self.admin_kubeconfig, ADMIN_USER, ADMIN_TOKEN)
        self._write_kubeconfig(self.user_kubeconfig, USER_NAME, USER_TOKEN)

    def _wait(
        self,
        what: str,
        proc: subprocess.Popen[bytes],
        log_path: Path,
        ready: Callable[[], bool],
        interval: float = 0.05,
    ) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterStartError(
                    f"{what} exited with code {proc.returncode} during start-up; "
                    f"last lines of {log_path.name}:\n{process.log_tail(log_path)}"
                )
            if ready():
                return
            time.sleep(interval)
        raise ClusterStartError(
            f"{what} not ready after {self.start_timeout:.0f}s; "
            f"last lines of {log_path.name}:\n{process.log_tail(log_path)}"
        )

    def _write_kubeconfig(self, path: Path, user: str, token: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "substrate",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(self.ca_file.read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": f"{user}@substrate", "context": {"cluster": "substrate", "user": user}}],
            "current-context": f"{user}@substrate",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)

    # -- plain HTTP helpers (stdlib, so the substrate does not depend on the client under test) -------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str = ADMIN_TOKEN,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        """One JSON request: (status, decoded body or None); 4xx/5xx are returned, not raised."""
        if self._ssl is None:
            raise RuntimeError("LocalCluster is not started")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310 (https only)
        req.add_header("Authorization", f"Bearer {token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=timeout) as resp:  # noqa: S310
                status, raw = int(resp.status), resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, (json.loads(raw) if raw else None)
        except ValueError:  # e.g. "404 page not found" for a kind whose CRD was deleted a moment ago
            return status, raw.decode(errors="replace")

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": dict(labels or {})},
        }
        status, answer = self.request("POST", "/api/v1/namespaces", body)
        if status != 201:
            raise RuntimeError(f"creating namespace {name}: {status} {answer}")

    def delete_namespace(self, name: str) -> None:
        """Delete a namespace and everything in it, as the namespace controller would.

        There is no kube-controller-manager, so after the DELETE the namespace would stay Terminating
        with its objects forever. Instead: delete every namespaced collection in it, then finalize.
        Objects that carry their own finalizers stay behind in etcd, invisible once the namespace is gone.
        """
        ns = urllib.parse.quote(name)
        status, answer = self.request("DELETE", f"/api/v1/namespaces/{ns}")
        if status == 404:
            return
        if status not in (200, 202):
            raise RuntimeError(f"deleting namespace {name}: {status} {answer}")
        collections = self._namespaced_collections()
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(lambda path: self.request("DELETE", path.format(ns=ns))[0], collections))
        failed = [f"{c}: {s}" for c, s in zip(collections, statuses, strict=True) if s not in (200, 404, 405)]
        if failed:
            raise RuntimeError(f"emptying namespace {name}: {failed}")
        status, current = self.request("GET", f"/api/v1/namespaces/{ns}")
        if status == 404:
            return
        current["spec"] = {"finalizers": []}
        status, answer = self.request("PUT", f"/api/v1/namespaces/{ns}/finalize", current)
        if status not in (200, 404):
            raise RuntimeError(f"finalizing namespace {name}: {status} {answer}")

    def _namespaced_collections(self) -> list[str]:
        """Path templates (`.../namespaces/{ns}/<plural>`) of every namespaced type with deletecollection."""
        paths: list[str] = []
        for root in ("/api", "/apis"):
            status, discovery = self.request("GET", root, headers={"Accept": _DISCOVERY_ACCEPT})
            if status != 200 or discovery.get("kind") != "APIGroupDiscoveryList":
                raise RuntimeError(f"aggregated discovery at {root}: {status} {discovery}")
            for group in discovery["items"]:
                if not group.get("versions"):
                    continue
                preferred = group["versions"][0]  # the apiserver lists the preferred version first
                group_name = group.get("metadata", {}).get("name", "")
                prefix = (
                    f"/apis/{group_name}/{preferred['version']}"
                    if group_name
                    else f"/api/{preferred['version']}"
                )
                paths.extend(
                    f"{prefix}/namespaces/{{ns}}/{resource['resource']}"
                    for resource in preferred.get("resources", [])
                    if resource.get("scope") == "Namespaced"
                    and "deletecollection" in resource.get("verbs", [])
                )
        return paths


def _http_ok(url: str, context: ssl.SSLContext | None, body_ok: Callable[[bytes], bool]) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as resp:  # noqa: S310 (loopback)
            return int(resp.status) == 200 and bool(body_ok(resp.read()))
    except (OSError, urllib.error.URLError):
        return False
