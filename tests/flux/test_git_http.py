"""tests/support/git_http.py: real git clones from and pushes to the smart-HTTP server on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.git_http import GitHttpServer, WorkingCopy, git


def test_a_push_over_http_is_what_the_next_clone_sees_and_each_fetch_is_recorded(tmp_path: Path) -> None:
    with GitHttpServer(tmp_path / "repos") as server:
        server.create_repository("group/config.git")
        url = server.url("group/config.git")
        work = WorkingCopy(tmp_path / "work", url)
        first = work.commit_and_push("one", {"agents/a.yaml": "kind: A\n"})
        second = work.commit_and_push("two", {"agents/a.yaml": "kind: B\n"})

        git("clone", "--quiet", url, str(tmp_path / "clone"))

        assert git("rev-parse", "HEAD", cwd=tmp_path / "clone") == second != first
        assert (tmp_path / "clone" / "agents" / "a.yaml").read_text() == "kind: B\n"
        assert git("ls-remote", url, "refs/heads/main").split()[0] == second
        assert len(server.fetches("group/config.git")) == 1  # the clone; ls-remote lists refs only
        pushes = [r for r in server.requests if r.path.endswith("/git-receive-pack")]
        assert [r.status for r in pushes] == [200, 200]


def test_an_unknown_repository_is_not_found(tmp_path: Path) -> None:
    with GitHttpServer(tmp_path / "repos") as server:
        with pytest.raises(RuntimeError, match="not found"):
            git("ls-remote", server.url("nowhere.git"))
        assert [r.status for r in server.requests] == [404]
