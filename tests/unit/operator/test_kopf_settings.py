"""kopf's settings: bounded per-resource processing, so 1000 resources applied at once stay cheap."""

from __future__ import annotations

import kopf

from agent_operator.composition import KOPF_WORKER_IDLE_S, KOPF_WORKER_LIMIT, configure_kopf
from agent_operator.settings import parse_settings


def test_kopf_processes_a_bounded_number_of_resources_and_drops_idle_workers_soon() -> None:
    settings = kopf.OperatorSettings()
    configure_kopf(settings, parse_settings(["--namespace=a"], environ={}))
    assert settings.queueing.worker_limit == KOPF_WORKER_LIMIT
    assert settings.queueing.idle_timeout == KOPF_WORKER_IDLE_S
    assert kopf.OperatorSettings().queueing.idle_timeout > KOPF_WORKER_IDLE_S, "below kopf's default"
