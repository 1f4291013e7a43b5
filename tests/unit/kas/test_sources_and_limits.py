"""kas without servers: the agents source settings, agents documents from text, the per-token limiter."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from kas.agents import AgentDirectory, AgentInfo, AgentsFileError, describe_load_error
from kas.config import KasConfig, load_config
from kas.rate_limit import MemoryTokenLimiter, limit_key, token_key_part

TOKEN = "agent-token-" + "a" * 40
OTHER = "agent-token-" + "b" * 40


def test_agents_source_is_a_file_or_a_secret_never_both() -> None:
    secret = {"namespace": "gitlab", "name": "kas-agents"}
    config = KasConfig.model_validate({"agents": {"secret": secret}})
    assert config.agents.secret is not None
    assert config.agents.secret.key == "agents.yaml"
    assert config.agents.secret.kubeconfig is None
    with pytest.raises(ValueError, match="either file or secret, not both"):
        KasConfig.model_validate({"agents": {"file": "agents.yaml", "secret": secret}})
    with pytest.raises(ValueError, match="exactly one of file or secret"):
        KasConfig.model_validate({"agents": {"reload_period": 1}})
    with pytest.raises(ValueError, match="name"):
        KasConfig.model_validate({"agents": {"secret": {"namespace": "gitlab"}}})
    assert KasConfig().agents.file is None  # no section: no agents until an embedding sets them


def test_secret_kubeconfig_is_relative_to_kas_yaml(tmp_path: Path) -> None:
    (tmp_path / "kas.yaml").write_text(
        "agents:\n  secret: {namespace: gitlab, name: agents, key: a.yaml, kubeconfig: admin.kubeconfig}\n"
    )
    secret = load_config(tmp_path / "kas.yaml").agents.secret
    assert secret is not None
    assert (secret.key, secret.kubeconfig) == ("a.yaml", tmp_path / "admin.kubeconfig")


def test_rate_limit_setting_default_and_validation() -> None:
    assert KasConfig().agent.listen.connections_per_token_per_minute == 40000
    with pytest.raises(ValueError, match="connections_per_token_per_minute"):
        KasConfig.model_validate({"agent": {"listen": {"connections_per_token_per_minute": 0}}})


def test_load_text_replaces_agents_and_keeps_them_on_bad_documents() -> None:
    directory = AgentDirectory()
    directory.load_text(f"agents: [{{id: 1, name: a, project_path: g/p, tokens: [{TOKEN}]}}]\n")
    assert directory.authenticate(TOKEN) == AgentInfo(1, "a", "g/p")
    bad_documents = [
        f"agents: [{{id: x, name: a, project_path: g/p, tokens: [{OTHER}]}}]",
        f"agents:\n  - id: 1\n   tokens: [{OTHER}]: broken\n",
        "- just a list",
    ]
    for text in bad_documents:
        with pytest.raises((AgentsFileError, yaml.YAMLError)) as err:
            directory.load_text(text)
        problem = describe_load_error(err.value)
        assert problem
        assert OTHER not in problem
        assert directory.authenticate(TOKEN) is not None, "the previous agents stay"
    assert "line 3" in describe_load_error(_yaml_error(bad_documents[1]))


def _yaml_error(text: str) -> yaml.YAMLError:
    with pytest.raises(yaml.YAMLError) as err:
        yaml.safe_load(text)
    return err.value


def test_limit_key_layout() -> None:
    # <prefix>:agent_limit:<sha256 of the token's first half>:<minute byte>
    key = limit_key("gitlab-kas", TOKEN, now=60 * 61 + 5)  # minute 1 of an hour
    digest = hashlib.sha256(TOKEN.encode()[: len(TOKEN) // 2]).digest()
    assert key == b"gitlab-kas:agent_limit:" + digest + b":\x01"
    assert token_key_part(TOKEN) == digest
    half = len(TOKEN) // 2
    assert token_key_part(TOKEN[:half] + "z" * (len(TOKEN) - half)) == digest, "only the first half counts"
    assert limit_key("p", TOKEN, now=59 * 60).endswith(b":\x3b")


async def test_memory_limiter_counts_per_token() -> None:
    limiter = MemoryTokenLimiter(5)
    assert [await limiter.allow(TOKEN) for _ in range(6)] == [True] * 5 + [False]
    assert await limiter.allow(OTHER)
