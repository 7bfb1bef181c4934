"""HTML of the ops console: Jinja2 templates (``console/templates``) and the filters they use.

Pure presentation: takes the dicts of :mod:`m365_3cx.console.queries` and returns HTML text.
Autoescaping is on for every template; nothing the page shows is trusted markup. No external
assets (the console must work without internet): styles, the auto-refresh script and the
chart (inline SVG) are part of the page.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape

__all__ = ["airflow_run_url", "airflow_task_url", "chart", "render"]

_ACTION_WORDS: Final = {"create": "create", "update": "update", "disable": "disable", "delete": "delete",
                        "set_profile": "set status"}


def _env() -> Environment:
    env = Environment(loader=PackageLoader("m365_3cx.console", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=num, age=age, when=when, counts=counts_text, value=value_text, action=action_text,
                       qs=query_string)
    env.globals.update(run_url=airflow_run_url, task_url=airflow_task_url, chart=chart, failed_task=failed_task)
    return env


_ENV: Environment | None = None


def render(template: str, **context: Any) -> str:
    """Render ``template`` (a file under ``console/templates``) with ``context``."""
    global _ENV
    if _ENV is None:
        _ENV = _env()
    return _ENV.get_template(template).render(**context)


def num(value: Any) -> str:
    """``12345`` -> ``12,345``; non-numbers as they are, ``None`` as an en dash."""
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else f"{value:,.2f}"
    return str(value)


def age(seconds: float | None) -> str:
    """A duration for people: ``45 s``, ``12 min``, ``3 h 05 min``, ``2 d 4 h``; ``never`` for ``None``."""
    if seconds is None:
        return "never"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def when(iso: str | None) -> str:
    """An ISO timestamp as ``2026-12-02 01:30:05 UTC``; an en dash for none."""
    if not iso:
        return "\u2013"
    try:
        value = dt.datetime.fromisoformat(iso)
    except ValueError:
        return str(iso)
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def counts_text(counts: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """A run's counts as ``[(section, "3 created · 1 failed"), ...]``, zeros left out."""
    out: list[tuple[str, str]] = []

    def words(mapping: Mapping[str, Any]) -> str:
        parts = []
        for key, val in mapping.items():
            if isinstance(val, Mapping):
                inner = words(val)
                if inner:
                    parts.append(f"{key.replace('_', ' ')} ({inner})")
            elif isinstance(val, bool):
                if val:
                    parts.append(key.replace("_", " "))
            elif isinstance(val, int | float):
                if val:
                    parts.append(f"{num(val)} {key.replace('_', ' ')}")
            elif isinstance(val, list):
                if val:
                    parts.append(f"{key.replace('_', ' ')}: {', '.join(str(v) for v in val[:10])}"
                                 + (f" (+{len(val) - 10})" if len(val) > 10 else ""))
            elif val not in (None, ""):
                parts.append(f"{key.replace('_', ' ')} {val}")
        return " · ".join(parts)

    for key, val in (counts or {}).items():
        text = words(val) if isinstance(val, Mapping) else words({key: val})
        if text:
            out.append((key.replace("_", " "), text))
    return out


def value_text(value: Any) -> str:
    """A field value for a change row: ``(empty)`` for none, lists joined, booleans as yes/no."""
    if value is None or value == "":
        return "(empty)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(value_text(v) for v in value) or "(empty)"
    if isinstance(value, Mapping):
        return " · ".join(f"{k}: {value_text(v)}" for k, v in value.items()) or "(empty)"
    return str(value)


def action_text(action: str | None) -> str:
    return _ACTION_WORDS.get(action or "", (action or "").replace("_", " "))


def query_string(params: Mapping[str, Any], **changes: Any) -> str:
    """``?a=1&b=2`` from ``params`` updated with ``changes`` (``None``/empty values dropped)."""
    merged = {**params, **changes}
    clean = {k: v for k, v in merged.items() if v not in (None, "", False)}
    return "?" + urlencode(clean) if clean else "?"


def airflow_run_url(ui_base: str, dag_id: str, run_id: str) -> str:
    """The Airflow 3 UI page of a DAG run: ``/dags/{dag_id}/runs/{run_id}``."""
    return f"{ui_base.rstrip('/')}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def airflow_task_url(ui_base: str, dag_id: str, run_id: str, task_id: str) -> str:
    """The Airflow 3 UI page of a task instance (it opens on its log)."""
    return f"{airflow_run_url(ui_base, dag_id, run_id)}/tasks/{quote(task_id, safe='')}"


def failed_task(last_error: str | None) -> str | None:
    """The task id at the start of ``sync_runs.last_error`` (``"<task_id>: <reason>"``)."""
    if not last_error or ": " not in last_error:
        return None
    task = last_error.split(": ", 1)[0].strip()
    return task if task and " " not in task else None


def chart(days: Sequence[Mapping[str, Any]], width: int = 720, height: int = 160) -> dict[str, Any]:
    """Bar geometry of the changes-per-day chart (stacked ``ok`` / ``failed`` / ``other``)."""
    top = max([d["ok"] + d["failed"] + d["other"] for d in days] or [0]) or 1
    plot_h = height - 30
    slot = width / max(1, len(days))
    bars = []
    for i, d in enumerate(days):
        y = plot_h + 5.0
        segments = []
        for kind in ("ok", "other", "failed"):
            h = d[kind] / top * plot_h
            if h > 0:
                y -= h
                segments.append({"kind": kind, "y": round(y, 1), "h": round(h, 1)})
        bars.append({"x": round(i * slot + 1, 1), "w": round(max(1.0, slot - 2), 1), "segments": segments,
                     "title": f"{d['day']}: {num(d['ok'])} ok, {num(d['failed'])} failed"
                              + (f", {num(d['other'])} other" if d["other"] else ""),
                     "label": d["day"][5:] if i in (0, len(days) // 2, len(days) - 1) else None,
                     "anchor": "end" if i == len(days) - 1 and i else "start",
                     "label_x": round((i + 1) * slot, 1) if i == len(days) - 1 and i else round(i * slot + 1, 1)})
    return {"width": width, "height": height, "top": top, "bars": bars, "base": plot_h + 5,
            "total": sum(d["ok"] + d["failed"] + d["other"] for d in days)}
