"""A loopback HTTPS server standing in for the API server + kubelet of `kubectl exec` (the test cluster has
no kubelet): it answers Upgrade requests with 101 and echoes bytes, refuses one path with 400, and
records what it saw so tests can check headers and how each upgraded connection ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client

from agent_runtime.kube import KubeAccess

ECHO_PATH = "/api/v1/namespaces/default/pods/echo/exec"
REFUSE_PATH = "/api/v1/namespaces/default/pods/refused/exec"
BYE = b"<bye>"
"""A client sending this makes the server answer FAREWELL and close the connection itself."""
FAREWELL = b"server says bye"
GREETING = b"server speaks first"
REFUSAL = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "no upgrade", "code": 400}
TOKEN = "loopback-apiserver-token"
"""The bearer token the worker presents to this server (its own 'process credentials')."""


@dataclass
class Seen:
    """One request the server received."""

    request_line: str
    headers: list[tuple[str, str]]
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the upgraded connection ended."""
    ended_by: str = ""
    """'client' (EOF from the worker) or 'server' (we closed after BYE)."""
    echoed: int = 0
    """Bytes echoed back."""

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class UpgradeTarget:
    """The server; `requests` lists what arrived, in order."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self, cert: Path, key: Path) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()

    def upgrades(self) -> list[Seen]:
        return [s for s in self.requests if ECHO_PATH in s.request_line]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; True = keep the connection for the next one."""
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        except asyncio.IncompleteReadError:
            return False
        request_line, *lines = head.rstrip("\r\n").split("\r\n")
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
        seen = Seen(request_line, headers)
        self.requests.append(seen)
        length = int(next(iter(seen.header("Content-Length")), "0"))
        if length:
            await reader.readexactly(length)
        _, path_query, _ = request_line.split(" ", 2)
        path = path_query.partition("?")[0]
        if seen.header("Authorization") != [f"Bearer {TOKEN}"]:
            self._respond(writer, 401, "Unauthorized", {"message": "bad credentials"})
        elif path == "/version":
            self._respond(writer, 200, "OK", {"major": "1", "minor": "37", "gitVersion": "v1.37.0-loopback"})
        elif path == REFUSE_PATH:
            self._respond(writer, 400, "Bad Request", REFUSAL)
        elif path == ECHO_PATH and seen.header("Upgrade"):
            await self._upgraded(seen, reader, writer)
            return False
        else:
            self._respond(writer, 404, "Not Found", {"message": f"{path} not found"})
        await writer.drain()
        return True

    @staticmethod
    def _respond(writer: asyncio.StreamWriter, code: int, reason: str, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        writer.write(
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )

    async def _upgraded(self, seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        protocol = seen.header("Upgrade")[0]
        # The greeting goes out in the same write as the 101, as servers that speak first do (SPDY
        # SETTINGS): the worker must not lose bytes that arrive together with the response head.
        writer.write(
            f"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n".encode()
            + GREETING
        )
        await writer.drain()
        pending = b""
        try:
            while chunk := await reader.read(65536):
                pending = (pending + chunk)[-len(BYE) :]
                if BYE in chunk or pending == BYE:
                    writer.write(FAREWELL)
                    await writer.drain()
                    seen.ended_by = "server"
                    return
                writer.write(chunk)
                seen.echoed += len(chunk)
                await writer.drain()
            seen.ended_by = "client"
        finally:
            seen.ended.set()


@asynccontextmanager
async def upgrade_target(cert: Path, key: Path) -> AsyncIterator[UpgradeTarget]:
    target = UpgradeTarget()
    await target.start(cert, key)
    try:
        yield target
    finally:
        await target.stop()


PROXIED_HOST = "upgrade.test"
"""The target's name when reached through a proxy (only the proxy resolves it)."""


def kube_access_for(target: UpgradeTarget, ca: Path, *, proxy_port: int | None = None) -> KubeAccess:
    """KubeAccess pointing at the loopback target, trusting `ca`, authenticating with TOKEN.

    With `proxy_port`, the target is `upgrade.test` behind an HTTP proxy on that loopback port, and the
    certificate is checked for `localhost` (kubeconfig `proxy-url` and `tls-server-name`).
    """
    configuration = k8s_client.Configuration()
    configuration.host = f"https://127.0.0.1:{target.port}"
    if proxy_port is not None:
        configuration.host = f"https://{PROXIED_HOST}:{target.port}"
        configuration.proxy = f"http://127.0.0.1:{proxy_port}"
        configuration.tls_server_name = "localhost"
    configuration.ssl_ca_cert = str(ca)
    configuration.api_key = {"authorization": f"Bearer {TOKEN}"}
    return KubeAccess(configuration)
