"""Error hierarchy shared by every layer.

``SyncError`` is the root. Every failure is either *retriable* (throttling, 5xx,
dropped connections: trying again later may succeed) or *fatal* (bad
credentials, validation errors, misconfiguration: trying again cannot help).
The Airflow shell maps fatal errors to ``AirflowFailException`` and uses the two
bases in its retry policy. Messages never contain secrets or record contents
beyond the identifiers needed to find the record.
"""

from __future__ import annotations


class SyncError(Exception):
    """Root of all errors raised by m365_3cx."""


class RetriableError(SyncError):
    """A failure that may succeed when tried again later."""


class FatalError(SyncError):
    """A failure that will not succeed when tried again."""


class ConfigError(FatalError):
    """Settings or a connection are missing or invalid."""


class ServiceError(SyncError):
    """An HTTP service answered with an error.

    :param message: human readable summary (no secrets).
    :param status: HTTP status code, or ``None`` for transport failures.
    :param code: the service's own error code (e.g. ``TooManyRequests``).
    :param request_id: the service's request id, when it sent one.
    :param retry_after: seconds the service asked us to wait, when it did.
    :param target: the record field the service blamed, when it named one.
    """

    service = "service"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        target: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after
        self.target = target

    def __str__(self) -> str:
        parts = [f"{self.service}: {self.message}"]
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.code:
            parts.append(f"code={self.code}")
        if self.target:
            parts.append(f"target={self.target}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)


class RetriableServiceError(ServiceError, RetriableError):
    """A service error worth retrying (429, 5xx, connection or timeout)."""


class FatalServiceError(ServiceError, FatalError):
    """A service error not worth retrying (most 4xx)."""


class AuthenticationError(FatalServiceError):
    """Credentials were rejected by the identity provider or the PBX."""


class GraphError(ServiceError):
    """Base for Microsoft Graph errors."""

    service = "graph"


class GraphRetriableError(GraphError, RetriableServiceError):
    """Graph throttled us or failed transiently."""


class GraphFatalError(GraphError, FatalServiceError):
    """Graph rejected the request."""


class GraphAuthError(GraphError, AuthenticationError):
    """The identity platform rejected the app's credentials."""


class DeltaTokenExpiredError(GraphFatalError):
    """A stored delta link is no longer valid (410, syncStateNotFound, resyncRequired)."""


class MailboxUnavailableError(GraphFatalError):
    """The user has no Exchange Online mailbox (404 MailboxNotEnabledForRESTAPI)."""


class ThreeCXError(ServiceError):
    """Base for 3CX XAPI errors."""

    service = "3cx"


class ThreeCXRetriableError(ThreeCXError, RetriableServiceError):
    """The PBX failed transiently (5xx, connection, timeout)."""


class ThreeCXFatalError(ThreeCXError, FatalServiceError):
    """The PBX rejected the request (validation, not found, forbidden)."""


class ThreeCXAuthError(ThreeCXError, AuthenticationError):
    """The PBX rejected the client id / secret."""


class GuardError(FatalError):
    """A safety guard stopped the apply step before anything was written."""


class MassRemovalError(GuardError):
    """More managed objects would be removed than the guard allows."""
