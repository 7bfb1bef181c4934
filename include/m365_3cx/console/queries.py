"""What the ops console shows, read from the staging database only (no Airflow, no 3CX, no Graph).

Every function takes an open :class:`~sqlalchemy.engine.Connection` and returns plain dicts
and lists that the HTML pages and the JSON API both render. Lists are paginated with
``LIMIT``/``OFFSET`` over indexed orderings (:class:`Page`): a page fetches one row more than
it shows to know whether another page follows, and no list is ever read whole.

Tables that other features add (the go-live switch ``sync_control``, approvals
``sync_approvals``, the on-demand trace ``sync_trace``) are read when the schema declares them;
until then their parts of the console say "not available".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from m365_3cx.staging import schema
from m365_3cx.staging.schema import (
    extension_map,
    phonebook_map,
    presence_state,
    stg_users,
    sync_audit,
    sync_notes,
    sync_plan,
    sync_runs,
    tgt_extensions,
)

__all__ = [
    "FEATURES",
    "PLAN_KEY_SUFFIXES",
    "Feature",
    "Page",
    "approvals",
    "change_set",
    "changes_per_day",
    "find_users",
    "health",
    "notes",
    "pending_plan",
    "protected_users",
    "run_detail",
    "runs",
    "user_history",
    "user_scope",
    "writes_switch",
]


@dataclass(frozen=True)
class Feature:
    """One synced feature as the health header shows it.

    :param name: key (``users``, ``phonebook``, ``statuses``).
    :param label: heading.
    :param dag_ids: the DAGs whose successful, non-dry runs bring the feature up to date.
    :param object_type: ``sync_plan``/``sync_audit`` object type of its changes.
    :param stale_setting: attribute of ``Settings.alerts`` with the staleness threshold (minutes).
    :param default_stale_minutes: threshold when the settings have none.
    """

    name: str
    label: str
    dag_ids: tuple[str, ...]
    object_type: str
    stale_setting: str
    default_stale_minutes: int


FEATURES: Final[tuple[Feature, ...]] = (
    Feature("users", "Users → extensions", ("m365_3cx_full_sync", "m365_3cx_delta"), "extension",
            "stale_users_minutes", 90),
    Feature("phonebook", "Contacts → phonebook", ("m365_3cx_full_sync", "m365_3cx_delta"), "contact",
            "stale_phonebook_minutes", 90),
    Feature("statuses", "Calendar → 3CX status", ("m365_3cx_hourly", "m365_3cx_delta"), "presence",
            "stale_status_minutes", 180),
)

#: ``sync_plan.run_key`` = run key + one of these for the phonebook and the presence plans (both 9 characters).
PLAN_KEY_SUFFIXES: Final = ("#contacts", "#presence")

#: ``sync_audit``/``sync_plan`` object types whose ``object_key`` is a Graph user id.
USER_OBJECT_TYPES: Final = ("extension", "presence")


@dataclass(frozen=True)
class Page:
    """A page of a list: ``number`` from 1, ``size`` rows.

    :param number: page number (1 = first).
    :param size: rows per page (clamped to 1..500).
    """

    number: int = 1
    size: int = 50

    @classmethod
    def of(cls, number: object = 1, size: object = 50) -> Page:
        """A page from untrusted query parameters (bad values fall back to the defaults)."""
        def as_int(value: object, default: int) -> int:
            try:
                return int(str(value))
            except (TypeError, ValueError):
                return default

        return cls(max(1, as_int(number, 1)), min(500, max(1, as_int(size, 50))))

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    def apply(self, query: sa.Select[Any]) -> sa.Select[Any]:
        """The query limited to this page plus one row (to see whether a next page exists)."""
        return query.limit(self.size + 1).offset(self.offset)

    def wrap(self, rows: Sequence[Any]) -> dict[str, Any]:
        """``{"items", "page", "size", "has_next"}`` from rows fetched with :meth:`apply`."""
        return {"items": list(rows[: self.size]), "page": self.number, "size": self.size,
                "has_next": len(rows) > self.size}


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _table(name: str) -> sa.Table | None:
    return schema.metadata.tables.get(name)


def _has_table(conn: Connection, name: str) -> bool:
    """Whether the schema declares table ``name`` (``create_schema`` has created every declared table)."""
    return _table(name) is not None


def _run_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    started, finished = row["started_at"], row["finished_at"]
    return {
        "took_seconds": (finished - started).total_seconds() if started and finished else None,
        "run_key": row["run_key"], "dag_id": row["dag_id"], "run_id": row["run_id"], "mode": row["mode"],
        "dry_run": bool(row["dry_run"]), "dry_reason": row.get("dry_reason"), "status": row["status"],
        "started_at": _iso(row["started_at"]), "finished_at": _iso(row["finished_at"]),
        "counts": row["counts"] or {}, "last_error": row["last_error"],
    }


def _run_columns() -> list[sa.ColumnElement[Any]]:
    return list(sync_runs.c)


# ------------------------------------------------------------------------------------------- health


def writes_switch(conn: Connection) -> dict[str, Any]:
    """The go-live switch: ``{"available", "enabled", "changed_at", "changed_by"}``.

    ``available`` is false while the staging schema has no ``sync_control`` table (then the
    sync has no switch and every run that is not a dry run writes).
    """
    control = _table("sync_control")
    if control is None or not _has_table(conn, "sync_control"):
        return {"available": False, "enabled": True, "changed_at": None, "changed_by": None}
    row = conn.execute(sa.select(control).where(control.c.name == "writes_enabled")).mappings().first()
    if row is None:
        return {"available": True, "enabled": False, "changed_at": None, "changed_by": None}
    return {"available": True, "enabled": bool(row["enabled"]), "changed_at": _iso(row["changed_at"]),
            "changed_by": row["changed_by"]}


def health(conn: Connection, now: dt.datetime, stale_minutes: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Per feature: the last successful real run and its age, staleness, failures of the last 24 h.

    :param now: aware UTC "now".
    :param stale_minutes: threshold per feature name (``0`` = never stale); defaults per :data:`FEATURES`.
    :returns: ``{"now", "writes", "features": [...], "running": [...]}``.
    """
    thresholds = dict(stale_minutes or {})
    since = now - dt.timedelta(hours=24)
    switch = writes_switch(conn)
    not_live = switch["available"] and not switch["enabled"]
    features = []
    for feature in FEATURES:
        in_feature = sync_runs.c.dag_id.in_(feature.dag_ids)
        last_ok = conn.execute(
            sa.select(*_run_columns()).where(in_feature, sync_runs.c.status == "success",
                                             sync_runs.c.dry_run.is_(False))
            .order_by(sync_runs.c.started_at.desc()).limit(1)
        ).mappings().first()
        last = conn.execute(
            sa.select(*_run_columns()).where(in_feature).order_by(sync_runs.c.started_at.desc()).limit(1)
        ).mappings().first()
        failures = conn.execute(
            sa.select(sa.func.count()).select_from(sync_runs)
            .where(in_feature, sync_runs.c.status == "failed", sync_runs.c.started_at >= since)
        ).scalar_one()
        last_dry = conn.execute(
            sa.select(*_run_columns()).where(in_feature, sync_runs.c.status == "success",
                                             sync_runs.c.dry_run.is_(True))
            .order_by(sync_runs.c.started_at.desc()).limit(1)
        ).mappings().first()
        limit = int(thresholds.get(feature.name, feature.default_stale_minutes))
        at = (last_ok["finished_at"] or last_ok["started_at"]) if last_ok else None
        age = (now - at).total_seconds() if at is not None else None
        # Not live yet: every run is dry and nothing is expected to be in sync; NOT LIVE says it all.
        stale = not not_live and limit > 0 and (age is None or age > limit * 60)
        dry_at = (last_dry["finished_at"] or last_dry["started_at"]) if last_dry else None
        features.append({
            "name": feature.name, "label": feature.label, "dag_ids": list(feature.dag_ids),
            "last_success": _run_dict(last_ok) if last_ok else None,
            "last_success_at": _iso(at), "age_seconds": age, "stale_after_minutes": limit, "stale": stale,
            "failures_24h": failures, "last_run": _run_dict(last) if last else None,
            "last_dry_run": _run_dict(last_dry) if last_dry else None, "last_dry_run_at": _iso(dry_at),
            "dry_age_seconds": (now - dry_at).total_seconds() if dry_at is not None else None,
        })
    running = conn.execute(
        sa.select(*_run_columns()).where(sync_runs.c.status == "running")
        .order_by(sync_runs.c.started_at.desc()).limit(10)
    ).mappings().all()
    return {"now": _iso(now), "writes": switch, "features": features,
            "running": [_run_dict(r) for r in running]}


