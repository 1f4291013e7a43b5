"""Git over smart HTTP on loopback: `git http-backend` as CGI behind a small threaded HTTP server.

Serves every bare repository under one directory (`GIT_PROJECT_ROOT`), fetch and push, without
authentication: `http://127.0.0.1:<port>/<path inside the root>`. What Flux's source-controller,
GitLab's kas (through a Gitaly stand-in) or plain `git` clone from in the tests.

Requests are answered one CGI process each, the whole body buffered: the repositories of the tests are
small. Every request is recorded (`requests`) so a test can see who fetched, and when.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.process import StartStop

CGI_TIMEOUT = 60.0
"""Longest a single git http-backend run may take: a hung backend fails the request, not the test run."""
_PASSED_HEADERS = {
    "Content-Type": "CONTENT_TYPE",
    "Content-Encoding": "HTTP_CONTENT_ENCODING",  # http-backend inflates gzip request bodies itself
    "Git-Protocol": "GIT_PROTOCOL",  # protocol v2, when the client asks for it
    "User-Agent": "HTTP_USER_AGENT",
}


@dataclass(frozen=True)
class GitRequest:
    """One request the server answered."""

    method: str
    path: str
    query: str
    command: str
    """`advertise` (GET info/refs), `ls-refs`, `fetch` (a pack negotiation) or `push`."""
    status: int
    user_agent: str
    at: float
    """time.monotonic() when the answer was sent."""


def git(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    """Run git with a fixed identity and no user/system configuration; its stdout, stripped."""
    fixed = {
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **fixed, **(env or {})},
        capture_output=True,
        text=True,
        timeout=CGI_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


class GitHttpServer(StartStop):
    """`git http-backend` for the bare repositories under `root`, on 127.0.0.1 (port chosen by the kernel)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[GitRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        root.mkdir(parents=True, exist_ok=True)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if shutil.which("git") is None:
            raise RuntimeError("git not found on PATH")
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="git-http-server", kwargs={"poll_interval": 0.1}
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("GitHttpServer is not started")
        return int(self._server.server_address[1])

    def url(self, repository: str) -> str:
        """Clone URL of the repository at `root/<repository>` (e.g. `group/project.git`)."""
        return f"http://127.0.0.1:{self.port}/{repository}"

    # -- repositories ------------------------------------------------------------------------------

    def create_repository(self, repository: str, branch: str = "main") -> Path:
        """An empty bare repository at `root/<repository>` whose HEAD is `branch`."""
        path = self.root / repository
        git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(path))
        return path

    def fetches(self, repository: str) -> list[GitRequest]:
        """The fetches (pack negotiations, not ref listings) answered for `repository`."""
        wanted = f"/{repository.strip('/')}/git-upload-pack"
        with self._lock:
            return [r for r in self.requests if r.command == "fetch" and r.path == wanted]

    def _record(self, request: GitRequest) -> None:
        with self._lock:
            self.requests.append(request)

    # -- CGI -------------------------------------------------------------------------------------

    def run_backend(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Run git http-backend for one request: (status, headers, body) of its CGI answer."""
        env = {
            "PATH": os.environ.get("PATH", ""),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1",
            # http-backend enables receive-pack (push) only for an authenticated user.
            "REMOTE_USER": "test",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
        }
        for header, variable in _PASSED_HEADERS.items():
            if header in headers:
                env[variable] = headers[header]
        done = subprocess.run(
            ["git", "http-backend"],
            input=body,
            capture_output=True,
            env=env,
            timeout=CGI_TIMEOUT,
            check=False,
        )
        return _parse_cgi(done.stdout, done.stderr)


def _command(method: str, path: str, headers: Mapping[str, str], body: bytes) -> str:
    """What a request does. Protocol v2 lists refs and fetches with the same POST: its body says which."""
    if method == "GET":
        return "advertise"
    if path.endswith("/git-receive-pack"):
        return "push"
    if headers.get("Content-Encoding", "").lower() == "gzip":
        body = gzip.decompress(body)
    return "ls-refs" if b"command=ls-refs" in body[:64] else "fetch"


def _parse_cgi(output: bytes, stderr: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    head, separator, body = output.partition(b"\r\n\r\n")
    if not separator:
        head, separator, body = output.partition(b"\n\n")
    if not separator:
        return 500, [("Content-Type", "text/plain")], b"git http-backend failed: " + stderr[-2000:]
    status = 200
    headers: list[tuple[str, str]] = []
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == "status":
            status = int(value.split()[0])
        elif name.strip():
            headers.append((name.strip(), value.strip()))
    return status, headers, body


def _handler_for(server: GitHttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            split = urlsplit(self.path)
            request_headers, request_body = dict(self.headers.items()), self._body()
            status, headers, body = server.run_backend(
                self.command, split.path, split.query, request_headers, request_body
            )
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            server._record(
                GitRequest(
                    method=self.command,
                    path=split.path,
                    query=split.query,
                    command=_command(self.command, split.path, request_headers, request_body),
                    status=status,
                    user_agent=self.headers.get("User-Agent", ""),
                    at=time.monotonic(),
                )
            )

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return self._chunked_body()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _chunked_body(self) -> bytes:
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk

        def log_message(self, format: str, *args: object) -> None:
            """Silent: requests are recorded in `server.requests` instead of printed to stderr."""

    return Handler


class WorkingCopy:
    """A clone of a served repository that tests commit to and push from (over smart HTTP)."""

    def __init__(self, path: Path, url: str, branch: str = "main") -> None:
        self.path = path
        self.branch = branch
        git("init", "--quiet", f"--initial-branch={branch}", str(path))
        git("remote", "add", "origin", url, cwd=path)

    def write(self, files: Mapping[str, str]) -> None:
        """Write (create or replace) files, paths relative to the working copy."""
        for name, text in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)

    def commit_and_push(self, message: str, files: Mapping[str, str] | None = None) -> str:
        """Commit everything (after writing `files`), push to the branch; the new commit's id."""
        if files:
            self.write(files)
        git("add", "--all", cwd=self.path)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.path)
        git("push", "--quiet", "origin", f"HEAD:refs/heads/{self.branch}", cwd=self.path)
        return git("rev-parse", "HEAD", cwd=self.path)
