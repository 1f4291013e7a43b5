"""KubeAccess.new_session(authenticated=True) against a real kube-apiserver: the session kopf is given.

It follows the kubeconfig's `proxy-url` and `tls-server-name` by itself, since kopf cannot pass them.

Every request carries the token KubeAccess holds *when it is sent* (a rotated token is used by the same
session at once), and a 401 makes the token refresher re-read the token without waiting for its period.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_runtime.kube import KubeAccess, load_configuration
from tests.integration.runtime_mgmt.conftest import eventually
from tests.integration.transport.peers import ConnectProxy
from tests.support.k8s_cluster import ADMIN_TOKEN, USER_TOKEN, LocalCluster

NAMESPACES = "/api/v1/namespaces"
"""Listing namespaces: the admin may; alice (USER_TOKEN) and anonymous may not (403); an unknown token is
not authenticated (401)."""


class _TokenSource:
    """A rotating token file (as a mounted ServiceAccount token is), named by the kubeconfig's `tokenFile`."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.current = ADMIN_TOKEN

    @property
    def current(self) -> str:
        return self._path.read_text()

    @current.setter
    def current(self, token: str) -> None:
        self._path.write_text(token)


def _token_file_kubeconfig(admin_kubeconfig: Path, tmp_path: Path) -> Path:
    """The admin kubeconfig with its token moved to the file `tmp_path/token`."""
    document = yaml.safe_load(admin_kubeconfig.read_text())
    for entry in document["users"]:
        entry["user"].pop("token", None)
        entry["user"]["tokenFile"] = str(tmp_path / "token")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(document))
    return kubeconfig


@pytest.fixture
async def rotating(admin_kubeconfig: Path, tmp_path: Path) -> AsyncIterator[tuple[KubeAccess, _TokenSource]]:
    source = _TokenSource(tmp_path / "token")
    kubeconfig = _token_file_kubeconfig(admin_kubeconfig, tmp_path)
    kube = KubeAccess(await asyncio.to_thread(load_configuration, str(kubeconfig)))
    try:
        yield kube, source
    finally:
        await kube.close()


async def _status(kube: KubeAccess, *, authenticated: bool) -> int:
    async with kube.new_session(limit=2, authenticated=authenticated) as session:
        return await _get(kube, session)


async def _get(kube: KubeAccess, session: Any) -> int:
    async with session.get(kube.url(NAMESPACES)) as response:
        return int(response.status)


async def test_requests_carry_the_token_without_the_caller_adding_it(
    rotating: tuple[KubeAccess, _TokenSource],
) -> None:
    kube, _ = rotating
    assert await _status(kube, authenticated=True) == 200
    assert await _status(kube, authenticated=False) == 403, "anonymous: the header comes from the middleware"


async def test_a_rotated_token_is_used_by_the_same_session(rotating: tuple[KubeAccess, _TokenSource]) -> None:
    kube, source = rotating
    async with kube.new_session(limit=2, authenticated=True) as session:
        assert await _get(kube, session) == 200
        source.current = USER_TOKEN
        await kube.refresh_credentials()
        assert await _get(kube, session) == 403, "alice's token, read when the request was sent"


async def test_a_401_makes_the_refresher_reread_the_token_at_once(
    rotating: tuple[KubeAccess, _TokenSource],
) -> None:
    kube, source = rotating
    source.current = "revoked-token"
    await kube.refresh_credentials()
    refresher = asyncio.create_task(kube.run_token_refresher(interval=3600), name="test-token-refresher")
    try:
        async with kube.new_session(limit=2, authenticated=True) as session:
            source.current = ADMIN_TOKEN  # the source has rotated; only a 401 makes us look before 3600 s
            assert await _get(kube, session) == 401
            await eventually(lambda: kube.auth_headers() == {"Authorization": f"Bearer {ADMIN_TOKEN}"})
            assert await _get(kube, session) == 200
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher


async def test_the_kubeconfig_proxy_and_tls_server_name_apply_to_every_request(
    admin_kubeconfig: Path, k8s_cluster: LocalCluster, tmp_path: Path
) -> None:
    """kopf builds its own requests: the session itself must route them."""
    port = k8s_cluster.url.rsplit(":", 1)[1]
    proxy = await ConnectProxy(hosts={"cluster.test": "127.0.0.1"}).start()
    kubeconfig = tmp_path / "kubeconfig"
    _routed_kubeconfig(admin_kubeconfig, kubeconfig, port, proxy.port)
    kube = KubeAccess(await asyncio.to_thread(load_configuration, str(kubeconfig)))
    try:
        async with (
            kube.new_session(limit=2, authenticated=True) as session,
            session.get(kube.url(NAMESPACES)) as response,
        ):
            assert response.status == 200
        assert [r.start_line[1] for r in proxy.requests] == [f"cluster.test:{port}"]
    finally:
        await kube.close()
        await proxy.close()


def _routed_kubeconfig(source: Path, target: Path, apiserver_port: str, proxy_port: int) -> None:
    """`source` with a server name only the proxy resolves, the proxy, and the TLS name to verify."""
    document = yaml.safe_load(source.read_text())
    cluster = document["clusters"][0]["cluster"]
    cluster["server"] = f"https://cluster.test:{apiserver_port}"
    cluster["proxy-url"] = f"http://127.0.0.1:{proxy_port}"
    cluster["tls-server-name"] = "kubernetes.default"  # in the serving certificate; cluster.test is not
    target.write_text(yaml.safe_dump(document))
