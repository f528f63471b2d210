"""The one application error type; the API exception handler renders it.

Services raise `ApplicationError` (or a subclass) with a stable `code`, a
human `message` and optional `details`; views add it to their form, the API
handler turns it into `{"error": {"code", "message", "details"}}`.
"""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    code = "invalid"
    status = 400

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details or {}


class NotFound(ApplicationError):
    """Missing or out of reach: the same answer either way (STYLE.md)."""

    code = "not_found"
    status = 404


class PermissionDenied(ApplicationError):
    code = "permission_denied"
    status = 403


class Conflict(ApplicationError):
    code = "conflict"
    status = 409


class TenantContextError(Exception):
    """A tenant task was asked to run outside its tenant's schema (TEN-8)."""
