"""Kubeconfigs for CI jobs and users of the Kubernetes API proxy, shaped like the ones GitLab generates.

One cluster `gitlab` (the proxy's URL, its CA embedded), per agent a user `agent:<id>` whose token is
`ci:<id>:<job token>` (or `pat:<id>:<token>`), and a context `<config project path>:<agent name>`.
The token is read from a file and written only into the kubeconfig, never into logs or errors.

CLI: `python -m kas.kubeconfig --agent-id 42 --agent-name my-agent --config-project-path group/project
--server https://127.0.0.1:8154/ --ca-file ca.crt --ci-job-token-file token [--namespace app]`
(`kas/__main__.py` may expose the same as `python -m kas kubeconfig`, via `add_arguments` + `run`).
"""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TextIO

import yaml

from kas.secret import Secret

CLUSTER_NAME: Final = "gitlab"
TokenKind = Literal["ci", "pat"]


@dataclass(frozen=True)
class KubeconfigAgent:
    """One agent the kubeconfig gives access to."""

    agent_id: int
    agent_name: str
    config_project_path: str
    default_namespace: str = ""


def build_kubeconfig(
    *,
    server: str,
    ca_pem: bytes | None,
    agents: Sequence[KubeconfigAgent],
    token: Secret,
    kind: TokenKind = "ci",
    current: int | None = None,
) -> dict[str, Any]:
    """The kubeconfig as a dict. `current` = agent id of the current context (default: the first)."""
    cluster: dict[str, Any] = {"server": server}
    if ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    users, contexts = [], []
    for agent in agents:
        user = f"agent:{agent.agent_id}"
        credential = f"{kind}:{agent.agent_id}:{token.reveal().decode()}"
        users.append({"name": user, "user": {"token": credential}})
        context: dict[str, Any] = {"cluster": CLUSTER_NAME, "user": user}
        if agent.default_namespace:
            context["namespace"] = agent.default_namespace
        contexts.append({"name": context_name(agent), "context": context})
    chosen = next((a for a in agents if a.agent_id == current), agents[0] if agents else None)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CLUSTER_NAME, "cluster": cluster}],
        "users": users,
        "contexts": contexts,
        "current-context": context_name(chosen) if chosen else "",
    }


def context_name(agent: KubeconfigAgent) -> str:
    return f"{agent.config_project_path}:{agent.agent_name}"


def render_kubeconfig(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)


def read_token_file(path: Path) -> Secret:
    """The token in `path`, surrounding whitespace removed; ValueError (without the text) if empty."""
    token = path.read_bytes().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return Secret(token)


def print_kubeconfig(
    *,
    agent_id: int,
    agent_name: str,
    config_project_path: str,
    server: str,
    token_file: Path,
    ca_file: Path | None = None,
    kind: TokenKind = "ci",
    namespace: str = "",
    out: TextIO | None = None,
) -> None:
    """Write a kubeconfig for one agent to `out` (default stdout)."""
    config = build_kubeconfig(
        server=server,
        ca_pem=ca_file.read_bytes() if ca_file is not None else None,
        agents=[KubeconfigAgent(agent_id, agent_name, config_project_path, namespace)],
        token=read_token_file(token_file),
        kind=kind,
    )
    (out or sys.stdout).write(render_kubeconfig(config))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `kubeconfig` subcommand's options."""
    parser.add_argument("--agent-id", type=int, required=True)
    parser.add_argument("--agent-name", required=True)
    parser.add_argument(
        "--config-project-path", required=True, help="full path of the agent's config project"
    )
    parser.add_argument("--server", required=True, help="the proxy's URL, e.g. https://127.0.0.1:8154/")
    parser.add_argument("--ca-file", type=Path, help="PEM CA of the proxy's serving certificate")
    tokens = parser.add_mutually_exclusive_group(required=True)
    tokens.add_argument("--ci-job-token-file", type=Path, help="file holding a CI job token")
    tokens.add_argument("--pat-file", type=Path, help="file holding a personal access token")
    parser.add_argument("--namespace", default="", help="default namespace of the context")


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the exit code (errors are printed without token text)."""
    try:
        print_kubeconfig(
            agent_id=args.agent_id,
            agent_name=args.agent_name,
            config_project_path=args.config_project_path,
            server=args.server,
            token_file=args.ci_job_token_file or args.pat_file,
            ca_file=args.ca_file,
            kind="ci" if args.ci_job_token_file else "pat",
            namespace=args.namespace,
        )
    except (OSError, ValueError) as err:
        print(f"kubeconfig: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kas.kubeconfig", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
