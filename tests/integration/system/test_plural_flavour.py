"""The Plural fork's wire flavour end to end: a kas speaking `plural.agent.*` and a worker with
flavor=PLURAL; kubectl through the tunnel with impersonation (of `gitlab:` names: the operator's default
impersonation policy), where the fork numbers ImpersonationConfig
differently (uid is field 4, not 3; no extra). `kubectl auth whoami` shows whom the API server saw.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agent_proto.flavor import WireFlavor
from agent_runtime.runtime import Runtime
from tests.integration.system.conftest import (
    CI_JOB,
    Certs,
    agent_spec,
    ci_kubeconfig,
    connected,
    kubectl,
    started_kas,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

IMPERSONATE_CONFIG = textwrap.dedent("""\
    ci_access:
      projects:
        - id: group/e2e
          access_as:
            impersonate:
              username: "gitlab:plural-user"
              uid: uid-4242
              groups: ["gitlab:plural-team", "gitlab:plural-admins"]
""")
CI_JOB_CONFIG = textwrap.dedent("""\
    ci_access:
      projects:
        - id: group/e2e
          access_as:
            ci_job: {}
""")


async def _whoami(
    runtime: Runtime, certs: Certs, tmp_path: Path, flavor: WireFlavor, agent_config: str
) -> dict[str, Any]:
    overrides = {"wire_flavor": flavor.value}
    async with started_kas(tmp_path / "kas", certs, overrides=overrides, agent_config=agent_config) as kas:
        assert kas.names.flavor is flavor
        spec = agent_spec(kas, "grpc", certs, flavor=flavor)
        runtime.apply(spec)
        await wait_for(runtime, spec.id, connected)
        await wait_for(runtime, spec.id, lambda s: s.registered and s.agent_id == 7001)
        result = await kubectl(ci_kubeconfig(kas, certs, tmp_path), "auth", "whoami", "-o", "json")
        assert result.returncode == 0, result.stderr
        await runtime.remove(spec.id)
    user: dict[str, Any] = json.loads(result.stdout)["status"]["userInfo"]
    return user


async def test_plural_flavour_impersonates_with_the_forks_numbering(
    runtime: Runtime, certs: Certs, tmp_path: Path
) -> None:
    user = await _whoami(runtime, certs, tmp_path, WireFlavor.PLURAL, IMPERSONATE_CONFIG)
    assert user["username"] == "gitlab:plural-user"
    assert user["uid"] == "uid-4242", "uid travels in the fork's field 4"
    assert {"gitlab:plural-team", "gitlab:plural-admins"} <= set(user["groups"])
    assert not user.get("extra")


@pytest.mark.parametrize("flavor", [WireFlavor.PLURAL, WireFlavor.GITLAB])
async def test_ci_job_identity_in_each_flavour(
    flavor: WireFlavor, runtime: Runtime, certs: Certs, tmp_path: Path
) -> None:
    user = await _whoami(runtime, certs, tmp_path, flavor, CI_JOB_CONFIG)
    job_id = CI_JOB["job_id"]
    project_id = CI_JOB["project"]["id"]  # type: ignore[index]  # a literal dict in conftest
    assert user["username"] == f"gitlab:ci_job:{job_id}"
    assert {"gitlab:ci_job", f"gitlab:project:{project_id}"} <= set(user["groups"])
    extra = user.get("extra") or {}
    if flavor is WireFlavor.GITLAB:
        assert extra.get("agent.gitlab.com/ci_job_id") == [str(job_id)]
    else:
        assert extra == {}, "the fork's ImpersonationConfig has no extra"
