"""JSON logs for the whole process (ours, the runtime's, kopf's) with `namespace`/`name` of the resource.

kopf tags its per-object lines with `k8s_ref`; the runtime tags worker lines with `worker` (our worker id
is `<namespace>/<name>`); the operator passes `namespace`/`name` itself. All three become the same two
fields, so one query finds every line about one GitLabAgent.
"""

from __future__ import annotations

import json
import logging
from typing import Any, TextIO

from agent_runtime.telemetry.logs import JsonFormatter, configure_json_logging

RESOURCE_NAME_FIELD = "resource_name"
"""`extra` key for a resource's name (`name` itself is a reserved LogRecord attribute); printed as `name`."""


def resource_extra(namespace: str, name: str) -> dict[str, str]:
    """`extra=` for a line about one GitLabAgent."""
    return {"namespace": namespace, RESOURCE_NAME_FIELD: name}


_KOPF_FIELDS = ("k8s_ref", "k8s_skip", "settings")
"""kopf attaches these to its records; the settings dump is long and says nothing per line."""


class OperatorJsonFormatter(JsonFormatter):
    """JsonFormatter plus `namespace`/`name` from kopf's object reference or the worker id."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = json.loads(super().format(record))
        ref = getattr(record, "k8s_ref", None)
        if RESOURCE_NAME_FIELD in entry:
            entry["name"] = entry.pop(RESOURCE_NAME_FIELD)
        for field in _KOPF_FIELDS:
            entry.pop(field, None)
        if isinstance(ref, dict):
            if ref.get("namespace"):
                entry.setdefault("namespace", ref["namespace"])
            if ref.get("name"):
                entry.setdefault("name", ref["name"])
        worker = entry.get("worker")
        if isinstance(worker, str) and "/" in worker:
            namespace, _, name = worker.partition("/")
            entry.setdefault("namespace", namespace)
            entry.setdefault("name", name)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """One JSON handler on the root logger; kopf's own loggers propagate to it."""
    configure_json_logging(level, stream, OperatorJsonFormatter())
    root = logging.getLogger()
    # The Kubernetes client logs every request at DEBUG and aiohttp's access log is noise here.
    logging.getLogger("kubernetes").setLevel(max(logging.INFO, root.level))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
