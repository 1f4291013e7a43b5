"""agent_registrar: the Register heartbeat (PROTOCOL.md §6.2)."""

from agent_runtime.modules.agent_registrar.module import RegistrarModule, build

__all__ = ["RegistrarModule", "build"]
