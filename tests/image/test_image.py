"""The operator image as users run it: a container with a read-only root, as uid 65532, a mounted kubeconfig.

The container shares the host's network namespace (the machine's only network is loopback), so it reaches
the test apiserver and the reference kas on 127.0.0.1 like the e2e operator process does.
"""

from __future__ import annotations

import resource
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import (
    REPO_ROOT,
    TEST_POLICY_FLAGS,
    KasProcess,
    Kube,
    gitlab_agent,
    phase,
    secret,
    wait_for,
)
from tests.support import process
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(600)  # includes a cold image build on a fresh machine

IMAGE_SCRIPT = str(REPO_ROOT / "scripts/image")
NONROOT = 65532
"""The image's USER and the Deployment's runAsUser."""
MOUNT = "/var/run/gitlab-agent-operator"
DRAIN_GRACE = 2


def _pod_spec() -> dict[str, Any]:
    deployment = yaml.safe_load((REPO_ROOT / "manifests/deployment.yaml").read_text())
    return dict(deployment["spec"]["template"]["spec"])


def _termination_grace() -> float:
    """terminationGracePeriodSeconds of manifests/deployment.yaml: the time a pod gets before SIGKILL."""
    return float(_pod_spec()["terminationGracePeriodSeconds"])


def _memory_limit_kib() -> int:
    """The operator container's memory limit in manifests/deployment.yaml (a Mi or Gi quantity), in KiB."""
    quantity = str(_pod_spec()["containers"][0]["resources"]["limits"]["memory"])
    units = {"Mi": 1024, "Gi": 1024 * 1024}
    return int(quantity[:-2]) * units[quantity[-2:]]


def _readable_by_nonroot(directory: Path, file: Path) -> None:
    """The container's user must read the mounted kubeconfig: as root, hand the copy (mode 0600 kept) to
    that user, as the kubelet does with fsGroup; otherwise (rootless engines map uids their own way) open
    the test's private copy to everyone."""
    try:
        for path in (directory, file):
            shutil.chown(path, NONROOT, NONROOT)
    except PermissionError:
        directory.chmod(0o755)
        file.chmod(0o644)


