"""flux: a push to a GitLab project makes Flux reconcile that project's GitRepositories (PROTOCOL.md §17)."""

from agent_runtime.flux_settings import FluxTuning
from agent_runtime.modules.flux.module import FluxModule, build

__all__ = ["FluxModule", "FluxTuning", "build"]
