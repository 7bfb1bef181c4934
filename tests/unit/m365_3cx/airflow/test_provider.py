"""The provider entry point registers both connection types with their forms."""

from __future__ import annotations

from importlib.metadata import entry_points

from m365_3cx.airflow.provider import get_provider_info


def test_entry_point_is_installed() -> None:
    points = {ep.value for ep in entry_points(group="apache_airflow_provider")}
    assert "m365_3cx.airflow.provider:get_provider_info" in points


def test_connection_types_and_sensitive_fields() -> None:
    info = get_provider_info()
    types = {c["connection-type"]: c for c in info["connection-types"]}
    assert set(types) == {"m365_graph", "threecx_xapi"}
    graph_fields = types["m365_graph"]["conn-fields"]
    assert graph_fields["private_key"]["schema"]["format"] == "password"
    assert types["m365_graph"]["ui-field-behaviour"]["relabeling"]["password"] == "Client secret"
    assert types["threecx_xapi"]["hook-class-name"] == "m365_3cx.airflow.hooks.ThreeCXHook"


def test_airflow_sees_the_connection_types() -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert {"m365_graph", "threecx_xapi"} <= set(manager.hooks)
    assert manager.field_behaviours["m365_graph"]["relabeling"]["login"] == "Client ID"
