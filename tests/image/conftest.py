"""Image fixtures: the operator image built by scripts/image, plus the e2e suite's apiserver and kas.

The image tests skip with the reason when no container engine can run here (no podman, no Docker daemon,
), except with REQUIRE_IMAGE=1 (CI), where that is a failure.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

# The e2e suite's fixtures, shared rather than copied: manifests/ applied, the operator's ServiceAccount
# token, the reference kas process, the test namespace with the agents' ServiceAccount.
from tests.e2e.conftest import agent_namespace, kas, kube, operator_credentials  # noqa: F401 - fixtures
from tests.e2e.harness import REPO_ROOT
from tests.support.require import IMAGE, missing

_HERE = Path(__file__).parent
BUILD_TIMEOUT = 900.0
"""A cold build (the Debian base from mmdebstrap, then pip) takes about 3 minutes; warm, seconds."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.integration)


def _engine_reason() -> str | None:
    """Why no container can run here, or None when one can."""
    if shutil.which("podman") is None and shutil.which("docker") is None:
        return "neither podman nor docker is installed (apt-get install podman runc mmdebstrap)"
    done = subprocess.run(
        [str(REPO_ROOT / "scripts/image"), "engine", "info"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        return f"the container engine does not run here: {done.stderr.strip()[-500:]}"
    return None


@pytest.fixture(scope="session")
def image() -> str:
    """The image's tag, built (or found up to date in the layer cache) by scripts/image."""
    reason = _engine_reason()
    if reason is not None:
        missing(reason, IMAGE)
    done = subprocess.run(
        [str(REPO_ROOT / "scripts/image")],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
        cwd=REPO_ROOT,
    )
    # The engine runs, so a failing build is the project's fault: a failure, never a skip.
    assert done.returncode == 0, f"scripts/image failed ({done.returncode}): {done.stderr[-3000:]}"
    return done.stdout.strip().splitlines()[-1]
