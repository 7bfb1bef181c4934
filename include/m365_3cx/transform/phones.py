"""Phone numbers to E.164.

Graph holds phone numbers as people typed them. 3CX wants them in E.164
(``+14155550100``). :func:`to_e164` parses with the user's ``usageLocation``
(or the configured default region), drops extensions with a warning and
rejects numbers that cannot be dialled, with a warning naming the reason.
It never raises on bad input.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult

from m365_3cx.transform.values import text

_PARSE_REASONS = {
    NumberParseException.INVALID_COUNTRY_CODE: "has an unknown country code",
    NumberParseException.NOT_A_NUMBER: "is not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "is too short after the international prefix",
    NumberParseException.TOO_SHORT_NSN: "is too short",
    NumberParseException.TOO_LONG: "is too long",
}

_POSSIBLE_REASONS = {
    ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.TOO_LONG: "too long",
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "a local number without area code",
    ValidationResult.INVALID_LENGTH: "wrong length",
}


@dataclass(frozen=True)
class PhoneResult:
    """Outcome of :func:`to_e164`.

    :param e164: the number in E.164, or ``None`` when empty or rejected.
    :param warning: why the input was changed or rejected, starting with the
        quoted input (e.g. ``"'+1 555' is not a valid number for region US (too
        short)"``), or ``None`` when all went well.
    """

    e164: str | None
    warning: str | None


def _quote(s: str, limit: int = 40) -> str:
    """Quote the input for a message, shortened so a pasted essay stays readable."""
    return "'" + (s if len(s) <= limit else s[: limit - 3] + "...") + "'"


def _region(region: str | None, default_region: str) -> str:
    """Pick the parsing region: the user's if phonenumbers knows it, else the default."""
    r = (region or "").strip().upper()
    if r in phonenumbers.SUPPORTED_REGIONS:
        return r
    d = (default_region or "").strip().upper()
    return d if d in phonenumbers.SUPPORTED_REGIONS else "ZZ"


def to_e164(raw: str | None, region: str | None, default_region: str) -> PhoneResult:
    """Normalise one phone number to E.164.

    :param raw: the number as typed (``"(650) 253-0000 x23"``, ``"+44 20 7946 0018"``,
        ``"1-800-FLOWERS"``); ``None`` or blank means no number.
    :param region: the user's ``usageLocation`` (ISO 3166 alpha-2), or ``None``.
    :param default_region: region used when ``region`` is missing or unknown.
    :return: the E.164 number and/or a warning; ``(None, None)`` for empty input.
        Never raises on bad input.
    """
    s = text(raw)
    if s is None:
        return PhoneResult(None, None)
    return _normalise(s, region, default_region)


@functools.lru_cache(maxsize=200_000)
def _normalise(s: str, region: str | None, default_region: str) -> PhoneResult:
    """:func:`to_e164` of a non-blank input, memoised: the same number typed into many mailboxes, or
    read again by the next run in the same process, is parsed once (results are immutable)."""
    parse_region = _region(region, default_region)
    try:
        number = phonenumbers.parse(s, None if parse_region == "ZZ" else parse_region)
    except NumberParseException as exc:
        reason = _PARSE_REASONS.get(exc.error_type, "could not be parsed")
        return PhoneResult(None, f"{_quote(s)} {reason} (region {parse_region})")
    except Exception:  # phonenumbers is defensive, but bad input must never crash a run
        return PhoneResult(None, f"{_quote(s)} could not be parsed (region {parse_region})")

    shown_region = phonenumbers.region_code_for_country_code(number.country_code)
    if shown_region in (None, "ZZ", "001"):
        shown_region = parse_region
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible != ValidationResult.IS_POSSIBLE:
        why = _POSSIBLE_REASONS.get(possible, "impossible number")
        return PhoneResult(None, f"{_quote(s)} is not a valid number for region {shown_region} ({why})")
    if not phonenumbers.is_valid_number(number):
        return PhoneResult(None, f"{_quote(s)} is not a valid number for region {shown_region} (no such number range)")
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    if number.extension:
        return PhoneResult(e164, f"{_quote(s)} has extension {number.extension}, which was dropped")
    return PhoneResult(e164, None)
