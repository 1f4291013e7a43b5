"""Debian's Prometheus and promtool for the monitoring tests: found on PATH, run on loopback.

`apt-get install prometheus` (2.42 on Debian 12) brings both. The server runs as a child process with a
config and TSDB directory of its own, never as the package's systemd service.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.support import process
from tests.support.ports import free_port


class PrometheusNotFoundError(RuntimeError):
    """`prometheus` or `promtool` is not on PATH."""


def find_binary(name: str) -> str:
    """The path of `name` (prometheus, promtool); PrometheusNotFoundError names the package to install."""
    found = shutil.which(name)
    if found is None:
        raise PrometheusNotFoundError(f"{name} not found: apt-get install prometheus (make system-deps)")
    return found


def promtool(*args: str, stdin: str | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run promtool with `args`; the caller checks the result."""
    return subprocess.run(
        [find_binary("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class PrometheusServer:
    """A Prometheus server scraping `targets` (as job `job`) every `interval`, with `rule_files`
    evaluated as often."""

    def __init__(
        self,
        work_dir: Path,
        job: str,
        targets: Sequence[str],
        rule_files: Sequence[Path],
        interval: str = "1s",
    ) -> None:
        self.work_dir = work_dir
        self.port = free_port()
        self.log_path = work_dir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None
        work_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "static_configs": [{"targets": list(targets)}],
                }
            ],
        }
        self.config_path = work_dir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        argv = [
            find_binary("prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.work_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ]
        self._proc = process.start(argv, self.log_path, self.work_dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log()}")
            if self._get("/-/ready") is not None:
                return
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready after {timeout:.0f}s: {self.log()}")

    def stop(self) -> None:
        process.stop(self._proc, 10)
        self._proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(dict(params))}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as response:  # noqa: S310
                raw = bytes(response.read())
        except (OSError, urllib.error.URLError):
            return None
        return json.loads(raw) if path.startswith("/api/") else raw

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """`data` of a successful API answer (`/api/v1/<path>`); AssertionError otherwise."""
        body = self._get(f"/api/v1/{path}", params)
        assert body is not None, (path, params, self.log())
        assert body.get("status") == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (a scalar comes back as one sample without labels)."""
        data = self.api("query", {"query": expr})
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """Every pending or firing alert."""
        return list(self.api("alerts")["alerts"])

    def targets_up(self) -> bool:
        active = self.api("targets")["activeTargets"]
        return bool(active) and all(target["health"] == "up" for target in active)
