"""Which GitRepository URLs point at the agent's GitLab, and the GitLab project path each names.

Upstream (PROTOCOL.md §17.4) compares host names exactly, ignores scheme and port, and keeps a relative
URL root in the path. §17.13 asks for stricter rules; these are ours:

- `gitlab_external_url` must be an absolute http(s) URL with a host; otherwise nothing matches (the module
  reports it instead of silently doing nothing).
- host names compare case-insensitively (DNS is), with a trailing dot ignored;
- an http(s) GitRepository must use the external URL's scheme and port (default ports made explicit): the
  same host on another port is another server;
- an `ssh://` GitRepository matches on the host alone: GitLab's SSH port is not the web port;
- the external URL's path (a relative URL root such as `/gitlab`) must prefix an http(s) path and is
  removed from it; SSH paths never carry it;
- the path must be a GitLab project path: at least a namespace and a project, each segment made of
  letters, digits, `_`, `-` and `.`, not starting with `-` or `.`, no empty, `.` or `..` segment, no
  percent-encoding, query or fragment. One trailing `/` and then one trailing `.git` are removed;
- anything else (scp-like `git@host:path`, which Flux refuses too, other schemes) is not ours.

Project paths are compared case-insensitively (GitLab routes are): `match_key()` is the comparison key.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Final

MAX_PROJECT_PATH: Final = 1024
"""Longer paths are refused (GitLab's own limit per segment is 255, nesting at most 20 levels)."""

_SEGMENT: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class ExternalUrlError(ValueError):
    """`gitlab_external_url` cannot identify a GitLab server (the message says why)."""


@dataclass(frozen=True)
class GitLabServer:
    """The agent's GitLab, as `gitlab_external_url` names it."""

    scheme: str
    """`http` or `https`."""
    host: str
    """Lower-case host name, without a trailing dot."""
    port: int
    """The web port (the scheme's default when the URL has none)."""
    root: str
    """The relative URL root without a trailing slash, e.g. `/gitlab`, or ``."""

    @classmethod
    def parse(cls, external_url: str) -> GitLabServer:
        """Parse `gitlab_external_url`; ExternalUrlError when it is empty or not an http(s) URL."""
        if not external_url:
            raise ExternalUrlError("kas sent no gitlab_external_url")
        try:
            parts = urllib.parse.urlsplit(external_url)
            port = parts.port
        except ValueError as e:
            raise ExternalUrlError(f"gitlab_external_url {external_url!r}: {e}") from e
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ExternalUrlError(f"gitlab_external_url {external_url!r} is not an http(s) URL with a host")
        return cls(
            scheme=scheme,
            host=_host(parts.hostname),
            port=port or _DEFAULT_PORTS[scheme],
            root=parts.path.rstrip("/"),
        )

    def project_path(self, url: str) -> str | None:
        """The project path `url` names on this GitLab, or None when it is not a project of it."""
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        if parts.query or parts.fragment or not parts.hostname or _host(parts.hostname) != self.host:
            return None
        path = parts.path
        if scheme == "ssh":
            pass  # any SSH port; no relative URL root in SSH paths
        elif scheme in _DEFAULT_PORTS:
            if scheme != self.scheme or (port or _DEFAULT_PORTS[scheme]) != self.port:
                return None
            if self.root:
                if not path.startswith(self.root + "/"):
                    return None
                path = path[len(self.root) :]
        else:
            return None
        return clean_project_path(path.removeprefix("/"))


def clean_project_path(path: str) -> str | None:
    """`path` as a project path (one trailing `/`, then one `.git` removed), or None when it is not one."""
    path = path.removesuffix("/").removesuffix(".git")
    if not path or len(path) > MAX_PROJECT_PATH:
        return None
    segments = path.split("/")
    if len(segments) < 2 or not all(_SEGMENT.fullmatch(s) for s in segments):
        return None
    return path


def is_project_path(value: str) -> bool:
    """True when `value` is a well-formed project path as it comes from kas (nothing to strip)."""
    return clean_project_path(value) == value and not value.endswith(".git")


def match_key(path: str) -> str:
    """The comparison key of a project path (GitLab routes are case-insensitive)."""
    return path.casefold()


def _host(hostname: str) -> str:
    return hostname.lower().rstrip(".")
