"""`python -m agent_runtime`: one agent, with agentk's flags and environment (PROTOCOL.md §12.1).

The token comes from `--token-file` (one trailing newline stripped) or `AGENTK_TOKEN` (removed from the
environment once read): exactly one of them. With `--token-file`, the file is polled and a changed token
reconnects the worker in place (a rotated Secret mounted as a file). SIGINT/SIGTERM drain and stop.
Errors name the flag or variable, never its value.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import re
import signal
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from agent_runtime.gc_policy import tune_for_long_lived_heap
from agent_runtime.kube import KubeConfigError, load_kube_access
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.runtime import Runtime, RuntimeSettings
from agent_runtime.secret import Secret
from agent_runtime.spec import TlsSettings, WorkerSpec
from agent_runtime.telemetry.endpoints import parse_listen_address
from agent_runtime.telemetry.logs import configure_json_logging
from agent_runtime.version import AGENT_COMMIT, AGENT_VERSION

log = logging.getLogger(__name__)

TOKEN_ENV: Final = "AGENTK_TOKEN"  # noqa: S105 - the variable's name, not a token
TOKEN_FILE_POLL_S: Final = 5.0
"""Our choice: how often --token-file is re-read for a rotated token."""
STOP_GRACE_S: Final = 10.0
"""Our choice: how long in-flight tunnel requests may finish after SIGTERM."""

_SCHEMES: Final = ("grpc", "grpcs", "ws", "wss")
_HEADER_NAME: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
"""An HTTP field name (RFC 9110 token)."""


class UsageError(Exception):
    """A flag or environment variable is missing or invalid; the message never contains a secret."""


@dataclass(frozen=True)
class StandaloneConfig:
    """Everything the standalone agent needs, validated."""

    spec: WorkerSpec
    """The one worker to run."""
    token_file: Path | None
    """Where the token came from (watched for rotation); None when it came from AGENTK_TOKEN."""
    observability_address: str
    """Listen address of /metrics, /liveness, /readiness."""
    kubeconfig: str | None
    """--kubeconfig; None = in-cluster, else $KUBECONFIG / ~/.kube/config."""
    context: str | None
    """--context of the kubeconfig."""
    pod_namespace: str
    """POD_NAMESPACE."""
    pod_name: str
    """POD_NAME."""


def build_parser() -> argparse.ArgumentParser:
    """agentk's flags (§12.1)."""
    parser = argparse.ArgumentParser(
        prog="agentk-py", description="GitLab agent for Kubernetes (one agent, without the operator)."
    )
    parser.add_argument(
        "--kas-address", help="kas address: grpc://, grpcs://, ws:// or wss:// URL (required)"
    )
    parser.add_argument("--token-file", help="file with the agent token (or set AGENTK_TOKEN)")
    parser.add_argument("--ca-cert-file", help="extra PEM CA certificates for kas")
    parser.add_argument(
        "--kas-header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="extra header for kas (WebSocket handshake / gRPC metadata); repeatable",
    )
    parser.add_argument("--kas-insecure-skip-tls-verify", action="store_true", help="do not verify kas's TLS")
    parser.add_argument("--kas-tls-server-name", help="TLS server name to verify kas's certificate against")
    parser.add_argument(
        "--observability-listen-address", default=":8080", help="listen address of /metrics etc."
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else $KUBECONFIG)")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def version_text() -> str:
    """agentk's --version line."""
    built = os.environ.get("GAO_BUILD_DATE", "unknown")
    return f"agentk version {AGENT_VERSION}, commit: {AGENT_COMMIT}, built: {built}"