# ------------------------------------------------------------------------------------------- runs


def runs(conn: Connection, page: Page, *, dag_id: str | None = None, status: str | None = None,
         dry: bool | None = None) -> dict[str, Any]:
    """Recent runs, newest first, with the size of their change sets.

    :param dag_id: only this DAG; :param status: only ``running|success|failed``;
    :param dry: only dry (``True``) or only real (``False``) runs.
    """
    query = sa.select(*_run_columns())
    if dag_id:
        query = query.where(sync_runs.c.dag_id == dag_id)
    if status:
        query = query.where(sync_runs.c.status == status)
    if dry is not None:
        query = query.where(sync_runs.c.dry_run.is_(dry))
    rows = conn.execute(page.apply(query.order_by(sync_runs.c.started_at.desc(), sync_runs.c.run_key.desc())))
    result = page.wrap([_run_dict(r) for r in rows.mappings()])
    sizes = _plan_sizes(conn, [r["run_key"] for r in result["items"]])
    for item in result["items"]:
        item["planned"] = sizes.get(item["run_key"], {})
    dags = conn.execute(sa.select(sync_runs.c.dag_id).distinct().order_by(sync_runs.c.dag_id)).scalars().all()
    result["dag_ids"] = list(dags)
    return result


def _plan_keys(run_key: str) -> list[str]:
    return [run_key, *(run_key[:240] + suffix for suffix in PLAN_KEY_SUFFIXES)]


