"""GitLab's own kas and agentk (built by scripts/gitlab-peers) as child processes on loopback.

`GitLabKas` writes kas's configuration (the keys of GITLAB-INTERNAL-API.md's loopback example: Rails is
tests/support/gitlab_api.py, Redis a tests/support/redis_server.py, the Kubernetes API listener on TLS so
that kubectl sends its bearer token) and runs the binary; replicas share the secrets and the Redis key
prefix. `GitLabAgentk` runs GitLab's agentk against any kas. When the binaries are missing,
`find_gitlab_peers` raises GitLabPeersNotFoundError with the command that builds them.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
import yaml

from agent_proto.gitlab.agent.agent_tracker import agent_tracker_pb2
from agent_proto.gitlab.agent.agent_tracker.rpc import rpc_pb2
from kas import jwt
from kas.k8s_proxy import self_signed_serving_certificate
from tests.support import process
from tests.support.gitlab_api import new_secret_text
from tests.support.ports import free_port

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
PEERS_DIR: Final = REPO_ROOT / ".cache" / "gitlab-peers"
NEWER_KAS_VERSION: Final = "v18.6.0"
LISTEN_GRACE: Final = "0.1s"
"""How long kas keeps accepting connections after SIGTERM (default 5 s, for load balancers to notice);
nothing balances here, and the default makes every test's teardown wait."""
PEERS_HINT: Final = "GitLab's kas/agentk not built: run scripts/gitlab-peers (make gitlab-peers)"


class GitLabPeersNotFoundError(RuntimeError):
    """scripts/gitlab-peers has not built the binaries (or $GITLAB_PEERS_DIR lacks them)."""


@dataclass(frozen=True)
class GitLabPeers:
    """The binaries of one build: kas and agentk of the source's release, and kas stamped newer."""

    directory: Path
    version: str

    @property
    def kas(self) -> Path:
        return self.directory / "kas"

    @property
    def agentk(self) -> Path:
        return self.directory / "agentk"

    @property
    def kas_newer(self) -> Path:
        return self.directory / f"kas-{NEWER_KAS_VERSION}"


def find_gitlab_peers() -> GitLabPeers:
    """$GITLAB_PEERS_DIR, else the newest complete build under .cache/gitlab-peers/."""
    wanted = ("kas", "agentk", f"kas-{NEWER_KAS_VERSION}")
    explicit = os.environ.get("GITLAB_PEERS_DIR")
    candidates = (
        [Path(explicit)]
        if explicit
        else sorted(
            (p for p in PEERS_DIR.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
        )
    )
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in wanted):
            stamp = directory / "VERSION"
            version = stamp.read_text().split()[0] if stamp.exists() else "unknown"
            return GitLabPeers(directory, version)
    raise GitLabPeersNotFoundError(PEERS_HINT + (f" (looked in {explicit})" if explicit else ""))


@dataclass(frozen=True)
class KasSecrets:
    """Files kas reads: the Rails JWT secret, the kas-to-kas secret, the proxy's TLS pair and its CA."""

    gitlab_secret: Path
    private_api_secret: Path
    ca: Path
    cert: Path
    key: Path


def make_kas_secrets(directory: Path) -> KasSecrets:
    directory.mkdir(parents=True, exist_ok=True)
    gitlab_secret, private_secret = directory / "gitlab_kas_secret", directory / "private_api_secret"
    for path in (gitlab_secret, private_secret):
        path.touch(mode=0o600)
        path.write_text(new_secret_text())
    ca, cert, key = self_signed_serving_certificate().write(directory / "tls")
    return KasSecrets(gitlab_secret, private_secret, ca, cert, key)


