"""Microsoft identity platform credentials and an app-only token provider (MSAL).

MSAL is given a small ``http_client`` adapter built on :class:`~m365_3cx.http.HttpTransport`
so that ``verify`` (the CA bundle) and timeouts are passed on every request and
transient failures are retried like every other call.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from m365_3cx.errors import ConfigError, GraphAuthError, GraphError, GraphRetriableError, ServiceError
from m365_3cx.http import HttpTransport, RetryPolicy

if TYPE_CHECKING:
    import msal
    import requests

log = logging.getLogger(__name__)

PUBLIC_GRAPH_URL = "https://graph.microsoft.com"
PUBLIC_AUTHORITY_HOST = "https://login.microsoftonline.com"

RENEW_BEFORE = 300.0
"""Seconds before a token expires at which :meth:`GraphTokenProvider.token` asks MSAL again (MSAL
itself renews a cached token when fewer than five minutes remain)."""

_FALLBACK_WELL_KNOWN_HOSTS = frozenset({
    "login.microsoftonline.com", "login.microsoft.com", "login.windows.net", "sts.windows.net",
    "login.microsoftonline.us", "login.usgovcloudapi.net", "login-us.microsoftonline.com",
    "login.chinacloudapi.cn", "login.partner.microsoftonline.cn", "login.microsoftonline.de",
})


def _well_known_hosts() -> frozenset[str]:
    try:
        from msal.authority import WELL_KNOWN_AUTHORITY_HOSTS
    except ImportError:  # pragma: no cover - older/newer msal layouts
        return _FALLBACK_WELL_KNOWN_HOSTS
    return frozenset(WELL_KNOWN_AUTHORITY_HOSTS) | _FALLBACK_WELL_KNOWN_HOSTS


@dataclass(frozen=True)
class GraphCredentials:
    """App-only credentials for Microsoft Graph.

    Exactly one of ``client_secret`` or ``certificate_pem`` + ``private_key_pem`` must be set.
    The PEM fields accept either PEM text or a path to a PEM file.

    :param tenant_id: directory (tenant) id or domain.
    :param client_id: application (client) id.
    :param client_secret: client secret value (never shown in ``repr``).
    :param certificate_pem: public certificate, PEM text or file path.
    :param private_key_pem: private key, PEM text or file path (never shown in ``repr``).
    :param authority_host: identity platform base URL (https).
    :param graph_url: Graph base URL without the version segment.
    :param ca_bundle: CA file to verify both endpoints with.
    :param disable_instance_discovery: ``True`` turns MSAL instance discovery off; ``None`` turns it
        off only for hosts that are not Microsoft's well-known authority hosts.
    :raises ConfigError: when the fields are missing or inconsistent (every problem listed).
    """

    tenant_id: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    certificate_pem: str | None = field(default=None, repr=False)
    private_key_pem: str | None = field(default=None, repr=False)
    authority_host: str = PUBLIC_AUTHORITY_HOST
    graph_url: str = PUBLIC_GRAPH_URL
    ca_bundle: str | None = None
    disable_instance_discovery: bool | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.tenant_id:
            problems.append("tenant_id is required")
        if not self.client_id:
            problems.append("client_id is required")
        has_secret = bool(self.client_secret)
        has_cert = bool(self.certificate_pem)
        has_key = bool(self.private_key_pem)
        if has_secret and (has_cert or has_key):
            problems.append("set either client_secret or certificate_pem + private_key_pem, not both")
        elif not has_secret and not (has_cert and has_key):
            if has_cert != has_key:
                problems.append("certificate_pem and private_key_pem must be set together")
            else:
                problems.append("one of client_secret or certificate_pem + private_key_pem is required")
        for name in ("authority_host", "graph_url"):
            parts = urlsplit(getattr(self, name) or "")
            if parts.scheme != "https" or not parts.netloc:
                problems.append(f"{name} must be an https URL")
        if problems:
            raise ConfigError("invalid Graph credentials: " + "; ".join(problems))
        object.__setattr__(self, "authority_host", self.authority_host.rstrip("/"))
        object.__setattr__(self, "graph_url", self.graph_url.rstrip("/"))

    @property
    def uses_certificate(self) -> bool:
        """True for certificate credentials, false for a client secret."""
        return not self.client_secret

    @property
    def authority(self) -> str:
        """``{authority_host}/{tenant_id}``."""
        return f"{self.authority_host}/{self.tenant_id}"

    @property
    def scope(self) -> str:
        """The ``.default`` scope of the configured Graph resource."""
        return f"{self.graph_url}/.default"

    @property
    def instance_discovery(self) -> bool:
        """Whether MSAL may call Microsoft's instance discovery endpoint."""
        if self.disable_instance_discovery is not None:
            return not self.disable_instance_discovery
        host = (urlsplit(self.authority_host).hostname or "").lower()
        return host in _well_known_hosts()


