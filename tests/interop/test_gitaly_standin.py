"""The Gitaly stand-in itself, over a real repository, as GitLab's kas reads it (needs no GitLab binaries).

What kas's parser insists on is checked here with the same rules (GITLAB-INTERNAL-API.md §5): the ref
advertisement starts with the `# service=git-upload-pack` pkt-line and a flush, the first ref line carries
the capabilities after a NUL, the list ends with a flush; TreeEntry's first message says BLOB.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent_proto.gitaly import commit_pb2, shared_pb2, smarthttp_pb2
from tests.support.git_http import git
from tests.support.gitaly import CHUNK, v2_token
from tests.support.gitlab_project import STORAGE, GitLabProject, agent_config_path

TOKEN = "gitaly-secret"
CONFIG = agent_config_path("standin")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitLabProject]:
    with GitLabProject(
        tmp_path_factory.mktemp("gitaly"), project_id=4, full_path="group/standin", gitaly_token=TOKEN
    ) as project:
        yield project


@pytest.fixture(scope="module")
def channel(project: GitLabProject) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{project.gitaly.port}") as channel:
        yield channel


def _repository(project: GitLabProject, relative_path: str = "") -> shared_pb2.Repository:
    return shared_pb2.Repository(
        storage_name=STORAGE,
        relative_path=relative_path or project.relative_path,
        gl_repository="project-4",
        gl_project_path=project.full_path,
    )


def _auth(token: str = TOKEN) -> tuple[tuple[str, str], ...]:
    return (("authorization", v2_token(token)), ("gitaly-feature-interop", "true"))


def _info_refs(channel: grpc.Channel, project: GitLabProject, metadata: tuple[tuple[str, str], ...]) -> bytes:
    call = channel.unary_stream(
        "/gitaly.SmartHTTPService/InfoRefsUploadPack",
        request_serializer=smarthttp_pb2.InfoRefsRequest.SerializeToString,
        response_deserializer=smarthttp_pb2.InfoRefsResponse.FromString,
    )
    request = smarthttp_pb2.InfoRefsRequest(repository=_repository(project))
    return b"".join(r.data for r in call(request, metadata=metadata, timeout=10))


def _tree_entry(
    channel: grpc.Channel, project: GitLabProject, revision: str, path: str, max_size: int = 0
) -> list[commit_pb2.TreeEntryResponse]:
    call = channel.unary_stream(
        "/gitaly.CommitService/TreeEntry",
        request_serializer=commit_pb2.TreeEntryRequest.SerializeToString,
        response_deserializer=commit_pb2.TreeEntryResponse.FromString,
    )
    request = commit_pb2.TreeEntryRequest(
        repository=_repository(project), revision=revision.encode(), path=path.encode(), max_size=max_size
    )
    return list(call(request, metadata=_auth(), timeout=10))


def _pkt_lines(data: bytes) -> list[bytes | None]:
    """The pkt-lines of `data`; None for a flush packet."""
    lines: list[bytes | None] = []
    while data:
        size = int(data[:4], 16)
        lines.append(None if size == 0 else data[4:size])
        data = data[max(size, 4) :]
    return lines


def test_an_empty_repository_advertises_no_refs(channel: grpc.Channel, project: GitLabProject) -> None:
    if project.pushes:
        pytest.fail("this test must run before any push of the module")
    lines = _pkt_lines(_info_refs(channel, project, _auth()))
    assert lines == [b"# service=git-upload-pack\n", None, None]


def test_refs_are_advertised_like_smart_http(channel: grpc.Channel, project: GitLabProject) -> None:
    commit = project.push({CONFIG: "observability:\n  logging:\n    level: debug\n"}, "first")
    lines = _pkt_lines(_info_refs(channel, project, _auth()))
    assert lines[:2] == [b"# service=git-upload-pack\n", None]
    first = lines[2]
    assert first is not None
    ref, caps = first.rstrip(b"\n").split(b"\0")
    assert ref == f"{commit} HEAD".encode()
    assert b"symref=HEAD:refs/heads/main" in caps
    assert f"{commit} refs/heads/main\n".encode() in lines
    assert lines[-1] is None
    call = project.gitaly.calls("InfoRefsUploadPack")[-1]
    assert (call.relative_path, call.code) == (project.relative_path, "OK")
    assert call.metadata.get("gitaly-feature-interop") == "true"


def test_tree_entry_streams_the_blob_in_chunks(channel: grpc.Channel, project: GitLabProject) -> None:
    big = "".join(f"# line {i:06d} of a long comment\n" for i in range(2 * CHUNK // 30))
    commit = project.push({CONFIG: big}, "big")
    answer = _tree_entry(channel, project, commit, CONFIG)
    assert len(answer) > 1
    assert answer[0].type == commit_pb2.TreeEntryResponse.BLOB
    assert (answer[0].size, answer[0].mode) == (len(big), 0o100644)
    assert len(answer[0].oid) == 40
    assert all(r.type == commit_pb2.TreeEntryResponse.COMMIT and not r.oid for r in answer[1:])
    assert b"".join(r.data for r in answer).decode() == big


def test_tree_entry_errors_are_gitalys(channel: grpc.Channel, project: GitLabProject) -> None:
    commit = project.push({CONFIG: "ci_access: {}\n"}, "small")
    cases = [
        (commit, "nothing/here.yaml", 0, grpc.StatusCode.NOT_FOUND),
        ("0" * 40, CONFIG, 0, grpc.StatusCode.NOT_FOUND),
        (commit, CONFIG, 5, grpc.StatusCode.FAILED_PRECONDITION),
    ]
    for revision, path, max_size, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            _tree_entry(channel, project, revision, path, max_size)
        assert err.value.code() is code, (revision, path, max_size, err.value)
    assert _tree_entry(channel, project, commit, CONFIG, max_size=len("ci_access: {}\n"))[0].data
    directory = _tree_entry(channel, project, commit, ".gitlab/agents")
    assert [r.type for r in directory] == [commit_pb2.TreeEntryResponse.TREE]
    codes = [c.code for c in project.gitaly.calls("TreeEntry")[-5:]]
    assert codes == ["NOT_FOUND", "NOT_FOUND", "FAILED_PRECONDITION", "OK", "OK"]


def test_a_token_is_required_and_checked(channel: grpc.Channel, project: GitLabProject) -> None:
    stale = (("authorization", v2_token(TOKEN, time.time() - 120)),)
    for metadata, code in [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        (stale, grpc.StatusCode.UNAUTHENTICATED),
        (_auth("another-secret"), grpc.StatusCode.PERMISSION_DENIED),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            _info_refs(channel, project, metadata)
        assert err.value.code() is code
    assert _info_refs(channel, project, _auth())


def test_an_unknown_repository_is_not_found(channel: grpc.Channel, project: GitLabProject) -> None:
    call = channel.unary_stream(
        "/gitaly.SmartHTTPService/InfoRefsUploadPack",
        request_serializer=smarthttp_pb2.InfoRefsRequest.SerializeToString,
        response_deserializer=smarthttp_pb2.InfoRefsResponse.FromString,
    )
    request = smarthttp_pb2.InfoRefsRequest(repository=_repository(project, "@hashed/other.git"))
    with pytest.raises(grpc.RpcError) as err:
        list(call(request, metadata=_auth(), timeout=10))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


def test_the_repository_is_also_served_over_smart_http(project: GitLabProject, tmp_path: Path) -> None:
    commit = project.push({"README.md": "hello\n"}, "readme")
    git("clone", "--quiet", project.clone_url, str(tmp_path / "copy"))
    assert git("rev-parse", "HEAD", cwd=tmp_path / "copy") == commit
    assert (tmp_path / "copy" / "README.md").read_text() == "hello\n"
