"""Start a reference kas in-process on free loopback ports, for tests and benchmarks.

    from kas.testing import TestAgent, running_kas, write_agent_config

    agent = TestAgent(id=42, name="my-agent", project_path="group/project", token="t" * 50)
    async with running_kas(tmp_path, [agent]) as kas:
        kas.agent_url("grpc")        # grpc://127.0.0.1:<port> (also ws://... on the same port)
        kas.router.open_call(...)    # kas.tunnel_call.TunnelRouter
        kas.observability_url        # /metrics, /readiness, /api/connected_agents

Keyword options: `redis_url` (share tunnels between replicas: start two with the same redis_url and
`private_api=True`), `tls=(cert_file, key_file)`, `websocket`, `config_dir` (defaults to
`<tmp_path>/repos`; see `write_agent_config`), and `overrides`: a dict merged into kas.yaml's content
(e.g. `{"agent": {"tunnel_find_timeout": 1}}`). The agents file is `<tmp_path>/agents.yaml`.

`api=True` opens the API listener GitLab Rails calls (`kas.api_address`; the shared secret file is
`kas.config.api.authentication_secret_file`, or pass `api_secret_file` to share one between replicas).
With Redis, push events travel on `<key_prefix>:kas_events` (tests sharing a Redis stay apart); pass
`events_channel="kas_events"` to share GitLab's channel with a GitLab kas.

Push events as GitLab Rails sends them (to our kas or GitLab's):
`await send_git_push_event(api_address, secret, project_id, full_path)` (`send_git_push_event_sync` from
synchronous code talking to a kas in another process); see kas.push_client.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kas.config import KasConfig
from kas.push_client import send_git_push_event, send_git_push_event_sync
from kas.server import KasServer

__all__ = [
    "TestAgent",
    "kas_config",
    "running_kas",
    "send_git_push_event",
    "send_git_push_event_sync",
    "write_agent_config",
    "write_agents_file",
]


@dataclass(frozen=True)
class TestAgent:
    """An agent registration a test kas knows, with its (fake) token."""

    __test__ = False  # not a pytest test class

    id: int
    name: str
    project_path: str
    token: str
    project_id: int = 0
    projects: tuple[str, ...] = ()
    """Projects granted beyond the configuration project (push events for them reach the agent)."""

    def entry(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "project_path": self.project_path,
            "project_id": self.project_id,
            "tokens": [self.token],
            "projects": list(self.projects),
        }


def write_agents_file(
    path: Path, agents: Sequence[TestAgent], extra: Mapping[str, Any] | None = None
) -> Path:
    """Write (or rewrite; kas reloads it) the agents file."""
    document: dict[str, Any] = {"agents": [a.entry() for a in agents], **(extra or {})}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(document))
    os.replace(tmp, path)
    return path


def write_agent_config(config_dir: Path, agent: TestAgent, text: str) -> Path:
    """Write `<config_dir>/<project>/.gitlab/agents/<name>/config.yaml` (atomically)."""
    path = config_dir / agent.project_path / ".gitlab" / "agents" / agent.name / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def kas_config(
    work_dir: Path,
    agents: Sequence[TestAgent],
    *,
    redis_url: str | None = None,
    private_api: bool = False,
    tls: tuple[Path, Path] | None = None,
    websocket: bool = True,
    config_dir: Path | None = None,
    key_prefix: str | None = None,
    shared_secret_file: Path | None = None,
    api: bool = False,
    api_secret_file: Path | None = None,
    events_channel: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> KasConfig:
    """A KasConfig on free loopback ports; writes the agents file (and the private API secret)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    config_dir = config_dir or work_dir / "repos"
    config_dir.mkdir(parents=True, exist_ok=True)
    agents_file = write_agents_file(work_dir / "agents.yaml", agents)
    listen: dict[str, Any] = {"address": "127.0.0.1:0", "websocket": websocket}
    if tls is not None:
        listen |= {"certificate_file": str(tls[0]), "key_file": str(tls[1])}
    raw: dict[str, Any] = {
        "agent": {"listen": listen},
        "agents": {"file": str(agents_file), "reload_period": 0.2},
        "agent_configuration": {"directory": str(config_dir)},
        "observability": {"listen": {"address": "127.0.0.1:0"}},
    }
    if redis_url is not None:
        prefix = key_prefix or f"kas-test-{secrets.token_hex(4)}"
        channel = events_channel or f"{prefix}:kas_events"
        raw["redis"] = {"url": redis_url, "key_prefix": prefix, "events_channel": channel}
    if api:
        if api_secret_file is None:
            api_secret_file = work_dir / "gitlab-kas.secret"
            api_secret_file.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
        raw["api"] = {
            "listen": {"address": "127.0.0.1:0"},
            "authentication_secret_file": str(api_secret_file),
        }
    if private_api:
        if shared_secret_file is None:
            shared_secret_file = work_dir / "private-api.secret"
            shared_secret_file.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
        raw["private_api"] = {
            "listen": {"address": "127.0.0.1:0"},
            "authentication_secret_file": str(shared_secret_file),
        }
    return KasConfig.model_validate(_merge(raw, overrides or {}))


@asynccontextmanager
async def running_kas(
    work_dir: Path, agents: Sequence[TestAgent], **options: Any
) -> AsyncIterator[KasServer]:
    """A started KasServer (see kas_config for the options); stopped on exit."""
    server = KasServer(kas_config(work_dir, agents, **options))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=1.0)
