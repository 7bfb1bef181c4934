"""Where the settings come from, and the warning when an environment variable hides a UI edit."""

from __future__ import annotations

import json

from m365_3cx.console.settings_view import Source, describe_settings

ENV = "EnvironmentVariablesBackend"
DB = "MetastoreBackend"


def test_env_value_hiding_a_different_ui_value_is_a_warning() -> None:
    env = json.dumps({"numbering": {"policy": "pool"}})
    ui = json.dumps({"numbering": {"policy": "pool"}, "timezone": "Europe/Berlin"})
    view = describe_settings([Source(ENV, env), Source(DB, ui)])
    assert view["source"] == ENV and "environment variable" in view["source_label"]
    assert len(view["warnings"]) == 1 and "Admin → Variables" in view["warnings"][0]
    assert view["effective"]["numbering"]["policy"] == "pool" and view["effective"]["timezone"] == "UTC"
    assert view["overrides"] == ["numbering.policy"]


def test_same_value_in_both_places_is_not_a_warning_and_ui_alone_is_the_source() -> None:
    same = json.dumps({"timezone": "Europe/Berlin"})
    assert describe_settings([Source(ENV, same), Source(DB, " " + same)])["warnings"] == []
    view = describe_settings([Source(ENV, None), Source(DB, same)])
    assert view["source"] == DB and view["warnings"] == [] and view["overrides"] == ["timezone"]


def test_no_value_means_defaults_and_an_invalid_one_is_explained() -> None:
    view = describe_settings([Source(ENV, None), Source(DB, None)])
    assert view["source"] is None and view["effective"]["numbering"]["policy"] and view["error"] is None
    bad = describe_settings([Source(ENV, json.dumps({"numbering": {"policy": "dice"}}))])
    assert bad["effective"] is None and "numbering.policy" in bad["error"]


def test_secret_looking_keys_are_masked() -> None:
    from m365_3cx.console.settings_view import _mask

    assert _mask({"alerts": {"smtp_password": "hunter2", "to": ["a@b"]}}) == {
        "alerts": {"smtp_password": "***", "to": ["a@b"]}}
