"""Contact resolution inside the registry's boundary: ERK → the resident's verified contacts.

Reads the registry's own raw tables (registry, registry_contact) and holds what it finds in
memory only; nothing here is written anywhere. A notice's resident is found through its contact
token (``notice_contacts``, sealed by the pipeline: renkei.outputs.contacts), opened with the
contact key — delivery holds no link key and cannot open an ERK — only for the notices being
delivered. Rules:
- a contact counts only when verified_at is set (an unparseable verified_at is unverified);
- contacts are ordered by the configured channel preference, then most recently verified;
- a child (legal age below `adult_age` on the delivery date) is reached through the household:
  the oldest adult `resident` of the same household_code who has a verified contact (ties by
  resident code); the child's own contacts are not used. A resident without a parseable birth
  date is treated as an adult.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from renkei.config import load_sources
from renkei.errors import KeyRingError, SourceError
from renkei.keys.adapter import _iter_raw, raw_location
from renkei.keys.ring import KeyRing
from renkei.services.dates import age_years
from renkei.sources.values import ValueParseError, parse_date, parse_timestamp

CONTACT = "contact"
RESIDENT = "resident"


@dataclass(frozen=True)
class Contact:
    """One verified contact point; the address never appears in repr or logs."""

    channel: str
    address: str = field(repr=False)
    via_household: bool = False  # the notice is a child's: this is the household adult's contact


@dataclass(frozen=True)
class _Person:
    birth_date: date | None
    household: str | None
    status: str | None


class UnopenableErk(KeyRingError):
    """A notice's contact token does not open under the keyring's contact key."""

    def __init__(self, erk: str) -> None:
        super().__init__("a contact token does not open under the contact key")
        self.erk = erk


def _rows(raw_dir: Path, name: str) -> Iterator[dict]:
    source = load_sources()[name]
    location = raw_location(raw_dir, name)
    if location is None:
        raise SourceError(
            f"{name}: neither {name}.csv nor {name}.db in {raw_dir}: delivery reads the registry's own "
            "tables; point --work / RENKEI_RAW_DIR at the raw drop folder"
        )
    for _, row in _iter_raw(source, location, None, None):  # the whole table
        if row is not None:
            yield row


def _date(text: str | None) -> date | None:
    try:
        return parse_date(text)
    except ValueParseError:
        return None


def _timestamp(text: str | None) -> datetime | None:
    try:
        return parse_timestamp(text)
    except ValueParseError:
        return None


def _code(row: dict) -> str:
    return (row.get("resident_code") or "").strip()


@dataclass(frozen=True)
class ContactIndex:
    """ERK → ordered verified contacts (empty: none), and whether the ERK is a current resident."""

    contacts: dict[str, tuple[Contact, ...]]
    residents: frozenset[str]  # ERKs whose registry status is `resident`

    def __repr__(self) -> str:  # never show contacts
        return f"ContactIndex({len(self.contacts)} ERKs)"


def build_index(
    raw_dir: Path,
    ring: KeyRing,
    tokens: Mapping[str, str],
    on: date,
    preference: tuple[str, ...] = ("email", "line", "post"),
    adult_age: int = 18,
) -> ContactIndex:
    """The contact index of the ERKs in `tokens` (ERK → contact token) on the delivery date `on`.

    Raises UnopenableErk (carrying the ERK) when a contact token was not sealed under this keyring.
    """
    code_of: dict[str, str] = {}
    for erk, token in tokens.items():
        try:
            code_of[erk] = ring.open(CONTACT, token)
        except KeyRingError:
            raise UnopenableErk(erk) from None
    wanted = set(code_of.values())

    people: dict[str, _Person] = {}
    for row in _rows(raw_dir, "registry"):
        code = _code(row)
        if code in wanted:
            people[code] = _Person(_date(row.get("birth_date")), (row.get("household_code") or "").strip() or None,
                                   (row.get("status") or "").strip())

    def is_child(p: _Person | None) -> bool:
        return p is not None and p.birth_date is not None and age_years(p.birth_date, on) < adult_age

    households = {p.household for p in people.values() if is_child(p) and p.household}
    adults: dict[str, list[tuple[date, str]]] = defaultdict(list)
    if households:
        for row in _rows(raw_dir, "registry"):
            household = (row.get("household_code") or "").strip()
            if household not in households or (row.get("status") or "").strip() != RESIDENT:
                continue
            born = _date(row.get("birth_date"))
            if born is not None and age_years(born, on) >= adult_age:
                adults[household].append((born, _code(row)))
        for members in adults.values():
            members.sort()

    holders = wanted | {code for members in adults.values() for _, code in members}
    rank = {channel: i for i, channel in enumerate(preference)}
    found: dict[str, list[tuple[int, float, str, str]]] = defaultdict(list)
    for row in _rows(raw_dir, "registry_contact"):
        code, channel, address = _code(row), (row.get("channel") or "").strip(), (row.get("address") or "").strip()
        if code not in holders or channel not in rank or not address:
            continue
        verified = _timestamp(row.get("verified_at"))
        if verified is not None:
            # Within a channel, the most recently verified address first.
            found[code].append((rank[channel], -verified.timestamp(), channel, address))

    def own(code: str, via_household: bool) -> tuple[Contact, ...]:
        seen: set[tuple[str, str]] = set()
        out = []
        for _, _, channel, address in sorted(found.get(code, ())):
            if (channel, address) not in seen:
                seen.add((channel, address))
                out.append(Contact(channel, address, via_household))
        return tuple(out)

    index: dict[str, tuple[Contact, ...]] = {}
    for erk, code in code_of.items():
        person = people.get(code)
        if is_child(person):
            members = adults.get(person.household or "", [])
            index[erk] = next((c for c in (own(m, True) for _, m in members) if c), ())
        else:
            index[erk] = own(code, False)
    residents = frozenset(erk for erk, code in code_of.items() if code in people and people[code].status == RESIDENT)
    return ContactIndex(index, residents)