def _read_pem(value: str, what: str) -> str:
    if value.lstrip().startswith("-----BEGIN"):
        return value
    path = Path(value)
    try:
        return path.read_text(encoding="ascii")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path.name!r}: {exc.strerror}") from None


class MsalHttpClient:
    """The ``http_client`` MSAL calls: ``get``/``post`` through an :class:`HttpTransport`.

    Error responses are returned, not raised, because MSAL reads the error body itself.

    :param transport: the transport (carries the CA bundle, timeouts and retry policy).
    """

    def __init__(self, transport: HttpTransport) -> None:
        self._transport = transport

    def get(self, url: str, params: Mapping[str, Any] | None = None,
            headers: Mapping[str, str] | None = None, **_: Any) -> requests.Response:
        """GET for discovery documents.

        :raises GraphRetriableError: when the connection kept failing.
        """
        return self._transport.send(
            "GET", url, params=params, headers=headers, raise_for_status=False,
            transport_error=_auth_transport_error,
        )

    def post(self, url: str, params: Mapping[str, Any] | None = None, data: Any = None,
             headers: Mapping[str, str] | None = None, **kwargs: Any) -> requests.Response:
        """POST for the token request (repeatable: a client-credentials grant has no side effects).

        :raises GraphRetriableError: when the connection kept failing.
        """
        return self._transport.send(
            "POST", url, params=params, data=data, json=kwargs.get("json"), headers=headers,
            raise_for_status=False, idempotent=True, transport_error=_auth_transport_error,
        )

    def close(self) -> None:
        """Close the transport's sessions."""
        self._transport.close()


def _auth_transport_error(message: str) -> ServiceError:
    return GraphRetriableError(f"token endpoint unreachable: {message}")


