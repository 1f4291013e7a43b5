"""Push → new revision applied by Flux's kustomize-controller: a `requestedAt` patch vs Flux's own poll.

    .venv/bin/python bench/flux_apply.py [--commits 20] [--poll-interval 10s] [--poll-commits 20]

Starts etcd + kube-apiserver (.cache/k8s-assets), Flux's source-controller and kustomize-controller
(scripts/flux-controllers) and a smart-HTTP Git server on loopback. Two repositories, each followed by a
GitRepository and a Kustomization (prune, no health check) that applies one ConfigMap naming the commit:

- `patched`: GitRepository interval 10m; after each push the script patches
  `reconcile.fluxcd.io/requestedAt` on it, which is what the agent's Flux module does on a push event
  (and `flux reconcile source git`);
- `polled`: GitRepository interval `--poll-interval`, nothing patched: Flux finds the commit at its poll.

Per commit: the time from `git push` returning to the Kustomization's `lastAppliedRevision` naming the
commit (read every 20 ms). Pushes to the polled repository come at a random phase of the poll (a pause
of up to one interval before each), so its expected wait is half an interval plus the apply. Prints
p50/p99/max per path and the ratio polled/patched. Bounded: each wait ends after 3 poll intervals (at
least 30 s) and counts as a miss.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import _bootstrap  # noqa: F401 (puts the repository root on sys.path)
from _stack import machine_description
from _stats import percentile, ratio, table

from tests.support import flux
from tests.support.flux import FluxControllers, find_flux
from tests.support.git_http import GitHttpServer, WorkingCopy
from tests.support.k8s_cluster import LocalCluster, find_assets

NAMESPACE = "bench-flux"


def _configmap(number: int) -> str:
    return (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bench-flux-applied\n"
        f'  namespace: {NAMESPACE}\ndata:\n  commit: "{number}"\n'
    )


def _seconds(interval: str) -> float:
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    return float(interval[:-1]) * units[interval[-1]]


class FollowedRepository:
    """One repository, its GitRepository and Kustomization, and the working copy the script pushes from."""

    def __init__(
        self, cluster: LocalCluster, git: GitHttpServer, work: Path, name: str, interval: str
    ) -> None:
        self.cluster, self.name = cluster, name
        repository = f"{name}.git"
        git.create_repository(repository)
        self.copy = WorkingCopy(work / name, git.url(repository))
        self.copy.commit_and_push("initial", {"configmap.yaml": _configmap(0)})
        flux.create(
            cluster,
            flux.git_repository(NAMESPACE, name, git.url(repository), interval=interval),
            flux.kustomization(NAMESPACE, name, name, wait=False, interval="10m"),
        )

    def applied(self) -> str | None:
        return flux.applied_revision(flux.get(self.cluster, "Kustomization", NAMESPACE, self.name))

    def push_and_time(self, number: int, patch: bool, limit: float) -> float | None:
        """Seconds from the push to the Kustomization applying it; None past `limit`."""
        commit = self.copy.commit_and_push(f"commit {number}", {"configmap.yaml": _configmap(number)})
        pushed = time.perf_counter()
        if patch:
            flux.request_reconcile(self.cluster, NAMESPACE, self.name)
        wanted = flux.revision("main", commit)
        while time.perf_counter() - pushed < limit:
            if self.applied() == wanted:
                return time.perf_counter() - pushed
            time.sleep(0.02)
        return None

    def wait_first(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        while self.applied() is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: the first commit was not applied within {limit:.0f}s")
            time.sleep(0.1)


def _measure(
    repository: FollowedRepository, count: int, patch: bool, limit: float, spread: float
) -> list[float | None]:
    """`count` pushes, each after a random pause of up to `spread` seconds.

    Flux schedules its next poll one interval after it last fetched, so a push right after an applied
    commit would always wait the whole interval: the pause puts each push at a random phase of the poll.
    """
    samples: list[float | None] = []
    for number in range(1, count + 1):
        time.sleep(random.uniform(0.0, spread))
        samples.append(repository.push_and_time(number, patch, limit))
    return samples


def _report(results: dict[str, list[float | None]]) -> None:
    rows = []
    p50s = []
    for label, samples in results.items():
        done = [s for s in samples if s is not None]
        p50s.append(percentile(done, 50))
        rows.append(
            [label, f"{len(done)}/{len(samples)}", p50s[-1], percentile(done, 99), max(done, default=0.0)]
        )
    print(table(["path", "applied", "p50 s", "p99 s", "max s"], rows))
    print(f"p50 ratio poll / patch: {ratio(p50s[1], p50s[0]):.1f}")


def _run(args: argparse.Namespace) -> None:
    print(f"machine: {machine_description()}")
    poll_limit = max(30.0, 3 * _seconds(args.poll_interval))
    with tempfile.TemporaryDirectory(prefix="bench-flux-") as tmp, LocalCluster(find_assets()) as cluster:
        work = Path(tmp)
        cluster.create_namespace(NAMESPACE)
        with (
            GitHttpServer(work / "repos") as git,
            FluxControllers(find_flux(), cluster, work / "flux") as controllers,
        ):
            print(f"Flux {controllers.binaries.version}; kube-apiserver {cluster.version}")
            patched = FollowedRepository(cluster, git, work, "patched", "10m")
            polled = FollowedRepository(cluster, git, work, "polled", args.poll_interval)
            patched.wait_first(60)
            polled.wait_first(60)
            by_patch = _measure(patched, args.commits, True, 30.0, spread=0.5)
            poll_spread = _seconds(args.poll_interval)
            by_poll = _measure(polled, args.poll_commits, False, poll_limit, spread=poll_spread)
            _report({"requestedAt patch": by_patch, f"Flux's poll ({args.poll_interval})": by_poll})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=20, help="commits on the requestedAt path")
    parser.add_argument("--poll-commits", type=int, default=20, help="commits on the poll path")
    parser.add_argument("--poll-interval", default="10s", help="the polled GitRepository's interval")
    _run(parser.parse_args())


if __name__ == "__main__":
    main()
