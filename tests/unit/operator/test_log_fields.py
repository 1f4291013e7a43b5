"""Every operator log line about one GitLabAgent carries its `namespace` and `name`, whichever part of the
process wrote it: kopf (its `k8s_ref`), the runtime (the worker id `<namespace>/<name>`) or the operator."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import kopf as kopf_framework
import pytest

from agent_operator.logs import configure_logging, resource_extra


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    configure_logging("INFO", stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def _entries(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_kopf_runtime_and_operator_lines_name_the_resource(lines: io.StringIO) -> None:
    ref = {"namespace": "team-a", "name": "agent-1", "uid": "u", "apiVersion": "v", "kind": "GitLabAgent"}
    # kopf's own settings, posting off: once kopf's engine is imported (other tests do), its Event poster
    # handler on kopf.objects reads them from every record.
    settings = kopf_framework.OperatorSettings()
    settings.posting.enabled = False
    logging.getLogger("kopf.objects").info("Handler succeeded.", extra={"k8s_ref": ref, "settings": settings})
    logging.getLogger("agent_runtime.worker").info("connected", extra={"worker": "team-b/agent-2"})
    logging.getLogger("agent_operator.controller").info("applied", extra=resource_extra("team-c", "agent-3"))
    logging.getLogger("agent_operator.controller").info("started")
    kopf, runtime, operator, plain = _entries(lines)
    assert (kopf["namespace"], kopf["name"], kopf["msg"]) == ("team-a", "agent-1", "Handler succeeded.")
    assert "k8s_ref" not in kopf
    assert "settings" not in kopf
    assert (runtime["namespace"], runtime["name"], runtime["worker"]) == (
        "team-b",
        "agent-2",
        "team-b/agent-2",
    )
    assert (operator["namespace"], operator["name"]) == ("team-c", "agent-3")
    assert "resource_name" not in operator
    assert "namespace" not in plain
    assert "name" not in plain


def test_a_worker_id_without_a_namespace_names_nothing(lines: io.StringIO) -> None:
    logging.getLogger("agent_runtime.worker").info("connected", extra={"worker": "standalone"})
    (entry,) = _entries(lines)
    assert "namespace" not in entry
    assert "name" not in entry