class GraphTokenProvider:
    """App-only access tokens for Graph from an MSAL confidential client.

    The MSAL application is built on first use (building it performs OIDC discovery);
    MSAL caches the token in memory on this instance and renews it when fewer than five
    minutes remain.

    :param credentials: the app's credentials.
    :param policy: retry/timeout policy for the identity platform calls.
    :param transport: transport to use instead of a new one (tests).
    """

    def __init__(self, credentials: GraphCredentials, policy: RetryPolicy | None = None,
                 transport: HttpTransport | None = None) -> None:
        self.credentials = credentials
        self._transport = transport or HttpTransport(policy, ca_bundle=credentials.ca_bundle)
        self._http_client = MsalHttpClient(self._transport)
        self._lock = threading.Lock()
        self._token_lock = threading.Lock()  # one token request at a time: threads share the first one
        self._app: msal.ConfidentialClientApplication | None = None
        self._current: tuple[str, float] | None = None  # (token, monotonic time to ask MSAL again)

    def __repr__(self) -> str:
        return f"GraphTokenProvider(tenant_id={self.credentials.tenant_id!r}, client_id={self.credentials.client_id!r})"

    def _client_credential(self) -> str | dict[str, str]:
        creds = self.credentials
        if creds.client_secret:
            return creds.client_secret
        assert creds.certificate_pem and creds.private_key_pem
        return {
            "private_key": _read_pem(creds.private_key_pem, "private key"),
            "public_certificate": _read_pem(creds.certificate_pem, "certificate"),
        }

    def app(self) -> msal.ConfidentialClientApplication:
        """The MSAL application (built once).

        :raises GraphAuthError: when MSAL rejects the authority or discovery fails.
        :raises GraphRetriableError: when the identity platform could not be reached.
        :raises ConfigError: when a PEM file cannot be read.
        """
        with self._lock:
            if self._app is None:
                import msal

                creds = self.credentials
                kwargs: dict[str, Any] = {}
                if not creds.instance_discovery:
                    kwargs["instance_discovery"] = False
                try:
                    self._app = msal.ConfidentialClientApplication(
                        creds.client_id,
                        authority=creds.authority,
                        client_credential=self._client_credential(),
                        http_client=self._http_client,
                        token_cache=msal.TokenCache(),
                        **kwargs,
                    )
                except (GraphError, ConfigError):
                    raise
                except ValueError as exc:
                    raise GraphAuthError(
                        f"cannot use authority for tenant {creds.tenant_id}: {_first_line(str(exc))}"
                    ) from None
                log.debug("built MSAL app for client %s (certificate=%s)", creds.client_id,
                          creds.uses_certificate)
            return self._app

    def token(self) -> str:
        """A valid access token for the Graph ``.default`` scope (cached by MSAL).

        The token MSAL returned is reused without asking MSAL again until fewer than
        :data:`RENEW_BEFORE` seconds of its lifetime remain (MSAL's own cache lookup, done
        on every request before, cost a measurable share of a delta run's CPU).

        :raises GraphAuthError: when the identity platform rejects the credentials.
        :raises GraphRetriableError: when it could not be reached or failed transiently.
        """
        current = self._current
        if current is not None and time.monotonic() < current[1]:
            return current[0]
        app = self.app()
        try:
            with self._token_lock:
                result = app.acquire_token_for_client(scopes=[self.credentials.scope])
        except GraphError:
            raise
        except Exception as exc:  # msal raises requests.HTTPError for 5xx, ValueError for non-JSON
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status is None:  # msal's NormalizedResponse raises MsalServiceError("HTTP Error: 503")
                match = re.search(r"HTTP Error: (\d{3})", str(exc))
                status = int(match.group(1)) if match else None
            if status is not None and status >= 500:
                raise GraphRetriableError(
                    "token endpoint failed", status=status, code="TokenEndpointError"
                ) from None
            raise GraphAuthError(f"token request failed: {type(exc).__name__}", status=status) from None
        if "access_token" in result:
            token = str(result["access_token"])
            expires_in = result.get("expires_in")
            if isinstance(expires_in, int | float) and expires_in > RENEW_BEFORE:
                self._current = (token, time.monotonic() + float(expires_in) - RENEW_BEFORE)
            else:
                self._current = None
            return token
        raise self._auth_error(result)

    def _auth_error(self, result: Mapping[str, Any]) -> GraphAuthError:
        error = str(result.get("error") or "unknown_error")
        codes = result.get("error_codes") or []
        description = _first_line(str(result.get("error_description") or ""))
        secret = self.credentials.client_secret
        if secret and secret in description:
            description = description.replace(secret, "***")
        parts = [error]
        if codes:
            parts.append(f"AADSTS{codes[0]}")
        if description:
            parts.append(description)
        return GraphAuthError(
            "token request failed: " + " ".join(parts),
            code=error,
            request_id=str(result.get("correlation_id") or "") or None,
        )

    def invalidate(self, token: str) -> None:
        """Drop ``token`` from MSAL's cache so the next :meth:`token` call asks for a new one."""
        current = self._current
        if current is not None and current[0] == token:
            self._current = None
        with self._lock:
            app = self._app
        if app is None:
            return
        cache = app.token_cache
        import msal

        for entry in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            if entry.get("secret") == token:
                cache.remove_at(entry)
                log.info("dropped a rejected Graph access token from the cache")

    def close(self) -> None:
        """Close the HTTP sessions."""
        self._transport.close()


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""
