"""The operator image's build steps, short of Docker: build the wheel, install it apart, run it.

The Dockerfile builds this project's wheel and installs it into the image's venv; a module or data file
the wheel misses would only show in the image. Here the wheel goes into a directory of its own, which
comes first on the path of a fresh interpreter started outside the checkout, so nothing is imported from
the source tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent_operator", "agent_runtime", "agent_proto", "kas")

pytestmark = pytest.mark.timeout(300)


def _source_files() -> set[str]:
    found: set[str] = set()
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*"):
            wanted = path.suffix in (".py", ".proto", ".pyi") or path.name == "py.typed"
            if wanted and "__pycache__" not in path.parts:
                found.add(path.relative_to(REPO_ROOT).as_posix())
    return found


def test_the_wheel_carries_every_module_and_runs_from_its_own_install(tmp_path: Path) -> None:
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(REPO_ROOT)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    [wheel] = wheels.glob("gitlab_agent_operator-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    missing = _source_files() - names
    assert not missing, f"not in the wheel: {sorted(missing)[:10]}"
    assert "gitlab-agent-operator = agent_operator.__main__:main" in scripts

    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import agent_operator.label_sweep as m; print(m.__file__)"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.strip().startswith(str(target)), where.stdout
    helped = subprocess.run(
        [sys.executable, "-m", "agent_operator", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert helped.returncode == 0, helped.stderr
    assert "--kubeconfig" in helped.stdout
