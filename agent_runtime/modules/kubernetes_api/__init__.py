"""kubernetes_api: serves MakeRequest by streaming HTTP to the cluster's API server (PROTOCOL.md §7)."""

from agent_runtime.modules.kubernetes_api.module import KubernetesApiModule, build

__all__ = ["KubernetesApiModule", "build"]
