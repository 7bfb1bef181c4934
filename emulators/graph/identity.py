"""Identity platform: OIDC discovery and the client-credentials token endpoint.

Secrets, assertions and access tokens are never logged.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

from fastapi import APIRouter, Request

from emulators.graph import urls
from emulators.graph.errors import IdentityError, JSONResponse

if TYPE_CHECKING:
    from emulators.graph.state import TenantBackend

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
APP_CERT_FILE = "graph-app-cert.pem"
APP_KEY_FILE = "graph-app-key.pem"

router = APIRouter()


def ensure_app_certificate(tls_dir: str | Path) -> tuple[Path, Path]:
    """Create (once) the registered app's self-signed RSA 2048 certificate and key in ``tls_dir``.

    :return: (certificate PEM path, private key PEM path).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    folder = Path(tls_dir)
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / APP_CERT_FILE, folder / APP_KEY_FILE
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "m365-3cx-sync emulator app")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=730))
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def certificate_der(cert_pem_path: str | Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(Path(cert_pem_path).read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def _backend(request: Request) -> TenantBackend:
    return request.app.state.backend


def _base(request: Request) -> str:
    return urls.base(request)


def _check_tenant(backend: TenantBackend, tenant: str, error: str) -> None:
    if tenant.lower() not in (backend.app.tenant_id.lower(), backend.app.domain.lower()):
        raise IdentityError(400, error, 90002, f"Tenant '{tenant}' not found. Check to make sure you have the "
                                               "correct tenant ID and are signing into the correct cloud.")


@router.get("/common/discovery/instance")
async def instance_discovery(request: Request) -> JSONResponse:
    """What msal asks when ``instance_discovery`` is left on for a non-well-known host."""
    base = _base(request)
    endpoint = request.query_params.get("authorization_endpoint", "")
    segments = [p for p in urlsplit(endpoint).path.split("/") if p]
    tenant = segments[0] if segments else _backend(request).app.tenant_id
    host = urlsplit(base).netloc
    return JSONResponse({
        "tenant_discovery_endpoint": f"{base}/{tenant}/v2.0/.well-known/openid-configuration",
        "api-version": "1.1",
        "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
    })


@router.get("/{tenant}/v2.0/.well-known/openid-configuration")
async def openid_configuration(tenant: str, request: Request) -> JSONResponse:
    backend = _backend(request)
    _check_tenant(backend, tenant, "invalid_tenant")
    base, tid = _base(request), backend.app.tenant_id
    return JSONResponse({
        "token_endpoint": f"{base}/{tid}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": f"{base}/{tid}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": f"{base}/{tid}/v2.0",
        "request_uri_parameter_supported": False,
        "userinfo_endpoint": f"{base}/oidc/userinfo",
        "authorization_endpoint": f"{base}/{tid}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{base}/{tid}/oauth2/v2.0/devicecode",
        "http_logout_supported": True,
        "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{base}/{tid}/oauth2/v2.0/logout",
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid", "roles"],
        "tenant_region_scope": "WW",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": urlsplit(base).netloc,
        "rbac_url": "https://pas.windows.net",
    }, headers={"Cache-Control": "max-age=86400, private"})


@router.get("/{tenant}/discovery/v2.0/keys")
async def jwks(tenant: str, request: Request) -> JSONResponse:
    """Access tokens are opaque, so there are no signing keys to publish."""
    _check_tenant(_backend(request), tenant, "invalid_tenant")
    return JSONResponse({"keys": []})


def _form(raw: bytes) -> dict[str, str]:
    parsed = parse_qs(raw.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items() if v}


def _basic_auth(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
    except (ValueError, binascii.Error):
        raise IdentityError(401, "invalid_client", 7000215, "Invalid client secret provided.") from None
    return unquote_plus(user), unquote_plus(password)


def _check_assertion(backend: TenantBackend, assertion: str, audiences: list[str]) -> None:
    import jwt
    from cryptography import x509

    def bad(reason: str) -> IdentityError:
        return IdentityError(401, "invalid_client", 700027,
                             f"Client assertion failed signature validation. [Reason - {reason}]")

    der = backend.app.certificate_der
    thumbs = backend.app.thumbprints()
    if der is None or thumbs is None:
        raise bad("No certificate is registered for the application.")
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        raise bad("The client assertion is not a well-formed JWT.") from None
    sha256 = header.get("x5t#S256")
    sha1 = header.get("x5t")
    if sha256 is not None:
        matched = str(sha256).rstrip("=") == thumbs[1]
    elif sha1 is not None:
        matched = str(sha1).rstrip("=") == thumbs[0]
    else:
        matched = False
    if not matched:
        raise bad("The key was not found.")
    key = x509.load_der_x509_certificate(der).public_key()
    try:
        claims: dict[str, Any] = jwt.decode(
            assertion, key=key, algorithms=["PS256", "RS256"], audience=audiences,
            options={"require": ["exp", "aud", "iss", "sub"]}, leeway=60,
        )
    except jwt.ExpiredSignatureError:
        raise IdentityError(401, "invalid_client", 500133,
                            "Assertion is not within its valid time range.") from None
    except jwt.InvalidAudienceError:
        raise bad("The audience claim is not the token endpoint.") from None
    except jwt.PyJWTError as exc:
        raise bad(type(exc).__name__) from None
    if claims.get("iss") != backend.app.client_id or claims.get("sub") != backend.app.client_id:
        raise bad("The issuer and subject must be the client id.")


@router.post("/{tenant}/oauth2/v2.0/token")
async def token(tenant: str, request: Request) -> JSONResponse:
    backend = _backend(request)
    _check_tenant(backend, tenant, "invalid_request")
    form = _form(await request.body())
    basic = _basic_auth(request)
    grant = form.get("grant_type")
    if not grant:
        raise IdentityError(400, "invalid_request", 900144,
                            "The request body must contain the following parameter: 'grant_type'.")
    if grant != "client_credentials":
        raise IdentityError(400, "unsupported_grant_type", 70003,
                            f"The app requested an unsupported grant type '{grant}'.")
    client_id = form.get("client_id") or (basic[0] if basic else "")
    if not client_id:
        raise IdentityError(400, "invalid_request", 900144,
                            "The request body must contain the following parameter: 'client_id'.")
    if client_id.lower() != backend.app.client_id.lower():
        raise IdentityError(400, "unauthorized_client", 700016,
                            f"Application with identifier '{client_id}' was not found in the directory "
                            f"'{backend.app.domain}'. This can happen if the application has not been "
                            "installed by the administrator of the tenant.")
    scopes = [s for s in form.get("scope", "").split() if s.lower() not in RESERVED_SCOPES]
    if not scopes:
        raise IdentityError(400, "invalid_request", 900144,
                            "The request body must contain the following parameter: 'scope'.")
    if len(scopes) != 1 or not scopes[0].endswith("/.default"):
        raise IdentityError(400, "invalid_scope", 70011,
                            f"The provided request must include a 'scope' input parameter. The provided value "
                            f"for the input parameter 'scope' is not valid. The scope {' '.join(scopes)} is not "
                            "valid. The scope must be in the format of a resource followed by /.default.")
    secret = form.get("client_secret") or (basic[1] if basic else None)
    assertion = form.get("client_assertion")
    if secret:
        if not secrets.compare_digest(secret.encode(), backend.app.client_secret.encode()):
            raise IdentityError(401, "invalid_client", 7000215,
                                f"Invalid client secret provided. Ensure the secret being sent in the request "
                                f"is the client secret value, not the client secret ID, for a secret added to "
                                f"app '{backend.app.client_id}'.")
    elif assertion and form.get("client_assertion_type") == ASSERTION_TYPE:
        base = _base(request)
        tenants = {tenant, backend.app.tenant_id, backend.app.domain}
        audiences = [f"{host}/{t}/oauth2/v2.0/token" for host in (base, "https://login.microsoftonline.com")
                     for t in sorted(tenants)]
        _check_assertion(backend, assertion, audiences)
    else:
        raise IdentityError(401, "invalid_client", 7000216,
                            "'client_assertion', 'client_secret' or 'request' is required for the "
                            "'client_credentials' grant type.")
    access_token, lifetime = backend.tokens.issue(backend.app.client_id)
    return JSONResponse(
        {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": access_token},
        headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"},
    )
