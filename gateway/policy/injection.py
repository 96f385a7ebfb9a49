"""Prompt-injection heuristics: named rules over user input and retrieved context.

Heuristics, not a classifier: each rule is a phrasing attackers use (and ordinary requests rarely do),
so a match names *why* the text was flagged. They catch the common, lazy attacks (instructions to ignore
earlier instructions, role-play escapes, fake chat-turn markers, prompt leaks, hidden text and notes to
the AI inside documents) and nothing clever; pair them with least-privilege tools and output checks.

Speed: one big alternation tried at every position of a 2 KB text costs over a millisecond in Python's
`re`, and even a `str.find` per keyword adds up. So the text is split into a set of words once; a
keyword is looked for (`str.find`) only when its first word is in that set (or, for a symbol such as
`<|`, when its first character occurs), and a phrase's regex runs only in a window around each hit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

WINDOW = 160  # characters after a keyword that a phrase may span


@dataclass(frozen=True, slots=True)
class Phrase:
    rule: str
    keywords: tuple[str, ...]
    pattern: re.Pattern[str]
    back: int = 0  # how far before the keyword the match may start
    line_start: bool = False  # only at the start of a line (after spaces or '#')


def _p(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


PHRASES: tuple[Phrase, ...] = (
    Phrase(
        "ignore_instructions",
        ("ignore", "disregard", "forget", "skip", "override", "bypass"),
        _p(
            r"\b(?:ignore|disregard|forget|skip|override|bypass)\b[^.\n]{0,40}?"
            r"\b(?:previous|prior|above|earlier|preceding|system|original|all|any|your)\b[^.\n]{0,30}?"
            r"\b(?:instructions?|prompts?|rules|directions|guidelines|directives|constraints|messages?)\b"
            r"|\b(?:ignore|disregard|forget)\s+(?:everything|all)\s+"
            r"(?:above|before|previously|you(?:'ve| have) been told)"
        ),
    ),
    Phrase(
        "role_play_escape",
        ("you are", "act as", "behave as", "respond as", "pretend", " mode", "anything now", "no longer"),
        _p(
            r"\byou are (?:now )?(?:dan\b|in (?:developer|god|jailbreak|unrestricted) mode"
            r"|an? (?:unrestricted|unfiltered|uncensored|jailbroken)\b)"
            r"|\b(?:act|behave|respond) as (?:if you (?:are|were) )?(?:an? )?"
            r"(?:unrestricted|unfiltered|uncensored|jailbroken)\b"
            r"|\bpretend (?:that )?you (?:have no|are not bound by|don'?t have) "
            r"(?:rules|restrictions|guidelines|limits|filters)"
            r"|\b(?:developer|jailbreak|dan) mode\b|\bdo anything now\b|\bno longer (?:bound|restricted) by\b"
        ),
        back=10,
    ),
    Phrase(
        "prompt_leak",
        ("prompt", "instructions", "rules"),
        _p(
            r"\b(?:reveal|print|show|repeat|output|display|leak|tell me)\b[^.\n]{0,20}?"
            r"\b(?:your|the)\s+(?:system|initial|original|hidden|secret)\s+(?:prompt|instructions|rules)"
        ),
        back=60,
    ),
    Phrase(
        "fake_turn_markers",
        ("<|", "[inst", "[/inst", "<<sys", "<</sys"),
        _p(r"<\|(?:im_start|im_end|system|endoftext|start_header_id|eot_id)\|>|\[/?inst\]|<</?sys>>"),
    ),
    Phrase(
        "fake_turn_markers",
        ("system", "assistant"),
        _p(r"(?:system|assistant)\s*(?:prompt)?\s*:"),
        line_start=True,
    ),
    Phrase(
        "new_instructions",
        ("instruction", "instructions"),
        _p(r"\b(?:new|updated|real|actual|revised|secret)\s+(?:system\s+)?instructions?\s*:"),
        back=20,
    ),
    Phrase(
        "hidden_instructions",
        ("<!--", "note ", "message ", "instruction", "instructions", "if you are", "must ", "should "),
        _p(
            r"<!--[^>]{0,400}?\b(?:ignore|instructions?|assistant|ai|system|prompt)\b"
            r"|\b(?:note|message|instructions?) (?:to|for) (?:the |any )?"
            r"(?:ai|assistant|llm|language model|chatbot|model)\b"
            r"|\bif you are an? (?:ai|llm|language model|assistant|chatbot)\b"
            r"|\b(?:ai|assistant|llm)s? (?:must|should) (?:now )?(?:ignore|say|respond|reply|output|include)\b"
        ),
        back=20,
    ),
)
RULES = tuple(dict.fromkeys(p.rule for p in PHRASES))
# Invisible text: Unicode tag characters (ASCII smuggling) and bidi overrides (text that reads differently
# than it displays). Zero-width joiners are left alone: emoji sequences and several scripts need them.
HIDDEN_TEXT = re.compile("[\U000e0000-\U000e007f\u202a-\u202e\u2066-\u2069]|[\u200b\u2060\ufeff]{2,}")
RULE_NAMES = (*RULES, "hidden_text")


PUNCTUATION = str.maketrans({c: " " for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\t\n\r"})


def _trigger(keyword: str) -> str:
    """What must be in the text before the keyword is searched: its first word, or its first symbol."""
    head = keyword.lstrip()
    return head.split()[0] if head[0].isalpha() else head[0]


def _at_line_start(text: str, pos: int) -> bool:
    i = pos - 1
    while i >= 0 and text[i] in " \t#>*":
        i -= 1
    return i < 0 or text[i] == "\n"


def _keyword_at(phrase: Phrase, keyword: str, lowered: str) -> bool:
    pos = lowered.find(keyword)
    while pos != -1:
        if phrase.line_start:
            if _at_line_start(lowered, pos) and phrase.pattern.match(lowered, pos, pos + WINDOW):
                return True
        elif phrase.pattern.search(lowered, max(0, pos - phrase.back), pos + WINDOW):
            return True
        pos = lowered.find(keyword, pos + len(keyword))
    return False


@dataclass(frozen=True)
class InjectionRules:
    """A compiled choice of rules: built-in names plus custom patterns (searched over the whole text)."""

    keywords: tuple[tuple[Phrase, str, str], ...]  # (phrase, keyword, trigger), in rule order
    custom: tuple[tuple[str, re.Pattern[str]], ...]
    hidden_text: bool

    @classmethod
    def build(cls, names: list[str] | None, custom: dict[str, str]) -> InjectionRules:
        chosen = set(RULE_NAMES if names is None else names)
        return cls(
            tuple((p, k, _trigger(k)) for p in PHRASES if p.rule in chosen for k in p.keywords),
            tuple((name, re.compile(regex, re.IGNORECASE)) for name, regex in custom.items()),
            "hidden_text" in chosen,
        )

    def first_match(self, text: str) -> str | None:
        """The name of the first rule that matches, or None."""
        if not text:
            return None
        # str.isascii() is O(1) in CPython; only non-ASCII text can hide characters
        if self.hidden_text and not text.isascii() and HIDDEN_TEXT.search(text):
            return "hidden_text"
        lowered = text.lower()
        words = set(lowered.translate(PUNCTUATION).split())
        for phrase, keyword, trigger in self.keywords:
            present = trigger in words if trigger.isalpha() else trigger in lowered
            if present and _keyword_at(phrase, keyword, lowered):
                return phrase.rule
        for name, pattern in self.custom:
            if pattern.search(text):
                return name
        return None
