"""API requests per resource, from the test apiserver's own counter (`apiserver_request_total`).

`scrape` reads /metrics; `per_resource` diffs two scrapes into counts per (verb, resource, subresource)
and divides by the number of agents. The apiserver counts every client, so the benchmark's own requests
(creating the objects, its watch) are in the figures too: `own` says how many to take off per key.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
import urllib.request

import _bootstrap  # noqa: F401 - the repository root on sys.path (tests.support)

from tests.support.k8s_cluster import ADMIN_TOKEN, LocalCluster

_SAMPLE = re.compile(
    r"^(?P<name>apiserver_request_total|apiserver_request_duration_seconds_sum)"
    r"\{(?P<labels>[^}]*)\} (?P<value>\S+)$"
)
_LABEL = re.compile(r'(\w+)="([^"]*)"')

Key = tuple[str, str, str]
"""(verb, resource, subresource); the verb of a request not answered 2xx carries its code ("PATCH (409)")."""


async def scrape(cluster: LocalCluster) -> dict[Key, float]:
    """Requests served so far, per (verb, resource, subresource), every response code summed."""
    text = await asyncio.to_thread(_metrics_text, cluster)
    counts: dict[Key, float] = collections.defaultdict(float)
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        code = labels.get("code", "")
        answered = "" if code.startswith("2") or not code else f" ({code})"
        verb = labels.get("verb", "") + (
            answered if match["name"] == "apiserver_request_total" else " seconds"
        )
        key = (verb, labels.get("resource", ""), labels.get("subresource", ""))
        counts[key] += float(match["value"])
    return dict(counts)


def _metrics_text(cluster: LocalCluster) -> str:
    req = urllib.request.Request(cluster.url + "/metrics")  # noqa: S310 (https, the test apiserver)
    req.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
    context = ssl.create_default_context(cafile=str(cluster.ca_file))
    with urllib.request.urlopen(req, context=context, timeout=30) as resp:  # noqa: S310 (as above)
        return str(resp.read().decode())


def per_resource(
    before: dict[Key, float], after: dict[Key, float], agents: int, own: dict[Key, float]
) -> list[tuple[str, float]]:
    """("VERB resource[/subresource]", requests per agent) for the keys that moved, largest first,
    without the benchmark's own requests (`own`: key -> count)."""
    rows = []
    for key in set(before) | set(after):
        moved = after.get(key, 0.0) - before.get(key, 0.0) - own.get(key, 0.0)
        if moved <= 0 or not key[1] or key[0].endswith(" seconds"):
            continue
        verb, resource, sub = key
        rows.append((f"{verb} {resource}{'/' + sub if sub else ''}", moved / agents))
    return sorted(rows, key=lambda row: -row[1])


def mean_latency(before: dict[Key, float], after: dict[Key, float]) -> list[tuple[str, float]]:
    """("VERB resource[/subresource]", mean seconds the apiserver took) for the keys that moved, every
    client's requests included (the benchmark's too)."""
    counts: dict[Key, float] = collections.defaultdict(float)
    for key in set(before) | set(after):
        if not key[0].endswith(" seconds") and key[1]:
            verb = key[0].split(" ")[0]  # every answer code
            counts[(verb, key[1], key[2])] += after.get(key, 0.0) - before.get(key, 0.0)
    rows = []
    for (verb, resource, sub), count in counts.items():
        timed = (verb + " seconds", resource, sub)
        spent = after.get(timed, 0.0) - before.get(timed, 0.0)
        if count >= 1 and verb not in ("WATCH", "LIST"):
            rows.append((f"{verb} {resource}{'/' + sub if sub else ''}", spent / count))
    return sorted(rows, key=lambda row: -row[1])
