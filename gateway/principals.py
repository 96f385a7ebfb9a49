"""Principals: one person, however their name is spelled.

A principal is compared after `normalise`: Unicode NFKC, format and control characters (zero-width
spaces, joiners, byte-order marks, bidi marks) removed, surrounding whitespace stripped, case folded, and a
`Name <email>` form (as git writes authors) reduced to the email. Keys store the normalised form; git
authors, requesters and approvers are compared in it, so `Alice@Example.com`, ` alice@example.com` and
`Alice <alice@example.com>` are one person to four-eyes.
"""

from __future__ import annotations

import re
import unicodedata

_NAME_EMAIL = re.compile(r"^(?P<name>[^<>]*)<(?P<email>[^<>]*)>$")


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    kept = "".join(c for c in text if unicodedata.category(c) not in ("Cf", "Cc", "Cs", "Co", "Cn"))
    return " ".join(kept.split())


def normalise(principal: str | None) -> str:
    """The form a principal is stored and compared in ('' for nothing at all)."""
    if not principal:
        return ""
    text = _clean(principal)
    match = _NAME_EMAIL.match(text)
    if match and match.group("email").strip():
        text = match.group("email").strip()
    return text.casefold().strip()


def names_of(author: str | None) -> set[str]:
    """Every spelling of a git author (`Name <email>`) a principal may use: the email, the email's user and
    the name, each normalised."""
    if not author:
        return set()
    text = _clean(author)
    match = _NAME_EMAIL.match(text)
    if not match:
        return {normalise(text)} - {""}
    email = normalise(match.group("email"))
    name = normalise(match.group("name"))
    return {email, email.split("@", 1)[0], name} - {""}


def same(a: str | None, b: str | None) -> bool:
    """Whether two principals are one person."""
    na, nb = normalise(a), normalise(b)
    return bool(na) and na == nb


def is_author(principal: str, authors: list[str] | tuple[str, ...] | set[str]) -> str | None:
    """The author (as recorded) that `principal` is, or None."""
    who = normalise(principal)
    if not who:
        return None
    for author in authors:
        if who in names_of(author):
            return author
    return None
