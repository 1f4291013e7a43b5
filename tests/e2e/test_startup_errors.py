"""The operator process refuses to start, with its documented exit code and one clear line, when the
GitLabAgent CRD is missing (2), or when the API server cannot be reached or refuses its credentials (4)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import OperatorProcess, run_once
from tests.support.k8s_cluster import LocalCluster

EXIT_MISSING_CRD = 2
EXIT_NO_API = 4
BOUND_SECONDS = 60.0
"""The process must have exited by then; run_once fails the test otherwise."""
REFUSED_BOUND_SECONDS = 20.0
"""A refused connection is no reason to wait: no retries, no connect timeout."""


def error_lines(output: str) -> list[dict[str, Any]]:
    """The JSON log records at level error (other output, e.g. a traceback, is kept as a message)."""
    errors: list[dict[str, Any]] = []
    for line in output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            if "Traceback" in line:
                errors.append({"level": "error", "msg": line})
            continue
        if isinstance(record, dict) and record.get("level") in ("error", "critical"):
            errors.append(record)
    return errors


def run_operator(kubeconfig: Path, work: Path, bound: float = BOUND_SECONDS) -> tuple[int, str]:
    """Run the operator to its exit; (exit code, its whole output), which must be a single line."""
    argv = OperatorProcess(work, kubeconfig, "default").argv()
    code, output = run_once(argv, work / "operator.log", timeout=bound)
    assert len(output.strip().splitlines()) == 1, f"one line expected:\n{output}"
    return code, output


@pytest.fixture
def bare_cluster(k8s_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """A second, throw-away API server: nothing installed (the session one has the CRD)."""
    with LocalCluster(k8s_cluster.assets) as cluster:
        yield cluster


def test_missing_crd_exits_2_naming_the_crd_and_how_to_install_it(
    bare_cluster: LocalCluster, tmp_path: Path
) -> None:
    code, output = run_operator(bare_cluster.admin_kubeconfig, tmp_path)
    assert code == EXIT_MISSING_CRD, output
    (error,) = error_lines(output)
    assert "gitlabagents.agentk.dev" in error["msg"]  # the name users type, not the product's constant
    assert "is not installed" in error["msg"]
    assert "kubectl apply -k crds/" in error["msg"]


def _kubeconfig(path: Path, server: str, token: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def test_closed_port_exits_4_quickly_with_a_clear_message(tmp_path: Path) -> None:
    # Bound but not listening: connections are refused, and no other process can take the port meanwhile.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        server = f"https://127.0.0.1:{closed.getsockname()[1]}"
        kubeconfig = _kubeconfig(tmp_path / "kubeconfig", server, "some-token")
        code, output = run_operator(kubeconfig, tmp_path, bound=REFUSED_BOUND_SECONDS)
    assert code == EXIT_NO_API, output
    (error,) = error_lines(output)
    assert f"cannot reach the Kubernetes API server at {server}" in error["msg"]
    assert "some-token" not in output


def test_refused_credentials_exit_4(k8s_cluster: LocalCluster, tmp_path: Path) -> None:
    token = "not-a-known-token-" + "x" * 20
    code, output = run_operator(_kubeconfig(tmp_path / "kubeconfig", k8s_cluster.url, token), tmp_path)
    assert code == EXIT_NO_API, output
    (error,) = error_lines(output)
    assert "refused the operator's credentials" in error["msg"]
    assert token not in output
