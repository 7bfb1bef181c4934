"""Staging schema: SQLAlchemy Core tables for PostgreSQL and SQLite.

Table and column names are the contract of ``docs/internals.md``. Portable types
only: strings, text, booleans, integers (``BigInteger`` autoincrement ids),
:class:`UTCDateTime` (``DateTime(timezone=True)`` that always hands back aware UTC
datetimes, also on SQLite) and :class:`sqlalchemy.JSON`.

:func:`create_schema` creates the missing tables, indexes and nullable columns (it never alters a
column) and records :data:`SCHEMA_VERSION` in ``schema_version``; it is idempotent and safe to run
from several processes at once (PostgreSQL: transaction-level advisory lock; SQLite: ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    func,
    select,
    text,
)
from sqlalchemy.engine import Connection, Dialect, Inspector

from m365_3cx.errors import ConfigError

__all__ = [
    "SCHEMA_VERSION",
    "UTCDateTime",
    "create_schema",
    "current_schema_version",
    "metadata",
    "table",
]

#: Version of the schema this code creates; bump with a migration step in :func:`create_schema`.
SCHEMA_VERSION: Final = 3

# Arbitrary constant key of the PostgreSQL advisory lock that serialises create_schema().
_ADVISORY_LOCK_KEY: Final = 0x6D3336355F337378  # "m365_3sx"


class UTCDateTime(TypeDecorator[dt.datetime]):
    """``DateTime(timezone=True)`` that stores UTC and always returns aware UTC datetimes.

    Binding a naive datetime raises :class:`ValueError` (every timestamp is aware UTC).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime given to a UTC column; use an aware datetime")
        value = value.astimezone(dt.UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def _json() -> JSON:
    return JSON(none_as_null=True)


def _id() -> BigInteger:
    # SQLite only autoincrements an INTEGER PRIMARY KEY.
    return BigInteger().with_variant(Integer(), "sqlite")  # type: ignore[return-value]


RUN_KEY = String(250)
USER_ID = String(64)

metadata: Final = MetaData()

# ---------------------------------------------------------------- users -> extensions (docs/internals.md)

stg_users: Final = Table(
    "stg_users",
    metadata,
    Column("user_id", USER_ID, primary_key=True),
    Column("user_principal_name", String(320)),
    Column("display_name", String(512)),
    Column("given_name", String(256)),
    Column("surname", String(256)),
    Column("mail", String(320)),
    Column("mobile_phone", String(64)),
    Column("business_phones", _json()),
    Column("account_enabled", Boolean),
    Column("user_type", String(32)),
    Column("usage_location", String(8)),
    Column("department", String(256)),
    Column("job_title", String(256)),
    Column("extension_attributes", _json()),
    Column("in_scope", Boolean, nullable=False, default=False),  # set by repo.set_scope()
    Column("deleted", Boolean, nullable=False, default=False),
    Column("deleted_at", UTCDateTime()),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("last_run_key", RUN_KEY),
    Column("row_hash", String(64), nullable=False),
    # Scope detail, set with in_scope by repo.set_scope(): the scope settings that leave the user out
    # ("group", "filter" or "group,filter"; NULL = none), and membership of scope.protected_group_id.
    Column("scope_miss", String(32)),
    Column("protected_group", Boolean),
    Index("ix_stg_users_last_run_key", "last_run_key"),
)

delta_state: Final = Table(
    "delta_state",
    metadata,
    Column("resource", String(128), primary_key=True),
    Column("delta_link", Text, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("run_key", RUN_KEY),
)

extension_map: Final = Table(
    "extension_map",
    metadata,
    Column("user_id", USER_ID, primary_key=True),
    Column("number", String(32), nullable=False, unique=True),
    Column("threecx_id", Integer),
    Column("status", String(16), nullable=False, default="active"),
    Column("assigned_at", UTCDateTime(), nullable=False),
    Column("released_at", UTCDateTime()),
    Column("adopted", Boolean, nullable=False, default=False),
    # When the sync found the extension disabled for a removed user (removal_policy
    # disable_then_delete deletes it delete_after_days later); NULL while the user is active.
    Column("removal_since", UTCDateTime()),
    Index("ix_extension_map_threecx_id", "threecx_id"),
    Index("ix_extension_map_removal_since", "removal_since"),
    Index("ix_extension_map_status", "status"),
)

cur_extensions: Final = Table(
    "cur_extensions",
    metadata,
    Column("threecx_id", Integer, primary_key=True, autoincrement=False),
    Column("number", String(32)),
    Column("first_name", String(256)),
    Column("last_name", String(256)),
    Column("display_name", String(512)),
    Column("email", String(320)),
    Column("mobile", String(64)),
    Column("outbound_caller_id", String(64)),
    Column("enabled", Boolean),
    Column("current_profile", String(64)),
    Column("tags", _json()),
    Column("run_key", RUN_KEY),
    Column("read_at", UTCDateTime()),
    Index("ix_cur_extensions_number", "number"),
)

tgt_extensions: Final = Table(
    "tgt_extensions",
    metadata,
    Column("user_id", USER_ID, primary_key=True),
    Column("number", String(32)),
    Column("first_name", String(256)),
    Column("last_name", String(256)),
    Column("email", String(320)),
    Column("mobile", String(64)),
    Column("outbound_caller_id", String(64)),
    Column("enabled", Boolean),
    Column("state", String(16), nullable=False),
    Column("removal_reason", String(32)),
    Column("run_key", RUN_KEY),
    Column("computed_at", UTCDateTime()),
    # protected_upn | protected_group | opted_out: the sync never creates, changes or removes it.
    Column("protection", String(32)),
)

sync_runs: Final = Table(
    "sync_runs",
    metadata,
    Column("run_key", RUN_KEY, primary_key=True),
    Column("dag_id", String(250), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("dry_run", Boolean, nullable=False, default=False),
    Column("status", String(16), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Column("counts", _json()),
    Column("last_error", Text),  # "<task_id>: <whole reason>" of the latest failed task (scrubbed)
    # Why a dry run was dry: "requested" (the run's dry_run param), "writes_off" (not live), or both
    # ("requested,writes_off"); NULL for a run that wrote. Added in schema version 2.
    Column("dry_reason", String(64)),
    Index("ix_sync_runs_dag_started", "dag_id", "started_at"),
    Index("ix_sync_runs_started", "started_at"),  # console: recent runs, failures of the last 24 h
)

sync_plan: Final = Table(
    "sync_plan",
    metadata,
    Column("run_key", RUN_KEY, primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("action", String(16), nullable=False),
    Column("object_type", String(32), nullable=False, default="extension"),
    Column("object_key", String(256), nullable=False),
    Column("number", String(32)),
    Column("threecx_id", Integer),
    Column("changes", _json()),
    Column("reason", Text),
    Column("status", String(16), nullable=False, default="planned"),
    Index("ix_sync_plan_object_key", "object_key"),  # console: per-user history
)

sync_audit: Final = Table(
    "sync_audit",
    metadata,
    Column("id", _id(), primary_key=True, autoincrement=True),
    Column("run_key", RUN_KEY, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("action", String(16), nullable=False),
    Column("object_type", String(32), nullable=False),
    Column("object_key", String(256), nullable=False),
    Column("number", String(32)),
    Column("threecx_id", Integer),
    Column("field", String(64)),
    Column("before", Text),
    Column("after", Text),
    Column("result", String(16), nullable=False),
    Column("error", Text),
    Index("ix_sync_audit_run_key", "run_key"),
    Index("ix_sync_audit_object", "object_type", "object_key"),
    Index("ix_sync_audit_at_result", "at", "result"),  # console: changes per day (index-only)
    Index("ix_sync_audit_run_key_id", "run_key", "id"),  # console: a run's writes in order, paginated
)

# ``step`` is an addition to docs/internals.md: re-running a step replaces its notes.
sync_notes: Final = Table(
    "sync_notes",
    metadata,
    Column("id", _id(), primary_key=True, autoincrement=True),
    Column("run_key", RUN_KEY, nullable=False),
    Column("step", String(64), nullable=False, default=""),
    Column("at", UTCDateTime(), nullable=False),
    Column("object_type", String(32), nullable=False),
    Column("object_key", String(256)),
    Column("record_label", String(512)),
    Column("field", String(64)),
    Column("severity", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Index("ix_sync_notes_run_key_step", "run_key", "step"),
    Index("ix_sync_notes_run_key_severity", "run_key", "severity"),  # console: note filters
    Index("ix_sync_notes_object_key", "object_key"),  # console: per-user history
    Index("ix_sync_notes_record_label", "record_label"),  # console: per-user history (contacts of a UPN)
)

# Provision on demand (``only_users``): one row per step and user, in step order (docs/internals.md).
sync_trace: Final = Table(
    "sync_trace",
    metadata,
    Column("id", _id(), primary_key=True, autoincrement=True),
    Column("run_key", RUN_KEY, nullable=False),
    Column("user_id", USER_ID),  # NULL for an only_users entry that matched nobody (step resolve, unknown)
    Column("upn", String(320)),  # the user's UPN, or the entry exactly as given when unknown
    Column("step", String(32), nullable=False),
    Column("seq", Integer, nullable=False),  # step order (m365_3cx.staging.trace.STEPS)
    Column("outcome", String(32), nullable=False),
    Column("detail", _json()),
    Column("at", UTCDateTime(), nullable=False),
    Index("ix_sync_trace_run_step", "run_key", "step"),
    Index("ix_sync_trace_user", "user_id"),
    Index("ix_sync_trace_upn", "upn"),
    Index("ix_sync_trace_at", "at"),
)

# Staleness watchdog: one row per feature, the state of its current staleness episode.
sync_alert_state: Final = Table(
    "sync_alert_state",
    metadata,
    Column("feature", String(32), primary_key=True),  # users | phonebook | status
    Column("first_checked_at", UTCDateTime(), nullable=False),  # first watchdog tick (age base when never synced)
    Column("checked_at", UTCDateTime(), nullable=False),
    Column("last_success_at", UTCDateTime()),  # as seen at the last tick
    Column("stale_since", UTCDateTime()),  # start of the open episode, NULL when fresh
    Column("alerted_at", UTCDateTime()),  # alert of the open episode sent at, NULL when not (yet)
)

schema_version: Final = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", UTCDateTime(), nullable=False),
)

# ---------------------------------------------------------------- go-live switch and approvals (docs/internals.md)

#: The operator's switches; one row per switch. ``writes_enabled`` is the go-live switch: no row, or
#: ``enabled`` false, means every run is a dry run. Changed only by the ``m365_3cx_go_live`` DAG
#: (:func:`m365_3cx.staging.control.set_writes_enabled`), each change also logged in ``sync_control_log``.
sync_control: Final = Table(
    "sync_control",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("enabled", Boolean, nullable=False, default=False),
    Column("changed_at", UTCDateTime(), nullable=False),
    Column("changed_by", String(256), nullable=False),  # the Airflow user who triggered the change
    Column("run_key", RUN_KEY),  # the go-live DAG run that made the change
    Column("note", Text),
)

#: Every change of a switch (append only): who, when, from what to what, why.
sync_control_log: Final = Table(
    "sync_control_log",
    metadata,
    Column("id", _id(), primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("previous", Boolean),  # NULL: the switch had never been set
    Column("changed_at", UTCDateTime(), nullable=False),
    Column("changed_by", String(256), nullable=False),
    Column("run_key", RUN_KEY),
    Column("note", Text),
    Index("ix_sync_control_log_name_at", "name", "changed_at"),
)

#: Removals over the mass-removal guard waiting for (or given) a human decision, one row per run and
#: feature (``extension`` | ``contact``). The removals themselves are the run's ``sync_plan`` rows.
sync_approvals: Final = Table(
    "sync_approvals",
    metadata,
    Column("run_key", RUN_KEY, primary_key=True),
    Column("object_type", String(32), primary_key=True),  # extension | contact
    Column("plan_key", RUN_KEY, nullable=False),  # sync_plan.run_key holding the removals
    Column("dag_id", String(250), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("task_id", String(250)),  # the approval task (Airflow "Required actions")
    Column("removals", Integer, nullable=False),
    Column("managed", Integer, nullable=False),
    Column("removal_limit", Integer, nullable=False),
    # pending | approved | rejected | timed_out | overridden (allow_mass_removal)
    Column("status", String(16), nullable=False),
    Column("requested_at", UTCDateTime(), nullable=False),
    Column("decided_at", UTCDateTime()),
    Column("decided_by", String(256)),  # Airflow user name; NULL for a timeout
    Index("ix_sync_approvals_status", "status"),
)

# ---------------------------------------------------------------- contacts / presence
# v1 shape, extended by the contacts/presence features: key columns + JSON payload + timestamps.

# Contacts -> company phonebook (owned by the contacts feature; docs/internals.md "Phonebook").
# Free-text source fields are Text: Outlook allows long values; the transform truncates to 3CX limits.
stg_contacts: Final = Table(
    "stg_contacts",
    metadata,
    Column("owner_id", String(64), primary_key=True),  # mailbox owner's Graph user id, "shared:<id>" or "org"
    Column("contact_id", String(256), primary_key=True),  # immutable id (Prefer: IdType="ImmutableId")
    Column("source", String(16), nullable=False),  # personal | shared | org
    Column("folder_id", String(256)),  # contact folder id; NULL = the default Contacts folder
    Column("display_name", Text),
    Column("given_name", Text),
    Column("middle_name", Text),
    Column("surname", Text),
    Column("file_as", Text),
    Column("company_name", Text),
    Column("department", Text),
    Column("job_title", Text),
    Column("mobile_phone", Text),
    Column("business_phones", _json()),  # list of str
    Column("home_phones", _json()),  # list of str
    Column("email_addresses", _json()),  # list of str (addresses only, no display names)
    Column("categories", _json()),  # list of str
    Column("change_key", String(256)),
    Column("row_hash", String(64), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("deleted_at", UTCDateTime()),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("last_run_key", RUN_KEY),
    Index("ix_stg_contacts_owner_folder", "owner_id", "folder_id"),
)

stg_events: Final = Table(
    "stg_events",
    metadata,
    # Presence feature: one row per calendar event occurrence in a user's window (soft deletes).
    # No subject unless presence.store_subjects, and never for private/confidential events.
    Column("user_id", USER_ID, primary_key=True),
    Column("event_id", String(512), primary_key=True),  # immutable id (Prefer: IdType="ImmutableId")
    Column("start_utc", UTCDateTime()),
    Column("end_utc", UTCDateTime()),
    Column("is_all_day", Boolean, nullable=False, default=False),
    Column("time_zone", String(64)),  # IANA zone of an all-day event (its local days), else null
    Column("show_as", String(32)),  # free | tentative | busy | oof | workingElsewhere | unknown
    Column("is_cancelled", Boolean, nullable=False, default=False),
    Column("sensitivity", String(16)),  # normal | personal | private | confidential
    Column("event_type", String(16)),  # singleInstance | occurrence | exception
    Column("series_master_id", String(512)),
    Column("change_key", String(256)),
    Column("subject", Text),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("deleted_at", UTCDateTime()),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("last_run_key", RUN_KEY),
    Index("ix_stg_events_user_window", "user_id", "start_utc", "end_utc"),
)

stg_auto_replies: Final = Table(
    "stg_auto_replies",
    metadata,
    Column("user_id", USER_ID, primary_key=True),
    Column("mailbox", Boolean, nullable=False, default=True),  # False: no Exchange Online mailbox
    Column("status", String(32)),  # disabled | alwaysEnabled | scheduled (canonical casing)
    Column("scheduled_start", UTCDateTime()),
    Column("scheduled_end", UTCDateTime()),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("last_run_key", RUN_KEY),
)

# Teams presence of the managed users as the last poll read it (getPresencesByUserId); a row
# older than presence.teams.max_age_minutes no longer counts.
stg_teams_presence: Final = Table(
    "stg_teams_presence",
    metadata,
    Column("user_id", USER_ID, primary_key=True),
    Column("availability", String(32)),  # Available | Busy | DoNotDisturb | Away | Offline | ...
    Column("activity", String(32)),  # InACall | InAMeeting | Presenting | ...
    Column("fetched_at", UTCDateTime(), nullable=False),
    Column("last_run_key", RUN_KEY),
)

# Our 3CX phonebook entries. A 3CX contact is managed only when it is recorded here AND carries
# our Tag (`tag`); the snapshot step fills current/present/duplicate_ids from the 3CX read.
phonebook_map: Final = Table(
    "phonebook_map",
    metadata,
    Column("contact_key", String(64), primary_key=True),  # dedup key hash: one entry per person
    Column("tag", String(256), nullable=False),  # the Tag value we write ("m365-sync:<contact_key>")
    Column("threecx_id", Integer),  # NULL while a create is pending (response not seen yet)
    Column("status", String(16), nullable=False, default="active"),  # pending | active
    Column("present", Boolean, nullable=False, default=False),  # found in the last 3CX snapshot
    Column("current", _json()),  # managed fields as last read from 3CX (NULL when not present)
    # managed_fingerprint(current), written with every `current` (NULL with it); added in schema version 3
    Column("current_hash", String(64)),
    Column("duplicate_ids", _json()),  # other 3CX ids carrying the same tag (lost-create duplicates)
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("read_at", UTCDateTime()),
    Column("run_key", RUN_KEY),
    Index("ix_phonebook_map_threecx_id", "threecx_id"),
)

presence_state: Final = Table(
    "presence_state",
    metadata,
    Column("user_id", USER_ID, primary_key=True),
    Column("threecx_id", Integer),
    Column("profile", String(64), nullable=False),  # last profile the sync set (or took as baseline)
    Column("via", String(16), nullable=False, default="set"),  # set | baseline
    Column("set_at", UTCDateTime(), nullable=False),
    Column("run_key", RUN_KEY),
)

# Desired company phonebook: one row per de-duplicated person (Pbx.Contact fields, 3CX limits).
tgt_phonebook: Final = Table(
    "tgt_phonebook",
    metadata,
    Column("contact_key", String(64), primary_key=True),
    Column("tag", String(256), nullable=False),
    Column("first_name", String(256)),
    Column("last_name", String(256)),
    Column("company_name", String(256)),
    Column("title", String(256)),
    Column("department", String(256)),
    Column("email", String(320)),
    Column("phone_number", String(64)),
    Column("mobile2", String(64)),
    Column("business", String(64)),
    Column("business2", String(64)),
    Column("home", String(64)),
    Column("business_fax", String(64)),
    Column("other", String(64)),
    # managed_fingerprint of the managed fields above, written with every row; added in schema version 3
    Column("fields_hash", String(64)),
    Column("owner_ids", _json()),  # Graph user ids holding a copy (sorted)
    Column("copies", Integer, nullable=False, default=1),  # source contacts merged into the entry
    Column("state", String(16), nullable=False, default="active"),
    Column("run_key", RUN_KEY),
    Column("computed_at", UTCDateTime()),
)

# Which entry each source contact feeds, as the last transform computed it: a delta run recomputes
# only the entries fed by contacts (or owners) that changed, from just the contacts feeding them.
tgt_phonebook_sources: Final = Table(
    "tgt_phonebook_sources",
    metadata,
    Column("owner_id", String(64), primary_key=True),
    Column("contact_id", String(256), primary_key=True),
    Column("contact_key", String(64), nullable=False),
    Column("run_key", RUN_KEY),
    Index("ix_tgt_phonebook_sources_key", "contact_key"),
)

# What a feature's stored targets were computed with (a fingerprint of the settings that shape
# them): an incremental transform is valid only while it matches, else the next run recomputes all.
transform_state: Final = Table(
    "transform_state",
    metadata,
    Column("feature", String(32), primary_key=True),
    Column("params_hash", String(64), nullable=False),
    Column("scope", String(16), nullable=False, default="full"),  # full | incremental (the last transform)
    Column("run_key", RUN_KEY),
    Column("computed_at", UTCDateTime(), nullable=False),
    # when the targets were last recomputed from every input (a full transform); an incremental
    # transform leaves it. A full run recomputes everything when it is older than a bound (or NULL).
    Column("full_at", UTCDateTime()),
)

tgt_presence: Final = Table(
    "tgt_presence",
    metadata,
    Column("user_id", USER_ID, primary_key=True),
    Column("threecx_id", Integer),
    Column("profile", String(64), nullable=False),  # desired profile at computed_at
    Column("reason", String(32), nullable=False),  # automatic_replies | oof | busy | ... | default
    Column("next_switch_at", UTCDateTime()),  # UTC instant the desired profile changes next
    Column("run_key", RUN_KEY),
    Column("computed_at", UTCDateTime(), nullable=False),
    Column("inputs_version", Integer),  # presence_inputs.version the decision saw (NULL: decide again)
    Column("recheck_at", UTCDateTime()),  # next instant any of the user's spans starts or ends
)

# A counter per user that the extracts bump with every staged change of the user's events,
# automatic replies or Teams presence: a delta run re-decides only users whose counter differs
# from the one their tgt_presence decision saw (see pipeline/presence_decide.py).
presence_inputs: Final = Table(
    "presence_inputs",
    metadata,
    Column("user_id", USER_ID, primary_key=True),
    Column("version", Integer, nullable=False, default=0),
    Column("changed_at", UTCDateTime(), nullable=False),
    Column("run_key", RUN_KEY),
)


# ---------------------------------------------------------------- run exclusion (staging/lease.py)

feature_lease: Final = Table(
    "feature_lease",
    metadata,
    Column("feature", String(32), primary_key=True),  # extensions | phonebook | presence
    Column("holder", RUN_KEY),  # run key holding the feature from snapshot to apply; NULL = free
    Column("step", String(32)),  # the holder's last step (snapshot, plan, apply, approval)
    Column("acquired_at", UTCDateTime()),
    Column("expires_at", UTCDateTime()),  # a lease not renewed by then may be taken over
    Column("generation", Integer, nullable=False, default=0),  # bumped by every apply that wrote
)

feature_claim: Final = Table(
    "feature_claim",
    metadata,
    Column("feature", String(32), primary_key=True),
    Column("run_key", RUN_KEY, primary_key=True),
    Column("generation", Integer, nullable=False),  # feature_lease.generation the run's snapshot saw
    Column("claimed_at", UTCDateTime(), nullable=False),
)


# ---------------------------------------------------------------- change notifications (m365_3cx/push)

push_subscriptions: Final = Table(
    "push_subscriptions",
    metadata,
    Column("subscription_id", String(64), primary_key=True),  # Graph's subscription id
    Column("purpose", String(16), nullable=False),  # users | contacts | events
    Column("user_id", USER_ID),  # the mailbox of a contacts/events subscription; NULL for users
    Column("resource", String(400), nullable=False),
    # SHA-256 (hex) of the random clientState sent at creation; the secret itself is never stored.
    Column("client_state_sha256", String(64), nullable=False),
    Column("tenant_id", String(64), nullable=False),
    Column("status", String(24), nullable=False),  # active | reauthorize | removed | missing
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("renewed_at", UTCDateTime()),
    Column("last_notification_at", UTCDateTime()),
    Column("last_lifecycle_event", String(32)),
    Column("last_lifecycle_at", UTCDateTime()),
    Column("last_error", Text),  # the latest create/renew failure (no secret in it)
    Index("ix_push_subscriptions_purpose_user", "purpose", "user_id"),
)

push_queue: Final = Table(
    "push_queue",
    metadata,
    Column("id", _id(), primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # users | contacts | events: the delta to run
    Column("user_id", USER_ID),  # the mailbox (contacts/events) or the changed user (users)
    Column("subscription_id", String(64)),
    Column("source", String(32), nullable=False),  # notification | missed | subscriptionRemoved | gap
    Column("notification_id", String(200)),  # Graph's changeNotification.id (replay detection)
    Column("received_at", UTCDateTime(), nullable=False),
    Column("signalled_at", UTCDateTime()),  # when the AssetWatcher's trigger fired for it
    Column("claimed_by", RUN_KEY),  # the push run working on it
    Column("claimed_at", UTCDateTime()),
    Column("done_at", UTCDateTime()),
    Index("ix_push_queue_open", "done_at", "claimed_by"),
    Index("ix_push_queue_notification", "notification_id"),
)

push_rejections: Final = Table(
    "push_rejections",
    metadata,
    Column("reason", String(32), primary_key=True),  # bad_request | client_state | tenant | unknown | replay
    Column("count", Integer, nullable=False),
    Column("last_at", UTCDateTime(), nullable=False),
)


def current_schema_version(conn: Connection) -> int | None:
    """Return the highest recorded schema version, or ``None`` before :func:`create_schema`.

    :param conn: an open connection.
    """
    from sqlalchemy import inspect

    if not inspect(conn).has_table("schema_version"):
        return None
    return conn.execute(select(func.max(schema_version.c.version))).scalar()


def create_schema(engine: Engine, *, now: dt.datetime | None = None) -> int:
    """Create the missing tables and indexes and record :data:`SCHEMA_VERSION`.

    Idempotent; concurrent callers on PostgreSQL are serialised with
    ``pg_advisory_xact_lock``, on SQLite by ``BEGIN IMMEDIATE`` (see :mod:`.db`).

    :param engine: engine from :func:`m365_3cx.staging.db.make_engine`.
    :param now: time recorded with the version (default: now, UTC).
    :returns: the schema version of the database.
    :raises ConfigError: the database holds a newer schema than this code knows.
    :raises sqlalchemy.exc.SQLAlchemyError: the database failed.
    """
    from sqlalchemy import inspect

    when = now or dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        found = current_schema_version(conn)
        if found is not None and found > SCHEMA_VERSION:
            raise ConfigError(f"staging schema version {found} is newer than this code supports ({SCHEMA_VERSION})")
        # One catalog query per kind (tables, columns, indexes) instead of one per table and index:
        # every task of every run calls this, so the up-to-date case must stay cheap.
        existing = set(inspect(conn).get_table_names())
        missing = [tbl for tbl in metadata.sorted_tables if tbl.name not in existing]
        if missing:
            metadata.create_all(conn, tables=missing, checkfirst=True)
        # create_all() adds columns and indexes only with a table it creates: an upgrade that adds a
        # nullable column or an index to an existing table needs these (no column is ever altered).
        inspector = inspect(conn)  # a fresh one: the tables just created are not in the old one's cache
        _add_missing_columns(conn, inspector)
        indexed = {key[1]: {ix["name"] for ix in found_ix} for key, found_ix in inspector.get_multi_indexes().items()}
        for tbl in metadata.sorted_tables:
            for index in tbl.indexes:
                if index.name not in indexed.get(tbl.name, set()):
                    index.create(conn, checkfirst=True)
        if found is None or found < SCHEMA_VERSION:
            conn.execute(schema_version.insert(), [{"version": SCHEMA_VERSION, "applied_at": when}])
    return SCHEMA_VERSION


def _add_missing_columns(conn: Connection, inspector: Inspector) -> list[str]:
    """Migration: add the nullable columns a newer version added to an existing table.

    ``create_all`` creates missing tables only; a column added to an existing table (e.g.
    ``sync_runs.dry_reason`` in version 2) is added here with ``ALTER TABLE ... ADD COLUMN``.
    Only nullable columns without a server default are ever added this way.

    :param inspector: an inspector on ``conn`` that already sees every table of :data:`metadata`.
    :returns: the ``table.column`` names added.
    """
    from sqlalchemy.schema import CreateColumn

    columns = {key[1]: {c["name"] for c in found} for key, found in inspector.get_multi_columns().items()}
    added = []
    for tbl in metadata.sorted_tables:
        existing = columns.get(tbl.name, set())
        for column in tbl.columns:
            if column.name in existing or not column.nullable or column.primary_key:
                continue
            ddl = CreateColumn(column).compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {tbl.name} ADD COLUMN {ddl}"))
            added.append(f"{tbl.name}.{column.name}")
    return added


def table(name: str) -> Table:
    """Return the staging table called ``name``.

    :raises KeyError: no such table.
    """
    return metadata.tables[name]
