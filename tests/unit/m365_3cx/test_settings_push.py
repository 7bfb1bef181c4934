"""The ``push`` settings section (Graph change notifications)."""

from __future__ import annotations

import pytest

from m365_3cx.errors import ConfigError
from m365_3cx.settings import Settings


def test_push_is_off_by_default_and_round_trips() -> None:
    settings = Settings()
    assert settings.push.enabled is False and settings.push.renew_margin_minutes == 360
    on = Settings.from_mapping({"push": {"enabled": True, "notification_url": "https://sync.example.com/n",
                                         "lifecycle_url": "https://sync.example.com/l", "renew_margin_minutes": 60}})
    assert Settings.from_mapping(on.to_dict()) == on


def test_push_needs_https_urls_when_enabled() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_mapping({"push": {"enabled": True, "notification_url": "http://sync.example.com/n",
                                        "renew_margin_minutes": 5, "url": "x"}})
    message = str(err.value)
    assert "push.notification_url: must be an https:// URL" in message
    assert "push.renew_margin_minutes" in message
    assert "push.url: unknown key" in message
    with pytest.raises(ConfigError, match=r"push\.enabled: needs push\.notification_url and push\.lifecycle_url"):
        Settings.from_mapping({"push": {"enabled": True, "notification_url": "https://sync.example.com/n"}})
