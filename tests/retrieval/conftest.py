"""Retrieval fixtures: the real MiniLM (loaded once), the SQuAD index (built once), a chroma server.

minilm          (session) the packaged all-MiniLM-L6-v2, loaded once for the whole session
squad           (session) the `squad` index (config/indexes/squad.yaml) built into a throwaway
                registry + chroma directory: .result (BuildResult), .reader (IndexReader), .workspace
chroma_server   (session) `chroma run` on 127.0.0.1 with its own data dir: its URL
workspace       (function) a fresh registry database + chroma directory for a given project
rag_project(files)  a git project: the repo's config/ + prompts/docs_qa.yaml + files, committed
pdf_bytes(text, title)  a one-page PDF holding `text`
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.db.engine import make_engine, migrate
from gateway.providers.minilm import MiniLMEmbedder
from gateway.retrieval.build import BuildResult, IndexBuilder
from gateway.retrieval.retriever import IndexLibrary
from gateway.retrieval.search import IndexReader
from gateway.retrieval.store import ChromaStore
from tests.fakes.gateway import BIN, REPO, build_project, free_port, subprocess_env

CHROMA_START_TIMEOUT_S = 60
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the gateway sets it (gateway/app.py)


@dataclass
class Workspace:
    root: Path
    project_dir: Path
    minilm: MiniLMEmbedder
    chroma_url: str | None = None
    database_url: str | None = None

    def __post_init__(self) -> None:
        self.engine = make_engine(self.database_url or f"sqlite:///{self.root / 'opsgate.db'}")
        migrate(self.engine)
        self.store = ChromaStore(path=self.root / "chroma", url=self.chroma_url, minilm=self.minilm)
        self.builder = IndexBuilder(self.engine, self.project_dir, self.store, self.root, self.minilm)
        self.library = IndexLibrary(self.store, self.root, self.minilm)

    def build(self, name: str) -> BuildResult:
        return self.builder.build(name, actor="test")


WorkspaceFactory = Callable[..., Workspace]


@pytest.fixture(scope="session")
def minilm() -> MiniLMEmbedder:
    embedder = MiniLMEmbedder()
    embedder.model()
    return embedder


@pytest.fixture(scope="session")
def workspace_factory(tmp_path_factory: pytest.TempPathFactory, minilm: MiniLMEmbedder) -> WorkspaceFactory:
    def make(
        project_dir: Path = REPO, chroma_url: str | None = None, database_url: str | None = None
    ) -> Workspace:
        return Workspace(tmp_path_factory.mktemp("workspace"), project_dir, minilm, chroma_url, database_url)

    return make


@dataclass
class Squad:
    workspace: Workspace
    result: BuildResult
    reader: IndexReader


@pytest.fixture(scope="session")
def squad(workspace_factory: WorkspaceFactory) -> Squad:
    ws = workspace_factory()
    result = ws.build("squad")
    return Squad(ws, result, ws.library.reader(result.record))


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    path = tmp_path_factory.mktemp("chroma-server")
    log = open(path.parent / "chroma-server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(BIN / "chroma"), "run", "--host", "127.0.0.1", "--port", str(port), "--path", str(path)],
        env=subprocess_env({"ANONYMIZED_TELEMETRY": "False"}),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + CHROMA_START_TIMEOUT_S
    with httpx.Client(trust_env=False, timeout=2) as http:
        while True:
            assert proc.poll() is None, (path.parent / "chroma-server.log").read_text(errors="replace")
            try:
                if http.get(f"{url}/api/v2/heartbeat").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "chroma run was not ready in time"
            time.sleep(0.1)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def git(project: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Doc Writer",
        "GIT_AUTHOR_EMAIL": "writer@example.com",
        "GIT_COMMITTER_NAME": "Doc Writer",
        "GIT_COMMITTER_EMAIL": "writer@example.com",
    }
    return subprocess.run(
        ["git", *args], cwd=project, env=env, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture(scope="session")
def rag_project(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """A committed git project: repo config/ (routers, indexes), the docs_qa prompt, and `files`."""

    def make(files: Mapping[str, str | bytes], *, prompts: bool = True) -> Path:
        root = build_project(tmp_path_factory.mktemp("rag-project"))
        if prompts:
            (root / "prompts").mkdir(exist_ok=True)
            (root / "prompts" / "docs_qa.yaml").write_bytes((REPO / "prompts" / "docs_qa.yaml").read_bytes())
        for rel, content in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        git(root, "init", "-q")
        git(root, "add", "-A")
        git(root, "commit", "-q", "--allow-empty", "-m", "project")
        return root

    return make


def pdf_bytes(text: str, title: str | None = None) -> bytes:
    from pypdf import PdfWriter
    from pypdf.generic import DictionaryObject, NameObject, StreamObject

    writer = PdfWriter()
    page = writer.add_blank_page(612, 792)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    fonts = DictionaryObject({NameObject("/F1"): writer._add_object(font)})
    page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): fonts})
    stream = StreamObject()
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    stream.set_data(f"BT /F1 12 Tf 72 712 Td ({escaped}) Tj ET".encode("latin-1"))
    page[NameObject("/Contents")] = writer._add_object(stream)
    if title:
        writer.add_metadata({"/Title": title})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def collection_chunks(collection: Any) -> dict[str, dict[str, Any]]:
    got = collection.get(include=["documents", "metadatas"])
    return {
        i: {"text": t, **(m or {})}
        for i, t, m in zip(got["ids"], got["documents"] or [], got["metadatas"] or [], strict=True)
    }
