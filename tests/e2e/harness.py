"""Processes and helpers of the end-to-end tests: the reference kas and the operator as real processes.

Everything is synchronous: both servers are child processes, so the tests' own waiting never stalls them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kas.k8s_proxy import self_signed_serving_certificate
from tests.support import process
from tests.support.k8s_cluster import LocalCluster
from tests.support.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_PROJECT = "group/agents"
JOB_TOKEN = "e2e-ci-job-token-" + "j" * 20
JOB_PROJECT = "group/app"
T = TypeVar("T")

OPERATOR_NAMESPACE = "gitlab-agent-operator"
OPERATOR_SERVICE_ACCOUNT = "gitlab-agent-operator"
"""Where manifests/ puts the operator's ServiceAccount (the Deployment runs as it)."""
OPERATOR_USERNAME = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"
TEST_POLICY_FLAGS = ("--allow-private-kas", "--allow-plaintext-kas", "--allow-insecure-skip-tls-verify")
"""The tenant policy flags every operator process started by the tests gets: the test kas listens on
loopback, in plain text for gRPC/ws, and some tests skip TLS verification. The one place for them."""


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.1) -> T:
    """Poll `probe` until it returns something truthy; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass(frozen=True)
class KasAgent:
    """An agent registration of the test kas."""

    id: int
    name: str
    tokens: tuple[str, ...]

    @property
    def token(self) -> str:
        return self.tokens[0]


def make_agents(count: int) -> list[KasAgent]:
    return [KasAgent(2000 + i, f"agent-{i}", (f"agent-token-{i:03d}-" + "t" * 40,)) for i in range(count)]


class KasProcess:
    """`python -m kas` with the agent listener, the Kubernetes API proxy (HTTPS) and a CI job token."""

    def __init__(
        self,
        work_dir: Path,
        agents: Sequence[KasAgent],
        configs: Mapping[str, Mapping[str, Any]] | None = None,
        access: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        """`configs`: an agent's config.yaml by agent name (default: ci_access for JOB_PROJECT, as the
        agent); `access`: more `ci_jobs`/`users` entries for the agents file (kas/k8s_proxy/access.py)."""
        self.work_dir = work_dir
        self.agents = list(agents)
        self.access = dict(access or {})
        self.agent_port = free_port()
        self.proxy_port = free_port()
        self.observability_port = free_port()
        self.log_path = work_dir / "kas.log"
        self._proc: subprocess.Popen[bytes] | None = None
        work_dir.mkdir(parents=True, exist_ok=True)
        cert = self_signed_serving_certificate()
        self.ca_file, cert_file, key_file = cert.write(work_dir / "tls")
        self.repos = work_dir / "repos"
        config = {
            "agent": {
                "listen": {"address": f"127.0.0.1:{self.agent_port}", "websocket": True},
                "kubernetes_api": {
                    "listen": {
                        "address": f"127.0.0.1:{self.proxy_port}",
                        "certificate_file": str(cert_file),
                        "key_file": str(key_file),
                    }
                },
                "tunnel_find_timeout": 10,
            },
            "agents": {"file": str(work_dir / "agents.yaml"), "reload_period": 0.2},
            "agent_configuration": {"directory": str(self.repos)},
            "observability": {"listen": {"address": f"127.0.0.1:{self.observability_port}"}},
        }
        (work_dir / "kas.yaml").write_text(yaml.safe_dump(config))
        self.write_agents()
        for agent in self.agents:
            path = self.repos / CONFIG_PROJECT / ".gitlab" / "agents" / agent.name / "config.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            default = {"ci_access": {"projects": [{"id": JOB_PROJECT}]}}
            path.write_text(yaml.safe_dump(dict((configs or {}).get(agent.name, default))))

    @property
    def agent_url(self) -> str:
        return f"grpc://127.0.0.1:{self.agent_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.agent_port}"

    def write_agents(self, tokens: Mapping[int, Sequence[str]] | None = None) -> None:
        """(Re)write the agents file; `tokens` overrides the tokens of some agents. kas reloads it."""
        tokens = tokens or {}
        document = {
            "agents": [
                {
                    "id": a.id,
                    "name": a.name,
                    "project_path": CONFIG_PROJECT,
                    "project_id": 7,
                    "tokens": list(tokens.get(a.id, a.tokens)),
                }
                for a in self.agents
            ],
            "ci_jobs": [
                {
                    "token": JOB_TOKEN,
                    "job_id": 4242,
                    "pipeline_id": 77,
                    "project": {"id": 11, "path": JOB_PROJECT},
                    "user": {"id": 9, "username": "alice"},
                },
                *self.access.get("ci_jobs", ()),
            ],
            "users": list(self.access.get("users", ())),
        }
        target = self.work_dir / "agents.yaml"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(document))
        os.replace(tmp, target)

    def start(self) -> None:
        self._proc = process.start(
            [sys.executable, "-m", "kas", "--config", str(self.work_dir / "kas.yaml")],
            self.log_path,
            REPO_ROOT,
        )
        wait_for("kas readiness", self._ready, timeout=30)

    def _ready(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise AssertionError(f"kas exited: {process.log_tail(self.log_path)}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.observability_port}/readiness", timeout=2
            ) as response:
                return int(response.status) == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        process.stop(self._proc, 10)
        self._proc = None

    def proxy_get(self, agent_id: int, path: str) -> tuple[int, Any]:
        """GET through kas's Kubernetes API proxy as the CI job, routed to agent `agent_id`."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        request = urllib.request.Request(f"https://127.0.0.1:{self.proxy_port}{path}")
        request.add_header("Authorization", f"Bearer ci:{agent_id}:{JOB_TOKEN}")
        request.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(request, context=context, timeout=20) as response:  # noqa: S310
                status, raw = int(response.status), response.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def ci_kubeconfig(self, agent: KasAgent, path: Path) -> Path:
        """A kubeconfig for kubectl in a CI job, through the proxy to `agent`."""
        return self.proxy_kubeconfig(f"ci:{agent.id}:{JOB_TOKEN}", path)

    def proxy_kubeconfig(self, bearer: str, path: Path) -> Path:
        """A kubeconfig for kubectl through the proxy; `bearer`: `ci:<id>:<job token>`, `pat:<id>:<PAT>`."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "gitlab",
                    "cluster": {
                        "server": f"https://127.0.0.1:{self.proxy_port}",
                        "certificate-authority-data": base64.b64encode(self.ca_file.read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": "ci", "user": {"token": bearer}}],
            "contexts": [{"name": "ci", "context": {"cluster": "gitlab", "user": "ci"}}],
            "current-context": "ci",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path


class OperatorProcess:
    """`python -m agent_operator`, its log captured to a file."""

    def __init__(self, work_dir: Path, kubeconfig: Path, namespace: str, *extra_args: str) -> None:
        self.work_dir = work_dir
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.extra_args = extra_args
        self.port = free_port()
        self.starts = 0
        self.log_path = work_dir / "operator.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "agent_operator",
            f"--kubeconfig={self.kubeconfig}",
            f"--namespace={self.namespace}",
            f"--observability-address=127.0.0.1:{self.port}",
            "--drain-grace=2",
            *TEST_POLICY_FLAGS,
            *self.extra_args,
        ]

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start #{self.starts} ---\n".encode())
        # Distinct per process: kopf peering tells replicas apart by this identity.
        env = {**os.environ, "POD_NAME": f"operator-{self.work_dir.name}-{self.starts}"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=env,
            )
        wait_for("the operator's /liveness", self._live, timeout=30)

    def _live(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log()}")
        return self.http_status("/liveness") == 200

    def http_status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as err:
            return err.code
        except (OSError, urllib.error.URLError):
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return bytes(r.read()).decode()

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        return proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def run_once(argv: Sequence[str], log_path: Path, timeout: float = 60.0) -> tuple[int, str]:
    """Run a process to completion; (exit code, its output)."""
    env = {**os.environ, "POD_NAME": "operator-once"}
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=env, check=False
    )
    output = done.stdout + done.stderr
    log_path.write_text(output)
    return done.returncode, output


def install_manifests(kube: Kube) -> None:
    """`kubectl apply -k manifests/` as admin: namespace, CRDs, ServiceAccount, RBAC, Deployment, Service.

    Nothing runs the Deployment (no kubelet, no controllers); the RBAC is what the tests need, applied
    from the same files a user applies, never rewritten here.
    """
    done = kube.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO_ROOT / "manifests"))
    assert done.returncode == 0, done.stderr
    for crd in ("gitlabagents.agentk.dev", "clusterkopfpeerings.kopf.dev"):
        waited = kube.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{crd}")
        assert waited.returncode == 0, waited.stderr


def service_account_kubeconfig(
    kube: Kube, path: Path, namespace: str, name: str, duration: str = "12h"
) -> Path:
    """A kubeconfig for the test cluster with a TokenRequest token of ServiceAccount `namespace/name`."""
    done = kube.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(kube.kubeconfig.read_text())
    user = f"{namespace}:{name}"
    config["users"] = [{"name": user, "user": {"token": done.stdout.strip()}}]
    config["contexts"] = [{"name": user, "context": {"cluster": config["clusters"][0]["name"], "user": user}}]
    config["current-context"] = user
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def operator_kubeconfig(kube: Kube, path: Path) -> Path:
    """The operator's credentials as deployed: a token of the ServiceAccount install_manifests() applied."""
    return service_account_kubeconfig(kube, path, OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT)


