#!/usr/bin/env python3
"""The local demo (`make demo`): the whole product on one machine, every part real.

1. etcd + kube-apiserver (built by scripts/k8s-assets), redis-server, all on loopback;
2. the reference kas as a process (`python -m kas --config kas.yaml`): agent listener (gRPC + ws-tunnel)
   and the Kubernetes API proxy that GitLab CI jobs talk to;
3. `kubectl apply -k manifests/` (CRDs, the operator's namespace, ServiceAccount and RBAC), then a
   namespace with the agent's token Secret, its ServiceAccount (allowed to list namespaces, nothing
   else) and a GitLabAgent resource;
4. the operator as a process (`python -m agent_operator`) with a token of its own ServiceAccount, as
   deployed (never as cluster admin), which turns the resource into a tunnel worker;
5. `kubectl get gla` once the agent is Connected, then `kubectl get namespaces` the way a GitLab CI job
   runs it: with a CI kubeconfig pointed at kas, through the agent's reverse tunnel, into the cluster.

`--kas gitlab` (`make demo KAS=gitlab`) replaces step 2 with GitLab's own kas (built by scripts/gitlab-peers)
behind the GitLab stand-ins: "Rails" (internal API), and the agent's configuration project as a real Git
repository served by a Gitaly stand-in (scripts/demo_gitlab.py). kas sends the agent its configuration
from that repository, so the GitLabAgent shows its agent id; the demo then pushes a change to config.yaml
and shows it reaching the agent.

`--keep` leaves everything running until Ctrl-C (or SIGTERM/SIGHUP) and prints how to reach it. However
the demo ends, it stops every process it started: a signal unwinds like Ctrl-C, and once the clean-up has
begun further signals are ignored until it is done. If the demo itself is killed (SIGKILL), the kernel
kills its children (PR_SET_PDEATHSIG, tests/support/process.py).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The demo runs on the same substrate as the test suite.
from demo_gitlab import GitLabSide, push_and_wait, start_gitlab  # noqa: E402  (scripts/, beside this file)

from kas.k8s_proxy.certs import self_signed_serving_certificate  # noqa: E402
from kas.kubeconfig import print_kubeconfig  # noqa: E402
from tests.support import process as children  # noqa: E402
from tests.support.k8s_cluster import LocalCluster, find_assets  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.redis_server import RedisServer, find_redis_server  # noqa: E402

NAMESPACE = "demo"
AGENT_NAME = "payments"
AGENT_ID = 1042
PROJECT_PATH = "acme/platform"
READY_TIMEOUT = 90.0
OPERATOR_NAMESPACE = "gitlab-agent-operator"
OPERATOR_SERVICE_ACCOUNT = "gitlab-agent-operator"
"""Where manifests/ puts the operator's ServiceAccount."""
POLICY_FLAGS = ("--allow-private-kas", "--allow-plaintext-kas")
"""The demo's kas listens on loopback, its agent port in plain text (ws://): the operator's tenant
policy refuses both unless told otherwise (docs/security.md)."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None, check: bool = True) -> str:
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and result.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def _stop_requested(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP end the demo the way Ctrl-C does, so the clean-up below runs."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _catch_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop_requested)


def _ignore_stop_signals() -> None:
    """During the clean-up: a second Ctrl-C or SIGTERM must not cut it short and strand children."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@contextmanager
def process(name: str, argv: Sequence[str], log_file: Path, env: Mapping[str, str]) -> Iterator[None]:
    """Run a child process for the demo's lifetime; stop it with SIGTERM (then SIGKILL) at the end."""
    child = children.start(argv, log_file, ROOT, env=env)
    say(f"{name} started (pid {child.pid}, log {log_file})")
    try:
        yield
    finally:
        children.stop(child, 20)


