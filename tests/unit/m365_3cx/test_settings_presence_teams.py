"""``presence.teams``: defaults, the mapping merged over its defaults, and every validation problem."""

from __future__ import annotations

import pytest

from m365_3cx.errors import ConfigError
from m365_3cx.settings import TEAMS_MAPPING_DEFAULTS, Settings


def test_teams_presence_is_off_by_default_with_a_documented_mapping() -> None:
    teams = Settings().presence.teams
    assert teams.enabled is False
    assert dict(teams.mapping) == dict(TEAMS_MAPPING_DEFAULTS)
    assert teams.mapping["Busy"] == "Away" and teams.mapping["Available"] is None
    assert (teams.max_age_minutes, teams.requests_per_30s) == (15, 100)


def test_mapping_is_merged_over_the_defaults_and_round_trips() -> None:
    s = Settings.from_mapping({"presence": {"enabled": True, "teams": {
        "enabled": True, "mapping": {"InACall": "Custom 1", "Busy": None}, "requests_per_30s": 50}}})
    mapping = s.presence.teams.mapping
    assert (mapping["InACall"], mapping["Busy"], mapping["DoNotDisturb"]) == ("Custom 1", None, "Out of office")
    assert Settings.from_mapping(s.to_dict()) == s
    with pytest.raises(TypeError):
        mapping["Busy"] = "Away"  # type: ignore[index]


@pytest.mark.parametrize(("teams", "problem"), [
    ([], "presence.teams: must be an object"),
    ({"enabled": "yes"}, "presence.teams.enabled: must be true or false"),
    ({"mapping": {"Lunch": "Away"}}, "presence.teams.mapping.Lunch: not a Graph presence"),
    ({"mapping": {"Busy": "Lunch"}}, "presence.teams.mapping.Busy: must be one of Available"),
    ({"mapping": "Busy"}, "presence.teams.mapping: must be an object"),
    ({"max_age_minutes": 0}, "presence.teams.max_age_minutes: must be >= 1"),
    ({"requests_per_30s": 1500}, "presence.teams.requests_per_30s: must be <= 1000"),
    ({"poll": True}, "presence.teams.poll: unknown key"),
])
def test_every_problem_is_named_with_its_key(teams: object, problem: str) -> None:
    with pytest.raises(ConfigError, match="invalid settings") as info:
        Settings.from_mapping({"presence": {"enabled": True, "teams": teams}})
    assert problem in str(info.value)


def test_teams_presence_needs_calendar_presence_on() -> None:
    with pytest.raises(ConfigError, match=r"presence\.teams\.enabled: needs presence\.enabled"):
        Settings.from_mapping({"presence": {"teams": {"enabled": True}}})