def parse_kas_headers(values: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """`Name: Value` pairs, trimmed; the error names the header, never its value."""
    headers: list[tuple[str, str]] = []
    for number, raw in enumerate(values, start=1):
        name, sep, value = raw.partition(":")
        name, value = name.strip(), value.strip()
        if not sep:
            raise UsageError(f"--kas-header #{number} must look like 'Name: Value'")
        if not name:
            raise UsageError(f"--kas-header #{number} has an empty name")
        if not _HEADER_NAME.match(name):
            raise UsageError(f"--kas-header #{number} has an invalid header name")
        if not value:
            raise UsageError(f"--kas-header {name!r} has an empty value")
        if any(c in value for c in "\r\n\0"):
            raise UsageError(f"--kas-header {name!r} has a value with a line break or NUL")
        headers.append((name, value))
    return tuple(headers)


def read_token_file(path: Path) -> Secret:
    """The token in `path`, one trailing newline stripped (agentk's rule)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(
            f"--token-file {path}: cannot read it ({exc.strerror or type(exc).__name__})"
        ) from None
    text = text.removesuffix("\n")
    if not text:
        raise UsageError(f"--token-file {path} is empty")
    return Secret(text)


def _token(args: argparse.Namespace, environ: MutableMapping[str, str]) -> tuple[Secret, Path | None]:
    from_env = environ.pop(TOKEN_ENV, None)  # removed from the process environment once read
    if args.token_file and from_env is not None:
        raise UsageError(f"set either --token-file or {TOKEN_ENV}, not both")
    if args.token_file:
        path = Path(args.token_file)
        return read_token_file(path), path
    if not from_env:
        raise UsageError(f"the agent token is missing: set --token-file or {TOKEN_ENV}")
    return Secret(from_env), None


def _required_env(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise UsageError(f"{name} must be set (agentk reads it from the downward API)")
    return value


def _kas_address(value: str | None) -> str:
    if not value:
        raise UsageError("--kas-address is required")
    parts = urlsplit(value)
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise UsageError(f"--kas-address must be a {', '.join(s + '://' for s in _SCHEMES)} URL with a host")
    return value


def _tls(args: argparse.Namespace) -> TlsSettings:
    ca_pem: bytes | None = None
    if args.ca_cert_file:
        try:
            ca_pem = Path(args.ca_cert_file).read_bytes()
        except OSError as exc:
            raise UsageError(f"--ca-cert-file {args.ca_cert_file}: cannot read it ({exc.strerror})") from None
        if b"-----BEGIN CERTIFICATE-----" not in ca_pem:
            raise UsageError(f"--ca-cert-file {args.ca_cert_file} contains no PEM certificate")
    return TlsSettings(
        ca_pem=ca_pem,
        server_name=args.kas_tls_server_name or None,
        insecure_skip_verify=bool(args.kas_insecure_skip_tls_verify),
    )


def parse_config(args: argparse.Namespace, environ: MutableMapping[str, str]) -> StandaloneConfig:
    """Validate flags and environment (consumes AGENTK_TOKEN from `environ`)."""
    address = _kas_address(args.kas_address)
    token, token_file = _token(args, environ)
    headers = parse_kas_headers(args.kas_header)
    try:
        parse_listen_address(args.observability_listen_address)
    except ValueError as exc:
        raise UsageError(f"--observability-listen-address: {exc}") from None
    pod_namespace = _required_env(environ, "POD_NAMESPACE")
    pod_name = _required_env(environ, "POD_NAME")
    spec = WorkerSpec(
        id=f"{pod_namespace}/{pod_name}",
        kas_address=address,
        token=token,
        tls=_tls(args),
        kas_headers=headers,
    )
    return StandaloneConfig(
        spec=spec,
        token_file=token_file,
        observability_address=args.observability_listen_address,
        kubeconfig=args.kubeconfig,
        context=args.context,
        pod_namespace=pod_namespace,
        pod_name=pod_name,
    )


async def _watch_token_file(runtime: Runtime, config: StandaloneConfig) -> None:
    """Re-read --token-file periodically; a new token reconnects the worker in place."""
    assert config.token_file is not None
    spec = config.spec
    while True:
        await asyncio.sleep(TOKEN_FILE_POLL_S)
        try:
            token = await asyncio.to_thread(read_token_file, config.token_file)
        except UsageError as exc:
            log.warning("token file unreadable; keeping the current token", extra={"error": str(exc)})
            continue
        if token != spec.token:
            log.info("token file changed: reconnecting with the new token")
            spec = dataclasses.replace(spec, token=token)
            runtime.apply(spec)


async def run_standalone(config: StandaloneConfig) -> None:
    """Run the agent until SIGINT/SIGTERM, then drain."""
    kube = await asyncio.to_thread(load_kube_access, config.kubeconfig, context=config.context)
    runtime = Runtime(
        kube, RuntimeSettings(observability_address=config.observability_address, policy=PERMISSIVE_POLICY)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with asyncio.TaskGroup() as tg:
            runtime_task = tg.create_task(runtime.run(), name="agent-runtime")
            await runtime.wait_started()
            runtime.apply(config.spec)
            watcher = None
            if config.token_file is not None:
                watcher = tg.create_task(_watch_token_file(runtime, config), name="token-file-watcher")
            stopper = tg.create_task(stop.wait(), name="signal-wait")
            await asyncio.wait({runtime_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            log.info("stopping")
            if watcher is not None:
                watcher.cancel()
            stopper.cancel()
            await runtime.stop(STOP_GRACE_S)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await kube.close()


def main(argv: Sequence[str] | None = None, environ: MutableMapping[str, str] | None = None) -> int:
    """Entry point; returns the exit code (2 = usage error, as argparse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(version_text())
        return 0
    try:
        config = parse_config(args, os.environ if environ is None else environ)
    except UsageError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    configure_json_logging()
    tune_for_long_lived_heap()
    exit_code = 0
    try:
        asyncio.run(run_standalone(config))
    except* KubeConfigError as group:
        log.error("no Kubernetes credentials", extra={"error": str(group.exceptions[0])})  # noqa: TRY400 - no traceback needed
        exit_code = 1
    except* OSError as group:
        log.error("cannot start", extra={"error": str(group.exceptions[0])})  # noqa: TRY400 - e.g. the port is taken
        exit_code = 1
    return exit_code
