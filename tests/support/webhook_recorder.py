"""A loopback HTTP server standing in for Flux notification-controller's webhook receiver (shared by
bench/flux_push.py, where GitLab's agentk calls it, and the Flux module's receiver-mode tests).

It records each POST (path, time.monotonic() of arrival, body length) in its own threads and answers 200;
a path in `redirects` is answered `307` to its target instead (a client that follows it shows up as a
POST to the target).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.ports import free_port


class WebhookRecorder:
    """Start with `start()`, stop with `stop()`; `url` is the base URL (no trailing /)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.calls: list[tuple[str, float]] = []
        """(path, arrival) of every POST, in order."""
        self.body_lengths: list[int] = []
        """The body length of every POST, in the same order."""
        self.redirects: dict[str, str] = {}
        """Path → where a 307 sends it."""
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                with recorder._lock:
                    recorder.calls.append((self.path, at))
                    recorder.body_lengths.append(length)
                    target = recorder.redirects.get(self.path)
                self.send_response(307 if target else 200)
                if target:
                    self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: every call is recorded

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self) -> int:
        with self._lock:
            return len(self.calls)

    def last(self) -> float:
        with self._lock:
            return self.calls[-1][1]

    def paths(self) -> list[str]:
        with self._lock:
            return [path for path, _ in self.calls]
