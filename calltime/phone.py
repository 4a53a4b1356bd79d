"""Phone-number normalisation shared by ingest and the matcher: any common spelling → E.164.

A call's far end and a client's phone number in the billing system are written by different
people in different ways; the only reliable way to compare them is to reduce both to E.164
(`+14155550123`). Anything that is not a real, dialable number — an internal extension, a
short code, garbage — normalises to None, so that it can never match a client by accident.
"""

from __future__ import annotations

import re

import phonenumbers
from phonenumbers import NumberParseException

# Internal extensions on PBXs (RingCentral shows them as e.g. "102") are 2–6 plain digits.
# Seven digits and more is where local subscriber numbers begin, so those are not extensions.
_EXTENSION = re.compile(r"[0-9]{2,6}")


def is_extension(raw: str | None) -> bool:
    """True when `raw` is a short all-digit internal number (2–6 digits), e.g. "102"."""
    if raw is None:
        return False
    return _EXTENSION.fullmatch(raw.strip()) is not None


def normalise(raw: str | None, default_region: str = "US") -> str | None:
    """The E.164 form of `raw`, or None when it is empty, an extension, or not a valid number.

    Numbers without a country code are read as numbers of `default_region`. A trailing
    extension ("x12", "ext. 12", ";ext=12") is dropped: billing systems match on the line, not
    the desk. `tel:` URIs are understood.
    """
    if raw is None:
        return None
    text = raw.strip()
    if not text or is_extension(text):
        return None
    try:
        number = phonenumbers.parse(text, default_region)
    except NumberParseException:
        return None
    # Validity (not mere possibility) rejects too-short numbers and unassigned ranges.
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
