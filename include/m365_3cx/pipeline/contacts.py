"""Outlook contacts -> 3CX company phonebook: the steps the contacts task group calls.

Like :mod:`m365_3cx.pipeline.users`, each step reads its inputs from staging, writes its
outputs back and returns only small counts. Extraction works on a *shard* of owners
(eligible users ordered by UPN); all Graph reads of a shard go through ``$batch``
(:mod:`m365_3cx.graph.batch`): one inner request per (user, folder) stream per page
round, at most 20 per batch and 4 per mailbox.

Only documented Graph routes are used. Contact delta is documented per folder only
(``/users/{id}/contactFolders/{id}/contacts/delta``), so the default Contacts folder is read
through its folder id: the ``parentFolderId`` of the folders ``GET /users/{id}/contactFolders``
lists (documented as the folders *in* the default Contacts folder), else — for a user without
subfolders — the folder its stored delta link was issued for, or the ``parentFolderId`` of one
contact from ``GET /users/{id}/contacts?$top=1`` (documented as the default folder's contacts).
That lookup costs one more inner request only for a user with no subfolder and no stored link
(the first run, or a default folder that was empty: the lookup then replaces the delta request);
an empty default folder has nothing to read.

The contacts plan lives in ``sync_plan`` under :func:`contact_plan_key` (the run key
plus ``#contacts``), so it never races with the extensions plan of the same run;
audit rows use the run key itself.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from m365_3cx.errors import (
    DeltaTokenExpiredError,
    GraphFatalError,
    GraphRetriableError,
    MailboxUnavailableError,
    RetriableError,
)
from m365_3cx.graph.batch import BatchRequest, classify_item, execute_batch, relative_url
from m365_3cx.pipeline.outcomes import load_changes, record_outcomes
from m365_3cx.pipeline.preview import log_plan_preview
from m365_3cx.pipeline.users import SANITIZE_STEP
from m365_3cx.staging import boundary, trace
from m365_3cx.staging import contacts as crepo
from m365_3cx.staging import push as push_queue
from m365_3cx.staging.frames import iter_frames, load_frame
from m365_3cx.staging.runs import add_notes, add_record_notes, load_plan, save_plan
from m365_3cx.staging.schema import stg_contacts
from m365_3cx.staging.state import DeltaStateStore
from m365_3cx.transform.notes import ERROR, INFO, WARNING, Note, note_rows, user_note

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from m365_3cx.graph.client import GraphClient
    from m365_3cx.reconcile.plan import Change
    from m365_3cx.settings import Settings
    from m365_3cx.threecx.client import ThreeCXClient

log = logging.getLogger(__name__)

CONTACT_HEADERS: Final[Mapping[str, str]] = {"Prefer": 'IdType="ImmutableId", odata.maxpagesize=100'}
"""Sent with every contacts request: immutable ids (stable across folder moves), 100 per page."""

MAX_PAGE_ROUNDS: Final = 10_000


def contact_plan_key(run_key: str) -> str:
    """The ``sync_plan.run_key`` under which a run's phonebook plan is stored."""
    return f"{run_key[:240]}#contacts"


@dataclass
class _Stream:
    """One delta stream: a user's default contacts folder or one of their contact folders."""

    user_id: str
    upn: str
    folder_id: str | None
    url: str = ""
    full: bool = True
    restarted: bool = False
    seen: set[str] = field(default_factory=set)
    done: bool = False
    empty: bool = False
    """The default folder holds no contact (nothing to read this run)."""
    default_folder_id: str | None = None
    """The default Contacts folder's id (default stream only; ``None`` until known)."""
    owner: str | None = None
    """``stg_contacts.owner_id`` of the stream's rows when it is not the mailbox id (``shared:<id>``)."""
    source: str = "personal"
    """``stg_contacts.source`` of the stream's rows (``personal`` or ``shared``)."""

    @property
    def owner_key(self) -> str:
        """The ``stg_contacts.owner_id`` the stream's contacts are staged under."""
        return self.owner or self.user_id

    @property
    def resource(self) -> str:
        return crepo.contact_resource(self.owner_key, self.folder_id)

    @property
    def delta_folder(self) -> str | None:
        """The folder id the delta URL names (the default folder's id for the default stream)."""
        return self.folder_id if self.folder_id is not None else self.default_folder_id

    def initial_url(self) -> str:
        """The documented per-folder delta URL.

        :raises ValueError: for the default stream before its folder id is known.
        """
        folder = self.delta_folder
        if folder is None:
            raise ValueError("the default contacts folder id is not known yet")
        return (f"/users/{quote(self.user_id, safe='')}/contactFolders/{quote(folder, safe='')}"
                f"/contacts/delta?$select={','.join(crepo.GRAPH_CONTACT_SELECT)}")


@dataclass
class _Totals:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("users", "streams", "page_rounds", "pages", "inserted", "updated", "unchanged", "deleted", "excluded",
         "expired", "skipped_users", "failed_users", "gone", "cleaned"), 0))
    notes: list[Note] = field(default_factory=list)


def _has_category(item: Mapping[str, Any], category: str | None) -> bool:
    if not category:
        return False
    wanted = category.strip().casefold()
    values = item.get("categories")
    return isinstance(values, list) and any(isinstance(c, str) and c.strip().casefold() == wanted for c in values)


