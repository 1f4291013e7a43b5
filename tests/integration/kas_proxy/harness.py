"""The proxy under test, on loopback HTTPS, wired to a LoopbackRouter that serves the real apiserver."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from google.protobuf import json_format

from agent_proto.gitlab.agent.agentcfg.agentcfg_pb2 import ConfigurationFile
from kas.agents import AgentInfo
from kas.k8s_proxy import (
    KubernetesApiProxy,
    ProxyAccessConfig,
    ProxyDependencies,
    ProxySettings,
    ServingCertificate,
    parse_access_config,
    server_ssl_context,
)
from kas.kubeconfig import KubeconfigAgent, build_kubeconfig, render_kubeconfig
from kas.secret import Secret
from kas.tunnel_call import TunnelRouter

PREFIX = "/k8s-proxy/"
GITLAB_ORIGIN = "https://gitlab.example"


def configuration(document: dict[str, Any] | None) -> ConfigurationFile:
    """An agent config.yaml document as the agentcfg message (strict, as kas parses it)."""
    return json_format.ParseDict(document or {}, ConfigurationFile())


@dataclass
class KubectlResult:
    code: int
    stdout: str
    stderr: str


R = TypeVar("R", bound=TunnelRouter)


async def wait_until(condition: Callable[[], object], time_limit: float = 10.0) -> None:
    """Poll a stand-in's recorded state until `condition()` holds (TimeoutError after `time_limit`)."""
    async with asyncio.timeout(time_limit):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


class ProxyHarness(Generic[R]):
    """Agents, their configuration, CI jobs/users, and the running proxy."""

    def __init__(
        self,
        work_dir: Path,
        cert: ServingCertificate,
        router: R,
        agents: Sequence[AgentInfo],
        access: Mapping[str, Any],
        *,
        settings: ProxySettings | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.cert = cert
        self.router = router
        self.agents = {a.id: a for a in agents}
        self.configs: dict[int, ConfigurationFile] = {}
        self.access: ProxyAccessConfig = parse_access_config(access)
        self._ca_file, cert_file, key_file = cert.write(work_dir / "tls")
        self.proxy = KubernetesApiProxy(
            settings or ProxySettings(url_path_prefix=PREFIX, allowed_origins=frozenset({GITLAB_ORIGIN})),
            ProxyDependencies(
                router=router,
                find_agent=self.agents.get,
                agent_configuration=lambda agent: self.configs.get(agent.id),
                access=lambda: self.access,
            ),
            ssl_context=server_ssl_context(cert_file, key_file),
        )

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def ca_file(self) -> Path:
        return self._ca_file

    def kubeconfig(self, agent_id: int, token: str, *, kind: str = "ci", name: str = "job") -> Path:
        agent = self.agents.get(agent_id) or AgentInfo(agent_id, "unknown", "nowhere/project")
        config = build_kubeconfig(
            server=self.url,
            ca_pem=self.cert.ca_pem,
            agents=[KubeconfigAgent(agent_id, agent.name, agent.project_path)],
            token=Secret(token.encode()),
            kind="pat" if kind == "pat" else "ci",
        )
        path = self.work_dir / f"{name}.kubeconfig"
        path.write_text(render_kubeconfig(config))
        path.chmod(0o600)
        return path

    async def kubectl(
        self, kubeconfig: Path, *args: str, stdin: str | None = None, time_limit: float = 30.0
    ) -> KubectlResult:
        """Run the real kubectl without blocking the event loop that serves the proxy."""
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(self.work_dir)}
        process = await asyncio.create_subprocess_exec(
            "kubectl",
            "--request-timeout=20s",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            async with asyncio.timeout(time_limit):
                out, err = await process.communicate(stdin.encode() if stdin is not None else None)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        return KubectlResult(process.returncode or 0, out.decode(), err.decode())


def manifest(document: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(document), sort_keys=False)