def wait_until(what: str, probe: Any, timeout: float, interval: float = 0.1) -> Any:
    """Poll `probe()` until truthy; AssertionError naming `what` (and the last value) after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class GitLabKas:
    """One GitLab kas replica. Ports are fixed at construction, so a restart listens where it did."""

    def __init__(
        self,
        binary: Path,
        work_dir: Path,
        *,
        gitlab_url: str,
        secrets: KasSecrets,
        redis_port: int,
        key_prefix: str,
        max_connection_age: str | None = None,
        external_url: str | None = None,
    ) -> None:
        """`external_url`: kas's `gitlab.external_url`, sent to agents as `gitlab_external_url` with each
        configuration (the Flux module matches GitRepository URLs against it)."""
        self.binary = binary
        self.work_dir = work_dir
        self.secrets = secrets
        self.agent_port, self.proxy_port = free_port(), free_port()
        self.observability_port, self.api_port, self.private_api_port = free_port(), free_port(), free_port()
        self.log_path = work_dir / "kas.log"
        self.proc: subprocess.Popen[bytes] | None = None
        work_dir.mkdir(parents=True, exist_ok=True)
        config = self._config(gitlab_url, redis_port, key_prefix, max_connection_age)
        if external_url:
            config["gitlab"]["external_url"] = external_url
        (work_dir / "kas-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def _config(
        self, gitlab_url: str, redis_port: int, key_prefix: str, max_connection_age: str | None
    ) -> dict[str, Any]:
        agent_listen: dict[str, Any] = {
            "network": "tcp",
            "address": f"127.0.0.1:{self.agent_port}",
            "websocket": True,
            "listen_grace_period": LISTEN_GRACE,
        }
        if max_connection_age:
            agent_listen["max_connection_age"] = max_connection_age
        return {
            "gitlab": {"address": gitlab_url, "authentication_secret_file": str(self.secrets.gitlab_secret)},
            "agent": {
                "listen": agent_listen,
                "info_cache_error_ttl": "1s",
                "kubernetes_api": {
                    "listen": {
                        "network": "tcp",
                        "address": f"127.0.0.1:{self.proxy_port}",
                        "certificate_file": str(self.secrets.cert),
                        "key_file": str(self.secrets.key),
                        "shutdown_grace_period": "2s",
                        "listen_grace_period": LISTEN_GRACE,
                    },
                    "url_path_prefix": "/",
                    "allowed_agent_cache_ttl": "10s",
                    "allowed_agent_cache_error_ttl": "1s",
                },
            },
            "observability": {
                "usage_reporting_period": "2s",
                "listen": {"network": "tcp", "address": f"127.0.0.1:{self.observability_port}"},
                "logging": {"level": "debug", "grpc_level": "warn"},
            },
            "api": {
                "listen": {
                    "network": "tcp",
                    "address": f"127.0.0.1:{self.api_port}",
                    "listen_grace_period": LISTEN_GRACE,
                    "authentication_secret_file": str(self.secrets.gitlab_secret),
                }
            },
            "private_api": {
                "listen": {
                    "network": "tcp",
                    "address": f"127.0.0.1:{self.private_api_port}",
                    "listen_grace_period": LISTEN_GRACE,
                    "authentication_secret_file": str(self.secrets.private_api_secret),
                }
            },
            "redis": {
                "server": {"address": f"127.0.0.1:{redis_port}"},
                "network": "tcp",
                "key_prefix": key_prefix,
            },
        }

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.agent_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.agent_port}"

    def agent_url(self, scheme: str) -> str:
        return self.ws_url if scheme == "ws" else self.grpc_url

    @property
    def proxy_url(self) -> str:
        return f"https://127.0.0.1:{self.proxy_port}"

    def start(self, timeout: float = 30.0) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')} ---\n".encode())
        self.proc = process.start(
            [str(self.binary), f"--configuration-file={self.work_dir / 'kas-config.yaml'}"],
            self.log_path,
            self.work_dir,
        )
        wait_until("GitLab kas /readiness", self._ready, timeout)

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"GitLab kas exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            url = f"http://127.0.0.1:{self.observability_port}/readiness"
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status) == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        process.stop(self.proc, 10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no goodbye to agents, its Redis entries stay until they expire."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def log_tail(self, lines: int = 60) -> str:
        return process.log_tail(self.log_path, lines)

    def connected_agents(self, agent_id: int) -> list[agent_tracker_pb2.ConnectedAgentInfo]:
        """kas's API listener (as GitLab Rails asks it): the connections registered for `agent_id`."""
        secret = jwt.load_secret(self.secrets.gitlab_secret.read_bytes())
        token = jwt.encode(secret, issuer="gitlab", audience="gitlab-kas", lifetime=30)
        with grpc.insecure_channel(f"127.0.0.1:{self.api_port}") as channel:
            call = channel.unary_unary(
                "/gitlab.agent.agent_tracker.rpc.AgentTracker/GetConnectedAgents",
                request_serializer=rpc_pb2.GetConnectedAgentsRequest.SerializeToString,
                response_deserializer=rpc_pb2.GetConnectedAgentsResponse.FromString,
            )
            answer = call(
                rpc_pb2.GetConnectedAgentsRequest(agent_id=agent_id),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        return list(answer.agents)

    def kubeconfig(self, bearer: str, path: Path, namespace: str = "") -> Path:
        """A kubeconfig through kas's proxy; `bearer`: `ci:<id>:<job token>` or `pat:<id>:<PAT>`."""
        context: dict[str, str] = {"cluster": "gitlab", "user": "gitlab"}
        if namespace:
            context["namespace"] = namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "gitlab",
                    "cluster": {
                        "server": self.proxy_url,
                        "certificate-authority-data": base64.b64encode(self.secrets.ca.read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": "gitlab", "user": {"token": bearer}}],
            "contexts": [{"name": "gitlab", "context": context}],
            "current-context": "gitlab",
        }
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(config))
        return path


class GitLabAgentk:
    """GitLab's agentk as a process: one agent, its Lease in `namespace`, observability on loopback."""

    def __init__(
        self,
        binary: Path,
        work_dir: Path,
        *,
        kas_address: str,
        token: str,
        kubeconfig: Path,
        namespace: str,
        pod_name: str = "agentk-interop-1",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.binary = binary
        self.work_dir = work_dir
        self.observability_port = free_port()
        self.log_path = work_dir / "agentk.log"
        self.proc: subprocess.Popen[bytes] | None = None
        work_dir.mkdir(parents=True, exist_ok=True)
        token_file = work_dir / "agent-token"
        token_file.touch(mode=0o600)
        token_file.write_text(token + "\n")
        # `env` sets agentk's pod identity on top of ours (which carries PATH and the like)
        pod_env = {"POD_NAMESPACE": namespace, "POD_NAME": pod_name, **(env or {})}
        self.argv = [
            "env",
            *(f"{k}={v}" for k, v in pod_env.items()),
            str(binary),
            f"--kas-address={kas_address}",
            f"--token-file={token_file}",
            f"--kubeconfig={kubeconfig}",
            f"--observability-listen-address=127.0.0.1:{self.observability_port}",
        ]

    def start(self) -> None:
        self.proc = process.start(self.argv, self.log_path, self.work_dir)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        process.stop(self.proc, 10)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
