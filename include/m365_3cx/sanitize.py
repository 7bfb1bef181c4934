"""The sanitising boundary: text from Microsoft Graph made safe to stage and to send to 3CX.

Pure functions, no I/O. Graph may hold any Unicode in a name or text field; PostgreSQL and
the PBX may not take all of it:

* **control and format characters** (Unicode categories ``Cc`` and ``Cf``: NUL, bidi
  overrides and isolates U+202A-202E / U+2066-2069, zero-width U+200B-200D, U+FEFF, soft
  hyphen, ...) are removed; line breaks and tabs (``\\t \\n \\r \\v \\f``, U+001C-001F, U+0085,
  U+2028, U+2029) become a space. PostgreSQL rejects NUL in any text; the others are invisible
  in a phone's display and let a name pretend to be another one.
* **lone surrogates** (U+D800-DFFF not forming a pair; Python's JSON decoder keeps them) cannot
  be encoded as UTF-8 and are replaced by U+FFFD.
* **clipping** to a field limit, never inside a combining sequence or a joiner; counted in
  code points (PostgreSQL ``varchar(n)``) or, for 3CX fields, in UTF-16 code units (the XAPI is
  a .NET service: counting UTF-16 units is never more than its count, whichever it uses).

Every change is reported (:class:`Cleaned`), so the caller can write a note naming the
record and the field.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "REPLACEMENT",
    "Cleaned",
    "Finding",
    "clean_json",
    "clean_name",
    "clean_text",
    "clip",
    "utf16_length",
]

REPLACEMENT: Final = "\ufffd"
"""What a lone surrogate becomes."""

#: Control characters that separate words: they become a space rather than vanish.
_SPACING: Final = frozenset("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85\u2028\u2029")

#: Categories never left at the end of a clipped value (they belong to the character before).
_KEEP_WITH_BASE: Final = frozenset({"Mn", "Me", "Mc", "Cf", "Sk"})


def utf16_length(value: str) -> int:
    """Length of ``value`` in UTF-16 code units (characters beyond U+FFFF count twice)."""
    if value.isascii():
        return len(value)
    return len(value.encode("utf-16-le", "surrogatepass")) // 2


def clip(value: str, limit: int, *, utf16: bool = False) -> tuple[str, bool]:
    """Cut ``value`` to ``limit`` without leaving a dangling combining mark or joiner.

    :param value: the text.
    :param limit: maximum length (>= 0): code points, or UTF-16 code units with ``utf16``.
    :param utf16: count UTF-16 code units (3CX fields) instead of code points.
    :return: ``(text, clipped)``; trailing whitespace at the cut is dropped too.
    """
    size = utf16_length(value) if utf16 else len(value)
    if size <= limit:
        return value, False
    cut_at = 0
    used = 0
    for index, ch in enumerate(value):
        used += 2 if utf16 and ord(ch) > 0xFFFF else 1
        if used > limit:
            break
        cut_at = index + 1
    cut = value[:cut_at]
    # A cut right after a base character may orphan its combining marks / ZWJ sequence.
    while cut and unicodedata.category(value[len(cut)]) in _KEEP_WITH_BASE:
        cut = cut[:-1]
    while cut and unicodedata.category(cut[-1]) in _KEEP_WITH_BASE:
        cut = cut[:-1]
    return cut.rstrip(), True


@dataclass(frozen=True, slots=True)
class Cleaned:
    """A value after :func:`clean_text`, with what was done to it.

    :param value: the clean text; ``None`` when the input was ``None`` or nothing was left.
    :param removed: control/format characters removed.
    :param spaced: line breaks and tabs turned into spaces.
    :param replaced: lone surrogates replaced by U+FFFD.
    :param clipped_from: the length before clipping (same unit as the limit), else ``None``.
    :param limit: the limit the value was clipped to.
    :param code_points: up to five distinct code points acted on, as ``U+XXXX``.
    """

    value: str | None
    removed: int = 0
    spaced: int = 0
    replaced: int = 0
    clipped_from: int | None = None
    limit: int | None = None
    code_points: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether anything was done."""
        return bool(self.removed or self.spaced or self.replaced or self.clipped_from is not None)

    def describe(self) -> str:
        """What was done, as a clause for a note (empty when nothing was)."""
        parts: list[str] = []
        shown = f" ({', '.join(self.code_points)})" if self.code_points else ""
        if self.removed:
            parts.append(f"removed {self.removed} control/format character(s){shown}")
            shown = ""
        if self.spaced:
            parts.append(f"replaced {self.spaced} line break(s)/tab(s) with spaces{shown}")
            shown = ""
        if self.replaced:
            parts.append(f"replaced {self.replaced} lone surrogate(s) with U+FFFD{shown}")
        if self.clipped_from is not None:
            parts.append(f"is {self.clipped_from} characters; truncated to {self.limit}")
        return "; ".join(parts)


