"""Receiver mode's webhook call, and which webhook URLs the operator allows (SSRF).

The base URL comes from the agent configuration (`flux.webhook_receiver_url`), i.e. from kas: untrusted,
it could name any host the operator pod reaches. The operator's DestinationPolicy does not fit: its host
rules are for kas (public hosts, private ranges only as an opt-in for kas too), while Flux's webhook
receiver is a cluster-internal Service on a private ClusterIP. So the operator admin names the allowed base
URLs exactly (`DestinationPolicy.flux_webhook_urls`, flag `--flux-webhook-receiver-urls`, default Flux's
own Service): kas can only choose among them. The call is an empty POST to `<base><status.webhookPath>`
(the path must look like notification-controller's `/hook/<digest>`), bounded in time, never following
a redirect, without the environment's proxy settings (the allowed URL is dialled, nothing else).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Final

import aiohttp

from agent_runtime.policy import FLUX_WEBHOOK_SERVICE_URL

DEFAULT_WEBHOOK_URL: Final = FLUX_WEBHOOK_SERVICE_URL
"""agentk's default when the configuration names none: Flux's `webhook-receiver` Service (§17.6)."""
_WEBHOOK_PATH: Final = re.compile(r"/hook/[A-Za-z0-9._-]{1,128}")
"""What notification-controller writes to a Receiver's status.webhookPath (`/hook/<sha256 hex>`)."""


class WebhookUrlError(ValueError):
    """Not an http(s) base URL the operator could allow."""


@dataclass(frozen=True, order=True)
class BaseUrl:
    """A normalised webhook base URL: scheme, lower-case host, explicit port, path without a trailing /."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, text: str) -> BaseUrl:
        """Parse `text`; WebhookUrlError says what is wrong with it."""
        try:
            parts = urllib.parse.urlsplit(text.strip())
            port = parts.port
        except ValueError as e:
            raise WebhookUrlError(f"{text!r} is not a URL: {e}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookUrlError(f"{text!r} is not an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
            raise WebhookUrlError(f"{text!r} has credentials, a query or a fragment")
        default_port = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname.rstrip("."), port or default_port, parts.path.rstrip("/"))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    def join(self, webhook_path: str) -> str | None:
        """The URL to POST for a Receiver's status.webhookPath; None when the path is not a webhook path."""
        if not _WEBHOOK_PATH.fullmatch(webhook_path):
            return None
        return f"{self}{webhook_path}"


def allowed_base(configured: str, allowed: tuple[str, ...]) -> BaseUrl:
    """The configuration's base URL (agentk's default when empty) if the operator allows it; else
    WebhookUrlError with the reason (the allowed list is the operator's, so it may be shown)."""
    base = BaseUrl.parse(configured or DEFAULT_WEBHOOK_URL)
    permitted = {BaseUrl.parse(url) for url in allowed}
    if base not in permitted:
        shown = ", ".join(sorted(str(u) for u in permitted)) or "none"
        raise WebhookUrlError(
            f"flux.webhook_receiver_url {str(base)!r} from the agent configuration is not allowed by the "
            f"operator (allowed: {shown}; operator flag --flux-webhook-receiver-urls)"
        )
    return base


async def post_webhook(session: aiohttp.ClientSession, url: str, *, timeout: float) -> int:  # noqa: ASYNC109 - passed to the HTTP client
    """POST an empty body to `url`; the HTTP status, 0 when there was no answer. No redirect is followed."""
    try:
        async with session.post(
            url, data=b"", allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return 0
