"""Access to the cluster's Kubernetes API from asyncio, with the credentials the `kubernetes` client finds.

The `kubernetes` package's config loader does the discovery (in-cluster service account, or a kubeconfig
with its contexts, client certificates, exec plugins and token files); this module turns the result into
what an aiohttp client needs: a base URL, an `ssl.SSLContext`, an optional TLS server name, and an
`Authorization` header that is refreshed when the loader's token expires (rotated projected service
account tokens, exec-plugin tokens). The loader's refresh hook may read files or run a command, so it
runs in a worker thread, never on the event loop: `run_token_refresher()` (a task of the owner) keeps the
header current, and `auth_headers()` just reads it.

One `KubeAccess` per process; its `session` is the shared aiohttp session of the process's own traffic
(informers, access reviews, `/version`), closed by the owner with `close()`. Requests tunnelled for an
agent never use it: each agent has a `PrivatePool`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import aiohttp

from agent_runtime.kubeconfig import KubeconfigError, NotHandledHereError, from_kubeconfig, in_cluster

_TOKEN_REFRESH_SECONDS: Final = 10.0
"""How often the loader's hook is asked for a fresh token (it re-reads only what has expired)."""

_CONNECT_TIMEOUT_SECONDS: Final = 10.0
"""TCP+TLS connect timeout; requests themselves (watches, streams) have no total timeout."""

_VERSION_TTL_SECONDS: Final = 60.0
"""How long one read of `/version` serves every worker (Register heartbeats come every 5 min)."""
_VERSION_TIMEOUT_SECONDS: Final = 10.0
"""Bound on one `/version` read."""
_VERSION_KEYS: Final = ("major", "minor", "gitVersion", "platform")
"""The `/version` fields AgentMeta.kubernetes_version carries (PROTOCOL.md §5)."""

log = logging.getLogger(__name__)


class KubeConfigError(RuntimeError):
    """No usable Kubernetes credentials were found (message says where we looked; never a credential)."""


class _AuthHeader:
    """The Authorization header value; the loader's hook refreshes it in a thread, off the event loop."""

    def __init__(self, configuration: Any) -> None:
        self._configuration = configuration
        self.has_hook: bool = configuration.refresh_api_key_hook is not None
        self.value: str | None = _read_auth(configuration)
        self._lock = asyncio.Lock()
        self.stale = asyncio.Event()

    async def refresh(self) -> None:
        async with self._lock:
            self.stale.clear()
            self.value = await asyncio.to_thread(_read_auth, self._configuration)


def _read_auth(configuration: Any) -> str | None:
    # auth_settings() calls the loader's refresh hook, which re-reads an expired token.
    settings: dict[str, Any] = configuration.auth_settings()
    bearer = settings.get("BearerToken")
    if bearer and bearer.get("value"):
        value: str = bearer["value"]
        # The loaders store "bearer <token>" / "Bearer <token>"; normalise the scheme's spelling.
        scheme, _, token = value.partition(" ")
        return f"Bearer {token}" if scheme.lower() == "bearer" and token else value
    if configuration.username and configuration.password:
        basic: str = configuration.get_basic_auth_token()
        return basic
    return None


