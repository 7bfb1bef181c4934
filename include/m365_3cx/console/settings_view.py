"""The effective settings and where they come from, for the console (pure: no Airflow import).

Airflow resolves a Variable through its secrets backends in order (environment variables
``AIRFLOW_VAR_*`` first, then any configured backend, then the metadata database that the UI
edits); the first one that has it wins. The plugin asks each backend and hands the answers
here. When a value from an earlier backend hides a different value in the metadata database,
an edit in the UI does nothing: the console says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from m365_3cx.errors import ConfigError
from m365_3cx.settings import Settings

__all__ = ["SECRET_WORDS", "Source", "describe_settings"]

#: Keys whose values the console never shows.
SECRET_WORDS: Final = ("password", "secret", "token", "key", "credential")

#: Backend class name -> what an operator calls it.
_LABELS: Final = {
    "EnvironmentVariablesBackend": "environment variable AIRFLOW_VAR_M365_3CX_SETTINGS",
    "MetastoreBackend": "Airflow Variable in the metadata database (Admin → Variables)",
}


@dataclass(frozen=True)
class Source:
    """One secrets backend's answer for the settings Variable.

    :param backend: the backend's class name (e.g. ``EnvironmentVariablesBackend``).
    :param value: the raw text it holds, or ``None`` when it has no such Variable.
    """

    backend: str
    value: str | None


def _mask(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: ("***" if any(w in str(k).lower() for w in SECRET_WORDS) and v not in (None, "") else _mask(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def _parsed(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def describe_settings(sources: Sequence[Source]) -> dict[str, Any]:
    """What the console shows about the settings.

    :param sources: every backend's answer, in Airflow's lookup order.
    :returns: ``{"source", "source_label", "effective", "error", "warnings", "backends", "overrides"}``:
        ``effective`` the validated settings with defaults filled in (secret-looking keys masked),
        ``error`` the validation message when the effective value is invalid, ``overrides`` the
        keys given explicitly (everything else is a default).
    """
    chosen = next((s for s in sources if s.value is not None), None)
    warnings: list[str] = []
    if chosen is not None:
        hidden = [s for s in sources[sources.index(chosen) + 1:] if s.value is not None]
        for other in hidden:
            if _parsed(other.value) != _parsed(chosen.value):
                warnings.append(
                    f"The {_LABELS.get(other.backend, other.backend)} holds a different value that is ignored: "
                    f"the {_LABELS.get(chosen.backend, chosen.backend)} takes precedence, so edits there have "
                    "no effect. Remove one of them.")
    error = None
    effective: dict[str, Any] | None = None
    overrides: list[str] = []
    try:
        settings = Settings.from_json(chosen.value if chosen else None)
        effective = _mask(settings.to_dict())
        raw = _parsed(chosen.value) if chosen else None
        if isinstance(raw, Mapping):
            for section, body in raw.items():
                if isinstance(body, Mapping):
                    overrides.extend(f"{section}.{key}" for key in body)
                else:
                    overrides.append(str(section))
    except ConfigError as exc:
        error = str(exc)
    return {
        "source": chosen.backend if chosen else None,
        "source_label": _LABELS.get(chosen.backend, chosen.backend) if chosen else "none (all defaults)",
        "effective": effective, "error": error, "warnings": warnings, "overrides": sorted(overrides),
        "backends": [{"backend": s.backend, "label": _LABELS.get(s.backend, s.backend),
                      "has_value": s.value is not None} for s in sources],
    }
