"""The shipper's store errors: ``StoreError`` and how an MLflow error code is classified.

    raise StoreError("POST ...: HTTP 503", classify_code(None, 503))   # kind "transient"

Kept apart from store.py so that both stores (rest.py, client_store.py) import it without an
import circle through ``open_store``; store.py describes the kinds.
"""

from __future__ import annotations

from gradwatch.errors import TrackingError

__all__ = ["StoreError", "classify_code"]

_REJECTED_CODES = {
    "INVALID_PARAMETER_VALUE",
    "BAD_REQUEST",
    "INVALID_STATE",
    "RESOURCE_LIMIT_EXCEEDED",
}
_FATAL_CODES = {"PERMISSION_DENIED", "UNAUTHENTICATED", "UNAUTHORIZED", "RESOURCE_DOES_NOT_EXIST"}


class StoreError(TrackingError):
    """A request to MLflow failed; ``kind`` says whether retrying can help."""

    def __init__(self, message: str, kind: str = "transient", code: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.code = kind, code

    @property
    def fatal(self) -> bool:
        return self.kind == "fatal"


def classify_code(code: str | None, http_status: int | None = None) -> str:
    """The ``StoreError.kind`` for an MLflow error code and/or HTTP status."""
    if code in _FATAL_CODES or http_status in (401, 403):
        return "fatal"
    # 413: the body is too large for the server or a proxy before it (nginx's default limit
    # is 1 MB); sending the same body again cannot help.
    if code in _REJECTED_CODES or http_status in (400, 413):
        return "rejected"
    return "transient"