def wait_until(what: str, check: Callable[[], bool], log_file: Path, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
    raise SystemExit(f"timed out waiting for {what}; last lines of {log_file}:\n{tail}")


def write_kas_config(work: Path, redis_url: str, certs: tuple[Path, Path, Path]) -> tuple[Path, int, int]:
    """kas.yaml, the agents file (agent token + one CI job), and the agent's config.yaml 'repository'."""
    agent_token = secrets.token_urlsafe(40)
    job_token = secrets.token_urlsafe(24)
    (work / "agent-token").write_text(agent_token)
    (work / "job-token").write_text(job_token)
    agents = {
        "agents": [
            {
                "id": AGENT_ID,
                "name": AGENT_NAME,
                "project_path": PROJECT_PATH,
                "project_id": 7,
                "tokens": [agent_token],
            }
        ],
        "ci_jobs": [
            {
                "token": job_token,
                "job_id": 1074,
                "pipeline_id": 512,
                "project": {"id": 7, "path": PROJECT_PATH},
                "user": {"id": 1, "username": "ci-user"},
            }
        ],
    }
    (work / "agents.yaml").write_text(yaml.safe_dump(agents))
    agent_config = work / "repos" / PROJECT_PATH / ".gitlab" / "agents" / AGENT_NAME / "config.yaml"
    agent_config.parent.mkdir(parents=True)
    agent_config.write_text(f"ci_access:\n  projects:\n    - id: {PROJECT_PATH}\n")
    agent_port, proxy_port = free_port(), free_port()
    _, cert, key = certs
    kas_yaml = {
        "agent": {
            "listen": {"address": f"127.0.0.1:{agent_port}", "websocket": True},
            "kubernetes_api": {
                "listen": {
                    "address": f"127.0.0.1:{proxy_port}",
                    "certificate_file": str(cert),
                    "key_file": str(key),
                }
            },
        },
        "agents": {"file": str(work / "agents.yaml")},
        "agent_configuration": {"directory": str(work / "repos")},
        "redis": {"url": redis_url, "key_prefix": "demo-kas"},
        "observability": {"listen": {"address": f"127.0.0.1:{free_port()}"}},
    }
    path = work / "kas.yaml"
    path.write_text(yaml.safe_dump(kas_yaml))
    return path, agent_port, proxy_port


def cluster_objects(kas_address: str, agent_token: str) -> str:
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": f"{AGENT_NAME}-token",
                "namespace": NAMESPACE,
                # The Secret lets this one GitLabAgent send it to kas (docs/security.md).
                "annotations": {"agentk.dev/allowed-agents": AGENT_NAME},
            },
            "stringData": {"token": agent_token},
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": AGENT_NAME, "namespace": NAMESPACE},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "demo-agent-namespace-reader"},
            "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "demo-agent-namespace-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "demo-agent-namespace-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": AGENT_NAME, "namespace": NAMESPACE}],
        },
        {
            "apiVersion": "agentk.dev/v1alpha1",
            "kind": "GitLabAgent",
            "metadata": {"name": AGENT_NAME, "namespace": NAMESPACE},
            "spec": {
                "kasAddress": kas_address,
                "tokenSecretRef": {"name": f"{AGENT_NAME}-token", "key": "token"},
                "serviceAccountName": AGENT_NAME,
            },
        },
    ]
    return yaml.safe_dump_all(docs)


