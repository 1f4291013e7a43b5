"""agent_configuration: the GetConfiguration stream (PROTOCOL.md §6.1)."""

from agent_runtime.modules.agent_configuration.module import ConfigurationModule, build

__all__ = ["ConfigurationModule", "build"]
