"""Kubernetes credentials, loaded once (agent_runtime.kube.load_configuration), shared by the runtime
(aiohttp) and kopf (its login handler).

kopf gets a session of ours instead of building its own: kopf's own session has no connection limit, so
applying a thousand GitLabAgents at once made it open about 170 TLS connections to the API server for
its finalizer and annotation patches, each holding asyncio's 256 KiB SSL read buffer, which the allocator
keeps after the connection closes (docs/benchmarks.md, Density). Ours is capped, and its requests always
carry KubeAccess's current token.
"""

from __future__ import annotations

from typing import Final

import kopf

from agent_operator.settings import OperatorSettings
from agent_runtime.kube import KubeAccess

KOPF_REQUEST_CONNECTIONS: Final = 12
"""Connections kopf's short requests (patches, events, lists) may hold beyond its watch streams (our
choice: with peering kopf adds its finalizer to every resource at start-up, and a new resource's first
status waits for it; 4 → 12 halved the finalizer's p50 at N = 1000 and took 2.6 s off the bring-up,
docs/benchmarks.md. Without peering kopf makes none. A connection is opened only when needed; each
costs a 256 KiB read buffer)."""


def kopf_watch_streams(settings: OperatorSettings) -> int:
    """How many watch streams kopf keeps open for this operator; each holds a connection all its life.

    kopf (1.45) watches the CRDs (resource discovery) and, unless cluster-wide, the namespaces; then,
    with peering, per namespace (or once cluster-wide) the GitLabAgents and the peering objects (without
    peering the operator watches the GitLabAgents itself: agent_watch.py). A count too high only leaves
    room unused; too low, and patches wait behind the watches.
    """
    scopes = 1 if settings.namespaces is None else len(settings.namespaces)
    discovery = 1 if settings.namespaces is None else 2
    per_scope = 2 if settings.peering is not None else 0
    return discovery + scopes * per_scope


def kopf_connection_limit(settings: OperatorSettings) -> int:
    """The connection cap of kopf's session: its watch streams plus room for its short requests."""
    return kopf_watch_streams(settings) + KOPF_REQUEST_CONNECTIONS


async def kopf_session(kube: KubeAccess, limit: int) -> kopf.AiohttpSession:
    """A fresh session for kopf (kopf closes it when it logs in again, after a 401, or at exit).

    The token is re-read first: kopf logs in again after a 401, when the one in use may have rotated.
    """
    await kube.refresh_credentials()
    return kopf.AiohttpSession(
        server=kube.base_url, aiohttp_session=kube.new_session(limit=limit, authenticated=True)
    )
