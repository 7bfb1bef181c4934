"""The emulated tenant: users, groups, a change log for delta queries, issued tokens (no HTTP).

Every mutation bumps :attr:`TenantBackend.generation` and appends a :class:`ChangeEntry`
``(generation, user id, changed property names, kind)``. A delta token records the generation
it was issued at, so a later round replays the log from there. Users are
:class:`UserRecord` objects so mailbox data (contacts, events) can hang off them later.
All public methods take the backend lock.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import json
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from emulators.graph import query
from emulators.graph import seed as seeding
from emulators.graph.mailbox import Mailbox, MailboxNotEnabled, MailboxOptions, MailboxStore, UnknownUser
from emulators.graph.subscriptions import SubscriptionHub

CHANGE_KINDS = ("created", "updated", "soft_deleted", "hard_deleted", "restored")
#: Application permissions ``PUT /_emulator/permissions`` knows. What the app holds lives in one place,
#: the subscription hub's ``granted`` (its defaults are every permission the product documents).
APP_PERMISSIONS = frozenset({"User.Read.All", "GroupMember.Read.All", "Directory.Read.All", "Contacts.Read",
                             "Calendars.Read", "MailboxSettings.Read", "Presence.Read.All", "OrgContact.Read.All"})
READ_ONLY = frozenset({"id", "createdDateTime"})


class NotFound(KeyError):
    """No such user or group."""


class Conflict(ValueError):
    """A uniqueness rule was broken (e.g. a second user with the same UPN)."""


class SyncStateNotFound(ValueError):
    """The delta token is expired, was expired via the admin API or belongs to an old reset."""


class BadToken(ValueError):
    """A ``$skiptoken``/``$deltatoken`` that is not one of ours."""


@dataclass
class UserRecord:
    """One directory user.

    :param props: the Graph properties (``microsoft.graph.user`` JSON names).
    :param seq: creation order; listings are sorted by it.
    :param deleted: ``None`` or the soft-delete time (ISO string).
    :param mailbox: reserved for mailbox-owned data (contacts, events) in a later issue.
    """

    props: dict[str, Any]
    seq: int
    deleted: str | None = None
    mailbox: dict[str, Any] = field(default_factory=dict)


@dataclass
class Group:
    id: str
    displayName: str
    members: list[str]
    mailNickname: str = ""
    description: str | None = None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "displayName": self.displayName, "mailNickname": self.mailNickname,
                "description": self.description, "securityEnabled": True, "mailEnabled": False}


@dataclass(frozen=True)
class ChangeEntry:
    generation: int
    user_id: str
    props: frozenset[str]
    kind: str


@dataclass(frozen=True)
class AppRegistration:
    """The tenant and its registered client-credentials app."""

    tenant_id: str
    domain: str
    client_id: str
    client_secret: str
    display_name: str
    certificate_der: bytes | None = None

    def thumbprints(self) -> tuple[str, str] | None:
        """(SHA-1, SHA-256) base64url thumbprints of the certificate, unpadded."""
        if self.certificate_der is None:
            return None
        import hashlib

        def b64(digest: bytes) -> str:
            return base64.urlsafe_b64encode(digest).decode().rstrip("=")

        return b64(hashlib.sha1(self.certificate_der).digest()), b64(hashlib.sha256(self.certificate_der).digest())


@dataclass(frozen=True)
class DeltaCursor:
    """What a delta ``$skiptoken`` or ``$deltatoken`` encodes (opaque to clients).

    :param phase: ``i`` initial round page, ``c`` change round page, ``d`` a deltaLink.
    :param since: changes after this generation are reported (``c``, ``d``).
    :param upto: the generation the round is pinned to (``i``, ``c``).
    :param offset: items already served in this round.
    :param select: tracked properties (``None`` = default set).
    :param ids: ``$filter=id eq`` ids, if any.
    :param epoch: the backend reset epoch the token belongs to.
    :param serial: issue order, for expiring all tokens issued so far.
    :param issued: issue time (epoch seconds).
    """

    phase: str
    since: int
    upto: int
    offset: int
    select: tuple[str, ...] | None
    ids: tuple[str, ...] | None
    epoch: str
    serial: int
    issued: float

    def encode(self) -> str:
        raw = json.dumps({"p": self.phase, "s": self.since, "u": self.upto, "o": self.offset,
                          "sel": self.select, "ids": self.ids, "e": self.epoch, "n": self.serial,
                          "t": round(self.issued, 3)}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> DeltaCursor:
        """:raises BadToken: when ``token`` is not a cursor this emulator issued."""
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            return cls(phase=data["p"], since=int(data["s"]), upto=int(data["u"]), offset=int(data["o"]),
                       select=tuple(data["sel"]) if data["sel"] is not None else None,
                       ids=tuple(data["ids"]) if data["ids"] is not None else None,
                       epoch=str(data["e"]), serial=int(data["n"]), issued=float(data["t"]))
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise BadToken("Badly formed token.") from exc


@dataclass(frozen=True)
class DeltaPage:
    items: list[dict[str, Any]]
    next_cursor: DeltaCursor | None
    delta_cursor: DeltaCursor | None


class TokenStore:
    """Opaque bearer tokens issued by the token endpoint; thread safe. Never logs tokens."""

    def __init__(self, lifetime: int = 3599) -> None:
        self.lifetime = lifetime
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[float, str]] = {}
        self.issued_count = 0

    def issue(self, client_id: str) -> tuple[str, int]:
        token = "emu." + secrets.token_urlsafe(40)
        with self._lock:
            self._tokens[token] = (time.time() + self.lifetime, client_id)
            self.issued_count += 1
        return token, self.lifetime

    def check(self, token: str | None) -> str:
        """``ok``, ``empty``, ``expired`` or ``invalid``."""
        if not token:
            return "empty"
        with self._lock:
            entry = self._tokens.get(token)
        if entry is None:
            return "invalid"
        return "ok" if entry[0] > time.time() else "expired"

    def revoke(self, token: str | None = None) -> int:
        """Forget ``token`` (or every token); return how many were dropped."""
        with self._lock:
            if token is None:
                count = len(self._tokens)
                self._tokens.clear()
                return count
            return 1 if self._tokens.pop(token, None) else 0


class TenantBackend:
    """In-memory tenant.

    :param seed: seed of the tenant's random source (:mod:`emulators.graph.seed`).
    :param users: number of seeded users.
    :param domain: the tenant domain.
    :param delta_token_max_age: seconds a delta token stays valid.
    :param token_lifetime: seconds an access token stays valid (``expires_in``).
    """

    def __init__(self, seed: int = 42, users: int = 40, *, domain: str = seeding.DEFAULT_DOMAIN,
                 delta_token_max_age: float = 7 * 24 * 3600, token_lifetime: int = 3599,
                 mailbox_options: MailboxOptions | None = None) -> None:
        self._lock = threading.RLock()
        self.mailboxes = MailboxStore(seed, mailbox_options)
        self.seed = seed
        self.user_count = users
        self.domain = domain
        self.delta_token_max_age = delta_token_max_age
        self.tokens = TokenStore(token_lifetime)
        tenant = seeding.build_tenant(seed, users, domain)
        self.app = AppRegistration(tenant.app.tenant_id, domain, tenant.app.client_id,
                                   tenant.app.client_secret, tenant.app.display_name)
        self.subscriptions = SubscriptionHub(self.app.tenant_id, self.app.client_id, self._subscription_target,
                                             seed=seed)
        self.mailboxes.on_change = self.subscriptions.item_changed
        self._serial = 0
        self._expired_before = 0
        from emulators.graph.orgcontacts import OrgContactStore
        from emulators.graph.presence import PresenceStore

        self.presence = PresenceStore()
        self.org_contacts = OrgContactStore()
        self._load(tenant)

    # ------------------------------------------------------------ seeding
    def _load(self, tenant: seeding.TenantSeed) -> None:
        self._users: dict[str, UserRecord] = {}
        self._by_upn: dict[str, str] | None = None
        self._seq = 0
        for props in tenant.users:
            self._seq += 1
            self._users[props["id"]] = UserRecord(copy.deepcopy(props), self._seq)
        self._groups = {g["id"]: Group(g["id"], g["displayName"], list(g["members"]), g["mailNickname"],
                                       g.get("description")) for g in tenant.groups}
        self._log: list[ChangeEntry] = []
        self.generation = 0
        self.epoch = uuid.uuid4().hex[:12]
        self._rng = random.Random(f"{self.seed}/runtime")
        self.mailboxes.reseed(self.seed, [r.props for r in sorted(self._users.values(), key=lambda r: r.seq)])

    def reset(self, seed: int | None = None, users: int | None = None) -> None:
        """Reseed users and groups (the app registration and issued access tokens are kept).

        Delta tokens issued before the reset become invalid (``syncStateNotFound``).
        """
        with self._lock:
            if seed is not None:
                self.seed = seed
            if users is not None:
                self.user_count = users
            self._load(seeding.build_tenant(self.seed, self.user_count, self.domain))
            self.subscriptions.clear()
            self.presence.clear()
            self.org_contacts.clear()

    def _subscription_target(self, key: str) -> tuple[str, bool]:
        """``(user id, has a mailbox)`` for a subscription resource's user. :raises NotFound:"""
        from emulators.graph.mailbox import has_mailbox

        with self._lock:
            props = self._find(key).props
            return props["id"], has_mailbox(props)

    def close(self) -> None:
        """Stop background work (the change-notification delivery thread)."""
        self.subscriptions.close()

    @property
    def granted(self) -> set[str]:
        """The application permissions the app registration holds (with admin consent)."""
        return set(self.subscriptions.granted)

    def has_permission(self, permission: str) -> bool:
        """Whether the app registration holds ``permission``."""
        return permission in self.subscriptions.granted

    def set_permissions(self, granted: list[str]) -> list[str]:
        """Replace the app's granted permissions (subscriptions see it too). :raises ValueError: an unknown one."""
        unknown = set(granted) - APP_PERMISSIONS
        if unknown:
            known = ", ".join(sorted(APP_PERMISSIONS))
            raise ValueError(f"unknown permissions: {', '.join(sorted(unknown))} (known: {known})")
        self.subscriptions.set_granted(granted)
        return sorted(self.subscriptions.granted)

    def live_user_ids(self, ids: list[str]) -> set[str]:
        """The ids among ``ids`` that are users of the tenant and not soft-deleted."""
        with self._lock:
            return {uid for uid in ids if uid in self._users and self._users[uid].deleted is None}

    def register_certificate(self, der: bytes) -> None:
        """Register the app's certificate (DER) for client assertions."""
        with self._lock:
            self.app = replace(self.app, certificate_der=der)

    # ------------------------------------------------------------ reads
    def _active(self) -> list[UserRecord]:
        return sorted((r for r in self._users.values() if r.deleted is None), key=lambda r: r.seq)

    def list_users(self, predicate: query.Predicate | None = None) -> list[dict[str, Any]]:
        """Active users in stable (creation) order, optionally filtered; deep copies."""
        with self._lock:
            return [copy.deepcopy(r.props) for r in self._active() if predicate is None or predicate(r.props)]

    def users_page(self, predicate: query.Predicate | None, offset: int, limit: int,
                   render: Callable[[dict[str, Any]], dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
        """How many active users match, and the page ``[offset, offset + limit)`` of them in creation
        order, each passed through ``render`` under the lock (which must copy what it keeps)."""
        with self._lock:
            matching = [r.props for r in self._active() if predicate is None or predicate(r.props)]
            return len(matching), [render(props) for props in matching[offset:offset + limit]]

    def deleted_users(self) -> list[dict[str, Any]]:
        """Soft-deleted users (deleted items), each with its ``deletedDateTime``; deep copies."""
        with self._lock:
            gone = sorted((r for r in self._users.values() if r.deleted is not None), key=lambda r: r.seq)
            return [{**copy.deepcopy(r.props), "deletedDateTime": r.deleted} for r in gone]

    def _find(self, key: str, *, include_deleted: bool = False) -> UserRecord:
        record = self._users.get(key)
        if record is None:
            if self._by_upn is None:  # rebuilt after a create, a userPrincipalName change or a hard delete
                self._by_upn = {}
                for user_id, r in self._users.items():  # the first user holding a UPN wins, as a scan would
                    self._by_upn.setdefault((r.props.get("userPrincipalName") or "").lower(), user_id)
            found = self._by_upn.get(key.lower())
            record = None if found is None else self._users.get(found)
        if record is None or (record.deleted is not None and not include_deleted):
            raise NotFound(key)
        return record

    def get_user(self, key: str) -> dict[str, Any]:
        """An active user by id or userPrincipalName. :raises NotFound:"""
        with self._lock:
            return copy.deepcopy(self._find(key).props)

    def mailbox_for(self, key: str) -> Mailbox:
        """The mailbox of a user given by id or UPN.

        :raises UnknownUser: no such user. :raises MailboxNotEnabled: guest, no mail or soft-deleted.
        """
        with self._lock:
            try:
                record = self._find(key, include_deleted=True)
            except NotFound:
                raise UnknownUser(key) from None
            if record.deleted is not None:
                raise MailboxNotEnabled(key)
            props = record.props
        return self.mailboxes.mailbox(props)

    def get_group(self, group_id: str) -> dict[str, Any]:
        """:raises NotFound:"""
        with self._lock:
            group = self._groups.get(group_id)
            if group is None:
                raise NotFound(group_id)
            return group.public()

    def group_members(self, group_id: str, *, transitive: bool) -> list[tuple[str, dict[str, Any]]]:
        """``(odata type, object)`` pairs: users (active only) and, when direct, nested groups.

        :raises NotFound: for an unknown group.
        """
        with self._lock:
            if group_id not in self._groups:
                raise NotFound(group_id)
            out: list[tuple[str, dict[str, Any]]] = []
            seen: set[str] = set()

            def walk(gid: str) -> None:
                for member in self._groups[gid].members:
                    if member in seen:
                        continue
                    seen.add(member)
                    if member in self._groups:
                        out.append(("group", self._groups[member].public()))
                        if transitive:
                            walk(member)
                    elif member in self._users and self._users[member].deleted is None:
                        out.append(("user", copy.deepcopy(self._users[member].props)))

            walk(group_id)
            return out

    def snapshot(self) -> dict[str, Any]:
        """Everything, for ``GET /_emulator/state``."""
        with self._lock:
            return {
                "tenant_id": self.app.tenant_id,
                "domain": self.domain,
                "seed": self.seed,
                "generation": self.generation,
                "epoch": self.epoch,
                "users": [copy.deepcopy(r.props) for r in self._active()],
                "deleted_users": [{**copy.deepcopy(r.props), "deletedDateTime": r.deleted}
                                  for r in sorted(self._users.values(), key=lambda r: r.seq) if r.deleted],
                "groups": [{**g.public(), "members": list(g.members)} for g in self._groups.values()],
            }

    # ------------------------------------------------------------ writes
    def _record(self, user_id: str, props: set[str] | frozenset[str], kind: str) -> None:
        self.generation += 1
        self._log.append(ChangeEntry(self.generation, user_id, frozenset(props), kind))
        self.subscriptions.user_changed(user_id, kind)
        if kind in ("soft_deleted", "hard_deleted"):
            self.subscriptions.mailbox_gone(user_id)

    def create_user(self, data: dict[str, Any]) -> dict[str, Any]:
        """Create a user from Graph JSON (``id`` optional); unset properties default sensibly.

        :raises Conflict: when the id or userPrincipalName is taken.
        :raises ValueError: for unknown properties or a missing ``userPrincipalName``/``displayName``.
        """
        with self._lock:
            unknown = set(data) - set(query.USER_PROPERTIES)
            if unknown:
                raise ValueError(f"unknown user properties: {', '.join(sorted(unknown))}")
            if not data.get("userPrincipalName") or not data.get("displayName"):
                raise ValueError("userPrincipalName and displayName are required")
            user_id = str(data.get("id") or seeding.new_guid(self._rng))
            if user_id in self._users:
                raise Conflict(f"user {user_id} exists")
            upn = data["userPrincipalName"].lower()
            if any((r.props.get("userPrincipalName") or "").lower() == upn for r in self._users.values()):
                raise Conflict(f"userPrincipalName {data['userPrincipalName']} is taken")
            props: dict[str, Any] = {name: None for name in query.USER_PROPERTIES}
            props.update({"businessPhones": [], "otherMails": [], "proxyAddresses": [], "accountEnabled": True,
                          "userType": "Member",
                          "createdDateTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                          "onPremisesExtensionAttributes": seeding.empty_extension_attributes()})
            attrs = data.get("onPremisesExtensionAttributes") or {}
            props.update({k: copy.deepcopy(v) for k, v in data.items() if k != "onPremisesExtensionAttributes"})
            props["onPremisesExtensionAttributes"].update(attrs)
            props["id"] = user_id
            self._seq += 1
            self._users[user_id] = UserRecord(props, self._seq)
            self._by_upn = None
            self._record(user_id, set(props), "created")
            return copy.deepcopy(props)

    def update_user(self, key: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply ``changes``; record the names of properties whose value changed.

        ``onPremisesExtensionAttributes`` is merged slot by slot.

        :raises NotFound: :raises ValueError: for unknown or read-only properties.
        """
        with self._lock:
            record = self._find(key)
            bad = {k for k in changes if k not in query.USER_PROPERTIES or k in READ_ONLY}
            if bad:
                raise ValueError(f"cannot update: {', '.join(sorted(bad))}")
            changed: set[str] = set()
            for name, value in changes.items():
                if name == "onPremisesExtensionAttributes":
                    merged = {**record.props[name], **(value or {})}
                    if merged != record.props[name]:
                        record.props[name] = merged
                        changed.add(name)
                elif record.props.get(name) != value:
                    record.props[name] = copy.deepcopy(value)
                    changed.add(name)
            if "userPrincipalName" in changed:
                self._by_upn = None
            if changed:
                self._record(record.props["id"], changed, "updated")
            return copy.deepcopy(record.props)

    def set_enabled(self, key: str, enabled: bool) -> dict[str, Any]:
        return self.update_user(key, {"accountEnabled": enabled})

    def delete_user(self, key: str, *, hard: bool = False) -> None:
        """Soft delete (restorable) or, with ``hard``, remove for good (also from groups).

        :raises NotFound:
        """
        with self._lock:
            record = self._find(key, include_deleted=hard)
            user_id = record.props["id"]
            if hard:
                del self._users[user_id]
                self._by_upn = None
                for group in self._groups.values():
                    group.members = [m for m in group.members if m != user_id]
                self._record(user_id, frozenset(), "hard_deleted")
            else:
                record.deleted = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                self._record(user_id, frozenset(), "soft_deleted")

    def restore_user(self, user_id: str) -> dict[str, Any]:
        """Restore a soft-deleted user. :raises NotFound: when it is not in deleted items."""
        with self._lock:
            record = self._users.get(user_id)
            if record is None or record.deleted is None:
                raise NotFound(user_id)
            record.deleted = None
            self._record(user_id, set(record.props), "restored")
            return copy.deepcopy(record.props)

    def set_group_members(self, group_id: str, member_ids: list[str]) -> dict[str, Any]:
        """Replace a group's direct members (user or group ids).

        :raises NotFound: for an unknown group; :raises ValueError: for unknown member ids.
        """
        with self._lock:
            group = self._groups.get(group_id)
            if group is None:
                raise NotFound(group_id)
            unknown = [m for m in member_ids if m not in self._users and m not in self._groups]
            if unknown:
                raise ValueError(f"unknown member ids: {', '.join(unknown)}")
            group.members = list(dict.fromkeys(member_ids))
            return {**group.public(), "members": list(group.members)}

    # ------------------------------------------------------------ delta
    def _new_cursor(self, **fields: Any) -> DeltaCursor:
        self._serial += 1
        return DeltaCursor(epoch=self.epoch, serial=self._serial, issued=time.time(), **fields)

    def expire_delta_tokens(self) -> int:
        """Make every delta token issued so far answer ``syncStateNotFound``; return the count."""
        with self._lock:
            self._expired_before = self._serial + 1
            return self._serial

    def start_delta(self, select: list[str] | None, ids: frozenset[str] | None, *, latest: bool = False) -> DeltaCursor:
        """The cursor of a new initial round (or, with ``latest``, a deltaLink cursor for "from now")."""
        with self._lock:
            sel = tuple(select) if select is not None else None
            id_tuple = tuple(sorted(ids)) if ids else None
            if latest:
                return self._new_cursor(phase="d", since=self.generation, upto=self.generation, offset=0,
                                        select=sel, ids=id_tuple)
            return self._new_cursor(phase="i", since=0, upto=self.generation, offset=0, select=sel, ids=id_tuple)

    def resume_delta(self, cursor: DeltaCursor, *, is_delta_token: bool) -> DeltaCursor:
        """Validate a presented token; a deltaLink cursor becomes the first page of a change round.

        :raises SyncStateNotFound: expired (age or admin), or from before a reset.
        :raises BadToken: a skiptoken given as deltatoken or the reverse.
        """
        with self._lock:
            if cursor.epoch != self.epoch:
                raise SyncStateNotFound("epoch")
            if is_delta_token != (cursor.phase == "d"):
                raise BadToken("Badly formed token.")
            if not is_delta_token:
                return cursor
            if cursor.serial < self._expired_before or time.time() - cursor.issued > self.delta_token_max_age:
                raise SyncStateNotFound("expired")
            return replace(cursor, phase="c", upto=self.generation, offset=0)

    def delta_page(self, cursor: DeltaCursor, limit: int, *, minimal: bool = False) -> DeltaPage:
        """One page of a delta round: items, and either the next cursor or the deltaLink cursor."""
        with self._lock:
            ids = set(cursor.ids) if cursor.ids else None
            select = list(cursor.select) if cursor.select is not None else None
            if cursor.phase == "i":
                records = [r for r in self._active() if ids is None or r.props["id"] in ids]
                items = [query.project(r.props, select, omit_null=True)
                         for r in records[cursor.offset:cursor.offset + limit]]
                total = len(records)
            else:
                changes = self._changes(cursor.since, cursor.upto, select, ids, minimal)
                items = changes[cursor.offset:cursor.offset + limit]
                total = len(changes)
            end = cursor.offset + limit
            if end < total:
                return DeltaPage(items, replace(cursor, offset=end), None)
            delta = self._new_cursor(phase="d", since=cursor.upto, upto=cursor.upto, offset=0,
                                     select=cursor.select, ids=cursor.ids)
            return DeltaPage(items, None, delta)

    def _changes(self, since: int, upto: int, select: list[str] | None, ids: set[str] | None,
                 minimal: bool) -> list[dict[str, Any]]:
        tracked = set(select if select is not None else query.DEFAULT_USER_SELECT) | {"id"}
        per_user: dict[str, tuple[int, set[str], bool]] = {}
        for entry in self._log:
            if entry.generation <= since or entry.generation > upto:
                continue
            if ids is not None and entry.user_id not in ids:
                continue
            _, props, full = per_user.get(entry.user_id, (0, set(), False))
            per_user[entry.user_id] = (entry.generation, props | entry.props,
                                       full or entry.kind in ("created", "restored"))
        out: list[dict[str, Any]] = []
        for user_id, (_, props, full) in sorted(per_user.items(), key=lambda kv: kv[1][0]):
            record = self._users.get(user_id)
            if record is None:
                out.append({"id": user_id, "@removed": {"reason": "deleted"}})
            elif record.deleted is not None:
                out.append({"id": user_id, "@removed": {"reason": "changed"}})
            elif full:
                out.append(query.project(record.props, select, omit_null=True))
            elif props & tracked:
                if minimal:
                    out.append({"id": user_id, **{p: copy.deepcopy(record.props.get(p))
                                                  for p in sorted(props & tracked) if p != "id"}})
                else:
                    out.append(query.project(record.props, select, omit_null=True))
        return out
