"""Agents from a Kubernetes Secret (kas.yaml `agents.secret`): one object, listed and watched.

The Secret's `key` holds the same YAML document as the agents file (agents, ci_jobs, users). kas lists
the Secret with `fieldSelector=metadata.name=<name>` and watches from the list's resourceVersion; every
new version is loaded into the AgentDirectory. As with the file, a version that cannot be used (missing
key, bad YAML, invalid agents) is logged once, naming the problem but never quoting the content, and the
previous agents stay. A deleted Secret also keeps the previous agents.

Needs RBAC `list` and `watch` on secrets in that namespace.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import random
import time
from typing import Any, Final
from urllib.parse import quote, urlencode

import aiohttp
import yaml

from kas.agents import AgentDirectory, AgentsFileError, describe_load_error
from kas.config import AgentsSecretConfig
from kas.kube_client import KubeCredentialsError, KubeEndpoint, load_endpoint

log = logging.getLogger(__name__)

WATCH_SECONDS: Final = 240
"""Server-side timeout of one watch request; the watch is re-opened from the last resourceVersion."""
_LIST_TIMEOUT: Final = aiohttp.ClientTimeout(total=30, sock_connect=10)
_BACKOFF_INITIAL: Final = 0.5
_BACKOFF_MAX: Final = 10.0
_MIN_WATCH_SECONDS: Final = 0.5
"""A watch that ends sooner than this (without an error) counts as a failure for the backoff."""
_MAX_EVENT_BYTES: Final = 8 * 1024 * 1024
"""A Secret is at most 1 MiB; its base64 and JSON framing stay well below this."""


def _backoff(failures: int) -> float:
    delay: float = min(_BACKOFF_MAX, _BACKOFF_INITIAL * 2 ** (failures - 1))
    return delay * random.uniform(1.0, 1.2)  # noqa: S311 - jitter, not cryptography


class AgentsSecretError(RuntimeError):
    """The agents Secret cannot be read at start-up (credentials, API server, RBAC)."""


class _ExpiredError(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class AgentsSecretWatcher:
    """`await start()` loads the Secret once (raising what makes kas unusable); `run()` follows it
    until cancelled; `close()` releases the HTTP session."""

    def __init__(
        self, config: AgentsSecretConfig, directory: AgentDirectory, *, watch_seconds: int = WATCH_SECONDS
    ) -> None:
        self._config = config
        self._watch_seconds = watch_seconds
        self._directory = directory
        self._endpoint: KubeEndpoint | None = None
        self._session: aiohttp.ClientSession | None = None
        self._applied_version: str | None = None
        self._loaded_once = False
        self.resource_version = ""
        """resourceVersion the watch continues from."""

    @property
    def _where(self) -> str:
        return f"{self._config.namespace}/{self._config.name}"

    def _collection_url(self, **query: str) -> str:
        endpoint, _ = self._started()
        namespace = quote(self._config.namespace, safe="")
        params = urlencode({"fieldSelector": f"metadata.name={self._config.name}", **query})
        return f"{endpoint.base_url}/api/v1/namespaces/{namespace}/secrets?{params}"

    async def start(self) -> None:
        try:
            self._endpoint = await asyncio.to_thread(load_endpoint, self._config.kubeconfig)
        except KubeCredentialsError as err:
            raise AgentsSecretError(f"agents Secret {self._where}: {err}") from None
        connector = aiohttp.TCPConnector(ssl=self._endpoint.ssl_context or False)
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        try:
            problem = await self._list()
        except (aiohttp.ClientError, TimeoutError, _ExpiredError, AgentsSecretError) as err:
            raise AgentsSecretError(
                f"agents Secret {self._where}: cannot read it from {self._endpoint.base_url}: "
                f"{type(err).__name__}: {err}"
            ) from None
        if problem is not None:  # as with a broken agents file, kas does not start without its agents
            raise AgentsSecretError(f"agents Secret {self._where}: {problem}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self) -> None:
        """Watch until cancelled: re-open a watch that ended, list again after an error (with backoff)."""
        failures = 0
        relist = False
        while True:
            began = time.monotonic()
            try:
                if relist:
                    await self._list()
                    relist = False
                await self._watch()
            except _ExpiredError:
                relist, failures = True, 0
                continue
            except (aiohttp.ClientError, TimeoutError, AgentsSecretError, ValueError) as err:
                relist, failures = True, failures + 1
                delay = _backoff(failures)
                log.warning(
                    "agents Secret %s: watch failed, listing again in %.1fs: %s: %s",
                    self._where,
                    delay,
                    type(err).__name__,
                    err,
                )
                await asyncio.sleep(delay)
                continue
            # A watch that ends at once, again and again, must not spin: back off as after an error.
            failures = failures + 1 if time.monotonic() - began < _MIN_WATCH_SECONDS else 0
            if failures:
                await asyncio.sleep(_backoff(failures))

    def _started(self) -> tuple[KubeEndpoint, aiohttp.ClientSession]:
        if self._endpoint is None or self._session is None:
            raise RuntimeError("AgentsSecretWatcher used before start()")
        return self._endpoint, self._session

    async def _list(self) -> str | None:
        """List the Secret and load it; returns what was wrong with its content, if anything."""
        endpoint, session = self._started()
        await endpoint.refresh()
        async with session.get(
            self._collection_url(),
            headers=endpoint.headers(),
            timeout=_LIST_TIMEOUT,
            **endpoint.request_options,
        ) as response:
            body = await self._json(response)
        self.resource_version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        items = body.get("items") or []
        return self._apply(items[0] if items else None)

    async def _watch(self) -> None:
        endpoint, session = self._started()
        await endpoint.refresh()  # a watch may follow many others: keep an expiring token fresh
        url = self._collection_url(
            watch="true",
            resourceVersion=self.resource_version,
            allowWatchBookmarks="true",
            timeoutSeconds=str(self._watch_seconds),
        )
        async with session.get(
            url, headers=endpoint.headers(), timeout=self._watch_timeout(), **endpoint.request_options
        ) as response:
            if response.status != 200:
                await self._json(response)  # raises with the API server's reason
            pending = b""
            async for chunk in response.content.iter_any():
                *lines, pending = (pending + chunk).split(b"\n")
                if len(pending) > _MAX_EVENT_BYTES:
                    raise AgentsSecretError(f"a watch event is larger than {_MAX_EVENT_BYTES} bytes")
                for line in lines:
                    if line.strip():
                        self._on_event(json.loads(line))

    def _watch_timeout(self) -> aiohttp.ClientTimeout:
        # The server ends the watch after watch_seconds; silence well beyond that means a dead connection.
        return aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self._watch_seconds + 30)

    def _on_event(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _ExpiredError
            raise AgentsSecretError(f"watch error: {obj.get('message') or obj.get('reason') or obj}")
        if version := (obj.get("metadata") or {}).get("resourceVersion"):
            self.resource_version = str(version)
        if kind in ("ADDED", "MODIFIED"):
            self._apply(obj)
        elif kind == "DELETED":
            self._apply(None)

    async def _json(self, response: aiohttp.ClientResponse) -> dict[str, Any]:
        try:
            body = await response.json(content_type=None)
        except (aiohttp.ContentTypeError, ValueError):
            body = None
        if response.status == 410:
            raise _ExpiredError
        if response.status == 401:
            raise AgentsSecretError("the API server refused kas's credentials (401)")
        if response.status == 403:
            raise AgentsSecretError(
                f"forbidden: kas needs list and watch on secrets in namespace {self._config.namespace}"
            )
        if response.status != 200 or not isinstance(body, dict):
            reason = body.get("message") if isinstance(body, dict) else None
            raise AgentsSecretError(f"HTTP {response.status}: {reason or response.reason}")
        return body

    def _apply(self, secret: dict[str, Any] | None) -> str | None:
        """Load one version of the Secret (None = there is none). Problems with the content are logged
        and returned, never raised: the previous agents stay."""
        if secret is None:
            self._applied_version = None
            if self._loaded_once:
                log.warning("agents Secret %s was deleted: keeping the previous agents", self._where)
            else:
                log.warning("agents Secret %s not found: no agents until it is created", self._where)
            return None
        version = str((secret.get("metadata") or {}).get("resourceVersion") or "")
        if version and version == self._applied_version:
            return None  # a relist after a reconnect: nothing new
        self._applied_version = version
        problem: str | None = None
        try:
            self._directory.load_text(self._value(secret))
        except (AgentsFileError, yaml.YAMLError, ValueError) as err:
            problem = describe_load_error(err)  # a traceback would quote the content: not logged
        if problem is not None:
            log.error(
                "agents Secret %s (key %s, resourceVersion %s) not loaded, keeping the previous agents: %s",
                self._where,
                self._config.key,
                version,
                problem,
            )
            return problem
        self._loaded_once = True
        log.info(
            "loaded agents Secret",
            extra={
                "secret": self._where,
                "resource_version": version,
                "agents": len(self._directory.agents()),
            },
        )
        return None

    def _value(self, secret: dict[str, Any]) -> bytes:
        encoded = (secret.get("data") or {}).get(self._config.key)
        if encoded is None:
            raise AgentsFileError(f"the Secret has no key {self._config.key!r}")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise AgentsFileError(f"the Secret's key {self._config.key!r} is not valid base64") from None
