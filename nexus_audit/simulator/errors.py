"""The simulator's API errors and their codes, rendered as ``{"error": {...}}``."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class ErrorCode(StrEnum):
    """Error codes the simulator sends in ``error.code``."""

    VALIDATION_ERROR = "VALIDATION_ERROR"
    INVALID_JSON = "INVALID_JSON"
    INVALID_CURSOR = "INVALID_CURSOR"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    RESOURCE_NOT_FOUND = "RESOURCE_NOT_FOUND"
    NOT_FOUND = "NOT_FOUND"  # no such route
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UPLOAD_NOT_FOUND = "UPLOAD_NOT_FOUND"  # multipart: unknown, aborted or completed upload
    INVALID_PART = "INVALID_PART"  # multipart: a listed part is missing or its etag differs
    INVALID_PART_ORDER = "INVALID_PART_ORDER"
    PART_TOO_SMALL = "PART_TOO_SMALL"
    RATE_LIMITED = "RATE_LIMITED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    BAD_GATEWAY = "BAD_GATEWAY"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"


UNAUTHORIZED_MESSAGE = "Invalid or expired API key"


class SimError(Exception):
    """An error response: HTTP status, code, message and extra headers."""

    def __init__(
        self,
        status: int,
        code: ErrorCode,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def body(self, request_id: str) -> dict[str, object]:
        """The JSON error body."""
        return {
            "error": {"code": str(self.code), "message": self.message, "request_id": request_id}
        }


def validation_error(message: str) -> SimError:
    """A 400 VALIDATION_ERROR."""
    return SimError(400, ErrorCode.VALIDATION_ERROR, message)
