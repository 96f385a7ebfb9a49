"""Short answer spans of the local extractive answerer, for RAG passages."""

from __future__ import annotations

import pytest

from gateway.providers import extractive
from gateway.providers.answer_spans import question_type

RAG = (
    "Answer using only this context, citing [ids].\n"
    "[n#0] The Duchy of Normandy began in 911 as a fiefdom, under the Viking ruler Rollo.\n"
    "[n#1] Norman knights crossed to England with 7,000 men. The river Seine bounded the Duchy.\n"
)


def ask(question: str, context: str = RAG) -> str:
    return extractive.answer([{"role": "system", "content": context}, {"role": "user", "content": question}])


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("When was the Duchy founded?", "date"),
        ("In what year did it begin?", "date"),
        ("How many men crossed?", "number"),
        ("Who was king when the Duchy began?", "person"),  # the first wh-phrase decides
        ("What river bounded the Duchy?", "place"),
        ("What is a fiefdom?", None),
    ],
)
def test_question_types(question: str, kind: str | None) -> None:
    assert question_type(question) == kind


def test_date_and_number_questions_get_a_cited_span() -> None:
    assert ask("When did the Duchy of Normandy begin?") == "911 [n#0]"
    assert ask("In what year did the Duchy of Normandy begin?") == "911 [n#0]"
    assert ask("How many men crossed to England?") == "7,000 men [n#1]"


def test_other_questions_get_the_quoted_sentence() -> None:
    sentence = '"The Duchy of Normandy began in 911 as a fiefdom, under the Viking ruler Rollo." [n#0]'
    assert ask("Was the Duchy of Normandy a fiefdom?") == sentence
    assert ask("Who was the Viking ruler of the Duchy of Normandy?") == sentence  # names: measured worse


def test_plain_context_keeps_whole_sentences() -> None:
    context = "The Duchy of Normandy began in 911. Rollo ruled it."
    assert ask("When did the Duchy of Normandy begin?", context) == '"The Duchy of Normandy began in 911."'
