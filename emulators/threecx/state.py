"""The emulated PBX: users (extensions), departments, forwarding profiles and OAuth tokens.

No HTTP here. Every public method takes the lock, so routes (event loop), the admin API and
tests (their own thread) can share one backend. Validation failures raise the exceptions of
:mod:`emulators.threecx.errors`, which carry their HTTP status.

Entity sets live in their own dicts keyed by id; ``Users`` and ``Groups`` share the DN id
sequence as on a real PBX. Another entity set (e.g. ``Contacts``) adds a dict, an id sequence in
``_next_ids``, an :class:`EntityType` and its own create/update/delete methods.
"""

from __future__ import annotations

import copy
import random
import re
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from emulators.threecx import errors as e
from emulators.threecx.contacts import ContactStore
from emulators.threecx.errors import BadRequest, NotFound, ValidationError, XapiError
from emulators.threecx.odata import EntityType, LazyViews, register
from emulators.threecx.seed import client_secret_for, random_text, seed_backend

PROFILE_NAMES = ("Available", "Away", "Out of office", "Custom 1", "Custom 2")
_PROFILE_CUSTOM_NAMES = {"Custom 1": "Lunch", "Custom 2": "Business Trip"}
USER_TAGS = ("MS", "Teams", "Google", "WakeUp", "FaxServer", "Principal", "WeakID", "WeakPass", "WM", "AI")
ROLE_NAMES = ("users", "managers", "receptionists", "group_owners", "system_admins", "system_owners")

MAX_LENGTHS = {
    "FirstName": 50, "LastName": 50, "EmailAddress": 255, "Mobile": 40, "OutboundCallerID": 40,
    "Language": 10, "WebMeetingFriendlyName": 50, "Blfs": 20480, "ContactImage": 1024,
    "EmergencyAdditionalInfo": 255, "HotdeskingAssignment": 7,
}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+?[0-9 ()\-]*$")


def _user_defaults() -> dict[str, Any]:
    """Every structural ``Pbx.User`` property with the value a fresh extension gets."""
    return {
        "Id": 0, "Number": "", "FirstName": "", "LastName": "", "DisplayName": "", "EmailAddress": "",
        "Mobile": "", "OutboundCallerID": "", "Enabled": True, "CurrentProfileName": "Available",
        "Require2FA": False, "Enable2FA": False, "Language": "EN", "PrimaryGroupId": 0, "Tags": [],
        "IsRegistered": False, "QueueStatus": "LoggedOut", "HideInPhonebook": False, "Internal": False,
        "VMEnabled": True, "VMPIN": "", "VMDisablePinAuth": False, "VMPlayCallerID": False,
        "VMPlayMsgDateTime": "None", "VMEmailOptions": "Notification", "TranscriptionMode": "Inherit",
        "CallUsEnableChat": False, "CallUsEnablePhone": False, "CallUsEnableVideo": False,
        "CallUsRequirement": "Both", "ClickToCallId": "", "AccessPassword": "", "AIAgent": False,
        "AllowLanOnly": False, "AllowOwnRecordings": False, "AuthID": "", "AuthPassword": "",
        "Blfs": "<PhoneDevice><BLFS/></PhoneDevice>", "BlockTunnel": False,
        "BreakTime": {"Type": "OfficeHours"}, "Hours": {"Type": "OfficeHours"}, "CallScreening": False,
        "ContactImage": "", "DatevEnabled": False, "DeskphonePassword": "", "EmergencyAdditionalInfo": "",
        "EmergencyLocationId": "", "EnableHotdesking": False, "ForbidRecording": False,
        "GoogleCalendarEnabled": False, "GoogleContactsEnabled": False, "GoogleSignInEnabled": False,
        "HotdeskingAssignment": "", "MS365CalendarEnabled": False, "MS365ContactsEnabled": False,
        "MS365SignInEnabled": False, "MS365TeamsEnabled": False, "MyPhoneAllowDeleteRecordings": False,
        "MyPhoneHideForwardings": False, "MyPhonePush": True, "MyPhoneShowRecordings": False,
        "OfficeHoursProps": [], "PbxDeliversAudio": False, "PinProtected": False, "PinProtectTimeout": 0,
        "PromptSet": "8210986B-9412-497f-AD77-3A554F4A9BDB", "RecordCalls": False,
        "RecordEmailNotify": False, "RecordExternalCallsOnly": False, "SendEmailMissedCalls": True,
        "SIPID": "", "SRTPMode": "SRTPDisabled", "WebMeetingApproveParticipants": False,
        "WebMeetingFriendlyName": "",
    }


