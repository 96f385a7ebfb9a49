"""A deterministic extractive answerer: quotes the context sentences that best match the question.

The context is what the system (and developer) messages hold. Passages written as `[id] text` (the way
RAG prompts lay out retrieved chunks) are cited by their id; when such passages exist, only their
sentences are candidates, so instructions in the system prompt are never quoted as answers.
Scoring is lexical: the IDF-weighted overlap of content words (lightly stemmed), plus a bonus for
question bigrams found in order. No randomness, no model: the same input gives the same answer.

With `[id]` passages (RAG), a question that asks for a date or a number is answered with the matching
span of the best sentences and its citation (`answer_spans.py`); other questions get the quoted
sentences as before.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from dataclasses import dataclass

from gateway.providers.answer_spans import short_answer
from gateway.tokens_cost import message_text

NO_CONTEXT = (
    "I have no context to answer from. The local provider answers only from context given in the system"
    " messages (for example retrieved passages); configure a model provider for open questions."
)
NO_QUESTION = "There is no question to answer: send a user message."
NOT_FOUND = "The context does not contain an answer to this question."
SPAN_SENTENCES = 2  # sentences searched for a short answer span, best first

_PASSAGE = re.compile(r"^[ \t]*\[([^\]\s]{1,200})\][ \t]*", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n|\n(?=\s*[-*#\d])")
_WORD = re.compile("[a-z0-9]+(?:['\u2019][a-z]+)?")
STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "also",
        "may",
        "might",
        "must",
        "shall",
        "whose",
        "s",
        "t",
        "don",
        "answer",
        "question",
        "questions",
        "context",
        "using",
        "use",
        "please",
        "cite",
        "citing",
        "ids",
        "based",
        "according",
    ]
)


@dataclass(frozen=True)
class Sentence:
    text: str
    passage_id: str | None
    position: int


def _stem(word: str) -> str:
    for suffix in ("ies", "ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def terms(text: str) -> list[str]:
    return [
        _stem(w.replace("\u2019", "'").split("'")[0])
        for w in _WORD.findall(text.lower())
        if w not in STOPWORDS
    ]


def _split_sentences(text: str) -> list[str]:
    return [" ".join(s.split()) for s in _SENTENCE_END.split(text) if s and s.strip()]  # hard-wrapped lines


def split_context(context: str) -> list[Sentence]:
    """Sentences of the context, each tagged with the `[id]` passage it belongs to (if any)."""
    marks = list(_PASSAGE.finditer(context))
    sentences: list[Sentence] = []
    if not marks:
        for s in _split_sentences(context):
            sentences.append(Sentence(s, None, len(sentences)))
        return sentences
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(context)
        for s in _split_sentences(context[mark.end() : end]):
            sentences.append(Sentence(s, mark.group(1), len(sentences)))
    return sentences


def _score(question: list[str], sentence: list[str], idf: dict[str, float]) -> float:
    if not sentence:
        return 0.0
    have = set(sentence)
    score = sum(idf.get(t, 0.0) for t in set(question) if t in have)
    if score == 0:
        return 0.0
    bigrams = set(itertools.pairwise(sentence))
    score += 0.5 * sum(1 for bg in itertools.pairwise(question) if bg in bigrams)
    return score / (1.0 + 0.02 * len(sentence))  # mild preference for focused sentences


def ranked_sentences(question: str, sentences: list[Sentence]) -> list[tuple[float, Sentence]]:
    """Sentences that share a content word with the question, best first."""
    q_terms = terms(question)
    if not q_terms or not sentences:
        return []
    tokenised = [terms(s.text) for s in sentences]
    df: Counter[str] = Counter()
    for toks in tokenised:
        df.update(set(toks))
    n = len(sentences)
    idf = {t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in set(q_terms)}
    scored = [(_score(q_terms, toks, idf), s) for toks, s in zip(tokenised, sentences, strict=True)]
    scored = [(sc, s) for sc, s in scored if sc > 0]
    scored.sort(key=lambda pair: (-pair[0], pair[1].position))
    return scored


def best_sentences(question: str, sentences: list[Sentence], *, limit: int = 2) -> list[Sentence]:
    scored = ranked_sentences(question, sentences)
    if not scored:
        return []
    top = scored[0][0]
    chosen = [s for sc, s in scored[:limit] if sc >= 0.6 * top]
    return sorted(chosen, key=lambda s: s.position)


def _norm(word: str) -> str:
    word = word.lower()
    return "" if word in STOPWORDS else _stem(word)


def span_answer(question: str, sentences: list[Sentence]) -> str | None:
    """For a date or number question: the short span and its citation, from the best sentences."""
    scored = ranked_sentences(question, sentences)
    q_terms = set(terms(question))
    for score, sentence in scored[:SPAN_SENTENCES]:
        if score < 0.6 * scored[0][0]:
            break
        span = short_answer(question, sentence.text, q_terms, _norm)
        if span:
            return span + (f" [{sentence.passage_id}]" if sentence.passage_id else "")
    return None


def split_messages(messages: list[object]) -> tuple[str, str]:
    """(context, question): system/developer messages are context; the last user message is the question."""
    context_parts: list[str] = []
    question = ""
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            context_parts.append(message_text(message))
        elif role == "user":
            question = message_text(message)
    return "\n\n".join(p for p in context_parts if p.strip()), question


def answer(messages: list[object]) -> str:
    context, question = split_messages(messages)
    if not question.strip():
        return NO_QUESTION
    if not context.strip():
        return NO_CONTEXT
    sentences = split_context(context)
    if any(s.passage_id for s in sentences):  # retrieved passages: a span for date and number questions
        sentences = [s for s in sentences if s.passage_id]
        span = span_answer(question, sentences)
        if span is not None:
            return span
    chosen = best_sentences(question, sentences)
    if not chosen:
        return NOT_FOUND
    return " ".join(f'"{s.text}"' + (f" [{s.passage_id}]" if s.passage_id else "") for s in chosen)
