"""Provider metadata: registers the connection types and their UI forms with Airflow.

Declared under the ``apache_airflow_provider`` entry point in ``pyproject.toml``. The
connection forms are YAML-first ``conn-fields`` / ``ui-field-behaviour`` (Airflow 3), so the
API server renders them without importing the hooks.
"""

from __future__ import annotations

from typing import Any

import m365_3cx


def _text(label: str, description: str, default: Any = None, sensitive: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": ["string", "null"]}
    if default is not None:
        schema["default"] = default
    if sensitive:
        schema["format"] = "password"
    return {"label": label, "schema": schema, "description": description}


def get_provider_info() -> dict[str, Any]:
    """Return the provider description Airflow reads through the entry point."""
    return {
        "package-name": "m365-3cx-sync",
        "name": "Microsoft 365 to 3CX sync",
        "description": "Keeps a 3CX V20 phone system in step with Microsoft 365 (Entra ID, Outlook).",
        "versions": [m365_3cx.__version__],
        "connection-types": [
            {
                "connection-type": "m365_graph",
                "hook-class-name": "m365_3cx.airflow.hooks.GraphHook",
                "hook-name": "Microsoft 365 (Graph, app-only)",
                "conn-fields": {
                    "tenant_id": _text("Tenant ID", "Directory (tenant) id or primary domain."),
                    "authority": _text(
                        "Authority host",
                        "Identity platform host; change only for sovereign clouds.",
                        "https://login.microsoftonline.com",
                    ),
                    "base_url": _text(
                        "Graph base URL", "Microsoft Graph root, without /v1.0.", "https://graph.microsoft.com"
                    ),
                    "certificate_data": _text(
                        "Certificate (PEM)", "Public certificate uploaded to the app; instead of a secret."
                    ),
                    "private_key": _text("Certificate private key (PEM)", "Key of that certificate.",
                                         sensitive=True),
                    "certificate_path": _text("Certificate path", "PEM file on the workers (alternative)."),
                    "private_key_path": _text("Private key path", "PEM key file on the workers (alternative)."),
                    "ca_bundle": _text("CA bundle path", "Extra CA file for TLS-inspecting proxies."),
                    "disable_instance_discovery": {
                        "label": "Disable instance discovery",
                        "schema": {"type": ["boolean", "null"], "default": None},
                        "description": "Needed for authority hosts Microsoft does not know.",
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "schema", "port", "extra"],
                    "relabeling": {"login": "Client ID", "password": "Client secret"},
                    "placeholders": {"login": "00000000-0000-0000-0000-000000000000"},
                },
            },
            {
                "connection-type": "threecx_xapi",
                "hook-class-name": "m365_3cx.airflow.hooks.ThreeCXHook",
                "hook-name": "3CX V20 Configuration API (XAPI)",
                "conn-fields": {
                    "ca_bundle": _text("CA bundle path", "CA file when the PBX uses a private CA."),
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "extra"],
                    "relabeling": {"host": "PBX base URL", "login": "Client ID", "password": "API key"},
                    "placeholders": {"host": "https://pbx.example.com:5001", "login": "900"},
                },
            },
        ],
    }
