"""Principals: one person, however their name is spelled.

What "the same person" means to four-eyes (requester, approvers, the version's git authors):

- a principal is read after `normalise`: Unicode NFKC; every invisible character removed (format and
  control characters, and all of Unicode's default-ignorable code points: zero-width spaces and joiners,
  word joiner, soft hyphen, byte-order mark, bidi marks and isolates, variation selectors, Hangul fillers,
  tag characters); runs of whitespace (NBSP and ideographic space included) made one space and the ends
  stripped; a `mailto:` prefix, surrounding quotes and angle brackets and trailing dots removed; a `Name
  <email>` form (as git writes authors; the name may be quoted) reduced to the email; and case folded
  (`STRASSE` = `straße`). Keys store this form.
- two principals are one person when their *identities* are equal: the normalised form with accents and
  other combining marks dropped (`İ` = `i`, `José` = `jose`), the Turkish dotless i (U+0131) read as `i`, and an
  email's `+tag` dropped (`alice+ops@x` = `alice@x`; it is one mailbox);
- a bare name (no `@`) is also the person of every email whose user part is that name: `alice` is
  `alice@example.com` (two emails are compared whole: `alice@a.com` is not `alice@b.com`);
- a git author `Name <email>` is matched by the email, the email's user and the name.

Look-alike letters from other scripts (Cyrillic U+0430 for Latin `a`) cannot be folded without Unicode's
confusables table, so a key principal that mixes Latin, Greek, Cyrillic or other look-alike scripts is
refused when the key is created (`mixed_scripts`). Git identities are written by whoever commits, so
matching authors catches honest spellings, not someone committing under another name (see
docs/security.md).
"""

from __future__ import annotations

import re
import unicodedata

_NAME_EMAIL = re.compile(r"^(?P<name>[^<>]*)<(?P<email>[^<>]*)>$")
_MAILTO = re.compile(r"^mailto:", re.IGNORECASE)
_ACTOR_KEY = re.compile(r"\s*\(key key_[0-9a-f]+\)$")  # `Principal.actor`: "alice@example.com (key key_1a2b)"

# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt) that are not already format (Cf) or
# unassigned: they render as nothing, so `alice` and `alice` plus one of them look the same.
_IGNORABLE_RANGES = (
    (0x00AD, 0x00AD),  # soft hyphen (Cf, listed for clarity)
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x115F, 0x1160),  # Hangul choseong / jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian free variation selectors, vowel separator
    (0x2800, 0x2800),  # Braille blank (not default-ignorable, but renders as a space)
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors 1-16
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0xE0000, 0xE0FFF),  # tags, variation selectors 17-256
)
_INVISIBLE_CATEGORIES = ("Cf", "Cc", "Cs", "Co", "Cn")
# Scripts whose letters pass for each other's (Latin a, Cyrillic U+0430, Greek U+03B1...): one principal uses
# at most one of them.
_LOOKALIKE_SCRIPTS = ("LATIN", "GREEK", "CYRILLIC", "ARMENIAN", "CHEROKEE", "COPTIC", "GEORGIAN")


def _invisible(c: str) -> bool:
    if unicodedata.category(c) in _INVISIBLE_CATEGORIES:
        return True
    point = ord(c)
    return any(low <= point <= high for low, high in _IGNORABLE_RANGES)


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    kept = "".join(" " if c.isspace() else c for c in text if c.isspace() or not _invisible(c))
    return " ".join(kept.split())


def _unwrap(text: str) -> str:
    """Quotes, angle brackets, `mailto:` and trailing dots around a name or an email."""
    previous = None
    while previous != text:
        previous = text
        text = text.strip().rstrip(".").strip()
        text = _MAILTO.sub("", text)
        for left, right in (('"', '"'), ("'", "'"), ("<", ">")):
            if len(text) >= 2 and text[0] == left and text[-1] == right:
                text = text[1:-1]
    return text


def _split(text: str) -> tuple[str, str | None]:
    """(display name, email or None) of a cleaned principal."""
    match = _NAME_EMAIL.match(text)
    if match and _unwrap(match.group("email")):
        return _unwrap(match.group("name")), _unwrap(match.group("email"))
    return "", None


def normalise(principal: str | None) -> str:
    """The form a principal is stored and compared in ('' for nothing at all)."""
    if not principal:
        return ""
    text = _ACTOR_KEY.sub("", _clean(principal))
    _, email = _split(text)
    text = _unwrap(email if email is not None else text)
    if "@" in text:  # `alice@example.com.`: the domain's root dot
        local, _, domain = text.rpartition("@")
        text = f"{local}@{domain.rstrip('.')}"
    return unicodedata.normalize("NFKC", text.casefold()).strip()


def identity(principal: str | None) -> str:
    """What two spellings of one person share: the normalised form without combining marks (accents, the
    dot of U+0130), the dotless i (U+0131) as `i`, and an email's `+tag` dropped."""
    text = normalise(principal)
    text = "".join(
        c for c in unicodedata.normalize("NFKD", text) if unicodedata.category(c) not in ("Mn", "Me")
    )
    text = unicodedata.normalize("NFKC", text.replace("\u0131", "i"))
    if "@" in text:
        local, _, domain = text.rpartition("@")
        text = f"{local.split('+', 1)[0] or local}@{domain}"
    return text


def _one_person(a: str, b: str) -> bool:
    """Whether two identities are one person: equal, or a bare name and an email with that user."""
    if not a or not b:
        return False
    if a == b:
        return True
    if ("@" in a) == ("@" in b):
        return False
    name, email = (a, b) if "@" in b else (b, a)
    return email.rpartition("@")[0] == name


def names_of(author: str | None) -> set[str]:
    """Every spelling of a git author (`Name <email>`) a principal may use: the email, the email's user and
    the name, each normalised."""
    if not author:
        return set()
    text = _clean(author)
    name, email = _split(text)
    if email is None:
        return {normalise(text)} - {""}
    address = normalise(email)
    return {address, address.rpartition("@")[0], normalise(name)} - {""}


def same(a: str | None, b: str | None) -> bool:
    """Whether two principals are one person."""
    return _one_person(identity(a), identity(b))


def is_author(principal: str, authors: list[str] | tuple[str, ...] | set[str]) -> str | None:
    """The author (as recorded) that `principal` is, or None."""
    who = identity(principal)
    if not who:
        return None
    for author in authors:
        name, email = _split(_clean(author))
        spellings = (name, email) if email is not None else (author,)
        if any(_one_person(who, identity(s)) for s in spellings):
            return author
    return None


def mixed_scripts(principal: str) -> list[str]:
    """The look-alike scripts a principal's letters come from, when more than one (else [])."""
    scripts: set[str] = set()
    for c in normalise(principal):
        if c.isalpha():
            script = unicodedata.name(c, "").split(" ", 1)[0]
            if script in _LOOKALIKE_SCRIPTS:
                scripts.add(script)
    return sorted(scripts) if len(scripts) > 1 else []
