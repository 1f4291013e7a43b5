"""The base of every "this WorkerSpec cannot be used" error raised when opening a kas connection."""

from __future__ import annotations

from agent_runtime.spec import ErrorReason, WorkerError


class TransportConfigError(ValueError):
    """The spec's transport settings are unusable; `hint` says how to fix them. Never holds secrets."""

    default_hint = ""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(f"{message} ({hint})" if hint else message)
        self.message = message
        self.hint = hint or self.default_hint

    def as_worker_error(self) -> WorkerError:
        """The error as a worker status entry."""
        return WorkerError(ErrorReason.CONFIGURATION_REJECTED, self.message, self.hint)
