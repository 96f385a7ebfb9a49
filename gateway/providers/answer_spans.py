"""Short answers for date and number questions, taken from the best sentence.

The question's first wh-phrase gives the answer type (`when`, `how many`, `who`, `where`, ...); the
candidates of that type in a sentence are the spans that the question does not already say, and the
one nearest the words the question and the sentence share wins (answers sit next to their evidence).
Rules only, no model: the same input gives the same span, or None when no candidate fits.

Only dates and numbers are answered with a span (SPAN_TYPES). Names were measured too, on the SQuAD
subset's 42 `who` questions: the capitalised span held the reference in 36% of answers where the
whole sentence held it in 88%, so `who` and `where` questions keep the sentence.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_MONTH = "January|February|March|April|May|June|July|August|September|October|November|December"
_NUMBER_WORDS = (
    "one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|hundred|thousand|million"
)
QUESTION_TYPES: list[tuple[str, re.Pattern[str]]] = [
    (
        "date",
        re.compile(
            r"\bwhen\b|\b(what|which|in what) (year|century|decade|date|month|day|era|period)\b|\bwhat time\b",
            re.I,
        ),
    ),
    (
        "number",
        re.compile(
            r"\bhow (many|much|long|old|far|large|big|high|tall|often|fast|deep)\b"
            r"|\bwhat (percentage|percent|number|amount|size)\b",
            re.I,
        ),
    ),
    (
        "person",
        re.compile(r"\bwho(m|se)?\b|\b(what|which) (person|king|leader|man|woman|duke|emperor)\b", re.I),
    ),
    (
        "place",
        re.compile(
            r"\bwhere\b|\b(what|which|in what) (country|city|region|river|place|island|continent|state|area|town|sea)\b",
            re.I,
        ),
    ),
]
_ORDINAL = r"\d{1,2}(?:st|nd|rd|th)"
SPAN_PATTERNS: dict[str, re.Pattern[str]] = {
    "date": re.compile(
        rf"\b(?:(?:the )?(?:early |late |mid-)?{_ORDINAL}(?: and {_ORDINAL})? centur(?:y|ies)"
        rf"|(?:{_MONTH})(?: \d{{1,2}})?,? \d{{3,4}}|\d{{1,2}} (?:{_MONTH}) \d{{3,4}}|(?:{_MONTH}) \d{{1,2}}"
        r"|(?:AD |BC )?\d{3,4}s?(?: (?:AD|BC))?)\b"
    ),
    "number": re.compile(
        rf"(?:\$|£|€)?\b(?:\d[\d,.]*|(?:{_NUMBER_WORDS}))(?:\s(?:{_NUMBER_WORDS}|percent|per cent))*"
        r"(?:\s?%)?(?:\s(?:[a-z]+))?\b",
        re.I,
    ),
    "person": re.compile(r"\b[A-Z][\w'\-]+(?:\s(?:of|the|de|von|van|al|le|la)?\s?[A-Z][\w'\-]+)*"),
    "place": re.compile(r"\b[A-Z][\w'\-]+(?:\s(?:of|the|de|upon)?\s?[A-Z][\w'\-]+)*"),
}
_WORD = re.compile(r"[A-Za-z0-9]+")
SPAN_TYPES = frozenset({"date", "number"})


def question_type(question: str) -> str | None:
    """The type asked for by the question's first wh-phrase ("Who was king when ..." asks for a name)."""
    found = [(m.start(), name) for name, pattern in QUESTION_TYPES if (m := pattern.search(question))]
    return min(found)[1] if found else None


def _positions(sentence: str, shared: set[str], norm: Callable[[str], str]) -> list[int]:
    return [m.start() for m in _WORD.finditer(sentence) if norm(m.group(0)) in shared]


def short_answer(
    question: str, sentence: str, question_terms: set[str], norm: Callable[[str], str]
) -> str | None:
    """The span of the question's answer type in `sentence` nearest the evidence, or None.

    `norm` maps a word to the term form of `question_terms` (lower case, stemmed, "" for stopwords)."""
    kind = question_type(question)
    if kind not in SPAN_TYPES:
        return None
    evidence = _positions(sentence, question_terms, norm)
    best: tuple[int, int, str] | None = None
    for match in SPAN_PATTERNS[kind].finditer(sentence):
        span = match.group(0).strip(" ,")
        words = [norm(w) for w in _WORD.findall(span)]
        content = [w for w in words if w]
        if not span or (content and 2 * sum(w in question_terms for w in content) >= len(content)):
            continue  # the question already says it (or most of it)
        if kind in ("person", "place") and match.start() == 0 and len(words) == 1:
            continue  # a capital that only starts the sentence
        distance = min((abs(match.start() - p) for p in evidence), default=len(sentence))
        candidate = (distance, match.start(), span)
        if best is None or candidate < best:
            best = candidate
    return best[2] if best else None
