"""Version checks: kas against the agentk protocol level we speak, the cluster against a supported range.

GitLab's policy (PROTOCOL.md §13.1): an agent should run the same major.minor as GitLab/kas; the previous
and the next minor are supported too. Kubernetes (§13.2): GitLab supports three minors at a time; we
default to the three newest minors we know plus the ones the suite is run against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
    """True/False, or None when a version is unknown yet."""
    reason: str
    """CamelCase condition reason."""
    message: str
    """Human-readable explanation with the versions involved."""


def check_kas_version(kas_version: str | None, agent_version: str) -> Verdict:
    """Apply GitLab's skew policy: same major, minor within one either side."""
    if not kas_version:
        return Verdict(None, "KasVersionUnknown", "kas has not reported its version yet")
    kas, agent = parse_minor(kas_version), parse_minor(agent_version)
    if kas is None or agent is None:
        return Verdict(
            None, "VersionUnparseable", f"cannot compare kas {kas_version} with agent {agent_version}"
        )
    if kas.major == agent.major and abs(kas.minor - agent.minor) <= 1:
        return Verdict(
            True, "WithinSupportedSkew", f"kas {kas_version} supports agent protocol {agent_version}"
        )
    direction = "newer" if kas > agent else "older"
    return Verdict(
        False,
        "KasTooNew" if kas > agent else "KasTooOld",
        f"kas {kas_version} is {direction} than agent protocol {agent_version} allows "
        "(GitLab supports the same minor and one minor either side); calls may fail with UNIMPLEMENTED",
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