def _plan_sizes(conn: Connection, run_keys: Iterable[str]) -> dict[str, dict[str, int]]:
    """``{run_key: {status: rows}}`` over the three plans of each run (one grouped query)."""
    by_plan_key = {key: run_key for run_key in run_keys for key in _plan_keys(run_key)}
    if not by_plan_key:
        return {}
    sizes: dict[str, dict[str, int]] = {}
    for plan_key, status, n in conn.execute(
        sa.select(sync_plan.c.run_key, sync_plan.c.status, sa.func.count())
        .where(sync_plan.c.run_key.in_(sorted(by_plan_key))).group_by(sync_plan.c.run_key, sync_plan.c.status)
    ):
        bucket = sizes.setdefault(by_plan_key[plan_key], {})
        bucket[status] = bucket.get(status, 0) + n
    return sizes


def run_detail(conn: Connection, run_key: str) -> dict[str, Any] | None:
    """One run with its plan summary (rows per feature, action and status), write results and notes."""
    row = conn.execute(sa.select(*_run_columns()).where(sync_runs.c.run_key == run_key)).mappings().first()
    if row is None:
        return None
    run = _run_dict(row)
    summary: dict[str, dict[str, dict[str, int]]] = {}
    for object_type, action, status, n in conn.execute(
        sa.select(sync_plan.c.object_type, sync_plan.c.action, sync_plan.c.status, sa.func.count())
        .where(sync_plan.c.run_key.in_(_plan_keys(run_key)))
        .group_by(sync_plan.c.object_type, sync_plan.c.action, sync_plan.c.status)
    ):
        summary.setdefault(object_type, {}).setdefault(action, {})[status] = n
    results = dict(conn.execute(
        sa.select(sync_audit.c.result, sa.func.count()).where(sync_audit.c.run_key == run_key)
        .group_by(sync_audit.c.result)
    ).all())
    note_counts = dict(conn.execute(
        sa.select(sync_notes.c.severity, sa.func.count()).where(sync_notes.c.run_key == run_key)
        .group_by(sync_notes.c.severity)
    ).all())
    run.update(plan_summary=summary, write_results=results, note_counts=note_counts)
    return run


def _upn_lookup(conn: Connection, user_ids: Iterable[str]) -> dict[str, str]:
    ids = sorted({u for u in user_ids if u})
    found: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        batch = ids[start:start + 500]
        found.update({uid: upn for uid, upn in conn.execute(
            sa.select(stg_users.c.user_id, stg_users.c.user_principal_name).where(stg_users.c.user_id.in_(batch))
        ) if upn})
    return found


def _contact_label(changes: Mapping[str, Any]) -> str | None:
    def value(name: str) -> Any:
        pair = changes.get(name)
        if isinstance(pair, list | tuple) and len(pair) == 2:
            return pair[1] if pair[1] is not None else pair[0]
        return None

    name = " ".join(str(v) for v in (value("FirstName"), value("LastName")) if v)
    return name or value("CompanyName")


