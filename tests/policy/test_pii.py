"""PII detectors: each kind found in context, checksums respected, look-alikes left alone."""

from __future__ import annotations

import pytest

from gateway.policy.pii import (
    codice_fiscale_ok,
    dni_ok,
    find_pii,
    iban_ok,
    luhn_ok,
    nir_ok,
    placeholder,
    redact,
    verhoeff_ok,
)


def kinds(text: str) -> list[tuple[str, str]]:
    return [(h.kind, text[h.start : h.end]) for h in find_pii(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+news@example.co.uk today", [("email", "jane.doe+news@example.co.uk")]),
        ("card 4111 1111 1111 1111 please", [("card", "4111 1111 1111 1111")]),
        ("card 4012-8888-8888-1881.", [("card", "4012-8888-8888-1881")]),
        ("pay DE89 3704 0044 0532 0130 00 now", [("iban", "DE89 3704 0044 0532 0130 00")]),
        ("pay GB82WEST12345698765432.", [("iban", "GB82WEST12345698765432")]),
        ("ssn 078-05-1120 on file", [("national_id", "078-05-1120")]),
        ("NI number AB 12 34 56 C here", [("national_id", "AB 12 34 56 C")]),
        ("DNI 12345678Z, NIE X-1234567-L.", [("national_id", "12345678Z"), ("national_id", "X-1234567-L")]),
        ("NIR 2 55 08 14 168 025 38 end", [("national_id", "2 55 08 14 168 025 38")]),
        ("codice fiscale RSSMRA85T10A562S.", [("national_id", "RSSMRA85T10A562S")]),
        ("Aadhaar 2345 6789 0124 linked", [("national_id", "2345 6789 0124")]),
        ("SIN 046 454 286 on the form", [("national_id", "046 454 286")]),
        ("from 203.0.113.42:443", [("ip", "203.0.113.42")]),
        ("v6 2001:db8::8a2e:370:7334 up", [("ip", "2001:db8::8a2e:370:7334")]),
        (
            "call +44 20 7946 0958 or (415) 555-0100",
            [("phone", "+44 20 7946 0958"), ("phone", "(415) 555-0100")],
        ),
        ("call 415-555-0100.", [("phone", "415-555-0100")]),
    ],
)
def test_each_kind_is_found(text: str, expected: list[tuple[str, str]]) -> None:
    assert kinds(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails Luhn",
        "IBAN DE89 3704 0044 0532 0130 02 fails mod-97",
        "dates 2026-11-28 and times 12:30:45, versions 1.2.3, ratio 3.14159",
        "numbers 1,000,000 and 42 and order 12345",
        "user@localhost has no domain",
        "DNI 12345678A and NIE X1234567Z have the wrong check letter",
        "codice RSSMRA85T10A562T has the wrong check letter",
        "NIR 2 55 08 14 168 025 39 has the wrong key",
        "the Q3 report: revenue 48.2 million, up 12 percent; 31,400 members",
    ],
)
def test_look_alikes_are_not_pii(text: str) -> None:
    assert find_pii(text) == []


def test_overlaps_go_to_the_more_specific_kind() -> None:
    # the SSN is also a plausible phone number; the card also a digit run
    assert kinds("ssn 078-05-1120") == [("national_id", "078-05-1120")]


def test_an_invalid_ssn_is_not_a_national_id() -> None:
    assert [h.kind for h in find_pii("SSNs never start with 000: 000-12-3456")] != ["national_id"]


def test_only_the_kinds_asked_for() -> None:
    text = "jane@example.com 203.0.113.42"
    assert [h.kind for h in find_pii(text, frozenset({"ip"}))] == ["ip"]


def test_redaction_replaces_each_hit() -> None:
    text = "mail jane@example.com or call +1 415 555 0100."
    assert redact(text, find_pii(text), placeholder) == "mail [REDACTED:EMAIL] or call [REDACTED:PHONE]."


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert dni_ok("", "12345678", "Z") and not dni_ok("", "12345678", "A")
    assert dni_ok("X", "1234567", "L") and not dni_ok("X", "12345678", "L")
    assert nir_ok("255081416802538") and not nir_ok("255081416802539")
    assert verhoeff_ok("2363") and not verhoeff_ok("2364")
    assert codice_fiscale_ok("RSSMRA85T10A562S") and not codice_fiscale_ok("RSSMRA85T10A562A")
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE89370400440532013001")
