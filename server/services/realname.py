r"""Real-name documents (实名制): validate and normalize the ID documents a ticket may name.

- ``resident_id`` 居民身份证 (GB 11643-1999): 18 characters, a GB/T 2260 province prefix, a
  real birth date (not in the future, not before 1900), and the ISO 7064 MOD 11-2 check
  character (0-9 or X).
- ``hmt_residence_permit`` 港澳台居民居住证: the same layout and check, prefix 810000
  (Hong Kong), 820000 (Macau) or 830000 (Taiwan).
- ``foreign_permanent_residence`` 外国人永久居留身份证: the 2023 18-character card (starts
  with 9, same check) or the 2017 15-character card (3 letters + 12 digits).
- ``passport`` 护照, ``hk_macau_permit`` 港澳居民来往内地通行证, ``taiwan_permit``
  台湾居民来往大陆通行证: by pattern.

Input is NFKC-normalized first (full-width ``１１０１…`` is ``1101…``, as a phone keyboard may
type it) and then checked with ASCII classes only: every spelling of one document is one
number, so one person, one seat cannot be bypassed by writing the same digits another way,
and digits of other scripts (``٣``) are refused rather than passed by ``\d``.

Province codes are checked against GB/T 2260's table; finer prefixes change with every
administrative reform and are not (a retired county code still prints on valid cards).
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from server.errors import DomainError
from server.security.pii import PiiVault
from server.vocabulary import ID_TYPES

PROVINCES = {"11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35",
             "36", "37", "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54",
             "61", "62", "63", "64", "65", "71", "81", "82"}
HMT_PREFIXES = {"810000", "820000", "830000"}
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"
PATTERNS = {
    "passport": re.compile(r"^(?:[EG][0-9]{8}|[EG][A-Z][0-9]{7}|[A-Z0-9]{5,17})$"),
    "hk_macau_permit": re.compile(r"^[HM][0-9]{8}(?:[0-9]{2})?$"),
    "taiwan_permit": re.compile(r"^(?:[0-9]{8}|[0-9]{10}|[A-Z][0-9]{9})$"),
}


@dataclass(frozen=True)
class Document:
    id_type: str
    id_no: str  # normalized (upper case, no spaces)
    birth_date: dt.date | None = None

    def age_on(self, day: dt.date) -> int | None:
        if self.birth_date is None:
            return None
        years = day.year - self.birth_date.year
        return years - ((day.month, day.day) < (self.birth_date.month, self.birth_date.day))


def normalize_id(id_no: str) -> str:
    """One spelling per number: NFKC (full-width to ASCII), no spaces, upper case."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", id_no or "")).upper()


def check_char(first17: str) -> str:
    """The GB 11643 check character of the first 17 characters."""
    return _CHECK[sum(int(c) * w for c, w in zip(first17, _WEIGHTS, strict=True)) % 11]


def _invalid(message: str) -> DomainError:
    return DomainError("INVALID_ID_NUMBER", message, field="id_no")


def _eighteen(value: str, today: dt.date) -> dt.date:
    if not re.fullmatch(r"[0-9]{17}[0-9X]", value):
        raise _invalid("An 18-character ID number has 17 digits and a digit or X.")
    if check_char(value[:17]) != value[17]:
        raise _invalid("The ID number's check character does not match.")
    try:
        birth = dt.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        raise _invalid("The ID number's birth date does not exist.") from None
    if birth > today or birth.year < 1900:
        raise _invalid("The ID number's birth date is not possible.")
    return birth


def validate(id_type: str, id_no: str, today: dt.date | None = None) -> Document:
    """A normalized document, or INVALID_ID_NUMBER / INVALID_VALUE naming what is wrong."""
    today = today or dt.date.today()
    value = normalize_id(id_no)
    if id_type not in ID_TYPES:
        raise DomainError("INVALID_VALUE", f"Unknown document type {id_type!r}.",
                          field="id_type")
    if not value.isascii():
        raise _invalid("An ID number has Latin letters and the digits 0-9 only.")
    if id_type == "resident_id":
        birth = _eighteen(value, today)
        if value[:2] not in PROVINCES or value[:2] in {"71", "81", "82"}:
            raise _invalid("The ID number's region code is not a mainland province.")
        return Document(id_type, value, birth)
    if id_type == "hmt_residence_permit":
        birth = _eighteen(value, today)
        if value[:6] not in HMT_PREFIXES:
            raise _invalid("A residence permit number starts with 810000, 820000 or 830000.")
        return Document(id_type, value, birth)
    if id_type == "foreign_permanent_residence":
        if len(value) == 18:
            if not value.startswith("9"):
                raise _invalid("A 2023 permanent residence card number starts with 9.")
            return Document(id_type, value, _eighteen(value, today))
        if re.fullmatch(r"[A-Z]{3}[0-9]{12}", value):
            return Document(id_type, value)
        raise _invalid("A permanent residence card number has 18 or 15 characters.")
    if not PATTERNS[id_type].fullmatch(value):
        raise _invalid(f"This is not a valid {id_type.replace('_', ' ')} number.")
    return Document(id_type, value)


def id_index(vault: PiiVault, document: Document) -> str:
    """The blind index of a document: what one person, one seat (a unique index on it) and
    every look-up by ID compare. Built here only, so every writer and reader agrees."""
    return vault.index(f"id:{document.id_type}", document.id_no)


def same_person(vault: PiiVault, passenger: dict[str, Any], id_type: str, id_no: str) -> bool:
    """票人证一致: whether an ID document read at a gate or kiosk is the ticket's passenger
    (compared through the blind index; an invalid number is nobody's)."""
    try:
        document = validate(id_type, id_no)
    except DomainError:
        return False
    return hmac.compare_digest(id_index(vault, document),
                               str(passenger.get("id_no_index", "")))