def _field_changes(changes: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    for name, pair in (changes or {}).items():
        before, after = (pair[0], pair[1]) if isinstance(pair, list | tuple) and len(pair) == 2 else (None, pair)
        out.append({"field": name, "before": before, "after": after})
    return out


def _search_filter(q: str, key_col: sa.ColumnElement[Any], number_col: sa.ColumnElement[Any]) -> Any:
    """Rows whose object is the user ``q`` names (UPN, exact), or whose number / key is ``q``."""
    matching_users = sa.select(stg_users.c.user_id).where(
        sa.func.lower(stg_users.c.user_principal_name) == q.lower())
    return sa.or_(number_col == q, key_col == q, key_col.in_(matching_users.scalar_subquery()))


def change_set(conn: Connection, run_key: str, page: Page, *, object_type: str | None = None,
               action: str | None = None, status: str | None = None, q: str | None = None) -> dict[str, Any]:
    """The planned changes of a run (all three plans), each with its fields and what happened to it.

    :param object_type: ``extension|contact|presence``; :param action: e.g. ``create``;
    :param status: plan status (``planned|applied|failed|skipped|dry_run|rejected``);
    :param q: a UPN, extension number or object key.
    """
    query = sa.select(sync_plan).where(sync_plan.c.run_key.in_(_plan_keys(run_key)))
    if object_type:
        query = query.where(sync_plan.c.object_type == object_type)
    if action:
        query = query.where(sync_plan.c.action == action)
    if status:
        query = query.where(sync_plan.c.status == status)
    if q:
        query = query.where(_search_filter(q.strip(), sync_plan.c.object_key, sync_plan.c.number))
    rows = conn.execute(page.apply(query.order_by(sync_plan.c.run_key, sync_plan.c.seq))).mappings().all()
    result = page.wrap(rows)
    upns = _upn_lookup(conn, [r["object_key"] for r in result["items"] if r["object_type"] in USER_OBJECT_TYPES])
    result["items"] = [_plan_item(r, upns) for r in result["items"]]
    nameless = [i["object_key"] for i in result["items"] if i["object_type"] == "contact" and not i["label"]]
    if nameless:  # e.g. a delete carries no fields: name it as 3CX last showed it
        current = dict(conn.execute(sa.select(phonebook_map.c.contact_key, phonebook_map.c.current)
                                    .where(phonebook_map.c.contact_key.in_(nameless))).all())
        for item in result["items"]:
            if item["object_key"] in current and not item["label"]:
                shown = current[item["object_key"]] or {}
                item["label"] = _contact_label({k: [v, None] for k, v in shown.items()})
    return result


def _plan_item(row: Mapping[str, Any], upns: Mapping[str, str]) -> dict[str, Any]:
    changes = row["changes"] or {}
    label = upns.get(row["object_key"]) if row["object_type"] in USER_OBJECT_TYPES else _contact_label(changes)
    return {
        "plan_key": row["run_key"], "seq": row["seq"], "action": row["action"], "object_type": row["object_type"],
        "object_key": row["object_key"], "label": label, "number": row["number"], "threecx_id": row["threecx_id"],
        "fields": _field_changes(changes), "reason": row["reason"], "status": row["status"],
    }


def writes(conn: Connection, run_key: str, page: Page, *, object_type: str | None = None,
           action: str | None = None, result: str | None = None, q: str | None = None) -> dict[str, Any]:
    """The audited writes of a run (one row per field written), oldest first."""
    query = sa.select(sync_audit).where(sync_audit.c.run_key == run_key)
    if object_type:
        query = query.where(sync_audit.c.object_type == object_type)
    if action:
        query = query.where(sync_audit.c.action == action)
    if result:
        query = query.where(sync_audit.c.result == result)
    if q:
        query = query.where(_search_filter(q.strip(), sync_audit.c.object_key, sync_audit.c.number))
    rows = conn.execute(page.apply(query.order_by(sync_audit.c.id))).mappings().all()
    out = page.wrap(rows)
    upns = _upn_lookup(conn, [r["object_key"] for r in out["items"] if r["object_type"] in USER_OBJECT_TYPES])
    out["items"] = [_audit_item(r, upns) for r in out["items"]]
    return out


def _audit_item(row: Mapping[str, Any], upns: Mapping[str, str]) -> dict[str, Any]:
    return {
        "id": row["id"], "run_key": row["run_key"], "at": _iso(row["at"]), "action": row["action"],
        "object_type": row["object_type"], "object_key": row["object_key"], "label": upns.get(row["object_key"]),
        "number": row["number"], "field": row["field"], "before": row["before"], "after": row["after"],
        "result": row["result"], "error": row["error"],
    }


# ------------------------------------------------------------------------------------------- pending plan


def pending_plan(conn: Connection, page: Page, **filters: Any) -> dict[str, Any]:
    """The plan of the latest dry run: what a real run would write now.

    :returns: ``{"run": run detail or None, "superseded_by": a later real run or None, "changes": page}``.
    """
    row = conn.execute(
        sa.select(sync_runs.c.run_key, sync_runs.c.dag_id, sync_runs.c.started_at)
        .where(sync_runs.c.dry_run.is_(True)).order_by(sync_runs.c.started_at.desc()).limit(1)
    ).first()
    if row is None:
        return {"run": None, "superseded_by": None, "changes": page.wrap([])}
    later = conn.execute(
        sa.select(*_run_columns()).where(sync_runs.c.dry_run.is_(False), sync_runs.c.status == "success",
                                         sync_runs.c.started_at > row.started_at)
        .order_by(sync_runs.c.started_at.desc()).limit(1)
    ).mappings().first()
    return {"run": run_detail(conn, row.run_key), "superseded_by": _run_dict(later) if later else None,
            "changes": change_set(conn, row.run_key, page, **filters)}


# ------------------------------------------------------------------------------------------- notes


def _latest_run_keys(conn: Connection) -> list[str]:
    """The latest run of each DAG (the notes the console shows by default)."""
    latest = (sa.select(sync_runs.c.dag_id, sa.func.max(sync_runs.c.started_at).label("started"))
              .group_by(sync_runs.c.dag_id).subquery())
    return list(conn.execute(
        sa.select(sync_runs.c.run_key).join(latest, sa.and_(sync_runs.c.dag_id == latest.c.dag_id,
                                                            sync_runs.c.started_at == latest.c.started))
    ).scalars())


def notes(conn: Connection, page: Page, *, run_key: str | None = None, severity: str | None = None,
          kind: str | None = None, q: str | None = None) -> dict[str, Any]:
    """Per-record notes of a run (default: the latest run of each DAG), most severe first.

    :param severity: ``info|warning|error``; :param kind: the record kind (``user``, ``contact``...);
    :param q: text found in the record label or the message (case-insensitive).
    :returns: the page plus ``counts`` (per severity and kind, before the severity/kind filters) and
        ``run_keys`` (the runs shown).
    """
    keys = [run_key] if run_key else _latest_run_keys(conn)
    base = sync_notes.c.run_key.in_(keys)
    text_filter = None
    if q:
        pattern = f"%{q.strip().lower()}%"
        text_filter = sa.or_(sa.func.lower(sync_notes.c.message).like(pattern),
                             sa.func.lower(sync_notes.c.record_label).like(pattern))
    counts_query = (sa.select(sync_notes.c.severity, sync_notes.c.object_type, sa.func.count()).where(base)
                    .group_by(sync_notes.c.severity, sync_notes.c.object_type))
    if text_filter is not None:
        counts_query = counts_query.where(text_filter)
    counts: dict[str, dict[str, int]] = {}
    for sev, obj, n in conn.execute(counts_query):
        counts.setdefault(sev, {})[obj] = n
    query = sa.select(sync_notes).where(base)
    if severity:
        query = query.where(sync_notes.c.severity == severity)
    if kind:
        query = query.where(sync_notes.c.object_type == kind)
    if text_filter is not None:
        query = query.where(text_filter)
    rank = sa.case({"error": 0, "warning": 1, "info": 2}, value=sync_notes.c.severity, else_=3)
    rows = conn.execute(page.apply(query.order_by(rank, sync_notes.c.run_key, sync_notes.c.id))).mappings().all()
    result = page.wrap([_note_item(r) for r in rows])
    result.update(counts=counts, run_keys=keys)
    return result


def _note_item(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "run_key": row["run_key"], "step": row["step"], "at": _iso(row["at"]),
            "kind": row["object_type"], "object_key": row["object_key"], "label": row["record_label"],
            "field": row["field"], "severity": row["severity"], "message": row["message"]}


# ------------------------------------------------------------------------------------------- users


def find_users(conn: Connection, q: str, limit: int = 20) -> list[dict[str, Any]]:
    """Users matching ``q``: an exact UPN, user id or extension number first, else UPN/name substrings."""
    q = q.strip()
    if not q:
        return []
    cols = [stg_users.c.user_id, stg_users.c.user_principal_name, stg_users.c.display_name,
            stg_users.c.in_scope, stg_users.c.deleted, extension_map.c.number, extension_map.c.status]
    joined = stg_users.outerjoin(extension_map, extension_map.c.user_id == stg_users.c.user_id)
    exact = sa.or_(sa.func.lower(stg_users.c.user_principal_name) == q.lower(), stg_users.c.user_id == q,
                   stg_users.c.user_id.in_(sa.select(extension_map.c.user_id).where(extension_map.c.number == q)
                                           .scalar_subquery()))
    rows = conn.execute(sa.select(*cols).select_from(joined).where(exact).limit(limit)).mappings().all()
    if not rows and len(q) >= 2:
        pattern = f"%{q.lower()}%"
        rows = conn.execute(
            sa.select(*cols).select_from(joined)
            .where(sa.or_(sa.func.lower(stg_users.c.user_principal_name).like(pattern),
                          sa.func.lower(stg_users.c.display_name).like(pattern)))
            .order_by(stg_users.c.user_principal_name).limit(limit)
        ).mappings().all()
    return [{"user_id": r["user_id"], "upn": r["user_principal_name"], "display_name": r["display_name"],
             "in_scope": bool(r["in_scope"]), "deleted": bool(r["deleted"]), "number": r["number"],
             "number_status": r["status"]} for r in rows]


def user_scope(conn: Connection, user_id: str, params: Any) -> dict[str, Any] | None:
    """Why one user is in or out of scope, from the staged row and the scope settings
    (:func:`~m365_3cx.transform.scope.explain_scope`); ``None`` for a user not in staging.

    :param params: a :class:`~m365_3cx.transform.scope.ScopeParams`.
    :returns: ``{"verdict", "reasons": [{"code", "message"}], "desired_state", "protection"}`` — the
        last two as the latest transform computed them (``None`` before any).
    """
    from m365_3cx.transform.scope import explain_scope

    row = conn.execute(sa.select(stg_users).where(stg_users.c.user_id == user_id)).mappings().first()
    if row is None:
        return None
    target = conn.execute(sa.select(tgt_extensions.c.state, tgt_extensions.c.protection)
                          .where(tgt_extensions.c.user_id == user_id)).first()
    return {**explain_scope(row, params).as_dict(), "desired_state": target[0] if target else None,
            "protection": target[1] if target else None}


def protected_users(conn: Connection, page: Page) -> dict[str, Any]:
    """Users whose extension the sync leaves alone (protected or opted out), as the latest transform
    decided, by UPN: ``user_id``, ``upn``, ``display_name``, ``protection``, ``number`` (or ``None``)."""
    query = (
        sa.select(tgt_extensions.c.user_id, tgt_extensions.c.protection, stg_users.c.user_principal_name,
                  stg_users.c.display_name, extension_map.c.number)
        .select_from(tgt_extensions.join(stg_users, stg_users.c.user_id == tgt_extensions.c.user_id)
                     .outerjoin(extension_map, extension_map.c.user_id == tgt_extensions.c.user_id))
        .where(tgt_extensions.c.protection.is_not(None))
        .order_by(stg_users.c.user_principal_name, tgt_extensions.c.user_id)
    )
    result = page.wrap(conn.execute(page.apply(query)).mappings().all())
    result["items"] = [{"user_id": r["user_id"], "upn": r["user_principal_name"], "display_name": r["display_name"],
                        "protection": r["protection"], "number": r["number"]} for r in result["items"]]
    return result


def _base_run_key(col: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
    """The run key a ``sync_plan.run_key`` belongs to (the plan suffix stripped), portable SQL."""
    suffixed = sa.or_(*(col.like(f"%{suffix}") for suffix in PLAN_KEY_SUFFIXES))
    return sa.case((suffixed, sa.func.substr(col, 1, sa.func.length(col) - 9)), else_=col)


def user_history(conn: Connection, user_id: str, page: Page) -> dict[str, Any]:
    """Everything the sync did about one user over time, newest first.

    :returns: ``{"user", "extension", "target", "presence", "plan", "writes", "notes", "trace"}``;
        ``plan``, ``writes``, ``notes`` and ``trace`` are pages (the same page number for each).
    """
    user = conn.execute(sa.select(stg_users).where(stg_users.c.user_id == user_id)).mappings().first()
    ext = conn.execute(sa.select(extension_map).where(extension_map.c.user_id == user_id)).mappings().first()
    target = conn.execute(sa.select(tgt_extensions).where(tgt_extensions.c.user_id == user_id)).mappings().first()
    presence = conn.execute(sa.select(presence_state).where(presence_state.c.user_id == user_id)).mappings().first()
    upn = user["user_principal_name"] if user else None

    base = _base_run_key(sync_plan.c.run_key)
    plan_rows = conn.execute(page.apply(
        sa.select(sync_plan, sync_runs.c.started_at, sync_runs.c.dag_id, sync_runs.c.run_id, sync_runs.c.dry_run)
        .select_from(sync_plan.outerjoin(sync_runs, sync_runs.c.run_key == base))
        .where(sync_plan.c.object_key == user_id, sync_plan.c.object_type.in_(USER_OBJECT_TYPES))
        .order_by(sync_runs.c.started_at.desc(), sync_plan.c.seq)
    )).mappings().all()
    plan = page.wrap(plan_rows)
    plan["items"] = [{**_plan_item(r, {user_id: upn or user_id}), "run_key": r["run_key"] and _strip(r["run_key"]),
                      "started_at": _iso(r["started_at"]), "dag_id": r["dag_id"], "run_id": r["run_id"],
                      "dry_run": bool(r["dry_run"])} for r in plan["items"]]

    audit_rows = conn.execute(page.apply(
        sa.select(sync_audit).where(sync_audit.c.object_type.in_(USER_OBJECT_TYPES), sync_audit.c.object_key == user_id)
        .order_by(sync_audit.c.id.desc())
    )).mappings().all()
    written = page.wrap(audit_rows)
    written["items"] = [_audit_item(r, {user_id: upn or user_id}) for r in written["items"]]

    mine = sa.or_(sync_notes.c.object_key == user_id, *( [sync_notes.c.record_label == upn] if upn else []))
    note_rows = conn.execute(page.apply(
        sa.select(sync_notes).where(mine).order_by(sync_notes.c.at.desc(), sync_notes.c.id.desc())
    )).mappings().all()
    noted = page.wrap([_note_item(r) for r in note_rows])

    return {
        "user": _user_dict(user) if user else None,
        "extension": {k: (_iso(v) if isinstance(v, dt.datetime) else v) for k, v in ext.items()} if ext else None,
        "target": {k: (_iso(v) if isinstance(v, dt.datetime) else v) for k, v in target.items()} if target else None,
        "presence": {k: (_iso(v) if isinstance(v, dt.datetime) else v) for k, v in presence.items()}
        if presence else None,
        "plan": plan, "writes": written, "notes": noted, "trace": trace(conn, page, user_id=user_id, upn=upn),
    }


def _strip(plan_key: str) -> str:
    for suffix in PLAN_KEY_SUFFIXES:
        if plan_key.endswith(suffix):
            return plan_key[: -len(suffix)]
    return plan_key


def _user_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"user_id": row["user_id"], "upn": row["user_principal_name"], "display_name": row["display_name"],
            "mail": row["mail"], "account_enabled": row["account_enabled"], "user_type": row["user_type"],
            "department": row["department"], "in_scope": bool(row["in_scope"]), "deleted": bool(row["deleted"]),
            "first_seen_at": _iso(row["first_seen_at"]), "updated_at": _iso(row["updated_at"])}


def trace(conn: Connection, page: Page, *, user_id: str | None = None, upn: str | None = None,
          run_key: str | None = None) -> dict[str, Any]:
    """Provision-on-demand step trace rows (``sync_trace``) of a user (newest run first) or of a run.

    :returns: a page plus ``available`` (false while the schema has no trace table).
    """
    table = _table("sync_trace")
    if table is None or not _has_table(conn, "sync_trace"):
        return {**page.wrap([]), "available": False}
    conditions = []
    if user_id:
        conditions.append(table.c.user_id == user_id)
    if upn:
        conditions.append(table.c.upn == upn)
    query = sa.select(table).select_from(table.outerjoin(sync_runs, sync_runs.c.run_key == table.c.run_key))
    if conditions:
        query = query.where(sa.or_(*conditions))
    if run_key:  # one run: user by user, each in step order
        query = query.where(table.c.run_key == run_key).order_by(table.c.upn, table.c.seq, table.c.id)
    else:  # one user: newest run first, each in step order
        query = query.order_by(sync_runs.c.started_at.desc(), table.c.run_key, table.c.seq, table.c.id)
    rows = conn.execute(page.apply(query)).mappings().all()
    result = page.wrap([{k: (_iso(v) if isinstance(v, dt.datetime) else v) for k, v in r.items()} for r in rows])
    return {**result, "available": True}


# ------------------------------------------------------------------------------------------- approvals


def approvals(conn: Connection, page: Page, *, status: str | None = None) -> dict[str, Any]:
    """Guarded removals waiting for a decision (first) and decided ones, newest first.

    :returns: a page plus ``available`` (false while the schema has no approvals table).
    """
    table = _table("sync_approvals")
    if table is None or not _has_table(conn, "sync_approvals"):
        return {**page.wrap([]), "available": False, "pending": 0}
    query = sa.select(table)
    if status:
        query = query.where(table.c.status == status)
    waiting = sa.case((table.c.status == "pending", 0), else_=1)
    rows = conn.execute(page.apply(query.order_by(waiting, table.c.requested_at.desc()))).mappings().all()
    pending = conn.execute(sa.select(sa.func.count()).select_from(table).where(table.c.status == "pending")).scalar()
    result = page.wrap([{k: (_iso(v) if isinstance(v, dt.datetime) else v) for k, v in r.items()} for r in rows])
    return {**result, "available": True, "pending": pending or 0}


# ------------------------------------------------------------------------------------------- chart


def changes_per_day(conn: Connection, now: dt.datetime, days: int = 30,
                    cache: dict[str, dict[str, int]] | None = None) -> list[dict[str, Any]]:
    """3CX writes per UTC day over the last ``days`` days: ``[{"day", "ok", "failed", "other"}]``.

    Every day of the window is listed (zero when nothing was written).

    :param cache: counts of complete days (before today) from an earlier call, filled in place:
        with it only today and the days not yet cached are counted (a page that refreshes every
        minute then reads today's rows only).
    """
    start = (now - dt.timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    keys = [(start + dt.timedelta(days=i)).date().isoformat() for i in range(days)]
    known = cache if cache is not None else {}
    missing = [k for k in keys[:-1] if k not in known]
    since = dt.datetime.combine(dt.date.fromisoformat(missing[0]), dt.time(), dt.UTC) if missing else today
    if conn.dialect.name == "postgresql":
        day = sa.func.date_trunc("day", sa.func.timezone("UTC", sync_audit.c.at))
    else:
        day = sa.func.date(sync_audit.c.at)
    totals: dict[str, dict[str, int]] = {k: {"ok": 0, "failed": 0, "other": 0} for k in keys
                                         if k not in known or k == keys[-1]}
    for value, result, n in conn.execute(
        sa.select(day.label("day"), sync_audit.c.result, sa.func.count())
        .where(sync_audit.c.at >= since).group_by(day, sync_audit.c.result)
    ):
        key = value.date().isoformat() if isinstance(value, dt.datetime) else str(value)[:10]
        if key in totals:
            totals[key][result if result in ("ok", "failed") else "other"] += n
    if cache is not None:
        cache.update({k: v for k, v in totals.items() if k != keys[-1]})
        for stale in [k for k in cache if k < keys[0]]:
            del cache[stale]
    return [{"day": k, **(totals.get(k) or known[k])} for k in keys]


def push_status(conn: Connection, now: dt.datetime) -> dict[str, Any]:
    """Graph change notifications: subscriptions, next expiry, last notification per kind, failures.

    A few aggregate queries over ``push_subscriptions``, ``push_queue`` and ``push_rejections``.
    """
    subs, queue, rejections = schema.push_subscriptions, schema.push_queue, schema.push_rejections
    by_purpose = {purpose: int(n) for purpose, n in conn.execute(
        sa.select(subs.c.purpose, sa.func.count()).group_by(subs.c.purpose))}
    by_status = {status: int(n) for status, n in conn.execute(
        sa.select(subs.c.status, sa.func.count()).group_by(subs.c.status))}
    next_expiry = conn.execute(sa.select(sa.func.min(subs.c.expires_at))).scalar()
    last = {kind: _iso(at) for kind, at in conn.execute(
        sa.select(queue.c.kind, sa.func.max(queue.c.received_at)).where(queue.c.source == "notification")
        .group_by(queue.c.kind))}
    lifecycle = {event: _iso(at) for event, at in conn.execute(
        sa.select(subs.c.last_lifecycle_event, sa.func.max(subs.c.last_lifecycle_at))
        .where(subs.c.last_lifecycle_event.is_not(None)).group_by(subs.c.last_lifecycle_event))}
    failing = [{"subscription_id": r.subscription_id, "resource": r.resource, "status": r.status,
                "last_error": r.last_error} for r in conn.execute(
        sa.select(subs.c.subscription_id, subs.c.resource, subs.c.status, subs.c.last_error)
        .where(sa.or_(subs.c.last_error.is_not(None), subs.c.status != "active"))
        .order_by(subs.c.resource).limit(20))]
    open_rows = int(conn.execute(sa.select(sa.func.count()).select_from(queue)
                                 .where(queue.c.done_at.is_(None))).scalar_one())
    oldest_open = conn.execute(sa.select(sa.func.min(queue.c.received_at)).where(queue.c.done_at.is_(None))).scalar()
    rejected = [{"reason": r.reason, "count": int(r.count), "last_at": _iso(r.last_at)}
                for r in conn.execute(sa.select(rejections).order_by(rejections.c.reason))]
    return {
        "subscriptions": sum(by_purpose.values()), "by_purpose": by_purpose, "by_status": by_status,
        "next_expiry": _iso(next_expiry),
        "next_expiry_minutes": None if next_expiry is None else int((next_expiry - now).total_seconds() // 60),
        "last_notification": {kind: last.get(kind) for kind in ("users", "contacts", "events")},
        "last_lifecycle": lifecycle, "failing": failing, "queued": open_rows, "oldest_queued": _iso(oldest_open),
        "rejected": rejected,
    }