def operator_kubeconfig(admin: Path, path: Path) -> Path:
    """The admin kubeconfig's cluster with a TokenRequest token of the operator's own ServiceAccount."""
    token = kubectl(
        admin, "-n", OPERATOR_NAMESPACE, "create", "token", OPERATOR_SERVICE_ACCOUNT, "--duration=24h"
    ).strip()
    config = yaml.safe_load(admin.read_text())
    config["users"] = [{"name": OPERATOR_SERVICE_ACCOUNT, "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = OPERATOR_SERVICE_ACCOUNT
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def agent_status(kubeconfig: Path) -> dict[str, Any]:
    out = kubectl(kubeconfig, "-n", NAMESPACE, "get", "gitlabagent", AGENT_NAME, "-o", "json", check=False)
    status: dict[str, Any] = json.loads(out).get("status", {}) if out else {}
    return status


def agent_serving(kubeconfig: Path, with_agent_id: bool = False) -> bool:
    """Connected, with kas's version learned and idle tunnels waiting for CI requests (and, when kas sends
    configurations, the agent id learnt from one)."""
    status = agent_status(kubeconfig)
    idle = (status.get("tunnels") or {}).get("idle", 0)
    serving = status.get("phase") == "Connected" and bool(status.get("kasVersion")) and idle > 0
    return serving and (not with_agent_id or status.get("agentId") == AGENT_ID)


@dataclass(frozen=True)
class KasSide:
    """Where the demo's agent dials kas and where its CI jobs reach the cluster."""

    agent_address: str
    proxy_url: str
    ca_file: Path
    job_token_file: Path
    log: Path
    gitlab: GitLabSide | None = None
    """Set with --kas gitlab: GitLab's kas and its stand-ins, the configuration project to push to."""


def start_reference_kas(stack: ExitStack, work: Path, redis: RedisServer, env: Mapping[str, str]) -> KasSide:
    certs = self_signed_serving_certificate().write(work / "certs")
    kas_yaml, agent_port, proxy_port = write_kas_config(work, redis.url, certs)
    kas_log = work / "kas.log"
    stack.enter_context(
        process("kas", [sys.executable, "-m", "kas", "--config", str(kas_yaml)], kas_log, env)
    )
    proxy_url = f"https://127.0.0.1:{proxy_port}/"
    return KasSide(f"ws://127.0.0.1:{agent_port}/", proxy_url, certs[0], work / "job-token", kas_log)


def start_gitlab_kas(stack: ExitStack, work: Path, redis: RedisServer) -> KasSide:
    side = start_gitlab(
        stack, work, redis.port, agent_id=AGENT_ID, agent_name=AGENT_NAME, project_path=PROJECT_PATH
    )
    say(
        f"GitLab's kas (log {side.kas.log_path}) with the Rails stand-in and the configuration project "
        f"{PROJECT_PATH} (Gitaly stand-in {side.project.gitaly.address}, git clone {side.project.clone_url})"
    )
    return KasSide(
        side.agent_address, side.proxy_url, side.ca_file, side.job_token_file, side.kas.log_path, side
    )


def run(keep: bool, kas: str) -> None:
    with ExitStack() as stack:
        try:
            _run(stack, keep, kas)
        finally:
            _ignore_stop_signals()  # the stack's clean-up runs next, uninterrupted


def _run(stack: ExitStack, keep: bool, kas_kind: str) -> None:
    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gao-demo-")))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    cluster = stack.enter_context(LocalCluster(find_assets()))
    admin = cluster.admin_kubeconfig
    say(f"kube-apiserver {cluster.version} ready in {cluster.startup_seconds:.1f}s (kubeconfig {admin})")
    redis = stack.enter_context(RedisServer(find_redis_server()))
    say(f"redis-server at {redis.url}")

    kas = (
        start_gitlab_kas(stack, work, redis)
        if kas_kind == "gitlab"
        else start_reference_kas(stack, work, redis, env)
    )
    kas_address = kas.agent_address
    say(f"kas: agents dial {kas_address} (gRPC on the same port); CI proxy {kas.proxy_url}")

    kubectl(admin, "apply", "--server-side", "--force-conflicts", "-k", str(ROOT / "manifests"))
    kubectl(admin, "wait", "--for=condition=Established", "crd/gitlabagents.agentk.dev", "--timeout=30s")
    own = operator_kubeconfig(admin, work / "operator.kubeconfig")
    say(
        f"applied manifests/; the operator runs as system:serviceaccount:{OPERATOR_NAMESPACE}:"
        f"{OPERATOR_SERVICE_ACCOUNT} (kubeconfig {own})"
    )
    operator_log = work / "operator.log"
    operator_env = {
        **env,
        "KUBECONFIG": str(own),
        "POD_NAMESPACE": OPERATOR_NAMESPACE,
        "POD_NAME": "operator-demo",
    }
    operator_argv = [
        sys.executable, "-m", "agent_operator", "--all-namespaces",
        "--observability-address", f"127.0.0.1:{free_port()}", *POLICY_FLAGS,
    ]  # fmt: skip
    stack.enter_context(process("operator", operator_argv, operator_log, operator_env))
    kubectl(admin, "apply", "-f", "-", stdin=cluster_objects(kas_address, (work / "agent-token").read_text()))
    say(f"applied GitLabAgent {NAMESPACE}/{AGENT_NAME} with its token Secret and ServiceAccount")

    started = time.monotonic()
    with_id = kas.gitlab is not None
    wait_until("the agent to be Connected", lambda: agent_serving(admin, with_id), operator_log)
    learnt = " and its agent id from the configuration" if with_id else ""
    say(f"Connected, tunnels open{learnt}, {time.monotonic() - started:.1f}s after apply\n")
    print(f"$ kubectl get gla -n {NAMESPACE}")
    print(kubectl(admin, "get", "gla", "-n", NAMESPACE))
    if kas.gitlab is not None:
        say(push_and_wait(kas.gitlab, lambda: agent_status(admin).get("configCommit")) + "\n")

    ci_kubeconfig = work / "ci-kubeconfig.yaml"
    with ci_kubeconfig.open("w") as out:
        print_kubeconfig(
            agent_id=AGENT_ID,
            agent_name=AGENT_NAME,
            config_project_path=PROJECT_PATH,
            server=kas.proxy_url,
            token_file=kas.job_token_file,
            ca_file=kas.ca_file,
            out=out,
        )
    print(f"$ kubectl --context {PROJECT_PATH}:{AGENT_NAME} get namespaces   # as a GitLab CI job, via kas")
    print(kubectl(ci_kubeconfig, "--context", f"{PROJECT_PATH}:{AGENT_NAME}", "get", "namespaces"))
    denied = subprocess.run(
        ["kubectl", "--kubeconfig", str(ci_kubeconfig), "get", "secrets", "-A"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    print("$ kubectl get secrets -A   # the agent's ServiceAccount may only read namespaces")
    print(denied.stderr.strip() or denied.stdout.strip(), end="\n\n")

    if keep:
        say(f"everything keeps running; admin kubeconfig: {admin}; CI kubeconfig: {ci_kubeconfig}")
        say(f"logs: {kas.log}, {operator_log}. Ctrl-C (or SIGTERM) stops it all.")
        with suppress(KeyboardInterrupt):
            signal.pause()
    say("stopping")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    parser.add_argument(
        "--kas",
        choices=("reference", "gitlab"),
        default="reference",
        help="reference: our kas (python -m kas); gitlab: GitLab's kas (scripts/gitlab-peers) with stand-ins",
    )
    args = parser.parse_args()
    _catch_stop_signals()
    try:
        run(args.keep, args.kas)
    except KeyboardInterrupt:
        say("stopped")
        raise SystemExit(130) from None
    say("stopped")


if __name__ == "__main__":
    main()
