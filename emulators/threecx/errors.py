"""3CX XAPI errors: exceptions that know their HTTP status, and the OData error envelope.

Every non-2xx XAPI answer is ``Pbx.ODataErrors.ODataError`` (swagger ``components.schemas``)::

    {"error": {"code": "", "message": "Number:\\nWARNINGS.XAPI.ALREADY_IN_USE",
               "details": [{"code": "", "message": "WARNINGS.XAPI.ALREADY_IN_USE", "target": "Number"}]}}

Validation errors put the property in ``details[].target`` and a ``WARNINGS.XAPI.*`` key in
``details[].message``; the top-level message is ``"<target>:\\n<key>"``, as observed on real PBXs.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

ALREADY_IN_USE = "WARNINGS.XAPI.ALREADY_IN_USE"
NOT_FOUND = "WARNINGS.XAPI.NOT_FOUND"
NOT_ALLOWED = "WARNINGS.XAPI.NOT_ALLOWED"
INVALID_EMAIL = "WARNINGS.XAPI.INVALID_EMAIL"
INVALID_NUMBER = "WARNINGS.XAPI.INVALID_NUMBER"
INVALID_PHONE = "WARNINGS.XAPI.INVALID_PHONE_NUMBER"
INVALID_VALUE = "WARNINGS.XAPI.INVALID_VALUE"
TOO_LONG = "WARNINGS.XAPI.TOO_LONG"
UNKNOWN_PROPERTY = "WARNINGS.XAPI.UNKNOWN_PROPERTY"
CANNOT_DELETE = "WARNINGS.XAPI.CANNOT_DELETE"
REQUIRED = "WARNINGS.XAPI.REQUIRED"


class XapiError(Exception):
    """An error the XAPI answers with an OData error body.

    :param status: HTTP status.
    :param message: top-level ``error.message``.
    :param details: ``error.details`` entries (``code``, ``message``, ``target``).
    :param code: top-level ``error.code`` (3CX leaves it empty).
    """

    def __init__(self, status: int, message: str, details: list[dict[str, Any]] | None = None,
                 code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []
        self.code = code

    def body(self) -> dict[str, Any]:
        return odata_error(self.message, self.details, self.code)


class ValidationError(XapiError):
    """A 400 about one property, in 3CX's ``WARNINGS.XAPI.*`` form."""

    def __init__(self, target: str, key: str) -> None:
        super().__init__(400, f"{target}:\n{key}", [{"code": "", "message": key, "target": target}])
        self.target = target
        self.key = key


class NotFound(XapiError):
    def __init__(self, what: str = "Entity") -> None:
        super().__init__(404, f"{what} not found", [{"code": "", "message": NOT_FOUND, "target": None}])


class BadRequest(XapiError):
    """A 400 that is not about one property (bad OData query option, bad JSON)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


def odata_error(message: str, details: list[dict[str, Any]] | None = None, code: str = "") -> dict[str, Any]:
    """The ``Pbx.ODataErrors.ODataError`` body."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def render_fault(status: int, reason: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Body and headers of an injected fault (``ErrorRenderer`` for ``FaultMiddleware``)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return odata_error(f"{phrase} (emulator fault: {reason})"), {}


class TokenError(Exception):
    """A ``/connect/token`` failure: ``{"error", "error_description"}`` with its status."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "error_description": self.description}
