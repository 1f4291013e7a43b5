"""Findings 11 and 13 end to end: the operator as deployed (a process under manifests/' RBAC) sends a
Secret's value to kas or a proxy only when the Secret opted in to the GitLabAgent; header values and
proxy credentials from Secrets reach the wire (and nothing else: not the status, not the log)."""

from __future__ import annotations

import base64
import secrets
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    KasProcess,
    Kube,
    OperatorProcess,
    condition,
    gitlab_agent,
    make_agents,
    phase,
    service_account,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

OPT_IN = "agentk.dev/allowed-agents"


@pytest.fixture(scope="module")
def kas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KasProcess]:
    server = KasProcess(tmp_path_factory.mktemp("kas"), make_agents(2))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def operator(
    deployed_kube: Kube, operator_credentials: Path, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    deployed_kube.apply(service_account(namespace, "agent"))
    proc = OperatorProcess(tmp_path, operator_credentials, namespace)
    proc.start()
    try:
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, proc.log()[-3000:]


def _secret(namespace: str, name: str, data: dict[str, str], **extra: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": namespace, **extra.pop("meta", {})}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "stringData": data, **extra}


def _token_condition(kube: Kube, namespace: str, name: str, reason: str) -> dict[str, Any] | None:
    body = kube.gla(namespace, name)
    found = condition(body, "TokenAvailable") or {}
    return body if found.get("status") == "False" and found.get("reason") == reason else None


def _labelled(kube: Kube, namespace: str, name: str) -> bool:
    code, body = kube.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
    assert code == 200, body
    return "agentk.dev/watched" in ((body.get("metadata") or {}).get("labels") or {})


def test_a_service_account_token_secret_never_reaches_kas(
    deployed_kube: Kube, kas: KasProcess, operator: OperatorProcess
) -> None:
    ns, kube = operator.namespace, deployed_kube
    sa_token = "eyJhbGciOiJSUzI1NiJ9." + secrets.token_urlsafe(48)
    kube.apply(
        service_account(ns, "deployer"),
        _secret(
            ns,
            "deployer-token",
            {"token": sa_token},
            type="kubernetes.io/service-account-token",
            # Even an opt-in does not make a credential of the cluster an agent token.
            meta={"annotations": {"kubernetes.io/service-account.name": "deployer", OPT_IN: "mallory"}},
        ),
        gitlab_agent(ns, "mallory", kas.agent_url, "deployer-token"),
    )

    body = wait_for(
        "SecretTypeRefused", lambda: _token_condition(kube, ns, "mallory", "SecretTypeRefused"), timeout=30
    )

    assert phase(body) == "Failed"
    assert sa_token not in str(body)
    assert not _labelled(kube, ns, "deployer-token")
    assert sa_token not in operator.log()


def test_a_secret_is_used_once_it_opts_in_and_no_longer_once_it_withdraws(
    deployed_kube: Kube, kas: KasProcess, operator: OperatorProcess
) -> None:
    ns, kube, agent = operator.namespace, deployed_kube, kas.agents[0]
    kube.apply(
        _secret(ns, "shared", {"token": agent.token, "db-password": "hunter2"}),
        gitlab_agent(ns, "team-a", kas.agent_url, "shared"),
    )

    body = wait_for(
        "SecretNotOptedIn", lambda: _token_condition(kube, ns, "team-a", "SecretNotOptedIn"), timeout=30
    )
    message = (condition(body, "TokenAvailable") or {})["message"]
    command = f"kubectl -n {ns} annotate secret shared {OPT_IN}=team-a"
    assert command in message
    assert "db-password" not in str(body["status"])
    assert not _labelled(kube, ns, "shared")  # neither changed nor cached before it opted in

    annotated = kube.kubectl(*command.split()[1:])  # exactly what the status says
    assert annotated.returncode == 0, annotated.stderr

    wait_for("Connected once opted in", lambda: phase(kube.gla(ns, "team-a")) == "Connected", timeout=90)
    wait_for("labelled once opted in", lambda: _labelled(kube, ns, "shared"), timeout=15)  # after the status

    withdrawn = kube.kubectl("-n", ns, "annotate", "secret", "shared", f"{OPT_IN}-")
    assert withdrawn.returncode == 0, withdrawn.stderr
    wait_for(
        "stopped once withdrawn",
        lambda: _token_condition(kube, ns, "team-a", "SecretNotOptedIn"),
        timeout=30,
    )


class _Recorder(socketserver.ThreadingTCPServer):
    """A loopback HTTP proxy double: records the CONNECT request, accepts it, records the WebSocket
    handshake that follows inside the tunnel and refuses it (403). Nothing is forwarded anywhere."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RecordingHandler)
        self.heads: list[str] = []
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def seen(self) -> list[str]:
        with self.lock:
            return list(self.heads)


class _RecordingHandler(socketserver.BaseRequestHandler):
    server: _Recorder

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        connect = self._head(sock)
        if not connect.startswith("CONNECT "):
            return
        sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self._head(sock)
        sock.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def _head(self, sock: socket.socket) -> str:
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        head = data.partition(b"\r\n\r\n")[0].decode("latin-1")
        with self.server.lock:
            self.server.heads.append(head)
        return head


@pytest.fixture
def proxy() -> Iterator[_Recorder]:
    server = _Recorder()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="proxy-double")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _header_lines(heads: list[str], name: str) -> list[str]:
    prefix = name.lower() + ":"
    return [
        line.split(":", 1)[1].strip()
        for head in heads
        for line in head.split("\r\n")
        if line.lower().startswith(prefix)
    ]


def test_header_values_and_proxy_credentials_from_secrets_reach_the_wire_only(
    deployed_kube: Kube, operator: OperatorProcess, proxy: _Recorder
) -> None:
    ns, kube = operator.namespace, deployed_kube
    api_key, rotated_key = secrets.token_hex(12), secrets.token_hex(12)
    user, password = "svc-agent", "p@ss:" + secrets.token_hex(8)
    opted_in = {"meta": {"annotations": {OPT_IN: "edge"}}}
    spec = {
        "kasHeaders": [
            {"name": "X-Tenant", "value": "team-a"},
            {"name": "X-Api-Key", "valueFrom": {"secretKeyRef": {"name": "gateway", "key": "api-key"}}},
        ],
        # A private address stands for kas: the proxy double is the only thing ever dialled.
        "proxy": {"url": f"http://127.0.0.1:{proxy.port}", "credentialsSecretRef": {"name": "proxy-login"}},
    }
    kube.apply(
        _secret(ns, "token", {"token": "glagent-" + "e" * 40}, **opted_in),
        _secret(ns, "gateway", {"api-key": api_key + "\n"}, **opted_in),
        _secret(
            ns,
            "proxy-login",
            {"username": user, "password": password},
            type="kubernetes.io/basic-auth",
            **opted_in,
        ),
        gitlab_agent(ns, "edge", "ws://10.255.255.1:8150", "token", **spec),
    )

    wait_for("the handshake", lambda: api_key in _header_lines(proxy.seen(), "X-Api-Key"), timeout=60)

    basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    assert basic in _header_lines(proxy.seen(), "Proxy-Authorization")
    assert "team-a" in _header_lines(proxy.seen(), "X-Tenant")

    # Rotation: the Secret is watched like the token's; the next handshake carries the new value.
    kube.apply(_secret(ns, "gateway", {"api-key": rotated_key}, **opted_in))
    wait_for("the rotated value", lambda: rotated_key in _header_lines(proxy.seen(), "X-Api-Key"), timeout=60)

    shown = str(kube.gla(ns, "edge")) + operator.log()
    for value in (api_key, rotated_key, password, basic):
        assert value not in shown
