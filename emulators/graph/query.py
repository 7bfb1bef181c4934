"""OData query options for directory users: ``$select`` and a ``$filter`` subset (no HTTP).

Only what a sync job sends is understood; everything else raises :class:`QueryError`, which
the routes turn into Graph's ``400 Request_UnsupportedQuery`` / ``Request_BadRequest``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

USER_PROPERTIES: tuple[str, ...] = (
    "id", "displayName", "givenName", "surname", "userPrincipalName", "mail", "mailNickname",
    "businessPhones", "mobilePhone", "jobTitle", "officeLocation", "preferredLanguage",
    "accountEnabled", "usageLocation", "department", "companyName", "employeeId", "city", "country",
    "userType", "createdDateTime", "onPremisesExtensionAttributes", "onPremisesSyncEnabled",
    "otherMails", "proxyAddresses",
)
"""Properties the emulator knows for ``microsoft.graph.user``."""

DEFAULT_USER_SELECT: tuple[str, ...] = (
    "businessPhones", "displayName", "givenName", "id", "jobTitle", "mail", "mobilePhone",
    "officeLocation", "preferredLanguage", "surname", "userPrincipalName",
)
"""Returned when ``$select`` is absent (graph.md section 2)."""

COLLECTION_PROPERTIES = frozenset({"businessPhones", "otherMails", "proxyAddresses"})

_STARTSWITH_PROPS = frozenset({"displayName", "userPrincipalName", "mail", "givenName", "surname",
                               "jobTitle", "department", "mailNickname", "employeeId"})
_EQ_PROPS = _STARTSWITH_PROPS | {"id", "accountEnabled", "userType", "usageLocation", "companyName",
                                 "mobilePhone", "city", "country", "officeLocation"}
_EXT_ATTR = re.compile(r"^onPremisesExtensionAttributes/(extensionAttribute(?:[1-9]|1[0-5]))$")


class QueryError(ValueError):
    """A query option the emulated service rejects.

    :param code: Graph error code, e.g. ``Request_UnsupportedQuery``.
    """

    def __init__(self, message: str, code: str = "Request_UnsupportedQuery") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_select(raw: str | None) -> list[str] | None:
    """Split a ``$select`` value; ``None`` when absent.

    :raises QueryError: for an unknown property.
    """
    if raw is None or not raw.strip():
        return None
    names: list[str] = []
    for part in raw.split(","):
        name = part.strip()
        if not name:
            continue
        match = next((p for p in USER_PROPERTIES if p.lower() == name.lower()), None)
        if match is None:
            raise QueryError(f"Could not find a property named '{name}' on type 'microsoft.graph.user'.",
                             "Request_BadRequest")
        if match not in names:
            names.append(match)
    return names


def project(user: dict[str, Any], select: list[str] | None, *, omit_null: bool = False) -> dict[str, Any]:
    """The user as Graph renders it for ``select`` (``id`` always first)."""
    names = list(select) if select is not None else list(DEFAULT_USER_SELECT)
    out: dict[str, Any] = {"id": user["id"]}
    for name in names:
        if name == "id":
            continue
        value = user.get(name)
        if value is None and name in COLLECTION_PROPERTIES:
            value = []
        if value is None and omit_null:
            continue
        out[name] = value
    return out


# ---------------------------------------------------------------- $filter

_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<punct>[(),])|(?P<word>[A-Za-z0-9_./\-@:+#]+))")

Predicate = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True)
class Filter:
    """A parsed ``$filter``: the predicate and, for delta, the ids of an ``id eq`` filter."""

    predicate: Predicate
    ids: frozenset[str] | None
    advanced: bool


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise QueryError(f"Invalid filter clause: syntax error at position {pos} in '{text}'.",
                             "BadRequest")
        pos = match.end()
        if match.group("str") is not None:
            tokens.append(("str", match.group("str")[1:-1].replace("''", "'")))
        elif match.group("punct") is not None:
            tokens.append(("punct", match.group("punct")))
        else:
            tokens.append(("word", match.group("word")))
    return tokens


def _value(user: dict[str, Any], prop: str) -> Any:
    ext = _EXT_ATTR.match(prop)
    if ext:
        return (user.get("onPremisesExtensionAttributes") or {}).get(ext.group(1))
    return user.get(prop)


def _canonical_prop(name: str, allowed: frozenset[str]) -> str:
    ext = _EXT_ATTR.match(name)
    if ext:
        return name
    match = next((p for p in allowed if p.lower() == name.lower()), None)
    if match is None:
        raise QueryError(f"Unsupported or invalid query filter clause specified for property '{name}' "
                         "of resource 'User'.")
    return match


def _equal(actual: Any, expected: Any) -> bool:
    if isinstance(actual, list):
        return any(_equal(a, expected) for a in actual)
    if isinstance(actual, str) and isinstance(expected, str):
        return actual.lower() == expected.lower()
    return bool(actual == expected)


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], advanced: bool) -> None:
        self.tokens = tokens
        self.pos = 0
        self.advanced = advanced
        self.used_advanced = False
        self.ids: set[str] = set()
        self.only_ids = True

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise QueryError("Invalid filter clause: unexpected end of expression.", "BadRequest")
        self.pos += 1
        return token

    def expect(self, kind: str, value: str | None = None) -> str:
        tkind, tvalue = self.take()
        if tkind != kind or (value is not None and tvalue.lower() != value):
            raise QueryError(f"Invalid filter clause: expected {value or kind}, found '{tvalue}'.",
                             "BadRequest")
        return tvalue

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token and token[0] == "word" and token[1].lower() == word:
            self.pos += 1
            return True
        return False

    def parse(self) -> Predicate:
        pred = self.expr()
        if self.peek() is not None:
            raise QueryError(f"Invalid filter clause: unexpected '{self.peek()[1]}'.", "BadRequest")  # type: ignore[index]
        return pred

    def expr(self) -> Predicate:
        parts = [self.conj()]
        while self.keyword("or"):
            parts.append(self.conj())
        return parts[0] if len(parts) == 1 else (lambda u, ps=tuple(parts): any(p(u) for p in ps))

    def conj(self) -> Predicate:
        parts = [self.unary()]
        while self.keyword("and"):
            self.only_ids = False
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else (lambda u, ps=tuple(parts): all(p(u) for p in ps))

    def _advanced(self, what: str) -> None:
        if not self.advanced:
            raise QueryError(f"Operator '{what}' is not supported because the required parameters might "
                             "be missing. Try adding $count=true query parameter and ConsistencyLevel:"
                             "eventual header.")
        self.used_advanced = True

    def unary(self) -> Predicate:
        if self.keyword("not"):
            self._advanced("not")
            self.only_ids = False
            inner = self.unary()
            return lambda u: not inner(u)
        token = self.peek()
        if token == ("punct", "("):
            self.take()
            inner = self.expr()
            self.expect("punct", ")")
            return inner
        if token and token[0] == "word" and token[1].lower() in ("startswith", "endswith"):
            func = self.take()[1].lower()
            if func == "endswith":
                self._advanced("endsWith")
            self.only_ids = False
            self.expect("punct", "(")
            prop = _canonical_prop(self.expect("word"), _STARTSWITH_PROPS)
            self.expect("punct", ",")
            literal = self.expect("str").lower()
            self.expect("punct", ")")
            if func == "startswith":
                return lambda u: isinstance(_value(u, prop), str) and _value(u, prop).lower().startswith(literal)
            return lambda u: isinstance(_value(u, prop), str) and _value(u, prop).lower().endswith(literal)
        return self.comparison()

    def literal(self) -> Any:
        kind, value = self.take()
        if kind == "str":
            return value
        if kind == "word":
            low = value.lower()
            if low in ("true", "false"):
                return low == "true"
            if low == "null":
                return None
            if re.fullmatch(r"-?\d+", value):
                return int(value)
        raise QueryError(f"Invalid filter clause: unexpected literal '{value}'.", "BadRequest")

    def comparison(self) -> Predicate:
        prop = _canonical_prop(self.expect("word"), _EQ_PROPS)
        _kind, op = self.take()
        op = op.lower()
        if op == "in":
            self.expect("punct", "(")
            values = [self.literal()]
            while self.peek() == ("punct", ","):
                self.take()
                values.append(self.literal())
            self.expect("punct", ")")
            if prop == "id":
                self.ids.update(str(v) for v in values)
            else:
                self.only_ids = False
            return lambda u: any(_equal(_value(u, prop), v) for v in values)
        if op not in ("eq", "ne"):
            raise QueryError(f"Unsupported query operator '{op}'.")
        value = self.literal()
        if op == "ne" or value is None:
            self._advanced(f"{op} null" if value is None else "ne")
        if prop == "id" and op == "eq":
            self.ids.add(str(value))
        else:
            self.only_ids = False
        if op == "ne":
            return lambda u: not _equal(_value(u, prop), value)
        return lambda u: _equal(_value(u, prop), value)


def parse_filter(text: str | None, *, advanced: bool = False) -> Filter | None:
    """Parse a ``$filter`` over users.

    :param advanced: the request is an advanced query (``ConsistencyLevel: eventual`` and
        ``$count=true``), which unlocks ``ne``, ``not``, ``endsWith`` and ``eq null``.
    :raises QueryError: for syntax errors and unsupported clauses.
    """
    if text is None or not text.strip():
        return None
    parser = _Parser(_tokenize(text), advanced)
    predicate = parser.parse()
    ids = frozenset(parser.ids) if parser.only_ids and parser.ids else None
    return Filter(predicate, ids, parser.used_advanced)
