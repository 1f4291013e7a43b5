"""A Gitaly stand-in: the two RPCs GitLab's kas 16.5 reads agent configuration with, over real bare repos.

kas finds the head of `refs/heads/<default branch>` in `SmartHTTPService/InfoRefsUploadPack` (the bytes a
smart-HTTP server answers for `info/refs?service=git-upload-pack`: a `# service=git-upload-pack` pkt-line
and a flush, then git's own advertisement) and reads `.gitlab/agents/<name>/config.yaml` at that commit
with `CommitService/TreeEntry` (GITLAB-INTERNAL-API.md §5). Both answers come from `git` itself
(`upload-pack --advertise-refs`, `ls-tree`, `cat-file`), so what kas sees is what a Git server serves.

Errors as Gitaly gives them and kas reads them: NOT_FOUND for an unknown repository, revision or path,
FAILED_PRECONDITION for a blob over `max_size`. With a token, every call must carry Gitaly's v2 auth
(`authorization: Bearer v2.<hex HMAC-SHA256(token, unix time)>.<unix time>`, what kas sends for
`gitaly_info.token`). Every call is recorded (`calls()`), features metadata included.

A synchronous gRPC server on a thread pool: kas calls it whenever it likes, and sync and async tests use it
alike.
"""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, TypeVar

import grpc

from agent_proto.gitaly import commit_pb2, shared_pb2, smarthttp_pb2
from tests.support.ports import free_port

CHUNK: Final = 16 * 1024
"""Bytes per streamed message; small enough that a config file over a few KiB arrives in several chunks."""
SERVICE_HEADER: Final = b"001e# service=git-upload-pack\n0000"
"""What a smart-HTTP server puts before upload-pack's advertisement (and kas's parser insists on)."""
AUTH_SKEW_S: Final = 30
"""Gitaly accepts a v2 token whose timestamp is at most this far from its clock."""
FEATURE_PREFIX: Final = "gitaly-feature-"
_GIT_TIMEOUT: Final = 30.0
T = TypeVar("T")


class GitalyStatusError(Exception):
    """End the call with this status (raised inside a handler, turned into context.abort)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@dataclass(frozen=True)
class GitalyCall:
    """One RPC kas made: what it asked for, with which metadata, and how it ended."""

    rpc: str
    """"InfoRefsUploadPack" or "TreeEntry"."""
    relative_path: str
    revision: str = ""
    path: str = ""
    max_size: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    """The call's metadata without `authorization` (kas sends `gitaly_info.features` here)."""
    code: str = "OK"
    at: float = 0.0
    """time.monotonic() when the call ended."""


def v2_token(secret: str, now: float | None = None) -> str:
    """The `authorization` value a Gitaly client sends for `secret` (what kas does with gitaly_info.token)."""
    stamp = str(int(time.time() if now is None else now))
    signature = hmac.new(secret.encode(), stamp.encode(), hashlib.sha256).hexdigest()
    return f"Bearer v2.{signature}.{stamp}"


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, timeout=_GIT_TIMEOUT, check=False)


def _chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


