"""The Kubernetes Status object that ends an exec or attach on the error stream.

Protocol v4 and later (`v4.channel.k8s.io`, `v5.channel.k8s.io`) send the Status as JSON,
success included; the exit code of a failed command travels as a cause of reason `ExitCode`
(client-go turns it back into the exit code). Earlier protocols send only a failure's message
as plain text. The JSON matches Go's `json.Marshal` of `metav1.Status`: compact, fields in
struct order, empty ones left out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

STATUS_SUCCESS = "Success"
STATUS_FAILURE = "Failure"
REASON_NON_ZERO_EXIT_CODE = "NonZeroExitCode"
REASON_INTERNAL_ERROR = "InternalError"
CAUSE_EXIT_CODE = "ExitCode"


@dataclass(frozen=True)
class StatusCause:
    """One `details.causes` entry; `reason` is Go's `Type` field (`json:"reason"`)."""

    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class Status:
    """A `metav1.Status` as far as streaming uses it."""

    status: str
    message: str = ""
    reason: str = ""
    code: int = 0
    causes: tuple[StatusCause, ...] = ()

    @classmethod
    def success(cls) -> Status:
        return cls(STATUS_SUCCESS)

    @classmethod
    def exit_code(cls, code: int, cmd: Sequence[str]) -> Status:
        """The Status of a command that exited non-zero."""
        command = " ".join(cmd)
        return cls(
            STATUS_FAILURE,
            message=(
                "command terminated with non-zero exit code: "
                f"command '{command}' exited with {code}"
            ),
            reason=REASON_NON_ZERO_EXIT_CODE,
            causes=(StatusCause(reason=CAUSE_EXIT_CODE, message=str(code)),),
        )

    @classmethod
    def internal_error(cls, error: str) -> Status:
        """What apimachinery's `NewInternalError` makes of `error`."""
        return cls(
            STATUS_FAILURE,
            message=f"Internal error occurred: {error}",
            reason=REASON_INTERNAL_ERROR,
            code=500,
            causes=(StatusCause(message=error),),
        )

    @property
    def succeeded(self) -> bool:
        return self.status == STATUS_SUCCESS

    def to_json(self) -> bytes:
        """The v4+ wire form."""
        document: dict[str, object] = {"metadata": {}, "status": self.status}
        if self.message:
            document["message"] = self.message
        if self.reason:
            document["reason"] = self.reason
        if self.causes:
            document["details"] = {"causes": [_cause_json(cause) for cause in self.causes]}
        if self.code:
            document["code"] = self.code
        return json.dumps(document, separators=(",", ":")).encode()

    def to_text(self) -> bytes:
        """The v1-v3 wire form: nothing on success, the message on failure."""
        return b"" if self.succeeded else self.message.encode()


def _cause_json(cause: StatusCause) -> dict[str, str]:
    fields = {"reason": cause.reason, "message": cause.message}
    return {key: value for key, value in fields.items() if value}


def normalize_exit_code(code: int) -> int:
    """An exit code as the error stream can carry it (0-255); -N (killed by N) is 128+N."""
    if code < 0:
        code = 128 - code
    return code & 0xFF
