"""A tenant points its agent at the pod's own network: the operator's default policy refuses every case.

Each worker runs with the default TenantPolicy (what `python -m agent_operator` gets without the
--allow-* flags) against a loopback listener that counts connections: a refusal must name the reason
and the flag, and the listener must see nothing.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from kubernetes import client as k8s_client

from agent_runtime.environment import WorkerEnvironment
from agent_runtime.kube import KubeAccess
from agent_runtime.policy import DestinationPolicy, TenantPolicy
from agent_runtime.secret import Secret
from agent_runtime.spec import ErrorReason, Phase, ProxySettings, TlsSettings, WorkerError, WorkerSpec
from agent_runtime.worker import Worker

TOKEN = "glagent-" + "t" * 50


@dataclass
class Listener:
    """A TCP listener that counts the connections it accepts and closes them."""

    host: str
    accepted: int = 0
    port: int = 0
    _server: asyncio.Server | None = field(default=None, repr=False)

    async def start(self) -> Listener:
        def accept() -> asyncio.Protocol:
            self.accepted += 1
            return asyncio.Protocol()

        self._server = await asyncio.get_running_loop().create_server(accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def v4() -> AsyncIterator[Listener]:
    listener = await Listener("127.0.0.1").start()
    yield listener
    await listener.close()


@pytest.fixture
async def v6() -> AsyncIterator[Listener]:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 loopback")
    listener = await Listener("::1").start()
    yield listener
    await listener.close()


@pytest.fixture
async def kube() -> AsyncIterator[KubeAccess]:
    """API access to a port nothing listens on: these workers never get as far as the API server."""
    configuration = k8s_client.Configuration()
    configuration.host = "https://127.0.0.1:1"
    access = KubeAccess(configuration)
    yield access
    await access.close()


async def _run(
    kube: KubeAccess, spec: WorkerSpec, policy: TenantPolicy, *, settle: float = 0.0
) -> WorkerError:
    """Run a worker until it reports DestinationRefused (bounded), then stop it; returns the error."""
    worker = Worker(spec, WorkerEnvironment(kube=kube, policy=policy))
    task = asyncio.create_task(worker.run(), name="worker-under-attack")
    try:
        async with asyncio.timeout(20):
            while True:
                error = worker.snapshot.last_error
                if error is not None and error.reason is ErrorReason.DESTINATION_REFUSED:
                    break
                await asyncio.sleep(0.02)
        await asyncio.sleep(settle)  # give a (wrong) dial the time to happen
        return error
    finally:
        await worker.stop(0.5)
        async with asyncio.timeout(10):
            await task


def _spec(address: str, **kwargs: object) -> WorkerSpec:
    return WorkerSpec(id="tenant-a/agent", kas_address=address, token=Secret(TOKEN), **kwargs)  # type: ignore[arg-type]


def _assert_refused(error: WorkerError, words: str, flag: str) -> None:
    assert error.reason is ErrorReason.DESTINATION_REFUSED
    assert words in error.message
    assert flag in error.hint
    assert TOKEN not in f"{error}"


async def test_loopback_ipv4_is_refused_before_any_connection(kube: KubeAccess, v4: Listener) -> None:
    spec = _spec(f"wss://127.0.0.1:{v4.port}/")
    worker = Worker(spec, WorkerEnvironment(kube=kube))  # the default policy, as in production
    task = asyncio.create_task(worker.run(), name="worker-under-attack")
    try:
        async with asyncio.timeout(20):
            while worker.snapshot.phase is not Phase.FAILED:  # noqa: ASYNC110 - polling a snapshot, bounded
                await asyncio.sleep(0.02)
        error = worker.snapshot.last_error
        assert error is not None
        _assert_refused(error, f"127.0.0.1:{v4.port} is a loopback address", "--allow-private-kas")
        await asyncio.sleep(0.3)
    finally:
        await worker.stop(0.5)
        async with asyncio.timeout(10):
            await task
    assert v4.accepted == 0


async def test_loopback_ipv6_is_refused(kube: KubeAccess, v6: Listener) -> None:
    error = await _run(kube, _spec(f"grpcs://[::1]:{v6.port}"), TenantPolicy(), settle=0.3)
    _assert_refused(error, f"[::1]:{v6.port} is a loopback address", "--allow-private-kas")
    assert v6.accepted == 0


@pytest.mark.parametrize(
    "address", ["wss://169.254.169.254/", "grpcs://169.254.169.254:80", "wss://[::ffff:169.254.169.254]/"]
)
async def test_the_cloud_metadata_address_is_refused(kube: KubeAccess, address: str) -> None:
    error = await _run(kube, _spec(address), TenantPolicy())
    _assert_refused(error, "is a link-local address", "--allow-private-kas")


@pytest.mark.parametrize(
    ("host", "category"),
    [
        ("localhost", "a loopback"),
        ("LOCALHOST", "a loopback"),
        ("2130706433", "a loopback"),  # 127.0.0.1 as one decimal number: a "name" to the URL parser
        ("127.1", "a loopback"),
        ("0x7f000001", "a loopback"),
        ("0177.0.0.1", "a loopback"),
        ("0", "an unspecified"),  # 0.0.0.0: connecting to it reaches the pod's own listeners
    ],
)
async def test_a_name_resolving_to_loopback_is_refused_at_the_dial(
    kube: KubeAccess, v4: Listener, host: str, category: str
) -> None:
    """Names (and numbers the URL parser takes for names) pass every check that needs no DNS; what
    they resolve to is refused."""
    error = await _run(kube, _spec(f"wss://{host}:{v4.port}/"), TenantPolicy(), settle=0.5)
    _assert_refused(error, f"{host.lower()}:{v4.port} resolves to {category} address", "--allow-private-kas")
    assert v4.accepted == 0


async def test_a_name_resolving_to_loopback_is_refused_even_when_allow_listed(
    kube: KubeAccess, v4: Listener
) -> None:
    policy = TenantPolicy(destinations=DestinationPolicy(allowed_hosts=("localhost",)))
    error = await _run(kube, _spec(f"wss://localhost:{v4.port}/"), policy, settle=0.5)
    _assert_refused(error, "resolves to a loopback address", "--allow-private-kas")
    assert v4.accepted == 0


async def test_an_explicit_proxy_on_loopback_is_refused(kube: KubeAccess, v4: Listener) -> None:
    spec = _spec("wss://kas.example.com/", proxy=ProxySettings(url=f"http://127.0.0.1:{v4.port}"))
    error = await _run(kube, spec, TenantPolicy(), settle=0.3)
    _assert_refused(error, f"proxy address 127.0.0.1:{v4.port} is a loopback address", "--allow-private-kas")
    assert v4.accepted == 0


@pytest.mark.parametrize("scheme", ["ws", "grpc"])
async def test_plaintext_is_refused(kube: KubeAccess, v4: Listener, scheme: str) -> None:
    # Even where private addresses are allowed: plaintext is a separate decision.
    policy = TenantPolicy(destinations=DestinationPolicy(allow_private=True))
    error = await _run(kube, _spec(f"{scheme}://127.0.0.1:{v4.port}/".rstrip("/")), policy, settle=0.3)
    _assert_refused(error, f"{scheme}:// (plaintext)", "--allow-plaintext-kas")
    assert v4.accepted == 0


async def test_insecure_skip_verify_is_refused(kube: KubeAccess, v4: Listener) -> None:
    policy = TenantPolicy(destinations=DestinationPolicy(allow_private=True))
    spec = _spec(f"wss://127.0.0.1:{v4.port}/", tls=TlsSettings(insecure_skip_verify=True))
    error = await _run(kube, spec, policy, settle=0.3)
    _assert_refused(error, "insecureSkipTLSVerify", "--allow-insecure-skip-tls-verify")
    assert v4.accepted == 0


async def test_a_host_outside_the_allow_list_is_refused(kube: KubeAccess) -> None:
    policy = TenantPolicy(
        destinations=DestinationPolicy(allowed_hosts=("kas.example.com", "*.gitlab.example"))
    )
    error = await _run(kube, _spec("wss://kas.attacker.example/"), policy)
    _assert_refused(error, "not in the operator's allowed kas hosts", "--allowed-kas-hosts")


async def test_private_addresses_are_dialed_when_the_admin_allows_them(
    kube: KubeAccess, v4: Listener
) -> None:
    """The control: the same worker under --allow-private-kas does reach the loopback listener."""
    policy = TenantPolicy(destinations=DestinationPolicy(allow_private=True))
    worker = Worker(_spec(f"wss://localhost:{v4.port}/"), WorkerEnvironment(kube=kube, policy=policy))
    task = asyncio.create_task(worker.run(), name="worker-allowed")
    try:
        async with asyncio.timeout(20):
            while v4.accepted == 0:  # noqa: ASYNC110 - polling a counter, bounded
                await asyncio.sleep(0.02)
    finally:
        await worker.stop(0.5)
        async with asyncio.timeout(10):
            await task