class GitalyStandIn:
    """The server. `add_repository` maps a Gitaly repository (storage, relative path) to a bare repo."""

    def __init__(self, *, token: str = "") -> None:
        self.port = free_port()
        self.token = token
        """Gitaly's auth token; empty: calls need no authorization (like agent_info's empty token)."""
        self._lock = threading.Lock()
        self._repos: dict[tuple[str, str], Path] = {}
        self._calls: list[GitalyCall] = []
        self._server: grpc.Server | None = None

    @property
    def address(self) -> str:
        """What `gitaly_info.address` says: kas dials tcp:// addresses without TLS."""
        return f"tcp://127.0.0.1:{self.port}"

    def add_repository(self, storage_name: str, relative_path: str, bare_repo: Path) -> None:
        with self._lock:
            self._repos[(storage_name, relative_path)] = bare_repo

    def calls(self, rpc: str = "") -> list[GitalyCall]:
        with self._lock:
            return [c for c in self._calls if not rpc or c.rpc == rpc]

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="gitaly"))
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "gitaly.SmartHTTPService",
                    {
                        "InfoRefsUploadPack": grpc.unary_stream_rpc_method_handler(
                            self._info_refs,
                            request_deserializer=smarthttp_pb2.InfoRefsRequest.FromString,
                            response_serializer=smarthttp_pb2.InfoRefsResponse.SerializeToString,
                        )
                    },
                ),
                grpc.method_handlers_generic_handler(
                    "gitaly.CommitService",
                    {
                        "TreeEntry": grpc.unary_stream_rpc_method_handler(
                            self._tree_entry,
                            request_deserializer=commit_pb2.TreeEntryRequest.FromString,
                            response_serializer=commit_pb2.TreeEntryResponse.SerializeToString,
                        )
                    },
                ),
            )
        )
        if server.add_insecure_port(f"127.0.0.1:{self.port}") != self.port:
            raise RuntimeError(f"the Gitaly stand-in could not listen on 127.0.0.1:{self.port}")
        server.start()
        self._server = server

    def stop(self, grace: float = 1.0) -> None:
        if self._server is not None:
            self._server.stop(grace).wait(grace + 5)
            self._server = None

    # --- the RPCs ---------------------------------------------------------------------------------

    def _info_refs(
        self, request: smarthttp_pb2.InfoRefsRequest, context: grpc.ServicerContext
    ) -> Iterator[smarthttp_pb2.InfoRefsResponse]:
        call = GitalyCall("InfoRefsUploadPack", request.repository.relative_path)
        return self._served(call, context, lambda: self._advertisement(request.repository))

    def _advertisement(self, repository: shared_pb2.Repository) -> Iterator[smarthttp_pb2.InfoRefsResponse]:
        repo = self._repo(repository)
        done = _git(repo, "upload-pack", "--stateless-rpc", "--advertise-refs", ".")
        if done.returncode != 0:
            raise GitalyStatusError(
                grpc.StatusCode.INTERNAL, f"upload-pack: {done.stderr.decode(errors='replace')}"
            )
        for chunk in _chunks(SERVICE_HEADER + done.stdout):
            yield smarthttp_pb2.InfoRefsResponse(data=chunk)

    def _tree_entry(
        self, request: commit_pb2.TreeEntryRequest, context: grpc.ServicerContext
    ) -> Iterator[commit_pb2.TreeEntryResponse]:
        call = GitalyCall(
            "TreeEntry",
            request.repository.relative_path,
            revision=request.revision.decode(errors="replace"),
            path=request.path.decode(errors="replace"),
            max_size=request.max_size,
        )
        return self._served(call, context, lambda: self._entry(request))

    def _entry(self, request: commit_pb2.TreeEntryRequest) -> Iterator[commit_pb2.TreeEntryResponse]:
        repo = self._repo(request.repository)
        revision, path = request.revision.decode(), request.path.decode().strip("/")
        if not revision or revision.startswith("-") or not path:
            raise GitalyStatusError(grpc.StatusCode.INVALID_ARGUMENT, "empty or invalid revision or path")
        listed = _git(repo, "ls-tree", "-z", "--full-tree", revision, "--", path)
        if listed.returncode != 0:
            raise GitalyStatusError(grpc.StatusCode.NOT_FOUND, "revision not found")
        entry = listed.stdout.split(b"\0")[0]
        if not entry:
            raise GitalyStatusError(grpc.StatusCode.NOT_FOUND, "tree entry not found")
        mode, kind, oid = entry.split(b"\t")[0].decode().split()
        if kind != "blob":
            kinds = {"tree": commit_pb2.TreeEntryResponse.TREE, "commit": commit_pb2.TreeEntryResponse.COMMIT}
            yield commit_pb2.TreeEntryResponse(type=kinds[kind], oid=oid, mode=int(mode, 8))
            return
        size = int(_git(repo, "cat-file", "-s", oid).stdout)
        if request.max_size > 0 and size > request.max_size:
            raise GitalyStatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"object size ({size}) is bigger than the maximum allowed size ({request.max_size})",
            )
        data = _git(repo, "cat-file", "blob", oid).stdout
        if request.limit > 0:
            data = data[: request.limit]
        first = commit_pb2.TreeEntryResponse(
            type=commit_pb2.TreeEntryResponse.BLOB, oid=oid, size=size, mode=int(mode, 8)
        )
        for chunk in _chunks(data) if data else iter([b""]):
            first.data = chunk
            yield first
            first = commit_pb2.TreeEntryResponse()

    # --- shared -----------------------------------------------------------------------------------

    def _served(
        self, call: GitalyCall, context: grpc.ServicerContext, answer: Callable[[], Iterator[T]]
    ) -> Iterator[T]:
        """Check the auth, stream `answer()`, record the call with how it ended."""
        metadata = {k: str(v) for k, v in context.invocation_metadata() if k != "authorization"}
        code = "OK"
        try:
            self._authorize(context)
            yield from answer()
        except GitalyStatusError as err:
            code = err.code.name
            context.abort(err.code, err.details)
        finally:
            with self._lock:
                self._calls.append(replace(call, metadata=metadata, code=code, at=time.monotonic()))

    def _authorize(self, context: grpc.ServicerContext) -> None:
        if not self.token:
            return
        given = dict(context.invocation_metadata()).get("authorization", "")
        if not given:
            raise GitalyStatusError(grpc.StatusCode.UNAUTHENTICATED, "authentication required")
        scheme, _, value = str(given).partition(" ")
        version, _, rest = value.partition(".")
        _, _, stamp = rest.rpartition(".")
        fresh = stamp.isdigit() and abs(time.time() - int(stamp)) <= AUTH_SKEW_S
        expected = v2_token(self.token, int(stamp)) if stamp.isdigit() else ""
        if scheme.lower() != "bearer" or version != "v2" or not fresh:
            raise GitalyStatusError(grpc.StatusCode.UNAUTHENTICATED, "malformed or expired token")
        if not hmac.compare_digest(f"Bearer {value}", expected):
            raise GitalyStatusError(grpc.StatusCode.PERMISSION_DENIED, "permission denied")

    def _repo(self, repository: shared_pb2.Repository) -> Path:
        with self._lock:
            repo = self._repos.get((repository.storage_name, repository.relative_path))
        if repo is None:
            raise GitalyStatusError(
                grpc.StatusCode.NOT_FOUND,
                f"repository not found: {repository.storage_name}/{repository.relative_path}",
            )
        return repo
