"""Retrieval quality of the three modes on the SQuAD 2.0 dev subset, and the local answerer's EM / F1.

    .venv/bin/python bench/retrieval_quality.py [--json]

Builds the `squad` index (config/indexes/squad.yaml: 87 paragraphs) in a throwaway workspace, then
for the 293 answerable questions: hit@1, hit@4 and MRR@10 of the gold paragraph per mode; and the
exact match / token F1 of the embedded extractive answerer (gateway/providers/extractive.py), given
the top-4 chunks of the default mode the way the docs_qa prompt lays them out, and given the gold
paragraph alone (which isolates the answerer from retrieval).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import orjson
from retrieval_common import QA_FILE, Workspace, timed

from gateway.providers import extractive
from gateway.retrieval.quality import QA, answer_scores, load_answerable, retrieval_scores
from gateway.retrieval.search import DEFAULT_MODE, MODES

SYSTEM = "Answer questions using only this context, citing [ids].\n"


def rag_messages(question: str, passages: list[tuple[str, str]]) -> list[object]:
    context = "".join(f"[{pid}] {text}\n" for pid, text in passages)
    return [{"role": "system", "content": SYSTEM + context}, {"role": "user", "content": question}]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cases = load_answerable(QA_FILE)
    with tempfile.TemporaryDirectory(prefix="opsgate-bench-") as tmp:
        ws = Workspace(Path(tmp))
        with timed("build squad index"):
            result = ws.build("squad")
        reader = ws.reader(result)
        vectors = ws.minilm.encode([c.question for c in cases])
        hits_by_mode = {}
        for mode in MODES:
            with timed(f"{mode} queries"):
                hits_by_mode[mode] = [
                    reader.search(c.question, vectors[i], 10, mode) for i, c in enumerate(cases)
                ]
        table = {
            mode: retrieval_scores(
                ([h.document_id for h in hits], c.document_id) for hits, c in zip(hits, cases, strict=True)
            ).as_dict()
            for mode, hits in hits_by_mode.items()
        }
        top4 = {c.id: hits[:4] for c, hits in zip(cases, hits_by_mode[DEFAULT_MODE], strict=True)}
        gold = {
            c.document_id: (QA_FILE.parent / "documents" / f"{c.document_id}.txt").read_text(encoding="utf-8")
            for c in cases
        }

        def with_retrieval(case: QA) -> str:
            return extractive.answer(rag_messages(case.question, [(h.id, h.text) for h in top4[case.id]]))

        def with_gold(case: QA) -> str:
            return extractive.answer(
                rag_messages(case.question, [(case.document_id, gold[case.document_id])])
            )

        answers = {
            f"top-4 {DEFAULT_MODE} chunks": answer_scores(cases, with_retrieval),
            "gold paragraph": answer_scores(cases, with_gold),
        }
    report = {
        "index": result.record.ref,
        "chunks": result.chunks,
        "default_mode": DEFAULT_MODE,
        "retrieval": table,
        "extractive": answers,
    }
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    print(
        f"SQuAD 2.0 dev subset: {len(cases)} answerable questions, {result.chunks} chunks ({result.record.ref})"
    )
    print(f"{'mode':<10} {'hit@1':>7} {'hit@4':>7} {'MRR@10':>7}")
    for mode, row in table.items():
        mark = "  (default)" if mode == DEFAULT_MODE else ""
        print(f"{mode:<10} {row['hit@1']:>7.3f} {row['hit@4']:>7.3f} {row['mrr@10']:>7.3f}{mark}")
    print(f"\nextractive answerer ({len(cases)} questions)   {'EM':>6} {'F1':>6}")
    for context, row in answers.items():
        print(f"  context: {context:<24} {row['exact_match']:>6.3f} {row['f1']:>6.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
