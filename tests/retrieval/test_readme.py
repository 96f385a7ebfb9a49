"""The README's RAG example, run: the demo `docs` index over this repository's docs/ and the
`docs_qa` prompt, answered by the local provider, give the answer and citation the README prints."""

from __future__ import annotations

import re

from gateway.prompts.render import render_messages
from gateway.prompts.spec import PromptSpec
from gateway.providers import extractive
from gateway.registry.files import load_artifact
from gateway.retrieval.search import DEFAULT_MODE
from tests.fakes.gateway import REPO
from tests.retrieval.conftest import WorkspaceFactory


def test_readme_rag_example(workspace_factory: WorkspaceFactory) -> None:
    section = (REPO / "README.md").read_text(encoding="utf-8").split("\n## RAG\n", 1)[1]
    match = re.search(r'"content": "([^"]+)"', section)
    assert match is not None
    question = match.group(1)
    printed = section.split("```\n", 3)[2].strip().splitlines()  # the output block after the code

    ws = workspace_factory(REPO)
    result = ws.build("docs")
    prompt = load_artifact(REPO, "prompt", REPO / "prompts" / "docs_qa.yaml").spec
    assert isinstance(prompt, PromptSpec) and prompt.retrieval is not None
    mode = prompt.retrieval.mode or DEFAULT_MODE
    vector = None if mode == "lexical" else ws.minilm.encode([question])[0]
    hits = ws.library.reader(result.record).search(question, vector, prompt.retrieval.top_k, mode)
    context = [h.context(result.record.ref) for h in hits]
    messages = [*render_messages(prompt, {}, context=context), {"role": "user", "content": question}]

    assert extractive.answer(messages) == printed[0]
    assert f"{hits[0].id} {hits[0].source} index:docs@1" == printed[1]
