"""Fixtures for the GitLabAgent API tests: kubectl bound to the admin kubeconfig, the CRD installed."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent_operator.api import CRD_NAME
from tests.support.k8s_cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[3]

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def kubectl(admin_kubeconfig: Path) -> Kubectl:
    """Run the real kubectl as the cluster admin; never raises on a non-zero exit (tests assert on it)."""

    def run(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", f"--kubeconfig={admin_kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


@pytest.fixture(scope="session")
def gitlabagent_crd(k8s_cluster: LocalCluster, kubectl: Kubectl) -> str:
    """The committed CRD from crds/, applied with kubectl and Established. Stays for the session."""
    applied = kubectl("apply", "--server-side", "--force-conflicts", "-k", str(ROOT / "crds"))
    assert applied.returncode == 0, applied.stderr
    waited = kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{CRD_NAME}")
    assert waited.returncode == 0, waited.stderr
    # Established means the API serves the kind; kubectl's discovery cache may lag a moment behind.
    deadline = time.monotonic() + 30
    while kubectl("get", "gla", "-A").returncode != 0:
        assert time.monotonic() < deadline, "GitLabAgent kind never became usable through kubectl"
        time.sleep(0.2)
    return CRD_NAME
