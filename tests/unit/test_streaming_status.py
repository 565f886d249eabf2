"""The Kubernetes Status on the error stream, byte for byte as Go's json.Marshal writes it."""

from __future__ import annotations

import json

import pytest

from cryopod.streaming.status import Status, normalize_exit_code


def test_success_is_the_minimal_status() -> None:
    assert Status.success().to_json() == b'{"metadata":{},"status":"Success"}'
    assert Status.success().to_text() == b""


def test_non_zero_exit_carries_the_code_as_a_cause() -> None:
    status = Status.exit_code(42, ["sh", "-c", "exit 42"])
    assert status.to_json() == (
        b'{"metadata":{},"status":"Failure",'
        b'"message":"command terminated with non-zero exit code: '
        b"command 'sh -c exit 42' exited with 42\","
        b'"reason":"NonZeroExitCode",'
        b'"details":{"causes":[{"reason":"ExitCode","message":"42"}]}}'
    )
    assert status.to_text().startswith(b"command terminated with non-zero exit code: ")


def test_internal_error_matches_apimachinery() -> None:
    document = json.loads(Status.internal_error("container c1 is not running").to_json())
    assert document == {
        "metadata": {},
        "status": "Failure",
        "message": "Internal error occurred: container c1 is not running",
        "reason": "InternalError",
        "details": {"causes": [{"message": "container c1 is not running"}]},
        "code": 500,
    }


@pytest.mark.parametrize(("code", "wire"), [(0, 0), (1, 1), (255, 255), (256, 0), (-9, 137)])
def test_exit_codes_fit_a_byte(code: int, wire: int) -> None:
    assert normalize_exit_code(code) == wire
