"""The few JSON requests the operator makes itself (status patches, labels, events, checks).

Built on the runtime's KubeAccess (the credentials it keeps fresh), with a session of its own capped at
`CONNECTION_LIMIT` connections: a burst of status writes for a thousand resources must not open a thousand
TLS connections (each holds a 256 KiB read buffer that the allocator keeps afterwards), while the
workers' tunnelled requests keep the runtime's uncapped session.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlencode

import aiohttp

from agent_runtime.kube import KubeAccess

MERGE_PATCH: Final = "application/merge-patch+json"
CONNECTION_LIMIT: Final = 8
"""Connections the operator's own requests may hold open to the API server (our choice: each TLS
connection holds a 256 KiB read buffer; 8 keep a burst of status writes flowing)."""
METADATA_ONLY: Final = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, application/json"
"""Accept header of a request whose answer is not read: the API server answers with the object's metadata
alone (plain JSON where it cannot), which spares it encoding the whole object (about 7 % of its CPU per
status write of a Connected agent, measured on kube-apiserver 1.37; docs/benchmarks.md, Session 10)."""
_TIMEOUT: Final = aiohttp.ClientTimeout(total=30, sock_connect=10)
"""One operator request (never a watch) finishes within this."""


@dataclass(frozen=True)
class ApiResponse:
    """Status code and decoded JSON body (None when empty or not JSON)."""

    status: int
    """HTTP status code."""
    body: Any
    """Decoded JSON body."""

    @property
    def ok(self) -> bool:
        """2xx."""
        return 200 <= self.status < 300

    def reason(self) -> str:
        """The apiserver's message for an error answer (never includes request data we sent)."""
        if isinstance(self.body, dict) and self.body.get("message"):
            return str(self.body["message"])[:500]
        return f"HTTP {self.status}"


class KubeApi:
    """JSON requests against the API server; transport errors propagate as aiohttp/Timeout errors."""

    def __init__(self, kube: KubeAccess) -> None:
        self.kube = kube
        """Where the API server is and how to authenticate."""
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """This API's own session (created on first use, inside the event loop)."""
        if self._session is None or self._session.closed:
            self._session = self.kube.new_session(limit=CONNECTION_LIMIT)
        return self._session

    async def close(self) -> None:
        """Close the session, if one was created."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        decode: bool = True,
    ) -> ApiResponse:
        """One request; 4xx/5xx are returned, not raised.

        `decode=False`: a 2xx answer's body is read but not decoded (`ApiResponse.body` is None), for
        callers that need only the outcome. A PATCH or POST answers with the whole object, managedFields
        included, and decoding it only to drop it made a few hundred short-lived Python objects per
        status write and Event; it is asked for as metadata only (`METADATA_ONLY`). Error answers are
        always decoded, for `ApiResponse.reason()`.
        """
        headers = {"Accept": "application/json" if decode else METADATA_ONLY, **self.kube.auth_headers()}
        if body is not None:
            headers["Content-Type"] = content_type
        async with self.session.request(
            method,
            self.kube.url(path),
            json=body,
            headers=headers,
            timeout=_TIMEOUT,
        ) as response:
            raw = await response.read()  # read to the end, so the connection can be reused
            if response.status == 401:
                self.kube.invalidate_credentials()
            ok = 200 <= response.status < 300
            return ApiResponse(response.status, _decoded(raw) if decode or not ok else None)

    async def get(self, path: str) -> ApiResponse:
        """GET."""
        return await self.request("GET", path)

    async def merge_patch(self, path: str, body: Any, *, decode: bool = True) -> ApiResponse:
        """PATCH with a JSON merge patch."""
        return await self.request("PATCH", path, body, content_type=MERGE_PATCH, decode=decode)

    async def post(self, path: str, body: Any, *, decode: bool = True) -> ApiResponse:
        """POST."""
        return await self.request("POST", path, body, decode=decode)


PAGE_SIZE: Final = 500
"""Objects per list page."""


class ListError(Exception):
    """A list failed (a transport error or a refusal); the message says which."""


async def list_pages(
    api: KubeApi, path: str, what: str, *, limit: int | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Each page's answer (its `items` and `metadata`) of a list of `path`, `limit` objects at a time (at
    most PAGE_SIZE); ListError (naming `what`) on failure."""
    page_size = min(limit, PAGE_SIZE) if limit is not None else PAGE_SIZE
    continue_token = ""
    while True:
        query = {"limit": str(page_size), **({"continue": continue_token} if continue_token else {})}
        try:
            answer = await api.get(f"{path}?{urlencode(query)}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ListError(f"listing {what} failed: {type(exc).__name__}") from exc
        if not answer.ok or not isinstance(answer.body, dict):
            raise ListError(f"listing {what} answered {answer.status}: {answer.reason()}")
        yield answer.body
        continue_token = str((answer.body.get("metadata") or {}).get("continue") or "")
        if not continue_token:
            return


def _decoded(raw: bytes) -> Any:
    """The JSON in `raw`; None when empty or not JSON."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:  # not JSON (or not UTF-8): the status code alone must do
        return None


def core_path(namespace: str, plural: str, name: str | None = None) -> str:
    """`/api/v1/namespaces/<ns>/<plural>[/<name>]`."""
    base = f"/api/v1/namespaces/{quote(namespace, safe='')}/{plural}"
    return f"{base}/{quote(name, safe='')}" if name is not None else base


def group_path(api_version: str, namespace: str, plural: str, name: str | None = None) -> str:
    """`/apis/<group>/<version>/namespaces/<ns>/<plural>[/<name>]`."""
    base = f"/apis/{api_version}/namespaces/{quote(namespace, safe='')}/{plural}"
    return f"{base}/{quote(name, safe='')}" if name is not None else base
