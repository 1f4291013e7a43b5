"""GitRepository URL → GitLab project path (agent_runtime/modules/flux/urls.py, PROTOCOL.md §17.4 made
stricter as §17.13 asks)."""

from __future__ import annotations

import pytest

from agent_runtime.modules.flux.urls import (
    ExternalUrlError,
    GitLabServer,
    clean_project_path,
    is_project_path,
    match_key,
)

GITLAB = GitLabServer.parse("https://gitlab.example.com")
UNDER_ROOT = GitLabServer.parse("https://example.com/gitlab/")


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("https://gitlab.example.com/group/app.git", "group/app"),
        ("https://gitlab.example.com/group/app", "group/app"),
        ("https://gitlab.example.com/group/sub/deeper/app.git", "group/sub/deeper/app"),
        ("https://gitlab.example.com/group/app/", "group/app"),
        ("https://gitlab.example.com:443/group/app.git", "group/app"),
        ("https://deploy:secret@gitlab.example.com/group/app.git", "group/app"),
        ("HTTPS://GitLab.Example.COM/Group/App.git", "Group/App"),
        ("https://gitlab.example.com./group/app.git", "group/app"),
        ("ssh://git@gitlab.example.com/group/app.git", "group/app"),
        ("ssh://git@gitlab.example.com:2222/group/sub/app.git", "group/sub/app"),
        ("ssh://git@GITLAB.example.com/group/app", "group/app"),
        ("https://gitlab.example.com/group/my_app-2.0", "group/my_app-2.0"),
    ],
)
def test_urls_of_the_agents_gitlab_name_their_project(url: str, path: str) -> None:
    assert GITLAB.project_path(url) == path


@pytest.mark.parametrize(
    "url",
    [
        "https://gitlab.other.com/group/app.git",  # another host
        "https://altssh.gitlab.example.com/group/app.git",  # a sub-domain is another host
        "https://gitlab.example.com.evil.com/group/app.git",
        "http://gitlab.example.com/group/app.git",  # another scheme: another port
        "https://gitlab.example.com:8443/group/app.git",  # another port
        "git@gitlab.example.com:group/app.git",  # scp-like: Flux refuses it too
        "git://gitlab.example.com/group/app.git",
        "file:///gitlab.example.com/group/app.git",
        "https://gitlab.example.com/app.git",  # no namespace
        "https://gitlab.example.com/",
        "https://gitlab.example.com",
        "https://gitlab.example.com//group/app.git",  # empty segment
        "https://gitlab.example.com/group//app.git",
        "https://gitlab.example.com/group/../admin/app.git",
        "https://gitlab.example.com/group/./app.git",
        "https://gitlab.example.com/group/.hidden",
        "https://gitlab.example.com/group/-dash",
        "https://gitlab.example.com/group/app%2Fx",  # percent-encoding
        "https://gitlab.example.com/group/app?ref=main",
        "https://gitlab.example.com/group/app#frag",
        "https://gitlab.example.com/group/app name",
        "https://gitlab.example.com:notaport/group/app",
        "https://[::1/group/app",
        "",
    ],
)
def test_other_urls_are_not_ours(url: str) -> None:
    assert GITLAB.project_path(url) is None


def test_the_port_of_an_http_gitlab_counts_and_defaults_are_explicit() -> None:
    server = GitLabServer.parse("http://gitlab.local:8080")

    assert server.project_path("http://gitlab.local:8080/g/p.git") == "g/p"
    assert server.project_path("http://gitlab.local/g/p.git") is None
    assert GitLabServer.parse("http://gitlab.local").project_path("http://gitlab.local:80/g/p") == "g/p"


def test_a_relative_url_root_prefixes_http_paths_and_is_removed() -> None:
    assert UNDER_ROOT.project_path("https://example.com/gitlab/group/app.git") == "group/app"
    assert UNDER_ROOT.project_path("https://example.com/group/app.git") is None
    assert UNDER_ROOT.project_path("https://example.com/gitlabx/group/app.git") is None
    # SSH clone URLs never carry the root.
    assert UNDER_ROOT.project_path("ssh://git@example.com/group/app.git") == "group/app"


@pytest.mark.parametrize(
    "external", ["", "gitlab.example.com", "ftp://gitlab.example.com", "https://", "https://h:x"]
)
def test_an_unusable_external_url_is_an_error(external: str) -> None:
    with pytest.raises(ExternalUrlError):
        GitLabServer.parse(external)


def test_project_paths_compare_case_insensitively() -> None:
    assert match_key("Group/App") == match_key("group/app")
    assert match_key("group/app") != match_key("group/app2")


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("group/app", True),
        ("Group/Sub/app", True),
        ("app", False),
        ("group/app.git", False),
        ("group/app/", False),
        ("/group/app", False),
        ("group/../app", False),
        ("", False),
        ("g/" + "a" * 1100, False),
        ("group/app\n", False),
    ],
)
def test_what_kas_reports_must_be_a_plain_project_path(value: str, ok: bool) -> None:
    assert is_project_path(value) is ok


def test_one_trailing_git_suffix_is_removed() -> None:
    assert clean_project_path("group/app.git") == "group/app"
    assert clean_project_path("group/app.git.git") == "group/app.git"
