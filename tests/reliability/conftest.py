"""The reliability suite (issue 13): what goes wrong, against real parts. Every test is `integration`
(it needs the real kube-apiserver) and records a figure (tests/reliability/figures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.figures import RECORDED

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in RECORDED:
        terminalreporter.write_line(line)
