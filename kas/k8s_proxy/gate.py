"""Admission of one HTTP request: URL prefix, credentials, agent, authorization (§10.1-§10.5)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from multidict import CIMultiDictProxy
from pydantic import ValidationError

from kas.agents import AgentInfo
from kas.k8s_proxy.authorize import AccessGrant, authorize_ci_job, authorize_user
from kas.k8s_proxy.credentials import CredentialKind, ProxyCredential, parse_authorization
from kas.k8s_proxy.errors import ProxyError
from kas.k8s_proxy.memo import IdentityMemo
from kas.k8s_proxy.rules import AccessRules, access_rules
from kas.k8s_proxy.settings import ProxyDependencies, ProxySettings

RULES_CACHE_AGENTS = 4096
"""Agents whose parsed access rules are kept (each until its configuration object changes)."""


@dataclass(frozen=True)
class Admission:
    """An admitted request: which agent, with what identity, and the path to forward."""

    agent: AgentInfo
    grant: AccessGrant
    url_path: str


def strip_prefix(path: str, prefix: str) -> str:
    """`path` minus `prefix`'s part before its final "/"; ProxyError(400) if it does not start with it."""
    if not path.startswith(prefix):
        raise ProxyError.bad_request("URL does not start with expected prefix")
    return path[len(prefix) - 1 :]


class Gate:
    """Decides, before any tunnel is used, whether and how a request may reach an agent."""

    def __init__(self, settings: ProxySettings, deps: ProxyDependencies) -> None:
        self._settings = settings
        self._deps = deps
        self._access_rules = IdentityMemo(access_rules, max_keys=RULES_CACHE_AGENTS)

    async def admit(self, path: str, header: CIMultiDictProxy[str]) -> Admission:
        """Raises ProxyError 400 (prefix), 401 (credentials), 404 (unknown agent), 403 (not allowed)."""
        url_path = strip_prefix(path, self._settings.prefix)
        credential = parse_authorization(header.getall("Authorization", []))
        access = self._deps.access()
        if credential.kind is CredentialKind.CI_JOB:
            job = access.find_job(credential.token)
            if job is None:
                raise ProxyError.unauthorized("CI job token")
            agent = self._agent(credential)
            return Admission(agent, authorize_ci_job(agent, await self._rules(agent), job), url_path)
        user = access.find_user(credential.token)
        if user is None:
            raise ProxyError.unauthorized("personal access token")
        agent = self._agent(credential)
        return Admission(agent, authorize_user(agent, await self._rules(agent), user), url_path)

    def _agent(self, credential: ProxyCredential) -> AgentInfo:
        agent = self._deps.find_agent(credential.agent_id)
        if agent is None:
            raise ProxyError.not_found(f"agent {credential.agent_id}")
        return agent

    async def _rules(self, agent: AgentInfo) -> AccessRules:
        found = self._deps.agent_configuration(agent)
        configuration = await found if inspect.isawaitable(found) else found
        try:
            return self._access_rules(agent.id, configuration)
        except ValidationError as err:
            raise ProxyError(
                500, f"Internal error: the configuration of agent {agent.id} is invalid"
            ) from err
