"""The OData v4 query options the XAPI honours, over plain dict records.

Records are dicts holding every structural property plus every navigation property already
materialised; :func:`query_collection` filters, counts, orders, pages and then shapes them
(``$select``, ``$expand``: navigation properties are dropped unless expanded).

Supported ``$filter`` grammar: ``eq ne gt ge lt le``, ``and or not``, parentheses,
``contains() startswith() endswith() tolower() toupper()``, literals ``'text'`` (``''`` escapes a
quote), integers, ``true false null``. Unknown properties and bad syntax raise :class:`BadRequest`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from emulators.threecx.errors import BadRequest


@dataclass(frozen=True)
class EntityType:
    """The shape of one OData entity type.

    :param name: e.g. ``Pbx.User``.
    :param props: structural property -> Python type (``str``, ``int``, ``bool``, ``list``, ``dict``).
    :param nav: navigation property -> entity type name of its items (``None``: no nested nav).
    """

    name: str
    props: dict[str, type]
    nav: dict[str, str | None] = field(default_factory=dict)


REGISTRY: dict[str, EntityType] = {}


def register(entity: EntityType) -> EntityType:
    REGISTRY[entity.name] = entity
    return entity


# ---------------------------------------------------------------- $filter

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_./]*)"
    r"|(?P<punct>[(),]))"
)
_COMPARISON = {"eq", "ne", "gt", "ge", "lt", "le"}
_FUNCTIONS = {"contains": 2, "startswith": 2, "endswith": 2, "tolower": 1, "toupper": 1}
_LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None}

Node = Callable[[dict[str, Any]], Any]


@dataclass
class _Expr:
    fn: Node
    kind: type | None  # static type when known (property or literal), for type checks


def _tokenize(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise BadRequest(f"Syntax error at position {pos} in '{text}'.")
        pos = match.end()
        if match.group("str") is not None:
            tokens.append(("lit", match.group("str")[1:-1].replace("''", "'")))
        elif match.group("num") is not None:
            raw = match.group("num")
            tokens.append(("lit", float(raw) if "." in raw else int(raw)))
        elif match.group("name") is not None:
            tokens.append(("name", match.group("name")))
        else:
            tokens.append(("punct", match.group("punct")))
    return tokens


class _FilterParser:
    def __init__(self, text: str, entity: EntityType) -> None:
        self.text = text
        self.entity = entity
        self.tokens = _tokenize(text)
        self.pos = 0

    def parse(self) -> Node:
        if not self.tokens:
            raise BadRequest("The $filter expression is empty.")
        expr = self._or()
        if self.pos != len(self.tokens):
            raise BadRequest(f"Syntax error: unexpected '{self.tokens[self.pos][1]}' in '{self.text}'.")
        return lambda rec: expr.fn(rec) is True

    def _peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self) -> tuple[str, Any]:
        token = self._peek()
        if token is None:
            raise BadRequest(f"Syntax error: unexpected end of '{self.text}'.")
        self.pos += 1
        return token

    def _expect(self, punct: str) -> None:
        kind, value = self._take()
        if kind != "punct" or value != punct:
            raise BadRequest(f"Syntax error: expected '{punct}' in '{self.text}'.")

    def _keyword(self, word: str) -> bool:
        token = self._peek()
        if token and token[0] == "name" and token[1] == word:
            self.pos += 1
            return True
        return False

    def _or(self) -> _Expr:
        left = self._and()
        while self._keyword("or"):
            right = self._and()
            left = _Expr(lambda r, a=left.fn, b=right.fn: a(r) is True or b(r) is True, bool)
        return left

    def _and(self) -> _Expr:
        left = self._unary()
        while self._keyword("and"):
            right = self._unary()
            left = _Expr(lambda r, a=left.fn, b=right.fn: a(r) is True and b(r) is True, bool)
        return left

    def _unary(self) -> _Expr:
        if self._keyword("not"):
            inner = self._unary()
            return _Expr(lambda r, a=inner.fn: a(r) is not True, bool)
        return self._comparison()

    def _comparison(self) -> _Expr:
        left = self._operand()
        token = self._peek()
        if token and token[0] == "name" and token[1] in _COMPARISON:
            self.pos += 1
            right = self._operand()
            _check_types(left, right, self.text)
            return _Expr(lambda r, op=token[1], a=left.fn, b=right.fn: _compare(op, a(r), b(r)), bool)
        return left

    def _operand(self) -> _Expr:
        kind, value = self._take()
        if kind == "punct" and value == "(":
            inner = self._or()
            self._expect(")")
            return inner
        if kind == "lit":
            return _Expr(lambda r, v=value: v, type(value))
        if kind == "name":
            if value in _LITERALS:
                literal = _LITERALS[value]
                return _Expr(lambda r, v=literal: v, None if literal is None else bool)
            nxt = self._peek()
            if nxt == ("punct", "("):
                return self._function(value)
            if value in self.entity.props:
                return _Expr(lambda r, p=value: r.get(p), self.entity.props[value])
            raise BadRequest(f"Could not find a property named '{value}' on type '{self.entity.name}'.")
        raise BadRequest(f"Syntax error: unexpected '{value}' in '{self.text}'.")

    def _function(self, name: str) -> _Expr:
        if name not in _FUNCTIONS:
            raise BadRequest(f"An unknown function with name '{name}' was found.")
        self._expect("(")
        args = [self._or()]
        while self._peek() == ("punct", ","):
            self.pos += 1
            args.append(self._or())
        self._expect(")")
        if len(args) != _FUNCTIONS[name]:
            raise BadRequest(f"Function '{name}' takes {_FUNCTIONS[name]} argument(s).")
        for arg in args:
            if arg.kind not in (str, None):
                raise BadRequest(f"Function '{name}' expects string arguments.")
        fns = [a.fn for a in args]
        if name == "tolower":
            return _Expr(lambda r: _str_or_none(fns[0](r), str.lower), str)
        if name == "toupper":
            return _Expr(lambda r: _str_or_none(fns[0](r), str.upper), str)
        ops: dict[str, Callable[[str, str], bool]] = {
            "contains": lambda a, b: b in a,
            "startswith": str.startswith,
            "endswith": str.endswith,
        }
        op = ops[name]

        def call(rec: dict[str, Any]) -> bool:
            a, b = fns[0](rec), fns[1](rec)
            return isinstance(a, str) and isinstance(b, str) and op(a, b)

        return _Expr(call, bool)


def _str_or_none(value: Any, fn: Callable[[str], str]) -> Any:
    return fn(value) if isinstance(value, str) else value


def _check_types(left: _Expr, right: _Expr, text: str) -> None:
    a, b = left.kind, right.kind
    if a is None or b is None or a is b:
        return
    numeric = (int, float)
    if a in numeric and b in numeric:
        return
    raise BadRequest(f"A binary operator with incompatible types was detected in '{text}': "
                     f"'{getattr(a, '__name__', a)}' and '{getattr(b, '__name__', b)}'.")


def _compare(op: str, a: Any, b: Any) -> bool:
    if op == "eq":
        return bool(a == b)
    if op == "ne":
        return bool(a != b)
    if a is None or b is None:
        return False
    try:
        return {"gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b}[op]
    except TypeError:
        return False


def parse_filter(text: str, entity: EntityType) -> Callable[[dict[str, Any]], bool]:
    """Compile a ``$filter`` expression into a predicate over records.

    :raises BadRequest: on syntax errors, unknown properties or functions, or type mismatches.
    """
    return _FilterParser(text, entity).parse()


# ---------------------------------------------------------------- $select / $expand / $orderby


def _split_top_level(text: str, sep: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise BadRequest(f"Unbalanced parentheses in '{text}'.")
        if char == sep and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise BadRequest(f"Unbalanced parentheses in '{text}'.")
    parts.append("".join(current).strip())
    return [p for p in parts if p]


@dataclass
class Shape:
    """Parsed ``$select`` and ``$expand`` for one entity type (nested for expanded items)."""

    entity: EntityType
    select: list[str] | None = None
    expand: dict[str, Shape | None] = field(default_factory=dict)

    def apply(self, record: dict[str, Any]) -> dict[str, Any]:
        names = self.select if self.select is not None else list(self.entity.props)
        out = {name: record.get(name) for name in names if name in self.entity.props}
        for name, nested in self.expand.items():
            value = record.get(name)
            if nested is not None and isinstance(value, list):
                value = [nested.apply(item) for item in value]
            elif nested is not None and isinstance(value, dict):
                value = nested.apply(value)
            out[name] = value
        return out


def parse_shape(entity: EntityType, select: str | None, expand: str | None) -> Shape:
    """Parse ``$select``/``$expand`` (``Groups($expand=Rights;$select=GroupId)`` nests).

    :raises BadRequest: for unknown properties.
    """
    shape = Shape(entity)
    if select is not None and select.strip() and select.strip() != "*":
        chosen = []
        for name in _split_top_level(select, ","):
            if name in entity.nav:
                continue  # selecting a navigation property only matters together with $expand
            if name not in entity.props:
                raise BadRequest(f"Could not find a property named '{name}' on type '{entity.name}'.")
            chosen.append(name)
        shape.select = chosen
    if expand:
        for item in _split_top_level(expand, ","):
            match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?", item, re.S)
            if not match:
                raise BadRequest(f"Syntax error in $expand '{expand}'.")
            name, nested_text = match.group(1), match.group(2)
            if name == "*":
                continue
            if name not in entity.nav:
                raise BadRequest(f"Could not find a navigation property named '{name}' on type "
                                 f"'{entity.name}'.")
            shape.expand[name] = _nested_shape(entity.nav[name], nested_text)
    return shape


def _nested_shape(type_name: str | None, options: str | None) -> Shape | None:
    if type_name is None or type_name not in REGISTRY:
        return None
    nested: dict[str, str] = {}
    for part in _split_top_level(options or "", ";"):
        key, _, value = part.partition("=")
        nested[key.strip()] = value.strip()  # other nested options ($filter, $top...) are ignored
    return parse_shape(REGISTRY[type_name], nested.get("$select"), nested.get("$expand"))


def parse_orderby(text: str, entity: EntityType) -> list[tuple[str, bool]]:
    """``"LastName desc, Id"`` -> ``[("LastName", True), ("Id", False)]`` (name, descending)."""
    keys = []
    for part in _split_top_level(text, ","):
        words = part.split()
        if len(words) not in (1, 2) or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise BadRequest(f"Syntax error in $orderby '{text}'.")
        if words[0] not in entity.props:
            raise BadRequest(f"Could not find a property named '{words[0]}' on type '{entity.name}'.")
        keys.append((words[0], len(words) == 2 and words[1].lower() == "desc"))
    return keys


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, (list, dict)):
        return (1, str(value))
    return (1, value)


def _int_option(name: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"Invalid value '{raw}' for {name} query option found.") from None
    if value < 0:
        raise BadRequest(f"Invalid value '{raw}' for {name} query option found; it must be >= 0.")
    return value


def _bool_option(name: str, raw: str | None) -> bool:
    if raw is None:
        return False
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise BadRequest(f"Invalid value '{raw}' for {name} query option found.")


SEARCH_FIELDS = ("FirstName", "LastName", "DisplayName", "Number", "EmailAddress", "Name")


_ID_DISJUNCTION = re.compile(r"^\s*Id eq (\d+)(?:\s+or\s+Id eq (?:\d+))*\s*$")


def id_filter_keys(expression: str | None) -> list[int] | None:
    """The ids of a ``$filter`` made only of ``Id eq N`` terms joined by ``or`` (else ``None``), so a
    store can look them up by index instead of testing every record; the filter still runs on them."""
    if not expression or not _ID_DISJUNCTION.match(expression):
        return None
    return [int(n) for n in re.findall(r"Id eq (\d+)", expression)]


def eq_filter_values(expression: str | None, name: str) -> list[str] | None:
    """The literals of a ``$filter`` made only of ``name eq 'text'`` terms joined by ``or`` (else ``None``),
    e.g. ``Tag eq 'a' or Tag eq 'b'``, so a store can look them up by index instead of testing every
    record; the filter still runs on the records found."""
    if not expression:
        return None
    try:
        tokens = _tokenize(expression)
    except BadRequest:
        return None
    values: list[str] = []
    for start in range(0, len(tokens), 4):
        term = tokens[start:start + 3]
        if (len(term) != 3 or term[0] != ("name", name) or term[1] != ("name", "eq") or term[2][0] != "lit"
                or not isinstance(term[2][1], str)):
            return None
        if start + 3 < len(tokens) and tokens[start + 3] != ("name", "or"):
            return None
        values.append(term[2][1])
    return values if len(tokens) == 4 * len(values) - 1 else None


def query_collection(records: Sequence[dict[str, Any]], params: dict[str, str], entity: EntityType,
                     *, max_top: int = 100, sorted_by: str | None = None) -> tuple[list[dict[str, Any]], int, Shape]:
    """Apply ``$filter $search $orderby $skip $top $select $expand`` to ``records``.

    ``$top`` above ``max_top`` is silently capped; a missing ``$top`` also returns at most
    ``max_top`` records. There is never a next link. When ``records`` already come ordered by ``sorted_by``
    (the stores list entity sets by ``Id``), ``$orderby`` on it ascending costs no sort.

    :return: (shaped page, number of records matching before paging, the shape used).
    :raises BadRequest: for any invalid query option.
    """
    shape = parse_shape(entity, params.get("$select"), params.get("$expand"))
    top = _int_option("$top", params.get("$top"))
    skip = _int_option("$skip", params.get("$skip")) or 0
    rows = records
    if params.get("$filter"):
        predicate = parse_filter(params["$filter"], entity)
        rows = [r for r in rows if predicate(r)]
    if params.get("$search"):
        term = params["$search"].strip().strip('"').lower()
        rows = [r for r in rows if any(term in str(r.get(f) or "").lower() for f in SEARCH_FIELDS)]
    if params.get("$orderby"):
        order = parse_orderby(params["$orderby"], entity)
        if order != [(sorted_by, False)]:  # records already come in that order: no sort per page
            for name, descending in reversed(order):
                rows = sorted(rows, key=lambda r, n=name: _sort_key(r.get(n)), reverse=descending)
    matched = len(rows)
    limit = max_top if top is None else min(top, max_top)
    page = rows[skip: skip + limit]
    return [shape.apply(r) for r in page], matched, shape


def wants_count(params: dict[str, str]) -> bool:
    """Whether ``$count=true`` was asked. :raises BadRequest: for values other than true/false."""
    return _bool_option("$count", params.get("$count"))


def context_fragment(set_name: str, shape: Shape) -> str:
    """``Users`` or ``Users(Id,Number)`` for ``@odata.context``."""
    if shape.select is None:
        return set_name
    names = list(shape.select) + [f"{n}()" for n in shape.expand]
    return f"{set_name}({','.join(names)})" if names else set_name


class LazyViews(Sequence[dict[str, Any]]):
    """A read-only sequence of records, each built from its source (under ``lock``) only when read,
    so a ``$top``/``$skip`` page over it costs O(page), not O(collection).

    The sources are the records (or ids) of one moment; the caller makes sure ``build`` still gives
    that moment's record (user records are replaced, never changed in place; the contacts view is
    read under the backend lock).
    """

    def __init__(self, sources: Sequence[Any], build: Callable[[Any], dict[str, Any]],
                 lock: Any = None) -> None:
        self._sources, self._build = sources, build
        self._lock = lock if lock is not None else contextlib.nullcontext()

    def __len__(self) -> int:
        return len(self._sources)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        with self._lock:
            if isinstance(index, slice):
                return [self._build(rec) for rec in self._sources[index]]
            return self._build(self._sources[index])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            views = [self._build(rec) for rec in self._sources]
        return iter(views)
