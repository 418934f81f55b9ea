"""Who a customer is: one normal form of a customer ID for every part that compares IDs.

Loading (duplicates), the ID index (score lookups, alignments), PSI (what is hashed), the train/validation/
test split and scoring all compare :func:`normalise_id` of the text, never the text itself: ``+44 7700
900123`` and ``+447700900123``, or ``Ann@Example.com`` and ``ann@example.com``, are one customer everywhere.
A file that holds one customer in two forms is refused at load (``party_common.data_loading``), since PSI
would otherwise match them as one and the rows could not be told apart.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np

_PHONE_CHARS = re.compile(r"^\+?[0-9 ()./-]{7,}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_NOT_DIGIT = re.compile(r"[^0-9]")


def normalise_id(raw: str) -> str:
    """The normal form of a customer ID (both parties apply it before PSI hashes it).

    * Unicode NFKC, surrounding white space removed, case folded.
    * E-mail (``local@domain``): the whole address lower-cased (after case folding); nothing else changed.
    * Phone number (optional ``+``, then at least 7 digits with spaces, dots, dashes, brackets or slashes):
      separators removed; a leading ``00`` becomes ``+``; a leading ``+`` is kept. Numbers are not
      re-written between national and international form: both sides must use the same convention
      (the simulator and most CRMs store E.164, ``+447700900123``).
    * Anything else: the trimmed, case-folded text.

    An ID already in this form is returned unchanged (the form is idempotent).
    """
    text = unicodedata.normalize("NFKC", raw).strip().casefold()
    if "@" in text and _EMAIL.match(text):
        return text
    body = text[1:] if text[:1] == "+" else text
    if len(body) >= 7 and body.isascii() and body.isdigit():  # a phone number without separators
        digits = body
    elif _PHONE_CHARS.match(text):
        digits = _NOT_DIGIT.sub("", text)
    else:
        return text
    if text.startswith("+"):
        return "+" + digits
    if digits.startswith("00"):
        return "+" + digits[2:]
    return digits


# IDs already in normal form that the fast path recognises: an E.164-style number ("+" and 7 or more ASCII
# digits) or 7 or more ASCII digits not starting with "00" (normalise_id returns both unchanged).
_CANONICAL_PHONE = r"(?:\+[0-9]{7,}|(?!00)[0-9]{7,})"
_ALL_CANONICAL = re.compile(rf"(?:{_CANONICAL_PHONE}\n)*{_CANONICAL_PHONE}")


def normalise_all(ids: list[str]) -> list[str]:
    """``[normalise_id(x) for x in ids]``, with a fast path: when every ID is a phone number already in normal
    form (one regular-expression match over the joined IDs, no newline inside any), the IDs themselves.
    Half the cost of normalising a million E.164 numbers one by one."""
    if ids:
        text = "\n".join(ids)
        if text.count("\n") == len(ids) - 1 and _ALL_CANONICAL.fullmatch(text):
            return ids
    return [normalise_id(x) for x in ids]


def customer_keys(ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """:func:`normalise_id` of each ID, as a numpy string array (the key an :class:`IdIndex` is built on)."""
    return np.asarray(normalise_all([str(i) for i in ids]), dtype=np.dtypes.StringDType())


def describe_difference(a: str, b: str) -> str:
    """Why two texts are one customer, in words (never the IDs themselves)."""
    if a == b:
        return "the same ID"
    if a.strip() == b.strip():
        return "the same ID (differing only in surrounding spaces)"
    if a.casefold() == b.casefold():
        return "the same customer ID, differing only in case"
    return "the same customer ID in different forms (case, spaces, or phone/e-mail format)"


__all__ = ["customer_keys", "describe_difference", "normalise_all", "normalise_id"]