def _types(values: dict[str, Any]) -> dict[str, type]:
    return {name: type(value) for name, value in values.items()}


RIGHTS_TYPE = register(EntityType("Pbx.Rights", {
    "RoleName": str, "AllowIVR": bool, "AllowParking": bool, "AllowToChangePresence": bool,
    "AllowToManageCompanyBook": bool, "AssignClearOperations": bool, "CanBargeIn": bool,
    "CanIntercom": bool, "CanSeeGroupCalls": bool, "CanSeeGroupMembers": bool,
    "CanSeeGroupRecordings": bool, "Invalid": bool, "PerformOperations": bool, "ShowMyCalls": bool,
    "ShowMyPresence": bool, "ShowMyPresenceOutside": bool,
}))
USERGROUP_TYPE = register(EntityType("Pbx.UserGroup", {
    "CanDelete": bool, "GroupId": int, "Id": int, "MemberName": str, "Name": str, "Number": str,
    "Tags": list, "TranscriptionMode": str, "Type": str,
}, {"Rights": "Pbx.Rights", "GroupRights": "Pbx.Rights"}))
FORWARDING_PROFILE_TYPE = register(EntityType("Pbx.ForwardingProfile", {
    "Id": int, "Name": str, "CustomName": str, "CustomMessage": str, "AvailableRoute": dict,
    "AwayRoute": dict, "NoAnswerTimeout": int, "RingMyMobile": bool, "AcceptMultipleCalls": bool,
    "BlockPushCalls": bool, "DisableRingGroupCalls": bool, "OfficeHoursAutoQueueLogOut": bool,
}))
USER_TYPE = register(EntityType("Pbx.User", _types(_user_defaults()), {
    "Groups": "Pbx.UserGroup", "ForwardingProfiles": "Pbx.ForwardingProfile",
    "ForwardingExceptions": None, "Phones": None, "Greetings": None,
}))
GROUP_TYPE = register(EntityType("Pbx.Group", {
    "Id": int, "Number": str, "Name": str, "IsDefault": bool, "HasMembers": bool, "Language": str,
    "TimeZoneId": str, "AllowCallService": bool, "AnswerAfter": int, "DisableCustomPrompt": bool,
    "GloballyVisible": bool, "PromptSet": str, "CurrentGroupHours": str, "TranscriptionMode": str,
    "CallUsEnableChat": bool, "CallUsEnablePhone": bool, "CallUsEnableVideo": bool,
    "CallUsRequirement": str, "ClickToCallId": str,
}, {"Members": "Pbx.UserGroup", "Rights": "Pbx.Rights", "OfficeHolidays": None}))

_READ_ONLY = {"Id", "IsRegistered", "DisplayName", "QueueStatus"}


@dataclass
class PbxConfig:
    """PBX-wide settings (``start(**opts)`` keys).

    :param version: ``SystemStatus.Version``; before 20.0.9 the token ``expires_in`` is in minutes.
    :param first_extension: lowest number ``GetFirstAvailableExtensionNumber`` hands out.
    :param max_top: cap on ``$top`` (and page size when ``$top`` is missing).
    :param default_contact_type: the ``ContactType`` stamped on a contact created without one (or
        with ``null``). 3CX documents no default; the emulator's ``3CX`` is configurable so tests can
        prove the sync does not depend on it.
    """

    version: str = "20.0.10.1002"
    product_code: str = "3CXPSENT"
    fqdn: str = "pbx.contoso.example"
    first_extension: int = 100
    number_min_length: int = 2
    number_max_length: int = 7
    max_top: int = 100
    max_sim_calls: int = 32
    default_contact_type: str = "3CX"

    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", self.version))


@dataclass
class UserRecord:
    """One extension: its ``Pbx.User`` properties, department memberships and profiles."""

    props: dict[str, Any]
    memberships: list[dict[str, Any]] = field(default_factory=list)  # {Id, GroupId, RoleName}
    profiles: list[dict[str, Any]] = field(default_factory=list)
    protected: bool = False


@dataclass
class Token:
    value: str
    client_id: str
    expires_at: float


