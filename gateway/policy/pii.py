"""Personal data in text: emails, phone numbers, payment cards, IBANs, national ids, IP addresses.

Each kind is a regex that finds candidates plus, where a format has one, a checksum that confirms them
(Luhn for cards, mod-97 and the country's length for IBANs, `ipaddress` for IPv6). Kinds are tried in
priority order and an earlier kind wins an overlap (an SSN is not also a phone number). Cheap prefilters
skip a regex when its text cannot match (no '@', no digit), which keeps a 2 KB prompt at tens of µs.

National ids covered, each by its written form and, where it has one, its check character: US SSN
(dashed), UK National Insurance number, Spanish DNI and NIE (check letter), French NIR (mod-97 key),
Italian codice fiscale (check letter), Indian Aadhaar (Verhoeff, in 4-4-4 groups) and Canadian SIN
(Luhn, in 3-3-3 groups). Ids that are bare digit runs with no check digit or fixed grouping are left out
on purpose: they cannot be told from order numbers without context.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator

from gateway.policy.base import Hit

KINDS = ("email", "phone", "card", "iban", "national_id", "ip")

# Patterns start with a character class (not a lookbehind) so that the regex engine can skip ahead to
# candidates quickly; boundaries before a match are checked by the lookbehinds, which see the whole text.
EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*"
    r"\.[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
# Numeric kinds are looked for only inside runs of digits and separators (few in most prose).
NUMERIC_RUN = re.compile(r"\d(?:[ ().+:-]{0,2}\d){3,}")  # 4 digits or more, as every numeric kind has
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d]|[ -]\d)")
SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
IPV4 = re.compile(
    r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\d|\.\d)"
)
PHONE = re.compile(
    # international: +CC then groups; national: (area) or area- then two groups; not inside a longer run
    r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"
    r"|(?:\(\d{2,5}\)[ .-]?|\d{2,5}[ .-])\d{2,4}[ .-]\d{3,4})(?!\w|[ .-]\d)"
)
IBAN = re.compile(r"[A-Z]{2}\d{2}(?= ?[A-Z0-9]{2})")
NINO = re.compile(r"[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])")
NINO_BAD_PREFIXES = ("BG", "GB", "NK", "KN", "TN", "NT", "ZZ")
DNI = re.compile(r"(?<![\w-])(?:([XYZ])-?)?(\d{7,8})-?([A-Z])(?![\w])")  # NIE: X/Y/Z + 7 digits
DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"
NIR = re.compile(r"(?<![\d.-])[12] ?\d{2} ?\d{2} ?\d{2} ?\d{3} ?\d{3} ?\d{2}(?![\d]|[ .-]\d)")
AADHAAR = re.compile(r"(?<![\d.-])[2-9]\d{3}([ -])\d{4}\1\d{4}(?![\d]|[ .-]\d)")
SIN = re.compile(r"(?<![\d.-])[0-79]\d{2}([ -])\d{3}\1\d{3}(?![\d]|[ .-]\d)")
CODICE_FISCALE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{6}\d{2}[ABCDEHLMPRST]\d{2}[A-Z]\d{3}[A-Z](?![A-Za-z0-9])")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
DIGIT = re.compile(r"\d")

# IBAN length by country (SWIFT registry). Unknown countries are not detected.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip
# On overlap the kind found first in this order wins (an SSN is not also a phone number).
# A national id's grouping and check are more specific than a card's Luhn (a French NIR is 15 digits).
PRIORITY = {"email": 0, "iban": 1, "national_id": 2, "card": 3, "ip": 4, "phone": 5}
NUMERIC_KINDS = frozenset({"iban", "card", "national_id", "ip", "phone"})


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_CF_ODD = dict(zip("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                   [1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6,
                    8, 12, 14, 16, 10, 22, 25, 24, 23], strict=True))  # fmt: skip
_VERHOEFF_D = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]  # fmt: skip
_VERHOEFF_P = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]  # fmt: skip


def dni_ok(prefix: str, digits: str, letter: str) -> bool:
    """Spanish DNI (8 digits) or NIE (X/Y/Z and 7 digits): the letter is the number mod 23."""
    if prefix:
        if len(digits) != 7:
            return False
        digits = str("XYZ".index(prefix)) + digits
    elif len(digits) != 8:
        return False
    return DNI_LETTERS[int(digits) % 23] == letter


def nir_ok(digits: str) -> bool:
    """French NIR: 13 digits and a 2-digit key, 97 - (number mod 97)."""
    return len(digits) == 15 and 97 - int(digits[:13]) % 97 == int(digits[13:])


def verhoeff_ok(digits: str) -> bool:
    check = 0
    for i, ch in enumerate(reversed(digits)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[i % 8][ord(ch) - 48]]
    return check == 0


def codice_fiscale_ok(code: str) -> bool:
    total = 0
    for i, ch in enumerate(code[:15]):
        total += _CF_ODD[ch] if i % 2 == 0 else (ord(ch) - 48 if ch.isdigit() else ord(ch) - 65)
    return chr(65 + total % 26) == code[15]


def iban_ok(compact: str) -> bool:
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _boundary_before(text: str, pos: int) -> bool:
    return pos == 0 or not text[pos - 1].isalnum()


def _emails(text: str) -> Iterator[Hit]:
    """Only windows around each '@' are searched: scanning all prose for a local part is slow."""
    at = text.find("@")
    last_end = 0
    while at != -1:
        lo = max(last_end, at - 64)
        m = EMAIL.search(text, lo, min(len(text), at + 256))
        if m is not None and m.start() <= at < m.end():
            yield Hit(m.start(), m.end(), "email")
            last_end = m.end()
        at = text.find("@", max(at + 1, last_end))


def _numeric(text: str, kinds: frozenset[str]) -> Iterator[Hit]:
    """Every kind but email holds a run of 4 digits or more: one pass finds the runs, then each short
    window is tried only for the kinds its digit count allows (an IBAN starts up to 12 characters
    earlier, an NI number 3)."""
    for run in NUMERIC_RUN.finditer(text):
        start = run.start()
        if "iban" in kinds and IBAN.search(text, max(0, start - 12), start + 5) is not None:
            # country, check digits and a bank code of letters may come before the run
            yield from _ibans(text, max(0, start - 12), start + 5)
        value = run.group()
        digits = sum(map(str.isdigit, value))
        lo = max(0, start - 3)  # '+', '(' or an NI number's letters come before the digits
        hi = min(len(text), run.end() + 3)  # an NI number's letter, and the lookaheads
        if "national_id" in kinds:
            yield from _national_ids(text, lo, hi, value, digits)
        if "ip" in kinds and value.count(".") >= 3:
            yield from (Hit(m.start(), m.end(), "ip") for m in IPV4.finditer(text, lo, hi))
        if "card" in kinds and digits >= 13:
            for m in CARD.finditer(text, lo, hi):
                if luhn_ok(m.group().replace(" ", "").replace("-", "")):
                    yield Hit(m.start(), m.end(), "card")
        if "phone" in kinds and 8 <= digits <= 24:
            for m in PHONE.finditer(text, lo, hi):
                found = m.group()
                if 8 <= sum(map(str.isdigit, found)) <= 15:
                    # "(+44 20 7946 0958)": a closing parenthesis with no opening one is not part of it
                    end = m.end() - 1 if found.endswith(")") and "(" not in found else m.end()
                    yield Hit(m.start(), end, "phone")


def _ibans(text: str, lo: int, hi: int) -> Iterator[Hit]:
    """Take exactly the country's length of characters (single spaces allowed between them), then
    require a boundary and the mod-97 checksum."""
    for m in IBAN.finditer(text, lo, hi):
        length = IBAN_LENGTHS.get(m.group()[:2])
        if length is None or not _boundary_before(text, m.start()):
            continue
        chars: list[str] = []
        pos = m.start()
        while pos < len(text) and len(chars) < length:
            ch = text[pos]
            if ch.isascii() and ch.isalnum():
                chars.append(ch.upper())
            elif not (ch == " " and pos + 1 < len(text) and text[pos + 1] != " "):
                break
            pos += 1
        if len(chars) == length and not (pos < len(text) and text[pos].isalnum()) and iban_ok("".join(chars)):
            yield Hit(m.start(), pos, "iban")


def _national_ids(text: str, lo: int, hi: int, value: str, digits: int) -> Iterator[Hit]:
    """The ids held in one digit run, chosen by its digit count, each confirmed by its check."""
    if digits == 6:
        yield from _ninos(text, lo, hi)
    elif digits == 9:
        if "-" in value:
            yield from (Hit(m.start(), m.end(), "national_id") for m in SSN.finditer(text, lo, hi))
        for m in SIN.finditer(text, lo, hi):
            if luhn_ok(_only_digits(m.group())):
                yield Hit(m.start(), m.end(), "national_id")
    elif digits in (7, 8):
        for m in DNI.finditer(text, lo, hi):
            if dni_ok(m.group(1) or "", m.group(2), m.group(3)):
                yield Hit(m.start(), m.end(), "national_id")
    elif digits == 12:
        for m in AADHAAR.finditer(text, lo, hi):
            if verhoeff_ok(_only_digits(m.group())):
                yield Hit(m.start(), m.end(), "national_id")
    elif digits == 15:
        for m in NIR.finditer(text, lo, hi):
            if nir_ok(_only_digits(m.group())):
                yield Hit(m.start(), m.end(), "national_id")


def _only_digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


def _codici_fiscali(text: str) -> Iterator[Hit]:
    for m in CODICE_FISCALE.finditer(text):
        if codice_fiscale_ok(m.group()):
            yield Hit(m.start(), m.end(), "national_id")


def _ninos(text: str, lo: int, hi: int) -> Iterator[Hit]:
    for m in NINO.finditer(text, lo, hi):
        if _boundary_before(text, m.start()) and m.group()[:2] not in NINO_BAD_PREFIXES:
            yield Hit(m.start(), m.end(), "national_id")


def _ipv6(text: str) -> Iterator[Hit]:
    """Only windows around '::' or a hex:hex pair: most colons in prose are not addresses."""
    colon = text.find(":")
    last_end = 0
    while colon != -1:
        m = IPV6.search(text, max(last_end, colon - 40), min(len(text), colon + 40))
        if m is not None and m.start() <= colon < m.end():
            last_end = m.end()
            value = m.group()
            if value.count(":") >= 2 and value.strip(":"):
                try:
                    ipaddress.IPv6Address(value)
                except ValueError:
                    pass
                else:
                    yield Hit(m.start(), m.end(), "ip")
        colon = text.find(":", max(colon + 1, last_end))


def find_pii(text: str, kinds: frozenset[str] = frozenset(KINDS)) -> list[Hit]:
    """Confirmed hits of the given kinds, sorted by position, without overlaps."""
    if not text:
        return []
    hits: list[Hit] = []
    if "email" in kinds and "@" in text:
        hits.extend(_emails(text))
    if kinds & NUMERIC_KINDS and DIGIT.search(text) is not None:
        hits.extend(_numeric(text, kinds))
        if "national_id" in kinds:  # letters and short digit groups: not in any numeric run
            hits.extend(_codici_fiscali(text))
    if "ip" in kinds and ":" in text:
        hits.extend(_ipv6(text))
    return resolve_overlaps(hits)


def resolve_overlaps(hits: list[Hit]) -> list[Hit]:
    if len(hits) < 2:
        return hits
    kept: list[Hit] = []
    for hit in sorted(hits, key=lambda h: (PRIORITY.get(h.kind, 9), h.start)):
        if not any(k.start < hit.end and hit.start < k.end for k in kept):
            kept.append(hit)
    kept.sort(key=lambda h: h.start)
    return kept


def redact(text: str, hits: list[Hit], replace: Callable[[Hit], str]) -> str:
    out: list[str] = []
    pos = 0
    for hit in hits:
        out.append(text[pos : hit.start])
        out.append(replace(hit))
        pos = hit.end
    out.append(text[pos:])
    return "".join(out)


def placeholder(hit: Hit) -> str:
    return f"[REDACTED:{hit.kind.upper()}]"
