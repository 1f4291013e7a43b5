"""GitLab's version skew policy and the Kubernetes support range."""

import pytest

from agent_runtime.versions import KubernetesSupport, MinorVersion, check_kas_version, parse_minor


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v17.6.1", MinorVersion(17, 6)),
        ("17.6.0-rc2", MinorVersion(17, 6)),
        ("v1.33.4-eks-abc", MinorVersion(1, 33)),
        ("1.30", MinorVersion(1, 30)),
        ("garbage", None),
        ("", None),
    ],
)
def test_parse_minor(text: str, expected: MinorVersion | None) -> None:
    assert parse_minor(text) == expected


@pytest.mark.parametrize(
    ("kas", "agent", "compatible", "reason"),
    [
        ("v17.6.0", "v17.6.0", True, "WithinSupportedSkew"),
        ("17.7.2", "v17.6.0", True, "WithinSupportedSkew"),
        ("17.5.0", "v17.6.0", True, "WithinSupportedSkew"),
        ("17.8.0", "v17.6.0", False, "KasTooNew"),
        ("16.11.0", "v17.6.0", False, "KasTooOld"),
        ("18.6.0", "v17.6.0", False, "KasTooNew"),
        (None, "v17.6.0", None, "KasVersionUnknown"),
        ("dev", "v17.6.0", None, "KasVersionUnknown"),
        ("v0.0.0", "v16.5.0", None, "KasVersionUnknown"),
        ("v18.6.0-12-g0123abc", "v16.5.0", None, "KasVersionUnknown"),
        ("v18.7.0-pre", "v16.5.0", None, "KasVersionUnknown"),
        ("v16.6.0-rc2", "v16.5.0", True, "WithinSupportedSkew"),
    ],
)
def test_kas_skew_policy(kas: str | None, agent: str, compatible: bool | None, reason: str) -> None:
    verdict = check_kas_version(kas, agent)
    assert (verdict.compatible, verdict.reason) == (compatible, reason)
    if kas:
        assert kas in verdict.message


def test_kubernetes_range() -> None:
    support = KubernetesSupport.parse("1.35-1.37")
    assert support.check("v1.36.2").compatible is True
    assert support.check("v1.37.2").compatible is True
    assert support.check("v1.34.9").compatible is False
    assert support.check("v1.38.0").compatible is False
    assert support.check(None).compatible is None


@pytest.mark.parametrize("bad", ["1.35", "1.37-1.35", "a-b", ""])
def test_kubernetes_range_rejects_bad_input(bad: str) -> None:
    with pytest.raises(ValueError, match="must look like"):
        KubernetesSupport.parse(bad)


def test_skew_verdicts_carry_the_policy_and_a_hint() -> None:
    newer = check_kas_version("v18.6.0", "v16.5.0")
    older = check_kas_version("v15.11.0", "v16.5.0")
    for verdict in (newer, older):
        assert "v16.5.0" in verdict.message
        assert "one minor older or newer is supported" in verdict.message
    assert "upgrade the operator" in newer.hint
    assert "GitLab is older than this agent" in older.hint
    assert check_kas_version("v16.6.0", "v16.5.0").hint == ""