class Kube:
    """Admin access to the test cluster: plain JSON requests and kubectl."""

    def __init__(self, cluster: LocalCluster, kubeconfig: Path) -> None:
        self.cluster = cluster
        self.kubeconfig = kubeconfig

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        return self.cluster.request(method, path, body, **kwargs)

    def kubectl(
        self, *args: str, stdin: str | None = None, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def apply(self, *objects: Mapping[str, Any]) -> None:
        text = "\n---\n".join(yaml.safe_dump(dict(o)) for o in objects)
        done = self.kubectl("apply", "-f", "-", stdin=text)
        assert done.returncode == 0, done.stderr

    def gla(self, namespace: str, name: str) -> dict[str, Any] | None:
        status, body = self.request(
            "GET", f"/apis/agentk.dev/v1alpha1/namespaces/{namespace}/gitlabagents/{name}"
        )
        if status == 404:
            return None
        assert status == 200, body
        return dict(body)

    def patch_gla(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        status, body = self.request(
            "PATCH",
            f"/apis/agentk.dev/v1alpha1/namespaces/{namespace}/gitlabagents/{name}",
            dict(patch),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert status == 200, body

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        status, body = self.request(
            "GET", f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name%3D{name}"
        )
        assert status == 200, body
        return list(body["items"])


def secret(namespace: str, name: str, token: str, key: str = "token", agents: str = "*") -> dict[str, Any]:
    """A token Secret that opted in to the GitLabAgents `agents` (default: all of its namespace)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {"agentk.dev/allowed-agents": agents},
        },
        "type": "Opaque",
        "stringData": {key: token + "\n"},
    }


def service_account(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}


def gitlab_agent(
    namespace: str, name: str, kas_address: str, secret_name: str, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "agentk.dev/v1alpha1",
        "kind": "GitLabAgent",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "kasAddress": kas_address,
            "tokenSecretRef": {"name": secret_name},
            "serviceAccountName": "agent",
            **spec,
        },
    }


def condition(body: Mapping[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for item in ((body or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == type_:
            return dict(item)
    return None


def phase(body: Mapping[str, Any] | None) -> str | None:
    return ((body or {}).get("status") or {}).get("phase")


def metric_value(text: str, name: str, labels: Mapping[str, str]) -> float | None:
    rendered = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(rendered)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None
