"""Send a git push event to a kas API listener as GitLab Rails does (PROTOCOL.md §17.1 step 2, §17.7).

`Notifications/GitPushEvent` with `authorization: Bearer <JWT>`: HS256 signed with the kas shared secret
(the base64 file both Rails and kas read), `iss` the GitLab host, `aud` `gitlab-kas`. Works against
GitLab's kas (its `api` listener) and ours (kas.yaml `api`). Tests and benchmarks use it; Rails is the
caller in a real deployment.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from agent_proto.gitlab.agent.event import event_pb2
from agent_proto.gitlab.agent.notifications.rpc import rpc_pb2 as notifications_rpc
from kas import jwt
from kas.secret import Secret

GIT_PUSH_EVENT_PATH = "/gitlab.agent.notifications.rpc.Notifications/GitPushEvent"
RAILS_ISSUER = "gitlab"
"""What GitLab Rails puts in `iss` (its host name); kas does not check it (§11.2)."""
RAILS_TOKEN_LIFETIME = 60.0


def as_secret(secret: Secret | Path | str | bytes) -> Secret:
    """A Secret from itself, from a secret file (base64), or from that file's content."""
    if isinstance(secret, Secret):
        return secret
    if isinstance(secret, Path):
        return jwt.load_secret(secret.read_bytes())
    return jwt.load_secret(secret.encode() if isinstance(secret, str) else secret)


def git_push_event_request(project_id: int, full_path: str) -> notifications_rpc.GitPushEventRequest:
    project = event_pb2.Project(id=project_id, full_path=full_path)
    return notifications_rpc.GitPushEventRequest(event=event_pb2.GitPushEvent(project=project))


def rails_metadata(secret: Secret, issuer: str = RAILS_ISSUER) -> tuple[tuple[str, str], ...]:
    token = jwt.encode(secret, issuer=issuer, audience=jwt.AUDIENCE, lifetime=RAILS_TOKEN_LIFETIME)
    return (("authorization", f"Bearer {token}"),)


async def send_git_push_event(
    api_address: str,
    secret: Secret | Path | str | bytes,
    project_id: int,
    full_path: str,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - the gRPC deadline of the call, sent to kas
) -> None:
    """Report a push to `full_path` (numeric id `project_id`) to the kas API listener at host:port.

    `secret`: the kas shared secret (a Secret, the secret file's Path, or its base64 content). Raises
    grpc.aio.AioRpcError with kas's status when kas refuses the call (UNAUTHENTICATED,
    INVALID_ARGUMENT, UNAVAILABLE when it cannot publish).
    """
    request = git_push_event_request(project_id, full_path)
    async with grpc.aio.insecure_channel(api_address) as channel:
        call = channel.unary_unary(
            GIT_PUSH_EVENT_PATH,
            request_serializer=notifications_rpc.GitPushEventRequest.SerializeToString,
            response_deserializer=notifications_rpc.GitPushEventResponse.FromString,
        )
        await call(request, metadata=rails_metadata(as_secret(secret)), timeout=timeout)


def send_git_push_event_sync(
    api_address: str,
    secret: Secret | Path | str | bytes,
    project_id: int,
    full_path: str,
    *,
    timeout: float = 10.0,
) -> None:
    """`send_git_push_event` for synchronous code (a kas in another process: never an in-process one,
    whose event loop this call would block). Raises grpc.RpcError when kas refuses the call."""
    request = git_push_event_request(project_id, full_path)
    with grpc.insecure_channel(api_address) as channel:
        call = channel.unary_unary(
            GIT_PUSH_EVENT_PATH,
            request_serializer=notifications_rpc.GitPushEventRequest.SerializeToString,
            response_deserializer=notifications_rpc.GitPushEventResponse.FromString,
        )
        call(request, metadata=rails_metadata(as_secret(secret)), timeout=timeout)
