"""`python -m agent_operator` / `gitlab-agent-operator`: checks, then kopf with the operator's handlers.

Exit codes: 0 after SIGTERM/SIGINT and a drained shutdown; 1 on an unexpected failure; 2 when something
must be installed first (the GitLabAgent CRD, the peering CRD); 3 when RBAC is missing; 4 when the API
server cannot be reached or refuses the credentials; 64 for bad flags.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Final

import aiohttp
import kopf

from agent_operator.composition import Composition, configure_kopf, daemon_cancellation_timeout, kopf_kwargs
from agent_operator.credentials import kopf_connection_limit, kopf_session
from agent_operator.handlers import register
from agent_operator.kube_api import KubeApi
from agent_operator.logs import configure_logging
from agent_operator.preflight import (
    EXIT_NO_API,
    PreflightError,
    check_api,
    check_crd,
    check_rbac,
    ensure_peering,
)
from agent_operator.settings import OperatorSettings, UsageError, parse_settings
from agent_runtime.gc_policy import tune_for_long_lived_heap
from agent_runtime.kube import KubeAccess, KubeConfigError, load_configuration

log = logging.getLogger("agent_operator")

EXIT_USAGE: Final = 64


async def _preflight(api: KubeApi, settings: OperatorSettings) -> str:
    try:
        version = await check_api(api)
        await check_crd(api)
        await check_rbac(api, settings)
        await ensure_peering(api, settings)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PreflightError(
            f"cannot reach the Kubernetes API server at {api.kube.base_url}: {type(exc).__name__}: {exc}",
            EXIT_NO_API,
        ) from None
    return version


async def run(settings: OperatorSettings) -> int:
    """The whole process after flag parsing; returns the exit code."""
    try:
        configuration = await asyncio.to_thread(
            load_configuration, settings.kubeconfig, context=settings.context
        )
        kube = KubeAccess.from_configuration(configuration)
    except KubeConfigError as exc:
        log.error("%s", exc)  # noqa: TRY400 - the message is the whole story; no traceback
        return EXIT_NO_API
    preflight_api = KubeApi(kube)
    try:
        cluster_version = await _preflight(preflight_api, settings)
    except PreflightError as exc:
        log.error("%s", exc)  # noqa: TRY400 - the message is the whole story; no traceback
        await kube.close()
        return exc.exit_code
    finally:
        await preflight_api.close()
    log.info(
        "starting",
        extra={
            "cluster_version": cluster_version,
            "namespaces": list(settings.namespaces) if settings.namespaces else "all",
            "peering": settings.peering or "standalone",
        },
    )
    composition = Composition(settings, kube, cluster_version)
    registry = kopf.OperatorRegistry()
    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings, settings)

    async def startup() -> None:
        try:
            await composition.start()
        except OSError as exc:  # e.g. the observability address is taken
            raise kopf.PermanentError(f"cannot start the agent runtime: {exc}") from None

    register(
        registry,
        composition.controller,
        startup=startup,
        cleanup=composition.stop,
        login=lambda: kopf_session(kube, kopf_connection_limit(settings)),
        peering=settings.peering is not None,
        daemon_cancellation_timeout=daemon_cancellation_timeout(settings),
    )
    await kopf.operator(registry=registry, settings=kopf_settings, **kopf_kwargs(settings))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    try:
        settings = parse_settings(argv)
    except UsageError as exc:
        print(f"gitlab-agent-operator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level)
    tune_for_long_lived_heap()
    try:
        return asyncio.run(run(settings))
    except KeyboardInterrupt:
        return 0
    except Exception:
        log.exception("the operator failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
