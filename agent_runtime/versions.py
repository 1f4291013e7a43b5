"""Version checks: kas against the agentk protocol level we speak, the cluster against a supported range.

GitLab's policy (PROTOCOL.md §13.1): an agent should run the same major.minor as GitLab/kas; the previous
and the next minor are supported too. Kubernetes (§13.2): GitLab supports three minors at a time; we
default to the three newest minors we know plus the ones the suite is run against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_VERSION = re.compile(r"^v?(?P<major>\d+)\.(?P<minor>\d+)(?:\.(?P<patch>\d+))?")


@dataclass(frozen=True, order=True)
class MinorVersion:
    """A major.minor pair; patch levels never matter for compatibility."""

    major: int
    """Major version number."""
    minor: int
    """Minor version number."""

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


def parse_minor(version: str) -> MinorVersion | None:
    """`v17.6.1`, `17.6.0-rc2`, `v1.33.4-eks-abc` → MinorVersion; None when unparseable."""
    match = _VERSION.match(version.strip())
    if not match:
        return None
    return MinorVersion(int(match["major"]), int(match["minor"]))


@dataclass(frozen=True)
class Verdict:
    """Outcome of a version check, ready to become a status condition."""

    compatible: bool | None
    """True/False, or None when a version is unknown (never guessed)."""
    reason: str
    """CamelCase condition reason."""
    message: str
    """Human-readable explanation with the versions involved."""
    hint: str = ""
    """What to do about it, when anything."""


SKEW_POLICY: Final = (
    "GitLab's policy: the agent should run the same minor as GitLab, one minor older or newer is "
    "supported, and a newer GitLab keeps accepting older agents"
)
"""PROTOCOL.md §13.1 and §18, quoted in every version verdict."""
_DEV_BUILD: Final = re.compile(r"-(?:\d+-g[0-9a-f]+|.*\b(?:dev|pre)\b.*)$", re.IGNORECASE)
"""`v17.0.0-12-gabc123` (git describe) or `v17.0.0-dev`/`-pre`: a development build, no release."""


def _release_of(version: str) -> MinorVersion | None:
    """The release a kas version names; None for no release (v0.0.0 = unstamped, dev builds)."""
    text = version.strip()
    found = parse_minor(text)
    if found is None or found.major == 0 or _DEV_BUILD.search(text):
        return None
    return found


def check_kas_version(kas_version: str | None, agent_version: str) -> Verdict:
    """Apply GitLab's skew policy as advice: same major, minor within one either side.

    A kas that says nothing about its release (no version: gRPC to GitLab's kas; `v0.0.0`: an unstamped
    build; a development build) gives None, never False: nothing is known to be wrong.
    """
    if not kas_version:
        return Verdict(
            None,
            "KasVersionUnknown",
            "kas has not told its version (GitLab's kas sends it "
            "only in the WebSocket handshake, not over grpc/grpcs)",
        )
    kas, agent = _release_of(kas_version), parse_minor(agent_version)
    if kas is None or agent is None:
        return Verdict(
            None,
            "KasVersionUnknown",
            f"kas reports {kas_version!r}, which names no GitLab release (an unstamped or development "
            f"build), so its skew to agent protocol {agent_version} cannot be judged",
        )
    if kas.major == agent.major and abs(kas.minor - agent.minor) <= 1:
        return Verdict(
            True,
            "WithinSupportedSkew",
            f"kas {kas_version} and agent protocol {agent_version} are within {SKEW_POLICY}",
        )
    if kas > agent:
        return Verdict(
            False,
            "KasTooNew",
            f"kas {kas_version} is newer than agent protocol {agent_version} by more than one minor; "
            f"{SKEW_POLICY}. Everything that works keeps working (this is advice, not a failure)",
            "upgrade the operator to a release whose agent protocol is within one minor of kas",
        )
    return Verdict(
        False,
        "KasTooOld",
        f"kas {kas_version} is older than agent protocol {agent_version} by more than one minor; "
        f"{SKEW_POLICY}. kas answers calls it does not know with UNIMPLEMENTED; the agent goes on "
        "without them",
        "GitLab is older than this agent: upgrade GitLab, or run an operator release matching it",
    )


@dataclass(frozen=True)
class KubernetesSupport:
    """The inclusive range of Kubernetes minors the operator supports."""

    oldest: MinorVersion = MinorVersion(1, 35)
    """Oldest supported minor."""
    newest: MinorVersion = MinorVersion(1, 37)
    """Newest supported minor (the one the test suite builds by default)."""

    @classmethod
    def parse(cls, text: str) -> KubernetesSupport:
        """`1.35-1.37` → range; raises ValueError with the expected form."""
        low, sep, high = text.partition("-")
        oldest, newest = parse_minor(low), parse_minor(high)
        if not sep or oldest is None or newest is None or oldest > newest:
            raise ValueError(f"supported Kubernetes range must look like 1.35-1.37, got {text!r}")
        return cls(oldest, newest)

    def check(self, git_version: str | None) -> Verdict:
        """Whether the cluster's `gitVersion` falls into the range."""
        if not git_version:
            return Verdict(None, "KubernetesVersionUnknown", "the cluster version has not been read yet")
        found = parse_minor(git_version)
        if found is None:
            return Verdict(None, "VersionUnparseable", f"cannot parse Kubernetes version {git_version!r}")
        if self.oldest <= found <= self.newest:
            return Verdict(
                True, "Supported", f"Kubernetes {git_version} is within {self.oldest}-{self.newest}"
            )
        return Verdict(
            False,
            "Unsupported",
            f"Kubernetes {git_version} is outside the supported range {self.oldest}-{self.newest}",
        )
