"""Shared mailboxes and organisational contacts -> ``stg_contacts`` (the phonebook's other sources).

**Shared mailboxes** (``contacts.shared_mailboxes``, UPNs): Graph exposes a shared mailbox as a
user with a mailbox whose ``accountEnabled`` is false (learn.microsoft.com/graph/api/user-get;
Exchange creates the disabled account with it). Each UPN is resolved with ``GET /users/{upn}``
(batched); its contacts are read exactly like personal contacts (:func:`m365_3cx.pipeline.contacts.read_streams`:
per-folder delta links, ``$batch``, the exclusion category) from the default Contacts folder, or
the folder ``contacts.shared_mailbox_folder`` names. Rows are staged with ``source = shared`` and
``owner_id = shared:<mailbox id>``, apart from any personal copy. A listed mailbox is never read
as a personal owner too. A mailbox taken off the list, or one Graph no longer knows (404), loses
its staged contacts; one that could not be read this run keeps them (with a note).

**Organisational contacts** (``contacts.org_contacts``; ``OrgContact.Read.All``): ``owner_id =
org``, ``source = org``. A full run first anchors a ``GET /contacts/delta`` link, then lists
``GET /contacts`` with ``phones`` and soft-deletes what the list no longer has. A delta run follows
the stored link: removed ids are soft-deleted, changed ids are re-read with ``GET /contacts/{id}``
through ``$batch`` (Microsoft's delta page shows no ``phones``, so numbers are never taken from
delta). orgContacts have no categories: ``exclude_category`` does not apply to them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from m365_3cx.errors import DeltaTokenExpiredError, GraphFatalError, RetriableError
from m365_3cx.graph.batch import BatchRequest, classify_item, execute_batch, relative_url
from m365_3cx.pipeline.contacts import _list_folders, _RoundPage, _Stream, _Totals, read_streams
from m365_3cx.staging import contacts as crepo
from m365_3cx.staging.runs import add_notes
from m365_3cx.staging.state import DeltaStateStore
from m365_3cx.transform.notes import ERROR, WARNING, Note, note_rows

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from m365_3cx.graph.client import GraphClient
    from m365_3cx.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["ORG_OWNER", "SHARED_PREFIX", "extract_other_sources", "org_contact_as_contact"]

ORG_OWNER: Final = "org"
SHARED_PREFIX: Final = "shared:"
STEP: Final = "extract_contact_sources"
#: orgContact properties read (learn.microsoft.com/graph/api/resources/orgcontact).
ORG_SELECT: Final = ("id", "displayName", "givenName", "surname", "companyName", "department", "jobTitle", "mail",
                     "phones")
#: What the delta round tracks: enough to see that a contact changed or went (numbers are re-read).
ORG_DELTA_SELECT: Final = ("id", "displayName", "givenName", "surname", "companyName", "department", "jobTitle",
                           "mail")
_ORG_RESOURCE: Final = "orgcontacts:delta"
_ORG_PERMISSION_HINT: Final = ("grant the application permission OrgContact.Read.All (with admin consent) or turn "
                               "contacts.org_contacts off")


def org_contact_as_contact(item: Mapping[str, Any]) -> dict[str, Any]:
    """An orgContact in the shape of an Outlook contact, so one boundary and one row builder serve both.

    ``phones`` of type ``mobile`` -> ``mobilePhone`` (the first), ``business`` -> ``businessPhones``,
    ``home`` -> ``homePhones``; fax, pager, radio, assistant and other numbers are not phonebook
    slots and are left out; ``mail`` -> ``emailAddresses``. An ``@removed`` marker is kept.
    """
    phones = [p for p in item.get("phones") or [] if isinstance(p, Mapping) and isinstance(p.get("number"), str)
              and p["number"].strip()]

    def numbers(kind: str) -> list[str]:
        return [str(p["number"]) for p in phones if str(p.get("type") or "").lower() == kind]

    contact: dict[str, Any] = {key: item.get(key) for key in ("id", "displayName", "givenName", "surname",
                                                               "companyName", "department", "jobTitle")}
    mobiles = numbers("mobile")
    contact.update({
        "mobilePhone": mobiles[0] if mobiles else None, "businessPhones": numbers("business"),
        "homePhones": numbers("home"), "categories": [],
        "emailAddresses": [{"address": item["mail"]}] if isinstance(item.get("mail"), str) and item["mail"] else [],
    })
    if "@removed" in item:
        contact["@removed"] = item["@removed"]
    return contact


def extract_other_sources(engine: Engine, graph: GraphClient, settings: Settings, run_key: str, mode: str,
                          now: datetime) -> dict[str, Any]:
    """Bring the shared-mailbox and organisational contacts in ``stg_contacts`` up to date.

    :param mode: ``full`` or ``delta``.
    :return: counts like :func:`m365_3cx.pipeline.contacts.extract_contacts` plus ``mailboxes``,
        ``missing_mailboxes`` and ``org`` (organisational contacts read).
    :raises GraphFatalError: organisational contacts are on but the app may not read them.
    :raises GraphRetriableError: Graph kept throttling or failing (the task retries).
    """
    totals = _Totals()
    totals.counts.update({"mailboxes": 0, "missing_mailboxes": 0, "org": 0})
    store = DeltaStateStore()
    _shared_mailboxes(engine, graph, settings, store, totals, run_key, mode, now)
    _org_contacts(engine, graph, settings, store, totals, run_key, mode, now)
    with engine.begin() as conn:
        add_notes(conn, run_key, note_rows(totals.notes, run_key, now), step=STEP, now=now)
    counts = totals.counts
    log.info("contact sources: %d shared mailboxes (%d not found), %d organisational contacts read; %d inserted, "
             "%d updated, %d deleted, %d excluded", counts["mailboxes"], counts["missing_mailboxes"], counts["org"],
             counts["inserted"], counts["updated"], counts["deleted"], counts["excluded"])
    return {"mode": mode, **counts, "notes": len(totals.notes)}


# ----------------------------------------------------------------------------------- shared mailboxes


def _mailbox_note(upn: str, message: str, severity: str) -> Note:
    return Note("contact_source", upn[:256], upn, "contacts.shared_mailboxes", severity,
                f"shared mailbox {upn}: {message}")


def _resolve_mailboxes(graph: GraphClient, upns: tuple[str, ...],
                       totals: _Totals) -> tuple[list[dict[str, Any]], set[str], bool]:
    """``GET /users/{upn}`` for every listed UPN (batched).

    :return: the mailboxes found (``user_id``, ``user_principal_name``), the UPNs Graph does not
        know (404) and whether every UPN got an answer (no other error).
    """
    requests = [BatchRequest(id=str(i), url=f"/users/{quote(upn, safe='@')}?$select=id,userPrincipalName,"
                             "accountEnabled,mail") for i, upn in enumerate(upns)]
    responses = execute_batch(graph, requests) if requests else {}
    found: list[dict[str, Any]] = []
    missing: set[str] = set()
    complete = True
    for i, upn in enumerate(upns):
        response = responses[str(i)]
        error = classify_item(response)
        if error is not None:
            if isinstance(error, RetriableError):
                raise error
            if response.status == 404:
                missing.add(upn.casefold())
                totals.notes.append(_mailbox_note(upn, "no such user in Microsoft 365; its contacts are removed "
                                                       "from the phonebook", WARNING))
            else:
                complete = False
                totals.notes.append(_mailbox_note(upn, f"not read this run: {error}", ERROR))
            continue
        body = response.body if isinstance(response.body, Mapping) else {}
        if not body.get("id"):
            complete = False
            continue
        if body.get("accountEnabled") is not False:  # still read: an admin may list any mailbox
            totals.notes.append(_mailbox_note(upn, "its account is enabled, so it may be a person's mailbox, not a "
                                                   "shared one; its contacts are read as listed", WARNING))
        found.append({"user_id": str(body["id"]), "user_principal_name": str(body.get("userPrincipalName") or upn)})
    return found, missing, complete


def _shared_mailboxes(engine: Engine, graph: GraphClient, settings: Settings, store: DeltaStateStore,
                      totals: _Totals, run_key: str, mode: str, now: datetime) -> None:
    contacts = settings.contacts
    mailboxes, missing, complete = _resolve_mailboxes(graph, contacts.shared_mailboxes, totals)
    totals.counts["mailboxes"] = len(mailboxes)
    totals.counts["missing_mailboxes"] = len(missing)
    skipped: set[str] = set()
    folders = _list_folders(graph, mailboxes, totals, skipped) if mailboxes else {}
    wanted = (contacts.shared_mailbox_folder or "").strip().casefold()
    streams: list[_Stream] = []
    for mailbox in mailboxes:
        uid, upn = mailbox["user_id"], mailbox["user_principal_name"]
        if uid in skipped:
            continue
        owner = f"{SHARED_PREFIX}{uid}"
        listed = folders.get(uid, [])
        if not wanted:
            parents = {str(f["parentFolderId"]) for f in listed if f.get("parentFolderId")}
            default = sorted(parents - {str(f["id"]) for f in listed})
            streams.append(_Stream(uid, upn, None, default_folder_id=default[0] if default else None, owner=owner,
                                   source="shared"))
            continue
        match = [f for f in listed if str(f.get("displayName") or "").strip().casefold() == wanted]
        if not match:
            totals.notes.append(_mailbox_note(upn, f"has no contact folder {contacts.shared_mailbox_folder!r}; "
                                                   "nothing read", WARNING))
        streams.extend(_Stream(uid, upn, str(f["id"]), owner=owner, source="shared") for f in match)
    totals.counts["streams"] += len(streams)
    with engine.begin() as conn:
        live = {(s.owner_key, s.folder_id) for s in streams}
        kept = {f"{SHARED_PREFIX}{m['user_id']}" for m in mailboxes if m["user_id"] in skipped}
        owners = crepo.staged_owners(conn, "shared")
        gone: dict[str, list[str | None]] = {}
        for owner, folder in crepo.staged_streams(conn, sorted(owners), source="shared"):
            if (owner, folder) in live or owner in kept:
                continue
            if not complete and owner not in {s.owner_key for s in streams}:
                continue  # a mailbox that could not be resolved this run keeps its contacts
            gone.setdefault(owner, []).append(folder)
        for owner, folder_ids in gone.items():
            totals.counts["gone"] += crepo.mark_streams_gone(conn, owner, folder_ids, run_key, now)
    read_streams(engine, graph, settings, store, streams, totals, skipped, mode, run_key, now)


# ----------------------------------------------------------------------------------- organisational contacts


def _org_stream() -> _Stream:
    return _Stream(ORG_OWNER, "organisation", None, owner=ORG_OWNER, source="org")


def _with_hint(err: Exception) -> Exception:
    """A 403 as an error naming the permission to grant; anything else unchanged."""
    if isinstance(err, GraphFatalError) and err.status == 403:
        return GraphFatalError(f"reading organisational contacts was refused: {_ORG_PERMISSION_HINT} ({err})",
                               status=err.status, code=err.code, request_id=err.request_id)
    return err


def _stage_org_page(engine: Engine, items: list[Mapping[str, Any]], stream: _Stream, totals: _Totals,
                    run_key: str, now: datetime, links: Mapping[str, str] | None = None) -> None:
    page = _RoundPage()
    page.take(stream, {"value": [org_contact_as_contact(i) for i in items]}, None, totals)
    if links:
        page.links.update(links)
    totals.counts["org"] += sum(1 for i in items if "@removed" not in i)
    with engine.begin() as conn:
        page.stage(conn, DeltaStateStore(), totals, run_key, now)


def _org_contacts(engine: Engine, graph: GraphClient, settings: Settings, store: DeltaStateStore,
                  totals: _Totals, run_key: str, mode: str, now: datetime) -> None:
    if not settings.contacts.org_contacts:
        with engine.begin() as conn:
            totals.counts["gone"] += crepo.mark_streams_gone(conn, ORG_OWNER, [None], run_key, now)
            store.clear(conn, _ORG_RESOURCE)
        return
    with engine.connect() as conn:
        link = store.get(conn, _ORG_RESOURCE) if mode == "delta" else None
    if link:
        try:
            _org_delta(engine, graph, store, totals, relative_url(link, graph.credentials.graph_url), run_key, now)
            return
        except DeltaTokenExpiredError:
            log.warning("contacts: the organisational contacts delta link expired; full read")
            totals.counts["expired"] += 1
    _org_full(engine, graph, store, totals, run_key, now)


def _delta_round(graph: GraphClient, url: str, params: Mapping[str, Any] | None) -> tuple[list[dict[str, Any]], str]:
    """Every item of one delta round and its new delta link."""
    items: list[dict[str, Any]] = []
    delta_link = None
    try:
        for page in graph.iter_pages(url, params=params):
            items.extend(i for i in page.items if isinstance(i, dict) and i.get("id"))
            delta_link = page.delta_link or delta_link
    except GraphFatalError as err:
        raise _with_hint(err) from None
    if not delta_link:
        raise GraphFatalError("organisational contacts delta round ended without a delta link", code="NoDeltaLink")
    return items, delta_link


def _org_full(engine: Engine, graph: GraphClient, store: DeltaStateStore, totals: _Totals, run_key: str,
              now: datetime) -> None:
    """Anchor a delta link first (nothing changed during the listing is missed), then list with phones.

    Each listed page is staged as it comes; what the listing no longer has is soft-deleted at the end.
    """
    _, delta_link = _delta_round(graph, "/contacts/delta", {"$select": ",".join(ORG_DELTA_SELECT)})
    stream = _org_stream()
    try:
        for page in graph.iter_pages("/contacts", params={"$select": ",".join(ORG_SELECT), "$top": 999}):
            _stage_org_page(engine, page.items, stream, totals, run_key, now)
    except GraphFatalError as err:
        raise _with_hint(err) from None
    with engine.begin() as conn:
        totals.counts["deleted"] += crepo.mark_missing_in_streams(conn, [(ORG_OWNER, None, stream.seen)], run_key,
                                                                  now)
        store.save_many(conn, {_ORG_RESOURCE: delta_link}, run_key, now=now)


def _org_delta(engine: Engine, graph: GraphClient, store: DeltaStateStore, totals: _Totals, url: str,
               run_key: str, now: datetime) -> None:
    """Follow the stored link; re-read the changed contacts (with phones) through ``$batch``."""
    items, delta_link = _delta_round(graph, url, None)
    removed = [i for i in items if "@removed" in i]
    changed = sorted({str(i["id"]) for i in items if "@removed" not in i})
    requests = [BatchRequest(id=str(n), url=f"/contacts/{quote(cid, safe='')}?$select={','.join(ORG_SELECT)}")
                for n, cid in enumerate(changed)]
    responses = execute_batch(graph, requests) if requests else {}
    fresh: list[Mapping[str, Any]] = list(removed)
    for n, cid in enumerate(changed):
        response = responses[str(n)]
        error = classify_item(response)
        if error is None and isinstance(response.body, Mapping):
            fresh.append(response.body)
        elif response.status == 404:  # gone again since the delta round
            fresh.append({"id": cid, "@removed": {"reason": "deleted"}})
        elif error is not None:
            raise _with_hint(error)
    _stage_org_page(engine, fresh, _org_stream(), totals, run_key, now, links={_ORG_RESOURCE: delta_link})