class PbxBackend:
    """All state of one emulated PBX.

    :param seed: seed of the one random source (passwords, PINs, tokens).
    :param unmanaged: seed the unmanaged extensions (see :mod:`emulators.threecx.seed`).
    :param client_id: the service principal's client id.
    :param client_secret: its API key (derived from ``seed`` when ``None``).
    :param token_lifetime: access token lifetime in seconds.
    :param config: PBX settings.
    """

    def __init__(self, *, seed: int = 7, unmanaged: bool = True, client_id: str = "m365sync",
                 client_secret: str | None = None, token_lifetime: int = 3600,
                 config: PbxConfig | None = None) -> None:
        self.lock = threading.RLock()
        self.clock: Callable[[], float] = time.monotonic
        self.seed = seed
        self.unmanaged = unmanaged
        self.config = config or PbxConfig()
        self.token_lifetime = token_lifetime
        self.clients = {client_id: client_secret or client_secret_for(seed)}
        self.client_id = client_id
        self._token_serial = 0
        self.reset()

    # ------------------------------------------------------------ lifecycle

    def reset(self, seed: int | None = None, unmanaged: bool | None = None) -> None:
        """Back to the seeded state: users, groups and tokens rebuilt from scratch."""
        with self.lock:
            if seed is not None:
                self.seed = seed
            if unmanaged is not None:
                self.unmanaged = unmanaged
            self.random = random.Random(self.seed)
            self._users: dict[int, UserRecord] = {}
            self._numbers: dict[str, int] = {}  # extension number -> user id (a Number never changes)
            self._user_order: list[int] | None = []  # the ids in id order; None after a create or delete
            self._groups: dict[int, dict[str, Any]] = {}
            self._next_dn_id = 1
            self._next_ids: dict[str, int] = {"membership": 1, "profile": 1}
            self._tokens: dict[str, Token] = {}
            self.tokens_issued = 0
            self._contacts = ContactStore(self.config.default_contact_type)
            seed_backend(self, unmanaged=self.unmanaged)
            if self.unmanaged:
                self._contacts.seed()

    def announce(self, base_url: str, ca_bundle: Any) -> dict[str, Any]:
        """The CLI start line / ``handle.info``."""
        return {"base_url": base_url, "client_id": self.client_id,
                "client_secret": self.clients[self.client_id], "ca_bundle": str(ca_bundle)}

    def _next(self, sequence: str) -> int:
        value = self._next_ids[sequence]
        self._next_ids[sequence] = value + 1
        return value

    def _next_dn(self) -> int:
        value = self._next_dn_id
        self._next_dn_id += 1
        return value

    # ------------------------------------------------------------ tokens

    def issue_token(self, client_id: str, client_secret: str, grant_type: str) -> dict[str, Any]:
        """Client-credentials grant; revokes the client's previous token (one live token per client).

        :raises TokenError: for a wrong grant type or credentials.
        """
        with self.lock:
            if grant_type != "client_credentials":
                raise e.TokenError(400, "unsupported_grant_type", "The grant type is not supported.")
            if not client_id or self.clients.get(client_id) != client_secret:
                raise e.TokenError(401, "unauthorized", "The request requires valid user authentication.")
            for value in [v for v, t in self._tokens.items() if t.client_id == client_id]:
                del self._tokens[value]
            self._token_serial += 1
            value = f"tcx{self._token_serial}.{random_text(self.random, 48)}"
            self._tokens[value] = Token(value, client_id, self.clock() + self.token_lifetime)
            self.tokens_issued += 1
            legacy = self.config.version_tuple() < (20, 0, 9)
            expires_in = self.token_lifetime // 60 if legacy else self.token_lifetime
            return {"token_type": "Bearer", "expires_in": expires_in, "access_token": value,
                    "refresh_token": None}

    def authenticate(self, token: str | None) -> bool:
        """Whether ``token`` is live (issued, not revoked, not expired)."""
        with self.lock:
            found = self._tokens.get(token or "")
            if found is None:
                return False
            if self.clock() >= found.expires_at:
                del self._tokens[found.value]
                return False
            return True

    def revoke_token(self, token: str | None) -> None:
        with self.lock:
            self._tokens.pop(token or "", None)

    def revoke_all_tokens(self) -> int:
        """Revoke every live token; return how many there were."""
        with self.lock:
            count = len(self._tokens)
            self._tokens.clear()
            return count

    def live_tokens(self) -> int:
        with self.lock:
            now = self.clock()
            return sum(1 for t in self._tokens.values() if now < t.expires_at)

    # ------------------------------------------------------------ groups

    def add_group(self, Name: str, IsDefault: bool = False) -> dict[str, Any]:
        with self.lock:
            group_id = self._next_dn()
            group = {
                "Id": group_id, "Number": f"GRP{len(self._groups):04d}", "Name": Name, "IsDefault": IsDefault,
                "HasMembers": False, "Language": "EN", "TimeZoneId": "51", "AllowCallService": True,
                "AnswerAfter": 0, "DisableCustomPrompt": False, "GloballyVisible": False,
                "PromptSet": "8210986B-9412-497f-AD77-3A554F4A9BDB", "CurrentGroupHours": "Default",
                "TranscriptionMode": "Inherit", "CallUsEnableChat": False, "CallUsEnablePhone": False,
                "CallUsEnableVideo": False, "CallUsRequirement": "Both", "ClickToCallId": "",
            }
            self._groups[group_id] = group
            return copy.deepcopy(group)

    def default_group_id(self) -> int:
        with self.lock:
            return next(g["Id"] for g in self._groups.values() if g["IsDefault"])

    def list_groups(self) -> list[dict[str, Any]]:
        """Every department as a record with ``Members``, ``Rights`` and ``OfficeHolidays``."""
        with self.lock:
            return [self._group_view(g) for g in sorted(self._groups.values(), key=lambda g: g["Id"])]

    def get_group(self, group_id: int) -> dict[str, Any]:
        """:raises NotFound: when there is no such group."""
        with self.lock:
            group = self._groups.get(group_id)
            if group is None:
                raise NotFound("Group")
            return self._group_view(group)

    def _group_view(self, group: dict[str, Any]) -> dict[str, Any]:
        members = [self._membership_view(rec, m) for rec in self._sorted_users()
                   for m in rec.memberships if m["GroupId"] == group["Id"]]
        view = copy.deepcopy(group)
        view["HasMembers"] = bool(members)
        view.update({"Members": members, "Rights": [], "OfficeHolidays": []})
        return view

    # ------------------------------------------------------------ users: read

    def _sorted_users(self) -> list[UserRecord]:
        if self._user_order is None:
            self._user_order = sorted(self._users)
        return [self._users[k] for k in self._user_order]

    def list_users(self, expand: Collection[str] | None = None) -> list[dict[str, Any]]:
        """Every user as a record, by Id.

        :param expand: navigation properties to materialise; ``None`` = all of them. Listing a
            large PBX page by page stays cheap when the caller expands nothing.
        """
        with self.lock:
            if expand is None:
                return [self._user_view(rec, deep=False) for rec in self._sorted_users()]
            return [self._user_view(rec, expand, deep=False) for rec in self._sorted_users()]

    def user_views(self, expand: Collection[str] | None = None, ids: Collection[int] | None = None,
                   numbers: Collection[str] | None = None) -> Sequence[dict[str, Any]]:
        """Every user by Id, as :meth:`list_users` gives them, but each view is built when it is read:
        a ``$top``/``$skip`` page with no ``$filter`` costs O(page) views, not O(PBX).

        :param ids: only these ids (an index lookup, for ``$filter=Id eq ..`` reads).
        :param numbers: only the users with one of these extension numbers (for ``$filter=Number eq ..``
            reads: one set lookup per user instead of the whole filter); ``ids`` wins when both are given.
        """
        with self.lock:
            if ids is not None:
                records = [self._users[i] for i in sorted(set(ids)) if i in self._users]
            elif numbers is not None:
                found = {self._numbers[n] for n in set(numbers) if n in self._numbers}
                records = [self._users[i] for i in sorted(found)]
            else:
                records = self._sorted_users()
            return LazyViews(records, lambda rec: self._user_view(rec, expand, deep=False), self.lock)

    def get_user(self, user_id: int) -> dict[str, Any]:
        """:raises NotFound: when there is no such user."""
        with self.lock:
            return self._user_view(self._record(user_id))

    def get_user_by_number(self, number: str) -> dict[str, Any]:
        """:raises NotFound: when no user has that extension number."""
        with self.lock:
            user_id = self._numbers.get(number)
            if user_id is None:
                raise NotFound("User")
            return self._user_view(self._users[user_id])

    def _record(self, user_id: int) -> UserRecord:
        rec = self._users.get(user_id)
        if rec is None:
            raise NotFound("User")
        return rec

    def _user_view(self, rec: UserRecord, expand: Collection[str] | None = None, *,
                   deep: bool = True) -> dict[str, Any]:
        # Listing shares the property values (a shallow copy): records are replaced, never changed in
        # place (update_user swaps in an edited deep copy), and the route shapes each page into new dicts.
        view = copy.deepcopy(rec.props) if deep else dict(rec.props)
        if expand is None or "Groups" in expand:
            view["Groups"] = [self._membership_view(rec, m) for m in rec.memberships]
        if expand is None or "ForwardingProfiles" in expand:
            view["ForwardingProfiles"] = copy.deepcopy(rec.profiles)
        view.update({"ForwardingExceptions": [], "Phones": [], "Greetings": []})
        return view

    def _membership_view(self, rec: UserRecord, membership: dict[str, Any]) -> dict[str, Any]:
        group = self._groups.get(membership["GroupId"], {})
        return {
            "Id": membership["Id"], "GroupId": membership["GroupId"], "Name": group.get("Name", ""),
            "Number": rec.props["Number"], "MemberName": rec.props["DisplayName"], "CanDelete": True,
            "Type": "Extension", "Tags": list(rec.props["Tags"]), "TranscriptionMode": "Inherit",
            "Rights": _rights(membership["RoleName"]), "GroupRights": _rights("users"),
        }

    def used_numbers(self) -> set[str]:
        with self.lock:
            return set(self._numbers)

    def first_available_number(self) -> str:
        """Lowest free extension number at or above ``config.first_extension``."""
        with self.lock:
            number = self.config.first_extension
            while str(number) in self._numbers:
                number += 1
            return str(number)

    # ------------------------------------------------------------ users: write

    def create_user(self, body: Any, *, admin: bool = False, protected: bool = False) -> dict[str, Any]:
        """Create an extension from a (partial) ``Pbx.User`` body; return the full user record.

        A missing ``Number`` gets :meth:`first_available_number`; the user joins the default
        department unless ``Groups`` says otherwise, and gets the five forwarding profiles.

        :raises ValidationError: for a bad, duplicate or unknown property.
        """
        with self.lock:
            props = _user_defaults()
            body = _require_object(body)
            number = body.get("Number")
            if number in (None, ""):
                number = self.first_available_number()
            props["Number"] = number
            self._validate_number(number)
            rec = UserRecord(props=props, protected=protected,
                             profiles=[self._new_profile(name, number) for name in PROFILE_NAMES])
            self._apply(rec, body, creating=True, admin=admin)
            if "Groups" not in body:
                rec.memberships = [{"Id": self._next("membership"), "GroupId": self.default_group_id(),
                                    "RoleName": "users"}]
            if not rec.props["PrimaryGroupId"] and rec.memberships:
                rec.props["PrimaryGroupId"] = rec.memberships[0]["GroupId"]
            user_id = self._next_dn()
            rec.props["Id"] = user_id
            rec.props["ClickToCallId"] = rec.props["ClickToCallId"] or f"ext{number}"
            rec.props["AuthID"] = rec.props["AuthID"] or random_text(self.random, 10)
            rec.props["AuthPassword"] = rec.props["AuthPassword"] or random_text(self.random, 10)
            rec.props["AccessPassword"] = rec.props["AccessPassword"] or random_text(self.random, 10)
            rec.props["VMPIN"] = rec.props["VMPIN"] or random_text(self.random, 4, "0123456789")
            rec.props["DeskphonePassword"] = rec.props["DeskphonePassword"] or random_text(self.random, 8)
            self._users[user_id] = rec
            self._numbers[rec.props["Number"]] = user_id
            self._user_order = None
            return self._user_view(rec)

    def update_user(self, user_id: int, body: Any, *, admin: bool = False) -> None:
        """Apply a partial ``Pbx.User`` body (PATCH semantics: only sent properties change).

        :raises NotFound: when there is no such user.
        :raises ValidationError: for a bad or unknown property, or a changed ``Number``.
        """
        with self.lock:
            current = self._record(user_id)
            body = _require_object(body)
            draft = copy.deepcopy(current)
            if "Number" in body and body["Number"] != current.props["Number"]:
                raise ValidationError("Number", e.NOT_ALLOWED)
            self._apply(draft, body, creating=False, admin=admin)
            if draft.memberships and draft.props["PrimaryGroupId"] not in {
                    m["GroupId"] for m in draft.memberships}:
                draft.props["PrimaryGroupId"] = draft.memberships[0]["GroupId"]
            self._users[user_id] = draft

    def delete_user(self, user_id: int) -> None:
        """:raises NotFound: when there is no such user. :raises XapiError: for a protected one."""
        with self.lock:
            rec = self._record(user_id)
            if rec.protected:
                raise XapiError(400, f"Number:\n{e.CANNOT_DELETE}",
                                [{"code": "", "message": e.CANNOT_DELETE, "target": "Number"}])
            self._forget(user_id)

    def batch_delete(self, ids: Any) -> list[dict[str, Any]]:
        """Delete each id; return a ``Pbx.UserDeleteError`` per id that could not be deleted.

        :raises BadRequest: when ``ids`` is not a list of integers.
        """
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise BadRequest("The parameter 'ids' must be an array of integers.")
        failures = []
        with self.lock:
            for user_id in ids:
                rec = self._users.get(user_id)
                if rec is None:
                    failures.append({"ExtensionNumber": "", "Error": e.NOT_FOUND})
                elif rec.protected:
                    failures.append({"ExtensionNumber": rec.props["Number"], "Error": e.CANNOT_DELETE})
                else:
                    self._forget(user_id)
        return failures

    def _forget(self, user_id: int) -> None:
        rec = self._users.pop(user_id)
        self._numbers.pop(rec.props["Number"], None)
        self._user_order = None

    def set_protected(self, user_id: int, protected: bool) -> None:
        with self.lock:
            self._record(user_id).protected = protected

    def _validate_number(self, number: Any) -> None:
        cfg = self.config
        if not isinstance(number, str) or not number.isdigit() or not (
                cfg.number_min_length <= len(number) <= cfg.number_max_length):
            raise ValidationError("Number", e.INVALID_NUMBER)
        if number in self._numbers:
            raise ValidationError("Number", e.ALREADY_IN_USE)

    def _apply(self, rec: UserRecord, body: dict[str, Any], *, creating: bool, admin: bool) -> None:
        """Validate ``body`` and write it into ``rec`` (a draft the caller commits)."""
        props = rec.props
        changes: dict[str, Any] = {}
        for name, value in body.items():
            if name.startswith("@odata") or name in ("Id", "Number", "DisplayName"):
                continue
            if name in _READ_ONLY and not admin:
                continue  # the console (admin API) may set IsRegistered/QueueStatus to simulate phones
            if name in USER_TYPE.nav:
                continue
            kind = USER_TYPE.props.get(name)
            if kind is None:
                raise ValidationError(name, e.UNKNOWN_PROPERTY)
            changes[name] = _coerce(name, value, kind)
        for name, value in changes.items():
            limit = MAX_LENGTHS.get(name)
            if limit is not None and len(value) > limit:
                raise ValidationError(name, e.TOO_LONG)
        email = changes.get("EmailAddress")
        if email and not _EMAIL.match(email):
            raise ValidationError("EmailAddress", e.INVALID_EMAIL)
        for name in ("Mobile", "OutboundCallerID"):
            if changes.get(name) and not _PHONE.match(changes[name]):
                raise ValidationError(name, e.INVALID_PHONE)
        if "Tags" in changes and not all(t in USER_TAGS for t in changes["Tags"]):
            raise ValidationError("Tags", e.INVALID_VALUE)
        if changes.get("QueueStatus", "LoggedOut") not in ("LoggedOut", "LoggedIn"):
            raise ValidationError("QueueStatus", e.INVALID_VALUE)
        if "CurrentProfileName" in changes:
            names = {p["Name"] for p in rec.profiles} if rec.profiles else set(PROFILE_NAMES)
            if changes["CurrentProfileName"] not in names:
                raise ValidationError("CurrentProfileName", e.NOT_FOUND)
        if "Groups" in body:
            rec.memberships = self._memberships(body["Groups"], rec)
        if "PrimaryGroupId" in changes:
            group_id = changes["PrimaryGroupId"]
            if group_id not in self._groups:
                raise ValidationError("PrimaryGroupId", e.NOT_FOUND)
            if group_id not in {m["GroupId"] for m in rec.memberships} and not (
                    creating and "Groups" not in body and group_id == self.default_group_id()):
                raise ValidationError("PrimaryGroupId", e.NOT_ALLOWED)
        if "ForwardingProfiles" in body:
            self._merge_profiles(rec, body["ForwardingProfiles"])
        props.update(changes)
        props["DisplayName"] = " ".join(p for p in (props["FirstName"], props["LastName"]) if p)

    def _memberships(self, groups: Any, rec: UserRecord) -> list[dict[str, Any]]:
        if not isinstance(groups, list):
            raise ValidationError("Groups", e.INVALID_VALUE)
        existing = {m["GroupId"]: m["Id"] for m in rec.memberships}
        result: list[dict[str, Any]] = []
        for item in groups:
            if not isinstance(item, dict) or not isinstance(item.get("GroupId"), int):
                raise ValidationError("Groups", e.INVALID_VALUE)
            if item["GroupId"] not in self._groups:
                raise ValidationError("Groups", e.NOT_FOUND)
            rights = item.get("Rights") or {}
            role = rights.get("RoleName", "users") if isinstance(rights, dict) else None
            if role not in ROLE_NAMES:
                raise ValidationError("Groups", e.INVALID_VALUE)
            if any(m["GroupId"] == item["GroupId"] for m in result):
                raise ValidationError("Groups", e.ALREADY_IN_USE)
            membership_id = existing.get(item["GroupId"]) or self._next("membership")
            result.append({"Id": membership_id, "GroupId": item["GroupId"], "RoleName": role})
        return result

    def _merge_profiles(self, rec: UserRecord, profiles: Any) -> None:
        if not isinstance(profiles, list):
            raise ValidationError("ForwardingProfiles", e.INVALID_VALUE)
        for item in profiles:
            if not isinstance(item, dict):
                raise ValidationError("ForwardingProfiles", e.INVALID_VALUE)
            target = next((p for p in rec.profiles if ("Id" in item and p["Id"] == item["Id"])
                           or ("Id" not in item and p["Name"] == item.get("Name"))), None)
            if target is None:
                raise ValidationError("ForwardingProfiles", e.NOT_FOUND)
            for key, value in item.items():
                if key in ("Id", "Name"):
                    continue
                if key not in FORWARDING_PROFILE_TYPE.props:
                    raise ValidationError(f"ForwardingProfiles.{key}", e.UNKNOWN_PROPERTY)
                target[key] = _coerce(f"ForwardingProfiles.{key}", value, FORWARDING_PROFILE_TYPE.props[key])

    def _new_profile(self, name: str, number: str) -> dict[str, Any]:
        def destination(to: str = "VoiceMail") -> dict[str, Any]:
            return {"To": to, "Number": number, "External": "", "Name": "", "Type": "None", "Tags": []}

        immediate = name in ("Away", "Out of office", "Custom 2")
        return {
            "Id": self._next("profile"), "Name": name, "CustomName": _PROFILE_CUSTOM_NAMES.get(name, ""),
            "CustomMessage": "",
            "AvailableRoute": {
                "BusyAllCalls": True, "BusyExternal": destination(), "BusyInternal": destination(),
                "NoAnswerAllCalls": True, "NoAnswerExternal": destination(), "NoAnswerInternal": destination(),
                "NotRegisteredAllCalls": True, "NotRegisteredExternal": destination(),
                "NotRegisteredInternal": destination(),
            },
            "AwayRoute": {"AllHoursExternal": True, "AllHoursInternal": True,
                          "External": destination(), "Internal": destination()},
            "NoAnswerTimeout": 20, "RingMyMobile": False, "AcceptMultipleCalls": not immediate,
            "BlockPushCalls": name == "Out of office", "DisableRingGroupCalls": immediate,
            "OfficeHoursAutoQueueLogOut": False,
        }

    # ------------------------------------------------------------ contacts (company phonebook)

    def list_contacts(self, ids: Collection[int] | None = None) -> list[dict[str, Any]]:
        """Every ``Pbx.Contact`` (or those with the given ids), by Id; read-only records.

        :param ids: only these ids (an index lookup, for ``$filter=Id eq ..`` reads).
        """
        with self.lock:
            return self._contacts.list() if ids is None else self._contacts.by_ids(ids)

    def contact_views(self, ids: Collection[int] | None = None,
                      tags: Collection[str] | None = None) -> Sequence[dict[str, Any]]:
        """:meth:`list_contacts` without copying the phonebook: an unfiltered page costs O(page).

        :param tags: only the contacts with one of these ``Tag`` values (an index lookup, for
            ``$filter=Tag eq ..`` reads); ``ids`` wins when both are given.
        """
        with self.lock:
            if ids is not None:
                return self._contacts.by_ids(ids)
            return self._contacts.view() if tags is None else self._contacts.by_tags(tags)

    def get_contact(self, contact_id: int) -> dict[str, Any]:
        """:raises NotFound:"""
        with self.lock:
            return self._contacts.get(contact_id)

    def create_contact(self, body: Any) -> dict[str, Any]:
        """:raises ValidationError: :raises BadRequest:"""
        with self.lock:
            return self._contacts.create(body)

    def update_contact(self, contact_id: int, body: Any) -> dict[str, Any]:
        """PATCH semantics; a 400 changes nothing. :raises NotFound: :raises ValidationError:"""
        with self.lock:
            return self._contacts.update(contact_id, body)

    def delete_contact(self, contact_id: int) -> None:
        """:raises NotFound:"""
        with self.lock:
            self._contacts.delete(contact_id)

    def delete_contacts(self, ids: Any) -> int:
        """``Pbx.DeleteContactsById``: unknown ids are skipped. :raises BadRequest:"""
        with self.lock:
            return self._contacts.delete_many(ids)

    # ------------------------------------------------------------ system

    def system_status(self) -> dict[str, Any]:
        with self.lock:
            users = len(self._users)
            return {
                "Id": 1, "FQDN": self.config.fqdn, "Version": self.config.version, "Activated": True,
                "ProductCode": self.config.product_code, "LicenseActive": True, "LicenseKey": "****-****-****",
                "MaxSimCalls": self.config.max_sim_calls, "MaxUserExtensions": 0, "ExtensionsTotal": users,
                "UserExtensions": users, "ExtensionsRegistered": 0, "TrunksTotal": 0, "TrunksRegistered": 0,
                "CallsActive": 0, "AutoUpdateEnabled": True, "Support": True, "ResellerName": "",
                "ExpirationDate": "2099-12-31T00:00:00Z", "MaintenanceExpiresAt": "2099-12-31T00:00:00Z",
                "IsAuditLogEnabled": True, "BackupScheduled": False, "HasNotRunningServices": False,
            }

    def snapshot(self) -> dict[str, Any]:
        """Everything for ``GET /_emulator/state`` (no client secret, no token values)."""
        with self.lock:
            users = []
            for rec in self._sorted_users():
                view = self._user_view(rec)
                view["Protected"] = rec.protected
                users.append(view)
            return {
                "users": users, "groups": self.list_groups(), "contacts": self._contacts.list(),
                "tokens": {"live": self.live_tokens(), "issued": self.tokens_issued},
                "config": asdict(self.config), "seed": self.seed, "unmanaged": self.unmanaged,
                "client_id": self.client_id, "token_lifetime": self.token_lifetime,
            }


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def _coerce(name: str, value: Any, kind: type) -> Any:
    """Check a JSON value against the property type; ``null`` strings become empty strings."""
    if kind is str:
        if value is None:
            return ""
        if isinstance(value, str):
            return value
    elif kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is list:
        if isinstance(value, list):
            return copy.deepcopy(value)
    elif kind is dict and isinstance(value, dict):
        return copy.deepcopy(value)
    raise ValidationError(name, e.INVALID_VALUE)


def _rights(role: str) -> dict[str, Any]:
    elevated = role != "users"
    return {
        "RoleName": role, "AllowIVR": elevated, "AllowParking": True, "AllowToChangePresence": elevated,
        "AllowToManageCompanyBook": elevated, "AssignClearOperations": elevated, "CanBargeIn": elevated,
        "CanIntercom": elevated, "CanSeeGroupCalls": elevated, "CanSeeGroupMembers": True,
        "CanSeeGroupRecordings": elevated, "Invalid": False, "PerformOperations": elevated,
        "ShowMyCalls": elevated, "ShowMyPresence": True, "ShowMyPresenceOutside": False,
    }
