"""Structured JSON logs with the worker id on every line.

The id travels in a context variable: the manager sets it before it creates a worker's task, and asyncio
copies the context into every task created below it, so every line a worker (or its modules) logs carries
`worker` without passing loggers around. `worker_logger()` is the explicit alternative for code that logs
about a worker from outside its task.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime
from typing import Any, Final, TextIO

current_worker: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_worker", default=None)
"""The worker id of the running task's context (None outside workers)."""

_STANDARD_ATTRS: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime", "taskName"}
)


@contextlib.contextmanager
def worker_context(worker_id: str) -> Iterator[None]:
    """Within this block (and in tasks created inside it), log lines carry `worker=<worker_id>`."""
    token = current_worker.set(worker_id)
    try:
        yield
    finally:
        current_worker.reset(token)


class _WorkerAdapter(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("worker", (self.extra or {}).get("worker"))
        kwargs["extra"] = extra
        return msg, kwargs


def worker_logger(logger: logging.Logger, worker_id: str) -> logging.LoggerAdapter[logging.Logger]:
    """A logger whose every line carries `worker=<worker_id>`."""
    return _WorkerAdapter(logger, {"worker": worker_id})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, worker, any `extra=` fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        worker = getattr(record, "worker", None) or current_worker.get()
        if worker:
            entry["worker"] = worker
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in entry and key != "worker":
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_json_logging(
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
    formatter: logging.Formatter | None = None,
) -> logging.Handler:
    """Send the root logger's records as JSON lines to `stream` (stderr by default); returns the handler.

    `formatter` replaces JsonFormatter (the operator adds resource fields with a subclass).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter or JsonFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
