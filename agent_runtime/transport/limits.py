"""Raising the open-files limit: every agent holds several descriptors (all go through their bridge)."""

from __future__ import annotations

import logging
import resource
from typing import Final

_log = logging.getLogger(__name__)

FDS_PER_AGENT: Final = 4
"""At most: with the own HTTP/2 client (the default), the connection to kas and one draining after a
GOAWAY; with GAO_KAS_TRANSPORT=grpc, grpc's socket to the bridge, the bridge's accepted socket, its socket
to kas and the bridge's listener (grpc:// and grpcs:// dial kas directly, without the bridge)."""
FDS_RESERVE: Final = 256
"""Descriptors for everything else in the process (API server connections, logs, metrics)."""


def fds_needed(agents: int) -> int:
    """Descriptors a pod running `agents` agents should be allowed."""
    return FDS_RESERVE + FDS_PER_AGENT * max(agents, 0)


def raise_nofile_limit(wanted: int | None = None) -> int:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (default: the hard limit); return the new soft limit.

    Never lowers the limit and never fails: when the hard limit is lower than `wanted`, the soft limit
    goes up to the hard limit and a warning says so.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = hard if hard != resource.RLIM_INFINITY else max(wanted or 0, soft, 1 << 20)
    target = ceiling if wanted is None else min(wanted, ceiling)
    if wanted is not None and wanted > ceiling:
        _log.warning("open-files limit: %d wanted, the hard limit allows %d", wanted, ceiling)
    if target <= soft:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        _log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, e)
        return soft
    return target