def _list_folders(graph: GraphClient, users: list[dict[str, Any]], totals: _Totals,
                  skipped: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Contact folders per user, all users of the shard batched together (follows next links)."""
    folders: dict[str, list[dict[str, Any]]] = {u["user_id"]: [] for u in users}
    labels = {u["user_id"]: u["user_principal_name"] for u in users}
    pending = {u["user_id"]: f"/users/{quote(u['user_id'], safe='')}/contactFolders"
                             "?$select=id,displayName,parentFolderId&$top=100"
               for u in users}
    rounds = 0
    while pending:
        rounds += 1
        if rounds > MAX_PAGE_ROUNDS:
            raise GraphFatalError("contactFolders paging did not end", code="PaginationLoop")
        ids = sorted(pending)
        requests = [BatchRequest(id=str(i), url=pending[uid], headers=CONTACT_HEADERS, mailbox=uid)
                    for i, uid in enumerate(ids)]
        responses = execute_batch(graph, requests)
        nxt: dict[str, str] = {}
        for i, uid in enumerate(ids):
            response = responses[str(i)]
            error = classify_item(response)
            if error is None:
                body = response.body if isinstance(response.body, Mapping) else {}
                for folder in body.get("value") or []:
                    if not isinstance(folder, Mapping) or not folder.get("id"):
                        continue
                    if boundary.usable_key(folder["id"], boundary.column_limit(stg_contacts, "folder_id")):
                        folders[uid].append(folder)
                    else:  # cannot be stored as stg_contacts.folder_id: the folder is left out, named
                        totals.notes.append(user_note(uid, labels[uid], "contactFolders",
                                                      f"contact folder {boundary.printable_key(folder['id'])} has "
                                                      "an id staging cannot hold; its contacts are not read", ERROR))
                link = body.get("@odata.nextLink")
                if isinstance(link, str) and link:
                    nxt[uid] = relative_url(link, graph.credentials.graph_url)
                continue
            _user_failed(uid, labels[uid], error, totals, skipped)
        pending = nxt
    return folders


def _default_folder_ids(folders: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """The default Contacts folder id of each user with subfolders (their ``parentFolderId``)."""
    found: dict[str, str] = {}
    for uid, listed in folders.items():
        parents = {str(f["parentFolderId"]) for f in listed if f.get("parentFolderId")}
        ids = {str(f["id"]) for f in listed}
        top = sorted(parents - ids)  # the listing holds the default folder's children only
        if top:
            found[uid] = top[0]
    return found


def _resolve_default_folders(graph: GraphClient, streams: list[_Stream], totals: _Totals,
                             skipped: set[str]) -> None:
    """Find the default folder id of the default streams that need an initial URL and lack it.

    One batched ``GET /users/{id}/contacts?$top=1&$select=parentFolderId`` per such user. A user
    whose default folder holds no contact has nothing to read: the stream is marked ``done``
    (a full round then soft-deletes what was staged from it).
    """
    todo = [s for s in streams if s.folder_id is None and s.default_folder_id is None and not s.url
            and s.user_id not in skipped]
    if not todo:
        return
    requests = [BatchRequest(id=str(i), url=f"/users/{quote(s.user_id, safe='')}/contacts?$top=1"
                             "&$select=parentFolderId", headers=CONTACT_HEADERS, mailbox=s.user_id)
                for i, s in enumerate(todo)]
    responses = execute_batch(graph, requests)
    for i, stream in enumerate(todo):
        response = responses[str(i)]
        error = classify_item(response)
        if error is not None:
            _user_failed(stream.user_id, stream.upn, error, totals, skipped)
            continue
        body = response.body if isinstance(response.body, Mapping) else {}
        first = next((c for c in body.get("value") or [] if isinstance(c, Mapping) and c.get("parentFolderId")),
                     None)
        if first is None:
            stream.empty = True
        else:
            stream.default_folder_id = str(first["parentFolderId"])


def _user_failed(user_id: str, label: str, error: Exception, totals: _Totals, skipped: set[str]) -> None:
    """Skip a user's contacts for this run with a note; raise what must fail the task."""
    if isinstance(error, RetriableError):
        raise error
    if user_id in skipped:
        return
    skipped.add(user_id)
    totals.counts["skipped_users"] += 1
    if isinstance(error, MailboxUnavailableError):
        log.info("contacts: user %s has no Exchange Online mailbox; skipped", user_id)
        totals.notes.append(user_note(user_id, label, "mailbox",
                                      "has no Exchange Online mailbox (MailboxNotEnabledForRESTAPI); contacts skipped",
                                      INFO))
        return
    totals.counts["failed_users"] += 1
    log.warning("contacts: reading the contacts of user %s failed (status %s); skipped this run",
                user_id, getattr(error, "status", None))
    totals.notes.append(user_note(user_id, label, "contacts", f"contacts not read this run: {error}", ERROR))


def _streams_for(users: list[dict[str, Any]], settings: Settings, folders: dict[str, list[dict[str, Any]]],
                 skipped: set[str]) -> list[_Stream]:
    mode = settings.contacts.personal_contacts
    wanted = settings.contacts.folder_name.strip().casefold()
    defaults = _default_folder_ids(folders)
    streams: list[_Stream] = []
    for user in users:
        uid, upn = user["user_id"], user["user_principal_name"]
        if uid in skipped:
            continue
        if mode == "all":
            streams.append(_Stream(uid, upn, None, default_folder_id=defaults.get(uid)))
            streams.extend(_Stream(uid, upn, str(f["id"])) for f in folders.get(uid, []))
        elif mode == "folder":
            streams.extend(_Stream(uid, upn, str(f["id"])) for f in folders.get(uid, [])
                           if str(f.get("displayName") or "").strip().casefold() == wanted)
    return streams


def extract_contacts(
    engine: Engine,
    graph: GraphClient,
    settings: Settings,
    run_key: str,
    mode: str,
    shard: Mapping[str, Any],
    now: datetime,
) -> dict[str, Any]:
    """Bring the ``stg_contacts`` rows of one shard of owners up to date from Graph.

    ``full`` runs an initial delta round per stream (everything, plus a fresh delta link)
    and soft-deletes what the round did not return; ``delta`` follows each stream's stored
    link (an expired one falls back to a full round of that stream only). Every page round's
    rows commit with the delta links that round finished. Contacts carrying the exclusion
    category are never staged (and removed when a staged contact gets it). Streams no longer
    read (folder removed, ``personal_contacts`` changed, ``off``) lose their staged contacts.

    :param shard: a descriptor from :func:`contact_shards` (``first``/``last`` UPN).
    :return: counts (users, streams, page rounds, inserted/updated/unchanged/deleted, excluded,
        expired links, skipped users, contacts of streams gone).
    :raises GraphRetriableError: items still throttled after the batch's retry rounds (task retry).
    :raises GraphFatalError: every stream of the shard failed (e.g. permission missing).
    """
    store = DeltaStateStore()
    totals = _Totals()
    on_demand: dict[str, str] = {}
    with engine.connect() as conn:
        if shard.get("on_demand"):  # provision on demand: the named users' mailboxes only, read afresh
            on_demand = trace.on_demand_users(conn, run_key)
            users = crepo.users_by_ids(conn, on_demand, settings.scope.include_guests)
            mode = "full"
        elif shard.get("push"):  # a push run: the delta of just the mailboxes Graph notified
            users = crepo.users_by_ids(conn, push_queue.claimed_users(conn, run_key, "contacts"),
                                       settings.scope.include_guests)
        else:
            users = crepo.shard_users(conn, shard.get("first"), shard.get("last"), settings.scope.include_guests)
    totals.counts["users"] = len(users)
    owner_ids = [u["user_id"] for u in users]
    shared = {upn.casefold() for upn in settings.contacts.shared_mailboxes}
    readers = [u for u in users if str(u["user_principal_name"]).casefold() not in shared]  # shared: read apart
    skipped: set[str] = set()
    personal = settings.contacts.personal_contacts
    folders = _list_folders(graph, readers, totals, skipped) if personal in ("all", "folder") and readers else {}
    streams = _streams_for(readers, settings, folders, skipped)
    totals.counts["streams"] = len(streams)

    with engine.begin() as conn:
        live = {(s.user_id, s.folder_id) for s in streams}
        gone: dict[str, list[str | None]] = {}
        for owner, folder in crepo.staged_streams(conn, owner_ids):
            if owner not in skipped and (owner, folder) not in live:
                gone.setdefault(owner, []).append(folder)
        for owner, folder_ids in gone.items():
            totals.counts["gone"] += crepo.mark_streams_gone(conn, owner, folder_ids, run_key, now)
        if personal == "off":
            for owner in owner_ids:
                crepo.clear_contact_links(conn, owner)
    read_streams(engine, graph, settings, store, streams, totals, skipped, mode, run_key, now)
    step = f"extract_contacts/{shard.get('shard', 1)}"
    with engine.begin() as conn:
        add_notes(conn, run_key, note_rows(totals.notes, run_key, now), step=step, now=now)
        if on_demand:
            _trace_contacts_read(conn, run_key, on_demand, users, skipped, totals, personal, now)
    if users and totals.counts["failed_users"] == len(users):
        raise GraphFatalError(f"reading contacts failed for every one of {len(users)} users of the shard",
                              code="AllMailboxesFailed")
    counts = totals.counts
    log.info(
        "contacts extract shard %s: %d users, %d streams, %d page rounds, %d inserted, %d updated, %d unchanged, "
        "%d deleted, %d excluded, %d expired links, %d users skipped",
        shard.get("shard"), counts["users"], counts["streams"], counts["page_rounds"], counts["inserted"],
        counts["updated"], counts["unchanged"], counts["deleted"], counts["excluded"], counts["expired"],
        counts["skipped_users"],
    )
    return {"mode": mode, "shard": shard.get("shard"), **counts, "notes": len(totals.notes)}


def read_streams(engine: Engine, graph: GraphClient, settings: Settings, store: DeltaStateStore,
                 streams: list[_Stream], totals: _Totals, skipped: set[str], mode: str, run_key: str,
                 now: datetime) -> None:
    """Read contact streams into staging: follow each stored delta link (``delta``) or start a full
    round, find default folder ids where needed, then page every stream through ``$batch`` rounds.

    Shared by personal contacts (per shard of owners) and shared mailboxes.
    """
    with engine.connect() as conn:
        links = store.get_many(conn, [s.resource for s in streams])
    for stream in streams:
        stored = links.get(stream.resource)
        url = relative_url(stored, graph.credentials.graph_url) if stored else ""
        if url and "/contactfolders/" not in url.split("?", 1)[0].lower():
            url = ""  # a link of the undocumented /users/{id}/contacts/delta route: start over
        if url and stream.delta_folder is None:
            stream.default_folder_id = _folder_of_link(url)  # the folder our stored link was issued for
        if mode != "delta":
            url = ""
        stream.url, stream.full = url, not url

    _resolve_default_folders(graph, streams, totals, skipped)
    for stream in streams:
        if not stream.url and not stream.empty and stream.user_id not in skipped:
            stream.url = stream.initial_url()
    empties = [s for s in streams if s.empty and s.user_id not in skipped]
    if empties:  # an empty default folder: nothing to read, nothing staged from it stays
        with engine.begin() as conn:
            for stream in empties:
                stream.done = True
            totals.counts["deleted"] += crepo.mark_missing_in_streams(
                conn, [(s.owner_key, None, set()) for s in empties], run_key, now)
            store.clear_many(conn, [s.resource for s in empties])

    _page_rounds(engine, graph, settings, store, streams, totals, skipped, run_key, now)


def _page_rounds(engine: Engine, graph: GraphClient, settings: Settings, store: DeltaStateStore,
                 streams: list[_Stream], totals: _Totals, skipped: set[str], run_key: str, now: datetime) -> None:
    """Page every stream through ``$batch`` rounds; each round is staged with a few bulk statements."""
    exclude = settings.contacts.exclude_category
    graph_url = graph.credentials.graph_url
    for _ in range(MAX_PAGE_ROUNDS):
        active = [s for s in streams if not s.done and s.user_id not in skipped]
        if not active:
            return
        totals.counts["page_rounds"] += 1
        requests = [BatchRequest(id=str(i), url=s.url, headers=CONTACT_HEADERS, mailbox=s.user_id)
                    for i, s in enumerate(active)]
        responses = execute_batch(graph, requests)
        page = _RoundPage()
        with engine.begin() as conn:
            for i, stream in enumerate(active):
                response = responses[str(i)]
                error = classify_item(response)
                if isinstance(error, DeltaTokenExpiredError):
                    if stream.restarted:
                        _user_failed(stream.user_id, stream.upn, error, totals, skipped)
                        continue
                    log.warning("contacts: delta link of user %s expired (status %s); full round for that stream",
                                stream.user_id, error.status)
                    store.clear(conn, stream.resource)
                    if stream.delta_folder is None:  # a default stream that followed a stored link
                        stream.default_folder_id = _folder_of_link(stream.url)
                    stream.url, stream.full, stream.restarted = stream.initial_url(), True, True
                    stream.seen.clear()
                    totals.counts["expired"] += 1
                    continue
                if error is not None:
                    if isinstance(error, GraphRetriableError):
                        raise error
                    _user_failed(stream.user_id, stream.upn, error, totals, skipped)
                    continue
                body = response.body if isinstance(response.body, Mapping) else {}
                page.take(stream, body, exclude, totals)
                next_link, delta_link = body.get("@odata.nextLink"), body.get("@odata.deltaLink")
                if isinstance(next_link, str) and next_link:
                    stream.url = relative_url(next_link, graph_url)
                    continue
                stream.done = True
                if stream.full:
                    page.finished_full.append((stream.owner_key, stream.folder_id, stream.seen))
                if isinstance(delta_link, str) and delta_link:
                    page.links[stream.resource] = delta_link
            page.stage(conn, store, totals, run_key, now)
        for stream in active:
            if stream.done:
                stream.seen = set()  # a finished stream's ids are no longer needed
    raise GraphFatalError("contacts delta paging did not end", code="PaginationLoop")


def _trace_contacts_read(conn: Any, run_key: str, on_demand: Mapping[str, str], users: list[dict[str, Any]],
                         skipped: set[str], totals: _Totals, personal: str, now: datetime) -> None:
    """The ``contacts_read`` trace step of an on-demand run: per user, contacts staged or why none."""
    import sqlalchemy as sa

    from m365_3cx.staging.schema import stg_contacts

    read = {u["user_id"] for u in users}
    staged = dict(conn.execute(
        sa.select(stg_contacts.c.owner_id, sa.func.count()).where(
            stg_contacts.c.owner_id.in_(sorted(read) or [""]), stg_contacts.c.deleted.is_(False))
        .group_by(stg_contacts.c.owner_id)).all())
    reasons = {n.object_key.split("/", 1)[0]: n.message for n in totals.notes if n.object_key}
    rows = []
    for uid, upn in sorted(on_demand.items()):
        if personal == "off":
            rows.append({"user_id": uid, "upn": upn, "outcome": "off",
                         "detail": {"reason": "contacts.personal_contacts is off"}})
        elif uid not in read:
            rows.append({"user_id": uid, "upn": upn, "outcome": "skipped",
                         "detail": {"reason": "not eligible: out of scope, deleted, a guest or no mail address"}})
        elif uid in skipped:
            rows.append({"user_id": uid, "upn": upn, "outcome": "skipped",
                         "detail": {"reason": reasons.get(uid, "mailbox not read")}})
        else:
            rows.append({"user_id": uid, "upn": upn, "outcome": "read",
                         "detail": {"contacts": int(staged.get(uid, 0)), "source": personal}})
    trace.replace_trace(conn, run_key, "contacts_read", trace.trace_rows(run_key, "contacts_read", rows, now))


def _folder_of_link(url: str) -> str:
    """The folder id a per-folder delta link names (``/users/{u}/contactFolders/{f}/contacts/delta``).

    :raises GraphFatalError: for a link of another shape (never issued for a documented route).
    """
    from urllib.parse import unquote

    parts = url.split("?", 1)[0].split("/")
    lowered = [p.lower() for p in parts]
    if "contactfolders" in lowered:
        at = lowered.index("contactfolders")
        if at + 1 < len(parts) and parts[at + 1]:
            return unquote(parts[at + 1])
    raise GraphFatalError("contacts delta link names no contact folder", code="InvalidDeltaLink")


def _clean_contacts(raw: list[Mapping[str, Any]], stream: _Stream,
                    exclude: str | None) -> tuple[list[dict[str, Any]], list[Note], list[str]]:
    """Pass a page of contacts through the sanitising boundary (:mod:`m365_3cx.staging.boundary`).

    Category matching sees the clean values (``Pri\u200bvate`` is ``Private``); contacts that carry
    the exclusion category get no note (nothing about them is kept).

    :return: clean items (refused ones left out), notes naming owner, contact and property, and
        the note keys (``<owner>/<contact>``) of every contact of the page.
    """
    from m365_3cx.transform.phonebook import contact_note

    items: list[dict[str, Any]] = []
    notes: list[Note] = []
    keys: list[str] = []
    for item in raw:
        result = boundary.clean_contact_item(item)
        shown = boundary.printable_key(item.get("id"))
        keys.append(f"{stream.owner_key}/{shown}"[:256])
        if result.item is not None:
            items.append(result.item)
            if "@removed" in result.item or _has_category(result.item, exclude):
                continue
        for finding in result.findings:
            notes.append(contact_note(stream.owner_key, shown, stream.upn, finding.field,
                                      f"{finding.field}: {finding.message}", ERROR if finding.rejected else WARNING))
    return items, notes, keys


def stage_contacts_page(conn: Any, owner: Mapping[str, Any], folder_id: str | None, body: Mapping[str, Any],
                        exclude: str | None, run_key: str, now: datetime) -> dict[str, int]:
    """Stage one page of one contact stream in the caller's transaction (what a page round does per stream).

    :param owner: ``{"user_id", "user_principal_name"}`` of the mailbox.
    :param body: the page as Graph returns it (``value`` list).
    :return: the page's counts (inserted, updated, unchanged, deleted, excluded, cleaned).
    """
    totals = _Totals()
    stream = _Stream(str(owner["user_id"]), str(owner.get("user_principal_name") or owner["user_id"]), folder_id)
    page = _RoundPage()
    page.take(stream, body, exclude, totals)
    page.stage(conn, DeltaStateStore(), totals, run_key, now)
    return totals.counts


@dataclass
class _RoundPage:
    """What one ``$batch`` round returned for all its streams, staged together."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    removed: dict[str, list[str]] = field(default_factory=dict)
    excluded: dict[str, list[str]] = field(default_factory=dict)
    finished_full: list[tuple[str, str | None, set[str]]] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    note_keys: list[str] = field(default_factory=list)

    def take(self, stream: _Stream, body: Mapping[str, Any], exclude: str | None, totals: _Totals) -> None:
        raw = [i for i in body.get("value") or [] if isinstance(i, Mapping) and i.get("id")]
        totals.counts["pages"] += 1
        items, notes, keys = _clean_contacts(raw, stream, exclude)
        self.notes.extend(notes)
        self.note_keys.extend(keys)
        totals.counts["cleaned"] += len(notes)
        removed = [str(i["id"]) for i in items if "@removed" in i]
        excluded = [str(i["id"]) for i in items if "@removed" not in i and _has_category(i, exclude)]
        rows = [crepo.contact_row_from_graph(i, stream.owner_key, stream.folder_id, stream.source) for i in items
                if "@removed" not in i and not _has_category(i, exclude)]
        stream.seen.update(row["contact_id"] for row in rows)
        self.rows.extend(rows)
        if removed:
            self.removed.setdefault(stream.owner_key, []).extend(removed)
        if excluded:
            self.excluded.setdefault(stream.owner_key, []).extend(excluded)

    def stage(self, conn: Any, store: DeltaStateStore, totals: _Totals, run_key: str, now: datetime) -> None:
        merged = crepo.merge_contacts(conn, self.rows, run_key, now)
        if self.note_keys:
            add_record_notes(conn, run_key, note_rows(self.notes, run_key, now), step=SANITIZE_STEP,
                             object_type="contact", object_keys=self.note_keys, now=now)
        totals.counts["inserted"] += merged.inserted
        totals.counts["updated"] += merged.updated
        totals.counts["unchanged"] += merged.unchanged
        if self.removed:
            totals.counts["deleted"] += crepo.mark_deleted_by_owner(conn, self.removed, run_key, now)
        if self.excluded:
            totals.counts["excluded"] += sum(len(ids) for ids in self.excluded.values())
            crepo.purge_by_owner(conn, self.excluded)
        totals.counts["deleted"] += crepo.mark_missing_in_streams(conn, self.finished_full, run_key, now)
        if self.links:
            store.save_many(conn, self.links, run_key, now=now)


# ----------------------------------------------------------------------------------- shards


def contact_shards(engine: Engine, settings: Settings, *, on_demand: bool = False,
                   push: bool = False) -> list[dict[str, Any]]:
    """Shard descriptors for the mapped extract task (``settings.contacts.shard_size`` users each).

    :param on_demand: a provision-on-demand run: one shard of the run's own users.
    :param push: a push run: one shard of the mailboxes its claimed notifications name.
    :return: ``[{"shard", "of", "first", "last"}]``; at least one (an empty shard when nobody is
        eligible or contacts are off, so downstream steps still clean up).
    """
    if on_demand:
        return [{"shard": 1, "of": 1, "first": None, "last": None, "on_demand": True}]
    if push:
        return [{"shard": 1, "of": 1, "first": None, "last": None, "push": True}]
    with engine.connect() as conn:
        shards = crepo.shard_descriptors(conn, settings.contacts.shard_size, settings.scope.include_guests)
    log.info("contacts: %d shard(s) of up to %d users", len(shards), settings.contacts.shard_size)
    return shards


def shard_label(shard: Mapping[str, Any]) -> str:
    """A readable name for a mapped task instance: ``3/10 a@x .. m@x``."""
    if shard.get("on_demand"):
        return "on demand (only_users)"
    if shard.get("push"):
        return "notified mailboxes"
    if shard.get("first") is None:
        return f"{shard.get('shard', 1)}/{shard.get('of', 1)} (no users)"
    return f"{shard.get('shard')}/{shard.get('of')} {shard.get('first')} .. {shard.get('last')}"


# ----------------------------------------------------------------------------------- 3CX side


def snapshot_phonebook(engine: Engine, threecx: ThreeCXClient, settings: Settings, run_key: str,
                       now: datetime, mode: str = "full") -> dict[str, int]:
    """Read the whole 3CX company phonebook (one paged read) and match it with ``phonebook_map``.

    Only the matches are stored (present, managed fields as read, duplicates, re-links of
    creates whose response was lost); foreign contacts are counted, never stored. A ``delta``
    run reads nothing here unless a create is still pending (its entry must be re-linked by tag):
    the map holds what the last writes left, and the apply step verifies the entries it updates
    by id. Full runs read everything, so hand edits and deletions in 3CX are repaired there.

    :param mode: the run's effective mode (``full`` or ``delta``).
    """
    from m365_3cx.reconcile.phonebook import match_snapshot

    if mode == "delta":
        with engine.connect() as conn:
            pending = crepo.pending_entry_count(conn)
        if not pending:
            log.info("3CX phonebook snapshot skipped (delta run, no pending creates)")
            return {"contacts": 0, "managed": 0, "foreign": 0, "relinked": 0, "read": 0}

    contacts = [c for page in threecx.list_contacts() for c in page]
    with engine.begin() as conn:
        matches, foreign = match_snapshot(load_frame(conn, "phonebook_map", columns=["contact_key", "threecx_id"]),
                                         contacts)
        relinked = crepo.apply_snapshot(conn, matches, run_key, now)
    present = sum(1 for m in matches if m.present)
    log.info("3CX phonebook snapshot: %d contacts, %d managed present, %d foreign, %d re-linked",
             len(contacts), present, foreign, relinked)
    return {"contacts": len(contacts), "managed": present, "foreign": foreign, "relinked": relinked, "read": 1}


def transform_phonebook(engine: Engine, settings: Settings, run_key: str, now: datetime,
                        only_owner_ids: Collection[str] | None = None, mode: str = "full",
                        recompute_all: bool = False) -> dict[str, int]:
    """Staged contacts -> desired entries (``tgt_phonebook``) and per-record notes.

    Every staged contact counts (also those of users an on-demand run did not read), so nobody's
    entry disappears because it was not read. With ``only_owner_ids`` (on demand) an entry those
    users sourced in the previous transform and no longer source is kept as a ``removed`` row with
    its previous owners, so the on-demand plan can tell which removals are theirs.

    :param mode: the run's effective mode. Delta and full runs recompute only the entries their
        changes touch (:mod:`m365_3cx.pipeline.phonebook_delta`; the result has ``incremental``),
        falling back to every entry when the settings that shape entries changed, when the stored
        targets did not reach 3CX, and in a full run when the last full recompute is older than
        :data:`~m365_3cx.pipeline.phonebook_delta.FULL_RECOMPUTE_AGE`. The transform notes of an
        incremental run are those of the contacts it recomputed.
    :param recompute_all: recompute every entry whatever the record says (``full_resync``).
    """
    from m365_3cx.pipeline import phonebook_delta
    from m365_3cx.pipeline.users import pending_user_keys
    from m365_3cx.staging import phonebook_sources
    from m365_3cx.transform.phonebook import SOURCE_COLUMNS, PhonebookBuilder, PhonebookParams, params_fingerprint

    params = PhonebookParams.from_settings(settings)
    fingerprint = params_fingerprint(params)
    if recompute_all:
        log.info("phonebook transform: full resync asked, recomputing every entry")
    elif mode in ("delta", "full") and only_owner_ids is None:
        bound = phonebook_delta.FULL_RECOMPUTE_AGE if mode == "full" else None
        done = phonebook_delta.transform_incremental(engine, params, fingerprint, run_key,
                                                     pending_user_keys(engine, run_key), now, recompute_after=bound)
        if done is not None:
            with engine.begin() as conn:
                add_notes(conn, run_key, note_rows(done.result.notes, run_key, now), step="transform_phonebook",
                          now=now)
            return {"entries": done.entries, "contacts": done.result.contacts_used, "skipped": done.result.skipped,
                    "excluded": done.result.excluded, "notes": len(done.result.notes), "removed": done.removed,
                    "dirty": done.dirty, "incremental": 1}
    with engine.connect() as conn:  # streamed: only the normalised copies stay in memory, not every row
        builder = PhonebookBuilder(load_frame(conn, "stg_users"), params)
        for chunk in iter_frames(conn, "stg_contacts", where={"deleted": False}, columns=SOURCE_COLUMNS):
            builder.add(chunk)
        previous = load_frame(conn, "tgt_phonebook") if only_owner_ids else None
    result = builder.result()
    del builder  # its copies are merged into the result
    rows = result.frame.to_dict("records")
    if previous is not None and len(previous):
        kept = {row["contact_key"] for row in rows}
        owners = set(only_owner_ids or ())
        for row in previous.to_dict("records"):
            mine = owners & set(row.get("owner_ids") or [])
            if row["contact_key"] not in kept and mine and row.get("state", "active") == "active":
                rows.append({k: v for k, v in row.items() if k not in ("run_key", "computed_at")}
                            | {"state": "removed"})
    with engine.begin() as conn:
        crepo.replace_phonebook_targets(conn, rows, run_key, now)
        phonebook_sources.replace_sources(conn, result.sources, run_key)
        phonebook_sources.set_transform_basis(conn, phonebook_delta.FEATURE, fingerprint, phonebook_sources.FULL,
                                              run_key, now)
        add_notes(conn, run_key, note_rows(result.notes, run_key, now), step="transform_phonebook", now=now)
    log.info("phonebook transform: %d entries from %d contacts; %d skipped, %d excluded, %d notes",
             len(rows), result.contacts_used, result.skipped, result.excluded, len(result.notes))
    return {"entries": len(rows), "contacts": result.contacts_used, "skipped": result.skipped,
            "excluded": result.excluded, "notes": len(result.notes)}


def owner_keys(engine: Engine, owner_ids: Collection[str]) -> dict[str, set[str]]:
    """Per user the ``tgt_phonebook`` entries they source (``removed`` rows: previously sourced)."""
    wanted = set(owner_ids)
    result: dict[str, set[str]] = {uid: set() for uid in wanted}
    with engine.connect() as conn:
        frame = load_frame(conn, "tgt_phonebook")
    for key, owners in zip(frame.get("contact_key", []), frame.get("owner_ids", []), strict=False):
        for uid in wanted & set(owners or []):
            result[uid].add(key)
    return result


def plan_phonebook(engine: Engine, run_key: str, only_owner_ids: Collection[str] | None = None,
                   now: datetime | None = None, preview: int = 10, mode: str = "full") -> dict[str, int]:
    """Diff desired entries against the managed 3CX contacts into ``sync_plan`` (object type ``contact``).

    Only the entries that can differ are read and diffed (:func:`~m365_3cx.staging.contacts.plan_candidates`:
    an entry whose managed-field fingerprints agree on both sides plans nothing); the managed count
    is counted in SQL.

    :param only_owner_ids: an on-demand run's users: plan only the entries they source (or sourced
        until now); every other entry is left exactly as it is. The plan step is traced per user.
    :param preview: how many planned changes to list in the log (``logs.plan_preview``).
    :param mode: the run's effective mode: after an incremental transform a ``delta`` run diffs only
        the entries it recomputed (and failed or pending ones, see
        :func:`~m365_3cx.pipeline.phonebook_delta.delta_plan_keys`).
    """
    import datetime as dt

    from m365_3cx.pipeline.phonebook_delta import delta_plan_keys
    from m365_3cx.reconcile.phonebook import plan_phonebook as plan
    from m365_3cx.reconcile.plan import plan_rows

    subset = (delta_plan_keys(engine, run_key, now or dt.datetime.now(dt.UTC))
              if mode == "delta" and only_owner_ids is None else None)
    with engine.connect() as conn:  # only the entries that can differ; settled ones are diff-free
        desired, mapping = crepo.plan_candidates(conn, subset)
        managed = crepo.managed_present_count(conn)
    missing = crepo.missing_fingerprints(desired, mapping)
    if missing:  # rows from before the fingerprints get theirs, once
        with engine.begin() as conn:
            crepo.fill_fingerprints(conn, missing)
    # The guard's base is every managed entry, not just the few diffed.
    result = replace(plan(desired, mapping), managed_count=managed)
    changes, forget = result.changes, result.forget
    keys_of: dict[str, set[str]] = {}
    if only_owner_ids is not None:
        keys_of = owner_keys(engine, only_owner_ids)
        scope = set().union(*keys_of.values()) if keys_of else set()
        changes = [c for c in changes if c.object_key in scope]
        forget = [k for k in forget if k in scope]
    with engine.begin() as conn:
        save_plan(conn, contact_plan_key(run_key), plan_rows(changes, contact_plan_key(run_key)))
        crepo.forget_entries(conn, forget)
        if only_owner_ids is not None:
            _trace_phonebook_plan(conn, run_key, keys_of, changes, now)
    counts = {"create": 0, "update": 0, "delete": 0}
    for change in changes:
        counts[change.action] += 1
    log_plan_preview(log, "phonebook", changes, preview)
    log.info("phonebook plan%s: %d create, %d update, %d delete of %d managed entries; %d forgotten",
             " (on demand)" if only_owner_ids is not None else "", counts["create"], counts["update"],
             counts["delete"], result.managed_count, len(forget))
    return {**counts, "managed": result.managed_count, "forgotten": len(forget)}


def _trace_phonebook_plan(conn: Any, run_key: str, keys_of: Mapping[str, set[str]], changes: list[Change],
                          now: datetime | None) -> None:
    import datetime as dt

    labels = trace.on_demand_users(conn, run_key)
    rows = []
    for uid, keys in sorted(keys_of.items()):
        tally = {"create": 0, "update": 0, "delete": 0}
        for change in changes:
            if change.object_key in keys:
                tally[change.action] += 1
        rows.append({"user_id": uid, "upn": labels.get(uid), "outcome": "planned" if any(tally.values()) else "none",
                     "detail": {**tally, "entries": len(keys)}})
    when = now or dt.datetime.now(dt.UTC)
    trace.replace_trace(conn, run_key, "phonebook_plan", trace.trace_rows(run_key, "phonebook_plan", rows, when))


def apply_phonebook(
    engine: Engine,
    threecx: ThreeCXClient,
    settings: Settings,
    run_key: str,
    now: datetime,
    *,
    dry_run: bool,
    allow_mass_removal: bool,
    mode: str = "full",
) -> dict[str, int]:
    """Execute the stored phonebook plan: mass-removal guard first, then the changes
    (``threecx.write_concurrency`` at a time), audited with bulk statements per chunk.

    Every write also records what the entry now holds (``phonebook_map.current``), so the next
    plan is right without re-reading the phonebook. A ``delta`` run did not read the phonebook:
    it reads the entries it is about to update by id first (filtered reads of 40) and re-plans
    them against what 3CX really holds (an entry deleted by hand is re-created, one already as
    desired is left alone and recorded as ``skipped``).

    :param mode: ``full`` or ``delta`` (the run's effective mode).
    The write gate (:func:`~m365_3cx.pipeline.safety.write_gate`) decides first (requested dry run,
    or writes off); deletes over the guard need the run's approval (or ``allow_mass_removal``), and a
    rejected or timed-out approval applies everything but the deletes.

    Creates are idempotent: entries whose tag is already in 3CX (an earlier attempt created them
    and its outcome was lost) are re-linked, not created again (one filtered read per 20 creates,
    ``threecx.read_concurrency`` at a time, before the first write).

    :raises MassRemovalError: before any write, when the plan deletes too many managed entries and no
        decision allows or rejects them.
    :raises RetriableError: the PBX failed transiently (the changes not tried stay ``skipped``).
    """
    import sqlalchemy as sa

    from m365_3cx.pipeline.safety import guard_removals, write_gate
    from m365_3cx.reconcile.apply import OK, Outcome, audit_rows
    from m365_3cx.reconcile.existing import RELINKED_NOTE, existing_contacts
    from m365_3cx.reconcile.phonebook import apply_contact_changes
    from m365_3cx.staging.schema import phonebook_map

    dry_run = write_gate(engine, run_key, dry_run, step="apply_phonebook").dry_run
    plan_key = contact_plan_key(run_key)
    with engine.connect() as conn:
        planned = load_changes(conn, contact_plan_key(run_key), "contact")
        managed = crepo.managed_present_count(conn)
        mapped_ids = dict(conn.execute(sa.select(phonebook_map.c.contact_key, phonebook_map.c.threecx_id)).all())
        currents = crepo.entry_currents(conn, [c.object_key for _, c in planned if c.action == "update"])
    planned = guard_removals(
        engine, run_key, plan_key, "contact", planned, managed, settings, allow=allow_mass_removal,
        dry_run=dry_run, scope_hint="contacts.personal_contacts, the exclusion category and the user scope",
    )
    changes = [change for _, change in planned]
    seq_of = {id(change): seq for seq, change in planned}
    verified: list[Outcome] = []
    if mode == "delta" and not dry_run:
        changes, verified, facts = _verify_updates(engine, threecx, changes, seq_of)
        currents.update({key: current for key, (_tid, current) in facts.items()})
        with engine.begin() as conn:
            crepo.set_entry_facts(conn, facts, now)

    def before_creates(creates: list[Change]) -> None:
        with engine.begin() as conn:
            crepo.record_pending_many(conn, [(c.object_key, str(c.fields.get("Tag", (None, None))[1] or ""))
                                             for c in creates], run_key, now)

    def record(outcomes: list[Outcome]) -> None:
        with engine.begin() as conn:
            reached = record_outcomes(
                conn, plan_key=plan_key, dry_run=dry_run,
                outcomes=[(seq_of[id(o.change)], o.result, audit_rows(o, run_key, now)) for o in outcomes])
            done = [o for o, ok in zip(outcomes, reached, strict=True) if ok]
            facts: dict[str, tuple[int, dict[str, Any] | None]] = {}
            for o in done:
                written = {f: after for f, (_before, after) in o.change.fields.items()}
                if o.change.action == "create" and o.threecx_id is not None:
                    facts[o.change.object_key] = (o.threecx_id, written)
                elif o.change.action == "update" and o.threecx_id is not None:
                    facts[o.change.object_key] = (o.threecx_id,
                                                  {**(currents.get(o.change.object_key) or {}), **written})
            crepo.set_entry_facts(conn, facts, now)
            crepo.forget_entries(conn, [o.change.object_key for o in done if o.change.action == "delete"
                                        and mapped_ids.get(o.change.object_key) == o.change.threecx_id])

    if verified:
        record(verified)
    relinked = {} if dry_run else existing_contacts(threecx, changes)
    done_before = [Outcome(c, OK, RELINKED_NOTE, relinked[id(c)]) for c in changes if id(c) in relinked]
    if done_before:  # created by an earlier attempt whose outcome was lost: never twice
        before_creates([o.change for o in done_before])
        record(done_before)
    changes = [c for c in changes if id(c) not in relinked]
    result = apply_contact_changes(changes, threecx, on_outcomes=record, before_creates=before_creates,
                                   dry_run=dry_run, concurrency=settings.threecx.write_concurrency)
    counts = result.as_dict()
    counts["skipped"] += len(verified)
    counts["verified"] = len(verified)
    counts.pop("disabled", None)
    counts["relinked"] = len(relinked)
    log.info("phonebook apply%s: %d created, %d updated, %d deleted, %d failed, %d skipped (%d already as planned)",
             " (dry run)" if dry_run else "", counts["created"], counts["updated"], counts["deleted"],
             counts["failed"], counts["skipped"], len(verified))
    return counts


def _verify_updates(
    engine: Engine, threecx: ThreeCXClient, changes: list[Change], seq_of: dict[int, int]
) -> tuple[list[Change], list[Any], dict[str, tuple[int, dict[str, Any] | None]]]:
    """Read the entries planned for update by id and re-plan them against what 3CX holds.

    :return: the changes to send (each re-planned one takes over its plan row), the outcomes of
        updates that are already as desired (``skipped``), and their facts as read.
    """
    import pandas as pd

    from m365_3cx.reconcile.apply import SKIPPED, Outcome
    from m365_3cx.reconcile.phonebook import is_foreign, managed_fields_of
    from m365_3cx.reconcile.phonebook import plan_phonebook as plan
    from m365_3cx.staging.schema import tgt_phonebook
    from m365_3cx.transform.phonebook import TAG_PREFIX

    updates = {c.object_key: c for c in changes if c.action == "update" and c.threecx_id is not None}
    if not updates:
        return changes, [], {}
    found = {int(c["Id"]): c for page in threecx.contacts_by_ids(u.threecx_id for u in updates.values())
             for c in page if isinstance(c.get("Id"), int)}
    with engine.connect() as conn:
        desired = load_frame(conn, "tgt_phonebook", where=tgt_phonebook.c.contact_key.in_(sorted(updates)))
    rows = []
    for key, change in updates.items():
        contact = found.get(int(change.threecx_id or 0))
        ours = contact is not None and not is_foreign(contact) and contact.get("Tag") == f"{TAG_PREFIX}{key}"
        rows.append({"contact_key": key, "threecx_id": change.threecx_id if ours else None, "present": ours,
                     "current": managed_fields_of(contact) if ours and contact is not None else None,
                     "duplicate_ids": []})
    replanned = {c.object_key: c for c in plan(desired, pd.DataFrame(rows)).changes if c.action != "delete"}
    kept: list[Change] = []
    already: list[Any] = []
    facts: dict[str, tuple[int, dict[str, Any] | None]] = {}
    current_of = {row["contact_key"]: row for row in rows}
    for change in changes:
        if change.action != "update" or change.object_key not in updates:
            kept.append(change)
            continue
        fresh = replanned.get(change.object_key)
        row = current_of[change.object_key]
        if fresh is None:
            already.append(Outcome(change, SKIPPED, "already as planned in 3CX (verified by id)", change.threecx_id))
            facts[change.object_key] = (int(change.threecx_id or 0), row["current"])
            continue
        seq_of[id(fresh)] = seq_of[id(change)]
        kept.append(fresh)
    log.info("phonebook delta: %d planned updates verified by id in %d filtered reads; %d re-created, %d already "
             "as planned", len(updates), -(-len(updates) // 40),
             sum(1 for c in replanned.values() if c.action == "create"), len(already))
    return kept, already, facts


def review_phonebook_removals(engine: Engine, settings: Settings, run_key: str) -> Any:
    """The run's planned phonebook deletes against the mass-removal guard (:class:`RemovalReview`)."""
    from m365_3cx.pipeline.outcomes import OPEN_STATUSES
    from m365_3cx.pipeline.safety import review_removals

    plan_key = contact_plan_key(run_key)
    with engine.connect() as conn:
        rows = [r for r in load_plan(conn, plan_key, statuses=OPEN_STATUSES)
                if (r["object_type"] or "contact") == "contact"]
        managed = crepo.managed_present_count(conn)
    return review_removals(rows, "contact", plan_key, managed, settings)


def phonebook_removal_labels(engine: Engine, keys: list[str]) -> dict[str, dict[str, Any]]:
    """Name and phone of the phonebook entries a plan deletes, as last read from 3CX (approval body)."""
    import sqlalchemy as sa

    from m365_3cx.staging.schema import phonebook_map
    from m365_3cx.transform.phonebook import PHONE_SLOTS

    if not keys:
        return {}
    query = sa.select(phonebook_map.c.contact_key, phonebook_map.c.current).where(
        phonebook_map.c.contact_key.in_(sa.bindparam("keys", expanding=True)))
    labels: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for key, current in conn.execute(query, {"keys": keys}):
            current = current or {}
            name = " ".join(str(current[f]) for f in ("FirstName", "LastName") if current.get(f)) \
                or current.get("CompanyName")
            phone = next((current[f] for f in PHONE_SLOTS if current.get(f)), None)
            labels[f"contact:{key}"] = {"name": name, "number": phone}
    return labels


__all__ = [
    "CONTACT_HEADERS",
    "apply_phonebook",
    "contact_plan_key",
    "contact_shards",
    "extract_contacts",
    "plan_phonebook",
    "shard_label",
    "snapshot_phonebook",
    "stage_contacts_page",
    "transform_phonebook",
]


#: Extract counts that mean the staged contacts changed in this run.
_CHANGE_COUNTS: Final = ("inserted", "updated", "deleted", "excluded", "gone", "expired")


def phonebook_has_work(
    engine: Engine, settings: Settings, run_key: str, mode: str, shard_counts: list[dict[str, Any]]
) -> bool:
    """Whether a run must read, plan and apply the phonebook (else a delta run skips those steps).

    True for full runs; when this run staged contact changes; when users changed since the last
    successful user-sync run (owners leaving scope take their entries along); when a create is
    still pending; when contacts are off but synced entries remain; and when staged contacts
    changed after the last successful run (a failed apply is retried by the next delta run).
    """
    import sqlalchemy as sa

    from m365_3cx.pipeline.users import pending_filter, pending_user_keys
    from m365_3cx.staging.schema import phonebook_map, stg_contacts

    if mode != "delta":
        return True
    if any(int(counts.get(name) or 0) for counts in shard_counts for name in _CHANGE_COUNTS):
        return True
    if pending_user_keys(engine, run_key):
        return True
    with engine.connect() as conn:
        mapped = conn.execute(sa.select(sa.func.count()).select_from(phonebook_map)).scalar_one()
        contacts = settings.contacts
        if contacts.personal_contacts == "off" and not contacts.shared_mailboxes and not contacts.org_contacts \
                and mapped:
            return True
        pending = conn.execute(
            sa.select(sa.func.count()).select_from(phonebook_map).where(phonebook_map.c.status == "pending")
        ).scalar_one()
        condition = pending_filter(conn, stg_contacts, run_key)
        if pending or condition is None:
            return True
        changed = conn.execute(sa.select(sa.func.count()).select_from(stg_contacts).where(condition)).scalar_one()
    return bool(changed)
