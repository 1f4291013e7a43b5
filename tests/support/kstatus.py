"""kstatus, the library Flux, Argo CD's health checks and `kubectl wait` build on, as a test oracle.

`tests/support/kstatus_go/` is a small Go program around `sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute`
(the release go.mod pins). It is built once into `.cache/kstatus/<release>/kstatus`, the first time a
test asks for it (about a minute cold, from the Go module proxy); without Go the tests that need it skip,
and fail with REQUIRE_K8S=1 (CI), like the other built test substrate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from tests.support.require import missing

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
SOURCE: Final = Path(__file__).resolve().parent / "kstatus_go"
BUILD_TIMEOUT_S: Final = 600.0
"""A cold build fetches cli-utils and apimachinery through the module proxy: about a minute here."""


class KstatusUnavailableError(RuntimeError):
    """Go is missing or the build failed; the message says which."""


@dataclass(frozen=True)
class Kstatus:
    """What kstatus computed for one object."""

    status: str
    """InProgress, Current, Failed, Terminating, NotFound or Unknown."""
    message: str
    """kstatus's explanation (a condition's message, or the generation it waits for)."""


def release() -> str:
    """The cli-utils release go.mod pins, e.g. `v0.37.2` (the cache key)."""
    found = re.search(r"sigs\.k8s\.io/cli-utils (v\S+)", (SOURCE / "go.mod").read_text())
    if found is None:
        raise KstatusUnavailableError(
            "tests/support/kstatus_go/go.mod does not require sigs.k8s.io/cli-utils"
        )
    return found.group(1)


def binary() -> Path:
    """The built checker, building it first when the cache lacks it."""
    target = REPO_ROOT / ".cache" / "kstatus" / release() / "kstatus"
    if os.access(target, os.X_OK):
        return target
    go = shutil.which("go")
    if go is None:
        raise KstatusUnavailableError("the kstatus checker needs Go to build (tests/support/kstatus_go)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staging = Path(tmp) / "kstatus"
        done = subprocess.run(
            [go, "build", "-trimpath", "-o", str(staging), "."],
            cwd=SOURCE,
            env={**os.environ, "CGO_ENABLED": "0"},
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise KstatusUnavailableError(f"building tests/support/kstatus_go failed: {done.stderr[-2000:]}")
        os.replace(staging, target)  # atomic: a concurrent or interrupted build never leaves half a file
    return target


def compute(checker: Path, obj: Mapping[str, Any]) -> Kstatus:
    """kstatus's verdict on one object as the API server returned it."""
    done = subprocess.run(
        [str(checker)], input=json.dumps(obj), capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"kstatus failed: {done.stderr}")
    answer = json.loads(done.stdout.splitlines()[0])
    return Kstatus(str(answer["status"]), str(answer["message"]))


@pytest.fixture(scope="session")
def kstatus_checker() -> Path:
    """The built checker; skips without Go (fails with REQUIRE_K8S=1). Import it into a test module."""
    try:
        return binary()
    except KstatusUnavailableError as err:
        reason = str(err)
    return missing(reason)