def _ssl_context(configuration: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    return context


class KubeAccess:
    """Where the API server is and how to authenticate to it; built once per process."""

    def __init__(self, configuration: Any) -> None:
        host: str = configuration.host or ""
        if not host.startswith(("https://", "http://")):
            raise KubeConfigError(f"Kubernetes API host {host!r} is not an http(s) URL")
        self.base_url: str = host.rstrip("/")
        """Scheme, host, port and optional path prefix of the API server, without a trailing slash."""
        self.ssl_context: ssl.SSLContext = _ssl_context(configuration)
        """TLS settings for the API server (CA, client certificate, verification); unused for http://."""
        self.server_hostname: str | None = getattr(configuration, "tls_server_name", None) or None
        """TLS server name override (kubeconfig `tls-server-name`); sessions apply it to every request."""
        self.proxy: str | None = getattr(configuration, "proxy", None) or None
        """Proxy URL from the kubeconfig (`proxy-url`), if any; sessions send every request through it."""
        self._auth = _AuthHeader(configuration)
        self._session: aiohttp.ClientSession | None = None
        self._version: dict[str, str] | None = None
        self._version_read_at = -math.inf
        self._version_lock = asyncio.Lock()

    @classmethod
    def from_configuration(cls, configuration: Any) -> KubeAccess:
        """Build from a `kubernetes.client.Configuration` that a loader has filled."""
        return cls(configuration)

    def url(self, path: str) -> str:
        """Absolute URL of an API path such as `/api/v1/namespaces` (keeps a host path prefix)."""
        if not path.startswith("/"):
            path = "/" + path
        return self.base_url + path

    def auth_headers(self) -> dict[str, str]:
        """The headers that authenticate this process (possibly empty: client certificates only).

        Cheap and non-blocking: returns the value `run_token_refresher()` keeps current.
        """
        value = self._auth.value
        return {"Authorization": value} if value else {}

    def invalidate_credentials(self) -> None:
        """Call after a 401: the refresher re-reads the token from its source now."""
        self._auth.stale.set()

    async def refresh_credentials(self) -> None:
        """Re-read the token through the loader's hook (a file read or an exec plugin, in a thread)."""
        if self._auth.has_hook:
            await self._auth.refresh()

    async def run_token_refresher(self, interval: float = _TOKEN_REFRESH_SECONDS) -> None:
        """Keep `auth_headers()` current until cancelled; returns at once when the token never changes.

        The owner (the Runtime) runs this as one named task of its TaskGroup.
        """
        if not self._auth.has_hook:
            return
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._auth.stale.wait(), timeout=interval)
            await self._auth.refresh()

    async def server_version(self) -> dict[str, str] | None:
        """The API server's `/version` (major, minor, gitVersion, platform), None when unreadable.

        Read at most once per `_VERSION_TTL_SECONDS` for the whole process: every worker sends it in its
        Register heartbeat, and a thousand workers must not open a thousand connections to ask.
        """
        if time.monotonic() - self._version_read_at < _VERSION_TTL_SECONDS:
            return self._version  # without the lock: a thousand workers queueing on it cost a wakeup each
        async with self._version_lock:
            if time.monotonic() - self._version_read_at < _VERSION_TTL_SECONDS:
                return self._version
            try:
                async with self.session.get(
                    self.url("/version"),
                    headers=self.auth_headers(),
                    timeout=aiohttp.ClientTimeout(total=_VERSION_TIMEOUT_SECONDS),
                ) as response:
                    response.raise_for_status()
                    body: Any = await response.json()
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                log.warning("cannot read the Kubernetes version: %s", e)
                return self._version  # the last known one, if any; retried on the next call
            if isinstance(body, dict):
                self._version = {key: str(body.get(key, "")) for key in _VERSION_KEYS}
                self._version_read_at = time.monotonic()
            return self._version

    def new_session(self, *, limit: int = 0, authenticated: bool = False) -> aiohttp.ClientSession:
        """A new session for this API server; the caller closes it. `limit=0` = no connection cap.

        `authenticated=True`: every request carries the current `auth_headers()` (read when it is sent,
        so a rotated token is used at once), and a 401 asks the refresher to re-read the token. For
        callers that build their own requests (kopf), which cannot add the header themselves.

        The kubeconfig's proxy and TLS server name apply to every request of the session (kopf's too).
        """
        connector = aiohttp.TCPConnector(ssl=self.ssl_context, limit=limit, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_TIMEOUT_SECONDS)
        middlewares: list[aiohttp.ClientMiddlewareType] = []
        if self.server_hostname:
            middlewares.append(self._name_server)
        if authenticated:
            middlewares.append(self._authenticate)
        # The API server's responses are streamed by callers; never let aiohttp follow redirects
        # or read proxy settings from the environment (kubeconfig decides the proxy).
        return aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            trust_env=False,
            proxy=self.proxy,
            middlewares=tuple(middlewares),
        )

    async def _name_server(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        """Session middleware: the kubeconfig's `tls-server-name`, which a session cannot carry."""
        request.server_hostname = self.server_hostname
        return await handler(request)

    async def _authenticate(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        """Session middleware of `new_session(authenticated=True)`."""
        request.headers.update(self.auth_headers())
        response = await handler(request)
        if response.status == 401:
            self.invalidate_credentials()
        return response

    @property
    def session(self) -> aiohttp.ClientSession:
        """The process-wide shared session (created on first use, inside the event loop)."""
        if self._session is None or self._session.closed:
            self._session = self.new_session()
        return self._session

    async def close(self) -> None:
        """Close the shared session, if one was created."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


class PrivatePool:
    """One agent's own connections to the API server, for the requests kas sends through its tunnel.

    Why not the shared session: a keep-alive connection carries one request after another, so a request
    that a hostile kas manages to frame two ways (smuggling) would hand the next user of that connection
    someone else's response. Each agent's tunnelled traffic therefore has a pool of its own, never
    shared with another agent or with the operator's own traffic (informers, access reviews), and
    bounded in size. The session is created on first use, so idle agents hold nothing.
    """

    def __init__(self, kube: KubeAccess, limit: int) -> None:
        self._kube = kube
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """This agent's session (created on first use, inside the event loop)."""
        if self._session is None or self._session.closed:
            self._session = self._kube.new_session(limit=self._limit)
        return self._session

    async def close(self) -> None:
        """Close the connections; call once every request of the agent has ended."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def load_configuration(kubeconfig: str | None = None, *, context: str | None = None) -> Any:
    """Credentials with the attributes of a `kubernetes.client.Configuration`: an explicit kubeconfig;
    else in-cluster; else $KUBECONFIG / ~/.kube/config. KubeConfigError says where it looked (never a
    credential).

    Blocking (reads files, may run an exec plugin): call it with `asyncio.to_thread` from async code.
    """
    loaders: list[tuple[str, Callable[[], Any]]] = []
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        loaders.append(("in-cluster service account", lambda: in_cluster(os.environ)))
    where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    loaders.append((f"kubeconfig {where}", lambda: _from_kubeconfig(kubeconfig, context)))
    problems: list[str] = []
    for where, load in loaders:
        try:
            return load()
        except (KubeconfigError, OSError, ValueError, TypeError) as exc:
            problems.append(f"{where}: {type(exc).__name__}: {exc}")
    raise KubeConfigError("no Kubernetes credentials found (" + "; ".join(problems) + ")")


def _from_kubeconfig(kubeconfig: str | None, context: str | None) -> Any:
    """Our own reading of the kubeconfig; the kubernetes package for what only it does."""
    named = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    if os.pathsep not in named:
        try:
            return from_kubeconfig(Path(os.path.expanduser(named)), context)
        except NotHandledHereError:
            pass
    return _with_kubernetes_package(kubeconfig, context)


def _with_kubernetes_package(kubeconfig: str | None, context: str | None) -> Any:
    """Exec plugins, auth providers, merged $KUBECONFIG files: the kubernetes package's loader (imported
    only here: its API models cost about 15 MiB)."""
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    configuration = k8s_client.Configuration()
    load: Callable[..., None] = k8s_config.load_kube_config
    try:
        load(
            config_file=kubeconfig, context=context, client_configuration=configuration, persist_config=False
        )
    except k8s_config.ConfigException as e:
        raise KubeconfigError(str(e)) from None
    return configuration


def load_kube_access(kubeconfig: str | None = None, *, context: str | None = None) -> KubeAccess:
    """KubeAccess from the credentials `load_configuration` finds. Blocking, like it."""
    return KubeAccess(load_configuration(kubeconfig, context=context))