def engine(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """The container engine scripts/image built with (its private store and runtime)."""
    return subprocess.run(
        [IMAGE_SCRIPT, "engine", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


class OperatorContainer:
    """`<engine> run <image>` in the foreground, its output in a log file; removed in `remove()`."""

    def __init__(self, image: str, work_dir: Path, kubeconfig: Path, namespace: str) -> None:
        self.name = f"gao-image-test-{secrets.token_hex(4)}"
        self.port = free_port()
        self.log_path = work_dir / "container.log"
        self.config_dir = work_dir / "config"
        self.config_dir.mkdir()
        shutil.copy(kubeconfig, self.config_dir / "kubeconfig")
        _readable_by_nonroot(self.config_dir, self.config_dir / "kubeconfig")
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self.argv = [
            IMAGE_SCRIPT, "engine", "run", "--name", self.name,
            "--network", "host", "--read-only", "--tmpfs", "/tmp:rw,size=64m,mode=1777",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            # podman's default asks for limits above the hard ones, which this machine may not raise.
            "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=32768:32768",
            "--volume", f"{self.config_dir}:{MOUNT}:ro",
            "--env", f"POD_NAME={self.name}",
            image,
            f"--kubeconfig={MOUNT}/kubeconfig", f"--namespace={namespace}",
            f"--observability-address=127.0.0.1:{self.port}", f"--drain-grace={DRAIN_GRACE}",
            *TEST_POLICY_FLAGS,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = process.start(self.argv, self.log_path, REPO_ROOT)
        wait_for("the container's /liveness", self._live, timeout=60)

    def _live(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the container exited with {self.proc.returncode}:\n{self.log()}")
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

    def python(self, code: str) -> str:
        """Run Python code inside the running container (as the image's user); its output."""
        done = engine("exec", self.name, "python", "-c", code)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def terminate(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM to the operator (PID 1), as the kubelet sends it; (exit code, seconds until exit)."""
        assert self.proc is not None
        started = time.monotonic()
        signalled = engine("kill", "--signal", "TERM", self.name)
        assert signalled.returncode == 0, signalled.stderr
        try:
            code: int | None = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - started

    def remove(self) -> None:
        engine("rm", "--force", "--time", "0", self.name)
        process.stop(self.proc, 10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def container(
    image: str, operator_credentials: Path, agent_namespace: str, tmp_path: Path
) -> Iterator[OperatorContainer]:
    """The image running the operator for the test's namespace, as the operator's ServiceAccount."""
    box = OperatorContainer(image, tmp_path, operator_credentials, agent_namespace)
    try:
        box.start()
        yield box
    finally:
        box.remove()


def _connected(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    body = kube.gla(namespace, name)
    return body if phase(body) == "Connected" and (body or {}).get("status", {}).get("agentId") else None


def test_container_connects_serves_ci_and_drains(
    kube: Kube, kas: KasProcess, container: OperatorContainer, agent_namespace: str
) -> None:
    ns = agent_namespace
    grpc_agent, ws_agent = kas.agents[40], kas.agents[41]
    kube.apply(
        secret(ns, "grpc-token", grpc_agent.token),
        secret(ns, "ws-token", ws_agent.token),
        gitlab_agent(ns, "over-grpc", kas.agent_url, "grpc-token"),
        # ws:// goes through the worker's Unix-socket bridge in a private directory under $TMPDIR: the
        # tmpfs is the only writable place in the container.
        gitlab_agent(ns, "over-ws", kas.ws_url, "ws-token"),
    )

    for name, agent in (("over-grpc", grpc_agent), ("over-ws", ws_agent)):
        body = wait_for(f"{name} Connected", partial(_connected, kube, ns, name), timeout=60)
        assert body["status"]["agentId"] == agent.id
        # A CI job's request through kas and the container's tunnel, into the apiserver.
        code, version = kas.proxy_get(agent.id, "/version")
        assert code == 200, version
        assert version["gitVersion"] == kube.cluster.version

    wait_for("readiness", lambda: container.http_status("/readiness") == 200, timeout=20)
    metrics = container.metrics()
    assert f'agentk_connected{{agent="{ns}/over-grpc"}} 1.0' in metrics
    assert f'agentk_connected{{agent="{ns}/over-ws"}} 1.0' in metrics

    # As deployed: not root, and nothing outside /tmp is writable.
    status = container.python("print(open('/proc/1/status').read())")
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split() == [str(NONROOT)] * 4, fields["Uid"]
    rss_kib = int(fields["VmRSS"].split()[0])
    assert rss_kib < _memory_limit_kib()  # the Deployment's limit leaves room beyond two idle agents
    errno = container.python(
        "import errno\n"
        "try:\n open('/opt/venv/probe', 'w')\n"
        "except OSError as e:\n print(errno.errorcode[e.errno])"
    )
    assert errno.strip() == "EROFS"
    in_tmp = container.python("import os; print(os.listdir('/tmp'))")
    assert in_tmp.count("gao-kas-") == 0, "no worker bridge: the agents' calls go over the own HTTP/2 client"
    assert in_tmp.count("gao-kube-") == 1, "the kubeconfig's inline certificates, in /tmp (root is read-only)"

    grace = _termination_grace()
    exit_code, seconds = container.terminate(timeout=grace)
    assert exit_code == 0, (
        f"exit code {exit_code} after {seconds:.1f}s (None: still running):\n{container.log()}"
    )
    assert seconds < grace
    print(f"operator RSS with two agents {rss_kib / 1024:.0f} MiB; SIGTERM to exit {seconds:.1f}s")
    log = container.log()
    assert "draining agents" in log
    assert "operator stopped" in log
    assert grpc_agent.token not in log
    assert ws_agent.token not in log
    status_after, _ = kas.proxy_get(grpc_agent.id, "/version")
    assert status_after != 200  # the drained worker's tunnel is gone
