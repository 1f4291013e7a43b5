"""The GitLab Rails stand-in itself: it refuses what GitLab refuses (needs no GitLab binaries)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kas import jwt
from kas.secret import Secret
from tests.support.gitlab_api import API, JWT_HEADER, Agent, CiJob, GitLabApi, PatUser, new_secret_text

AGENT = Agent(id=9, name="standin", token="standin-agent-token")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[GitLabApi, Secret]]:
    secret_file = tmp_path / "secret"
    secret_file.write_text(new_secret_text())
    server = GitLabApi(secret_file)
    server.add_agent(AGENT)
    server.add_job(
        CiJob(token="job-token", agents={AGENT.id: {"ci_job": {}}}, environment=("prod", "production"))
    )
    server.add_user(PatUser(pat="pat-token", agents={AGENT.id: {"user": {}}}))
    server.start()
    try:
        yield server, jwt.load_secret(secret_file.read_bytes())
    finally:
        server.stop()


def _call(server: GitLabApi, path: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, headers=headers)  # noqa: S310 (loopback)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (loopback)
            status, raw = int(response.status), response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    return status, json.loads(raw) if raw else None


def _kas_jwt(secret: Secret, audience: str = "gitlab") -> str:
    return jwt.encode(secret, issuer="gitlab-kas", audience=audience, lifetime=30)


def test_agent_info_needs_kas_jwt_and_a_known_token(api: tuple[GitLabApi, Secret]) -> None:
    server, secret = api
    bearer = {"Authorization": f"Bearer {AGENT.token}"}
    status, body = _call(server, f"{API}/agent_info", {**bearer, JWT_HEADER: _kas_jwt(secret)})
    assert status == 200
    assert (body["agent_id"], body["agent_name"], body["project_id"]) == (
        AGENT.id,
        AGENT.name,
        AGENT.project_id,
    )
    for bad in ("", "not.a.jwt", _kas_jwt(secret, audience="someone-else"), _kas_jwt(Secret(b"x" * 32))):
        status, body = _call(server, f"{API}/agent_info", {**bearer, JWT_HEADER: bad})
        assert (status, body) == (401, {"message": "KAS JWT authentication invalid"})
    assert server.jwt_failures == 4
    status, _ = _call(
        server, f"{API}/agent_info", {"Authorization": "Bearer nope", JWT_HEADER: _kas_jwt(secret)}
    )
    assert status == 401


def test_allowed_agents_by_job_token_and_pat_authorization(api: tuple[GitLabApi, Secret]) -> None:
    server, secret = api
    status, body = _call(server, "/api/v4/job/allowed_agents", {"Job-Token": "job-token"})
    assert status == 200
    assert body["allowed_agents"] == [
        {
            "id": AGENT.id,
            "config_project": {"id": AGENT.project_id},
            "configuration": {"access_as": {"ci_job": {}}},
        }
    ]
    assert body["environment"] == {"slug": "prod", "tier": "production"}
    assert _call(server, "/api/v4/job/allowed_agents", {"Job-Token": "other"})[0] == 401

    headers = {JWT_HEADER: _kas_jwt(secret), "Content-Type": "application/json"}
    ask = {"agent_id": str(AGENT.id), "access_type": "personal_access_token", "access_key": "pat-token"}
    status, body = _call(server, f"{API}/authorize_proxy_user", headers, ask)
    assert status == 200
    assert body["access_as"] == {"user": {}}
    assert _call(server, f"{API}/authorize_proxy_user", headers, {**ask, "agent_id": "77"})[0] == 403
    assert _call(server, f"{API}/authorize_proxy_user", headers, {**ask, "access_key": "x"})[0] == 401


def test_verify_project_access_allows_public_projects_and_the_configuration_project(
    api: tuple[GitLabApi, Secret],
) -> None:
    server, secret = api
    server.add_public_project("Public/App")
    headers = {"Authorization": f"Bearer {AGENT.token}", JWT_HEADER: _kas_jwt(secret)}

    def verdict(project: str, extra: dict[str, str] | None = None) -> int:
        path = f"{API}/verify_project_access?id={urllib.parse.quote(project, safe='')}"
        return _call(server, path, {**headers, **(extra or {})})[0]

    assert verdict(AGENT.project_path) == 204  # the agent's configuration project
    assert verdict(AGENT.project_path.upper()) == 204  # GitLab paths are case-insensitive
    assert verdict("public/app") == 204
    assert verdict("private/app") == 404  # as Rails answers a project the caller may not read
    assert verdict("") == 404
    assert verdict("public/app", {"Authorization": "Bearer nope"}) == 401
    assert verdict("public/app", {JWT_HEADER: "not.a.jwt"}) == 401
    checks = [(c.agent_id, c.project, c.allowed) for c in server.access_checks()]
    assert checks == [
        (AGENT.id, AGENT.project_path, True),
        (AGENT.id, AGENT.project_path.upper(), True),
        (AGENT.id, "public/app", True),
        (AGENT.id, "private/app", False),
        (AGENT.id, "", False),
    ]