def clean_text(value: str | None, *, limit: int | None = None, utf16: bool = False) -> Cleaned:
    """Remove control/format characters, replace lone surrogates, clip to ``limit``.

    :param value: the text, or ``None``.
    :param limit: the field's maximum length, or ``None`` for no limit.
    :param utf16: ``limit`` counts UTF-16 code units (3CX fields).
    :return: the :class:`Cleaned` value; ``value`` ``None`` when cleaning left nothing of a
        non-empty input.
    """
    if value is None:
        return Cleaned(None)
    if value.isprintable() and (limit is None or len(value) <= (limit // 2 if utf16 else limit)):
        return Cleaned(value)
    text = value
    removed = spaced = replaced = 0
    points: list[str] = []
    # str.isprintable() is False for every "Other" (C*) and "Separator" (Z*) character but the
    # ASCII space: a fast test that almost every name passes.
    if not text.isprintable():
        out: list[str] = []
        for ch in text:
            if ch in _SPACING:
                spaced += 1
                out.append(" ")
            else:
                category = unicodedata.category(ch)
                if category == "Cs":
                    replaced += 1
                    out.append(REPLACEMENT)
                elif category in ("Cc", "Cf"):
                    removed += 1
                else:
                    out.append(ch)
                    continue
            code = f"U+{ord(ch):04X}"
            if code not in points and len(points) < 5:
                points.append(code)
        text = "".join(out)
    clipped_from = None
    if limit is not None and len(text) > (limit // 2 if utf16 else limit):
        size = utf16_length(text) if utf16 else len(text)
        text, clipped = clip(text, limit, utf16=utf16)
        if clipped:
            clipped_from = size
    if not text and value:
        result: str | None = None
    else:
        result = text
    return Cleaned(result, removed, spaced, replaced, clipped_from, limit if clipped_from else None, tuple(points))


def clean_name(value: str | None, *, limit: int | None = None, utf16: bool = False) -> Cleaned:
    """:func:`clean_text` for a display value: also runs of whitespace made one space, trimmed, NFC.

    Whitespace and normalisation changes are not reported (they change nothing visible).

    :param value: the text, or ``None``.
    :param limit: the field's maximum length, or ``None``.
    :param utf16: ``limit`` counts UTF-16 code units (3CX fields).
    :return: the :class:`Cleaned` value (``None`` when nothing printable is left).
    """
    if value is None:
        return Cleaned(None)
    first = clean_text(value)
    tidy = unicodedata.normalize("NFC", " ".join((first.value or "").split()))
    clipped = clean_text(tidy, limit=limit, utf16=utf16) if tidy else Cleaned(None)
    return Cleaned(clipped.value or None, first.removed, first.spaced, first.replaced, clipped.clipped_from,
                   clipped.limit, first.code_points)


@dataclass(frozen=True)
class Finding:
    """One field of one record that the boundary changed or refused.

    :param field: the Graph property, with a path for nested values (``emailAddresses[0].address``).
    :param message: what was done.
    :param rejected: the record cannot be staged at all (e.g. its key does not fit).
    """

    field: str
    message: str
    rejected: bool = False


@dataclass
class _JsonWalk:
    findings: list[Finding] = field(default_factory=list)

    def walk(self, value: Any, path: str) -> Any:
        if isinstance(value, str):
            if value.isprintable():
                return value
            cleaned = clean_text(value)
            if cleaned.changed:
                self.findings.append(Finding(path, cleaned.describe()))
            return cleaned.value
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for k, v in value.items():
                key = k if type(k) is str and k.isprintable() else self.walk(str(k), f"{path}.<key>") or ""
                out[key] = v if _plain(v) else self.walk(v, f"{path}.{key}")
            return out
        if isinstance(value, list | tuple):
            # the path of an element is only formatted when the element is not plain
            return [v if _plain(v) else self.walk(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if value is None or isinstance(value, bool | int | float):
            return value
        cleaned = clean_text(str(value))
        return cleaned.value


def _plain(value: Any) -> bool:
    """A value :meth:`_JsonWalk.walk` returns as it is, without a finding (printable text, ``None``, a number)."""
    kind = type(value)
    return (kind is str and value.isprintable()) or value is None or kind is int or kind is bool or kind is float


def clean_json(value: Any, path: str) -> tuple[Any, list[Finding]]:
    """Clean every string inside a JSON value (lists, objects, their keys), for a JSON column.

    :param value: a decoded JSON value.
    :param path: the Graph property, used in the findings.
    :return: the clean value and one finding per string changed.
    """
    walker = _JsonWalk()
    return walker.walk(value, path), walker.findings
