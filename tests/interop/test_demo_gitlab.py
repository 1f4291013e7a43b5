"""`make demo KAS=gitlab` (scripts/demo.py --kas gitlab): GitLab's kas, the stand-ins and a real repository.

The demo must show what the issue promises: the GitLabAgent Connected with the agent id kas sent in the
configuration it read from the repository, a pushed change reaching it, and a CI job's kubectl through
the tunnel (the agent's ServiceAccount lists namespaces, and is refused secrets).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.e2e.harness import REPO_ROOT
from tests.support.gitlab_kas import GitLabPeers
from tests.support.k8s_cluster import find_assets
from tests.support.redis_server import find_redis_server
from tests.support.require import require

pytestmark = pytest.mark.timeout(200)
AGENT_ID = 1042
"""scripts/demo.py's agent."""


def test_the_demo_with_gitlab_kas_shows_the_agent_id_a_push_and_a_ci_kubectl(
    gitlab_peers: GitLabPeers,
) -> None:
    require(find_assets)
    require(find_redis_server)
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), "--kas", "gitlab"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=180,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-3000:]
    table = out.split("$ kubectl get gla -n demo\n", 1)[1].split("\n\n", 1)[0].splitlines()
    header, row = table[0], table[1]
    assert row.split()[0] == "payments", table
    assert row[header.index("PHASE") :].split()[0] == "Connected", table
    assert row[header.index("AGENT ID") :].split()[0] == str(AGENT_ID), table
    assert row[header.index("KAS VERSION") :].split()[0] == gitlab_peers.version, table
    assert re.search(r"pushed [0-9a-f]{12}; the GitLabAgent had it [0-9.]+s later", out), out
    listing = out.split("get namespaces   # as a GitLab CI job, via kas\n", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"^demo\s+Active", listing, re.MULTILINE), listing
    assert 'User "system:serviceaccount:demo:payments" cannot list resource "secrets"' in out, out
