"""`opsgate index ...`: build, list, show and query retrieval indexes.

Output contract: `build` prints one line per index on stdout, `built|restored|unchanged <ref> ...`;
skipped files and the progress bar go to stderr. Heavy imports stay inside the commands.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import orjson
import typer

from gateway.cli_common import fail as _fail
from gateway.errors import OpsgateError

index_app = typer.Typer(help="Build, list, show and query retrieval indexes.", no_args_is_help=True)

KeyOption = Annotated[
    str | None, typer.Option("--key", envvar="OPSGATE_API_KEY", help="Your API key (or OPSGATE_API_KEY).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="JSON output.")]


def _context() -> tuple[Any, Any]:
    from gateway.cli_common import load_settings as _settings
    from gateway.cli_common import open_engine as _engine
    from gateway.offline import apply_offline_env

    apply_offline_env()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see gateway/app.py: no spinning threads
    settings = _settings()
    return settings, _engine(settings)


def _builder(settings: Any, engine: Any) -> Any:
    from gateway.providers.minilm import MiniLMEmbedder
    from gateway.retrieval.build import IndexBuilder
    from gateway.retrieval.store import make_store

    minilm = MiniLMEmbedder()
    data_dir = settings.resolved_data_dir()
    store = make_store(data_dir, settings.chroma_url, minilm)
    return IndexBuilder(engine, settings.project_dir, store, data_dir, minilm)


class _RichProgress:
    """The build's progress as a rich bar on stderr: files parsed, chunks embedded, chunks per second."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._files: Any = None
        self._chunks: Any = None
        self._done = 0

    def __enter__(self) -> _RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def files(self, total: int) -> None:
        self._files = self.bar.add_task("files", total=total, rate="")

    def file_done(self, path: str, chunks: int, error: str | None) -> None:
        if error:
            self.console.print(f"[yellow]skipped {path}: {error}[/yellow]", highlight=False)
        self.bar.advance(self._files)

    def chunks(self, total: int) -> None:
        self._chunks = self.bar.add_task("embedding", total=total, rate="")

    def embedded(self, count: int) -> None:
        self._done += count
        task = self.bar.tasks[self._chunks]
        elapsed = task.elapsed or 0.0
        rate = f"{self._done / elapsed:,.0f} chunks/s" if elapsed > 0 else ""
        self.bar.update(self._chunks, advance=count, rate=rate)


def _result_dict(result: Any) -> dict[str, Any]:
    return {
        "status": result.status,
        "ref": result.record.ref,
        "version": result.record.version,
        "hash": result.record.content_hash,
        "files": result.files,
        "documents": result.documents,
        "chunks": result.chunks,
        "skipped": result.skipped,
        "seconds": round(result.seconds, 3),
        "chunks_per_s": round(result.chunks_per_s, 1),
        "bootstrapped_alias": "production" if result.bootstrapped else None,
    }


def _result_line(result: Any) -> str:
    if result.status == "unchanged":
        return f"unchanged {result.record.ref}  ({result.files} files; nothing to do)"
    line = (
        f"{result.status} {result.record.ref}  {result.files} files, {result.chunks} chunks, "
        f"{len(result.skipped)} skipped, {result.seconds:.1f} s ({result.chunks_per_s:,.0f} chunks/s)"
    )
    return line + ("; production -> 1" if result.bootstrapped else "")


@index_app.command("build")
def build_cmd(
    names: Annotated[
        list[str] | None, typer.Argument(help="Index names (config/indexes/<name>.yaml).")
    ] = None,
    all_indexes: Annotated[bool, typer.Option("--all", help="Every index file.")] = False,
    key: KeyOption = None,
    json_out: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Build index versions: a no-op when the corpus, chunker and embedder are unchanged."""
    from gateway.cli_common import authenticate_cli
    from gateway.registry.files import artifact_paths
    from gateway.registry.promotion import governance_in_force

    settings, engine = _context()
    try:
        roles = governance_in_force(engine, settings.load_gateway_config().governance).registrar_roles
    except OpsgateError as exc:
        _fail(exc.message, 2)
    principal = authenticate_cli(engine, key, *roles)
    wanted = [p.stem for p in artifact_paths(settings.project_dir, "index")] if all_indexes else names or []
    if not wanted:
        _fail("name the indexes to build, or pass --all", 2)
    builder = _builder(settings, engine)
    failed = False
    for name in wanted:
        try:
            plan = builder.plan(name)
            if quiet or json_out:
                result = builder.build_plan(plan, actor=principal.actor)
            else:
                with _RichProgress() as progress:
                    result = builder.build_plan(plan, actor=principal.actor, progress=progress)
        except OpsgateError as exc:
            typer.echo(f"opsgate: index {name}: {exc.message}", err=True)
            failed = True
            continue
        if json_out:
            typer.echo(orjson.dumps(_result_dict(result)).decode())
        else:
            for skip in result.skipped:
                typer.echo(f"skipped {skip['path']}: {skip['error']}", err=True)
            typer.echo(_result_line(result))
    if failed:
        raise typer.Exit(1)


@index_app.command("list")
def list_cmd(json_out: JsonOption = False) -> None:
    """Index files and their registered versions, aliases and sizes."""
    from sqlalchemy.orm import Session

    from gateway.registry.files import artifact_paths
    from gateway.registry.store import VersionStore
    from gateway.retrieval.records import builds

    settings, engine = _context()
    store = VersionStore(engine)
    with Session(engine) as s:
        sizes = {(b.name, b.version): b.stats.get("chunks") for b in builds(s)}
    names = sorted(
        {p.stem for p in artifact_paths(settings.project_dir, "index")}
        | {r.name for r in store.versions("index")}
    )
    aliases = store.aliases("index")
    for name in names:
        versions = store.versions("index", name)
        item: dict[str, Any] = {
            "name": name,
            "versions": [
                {"ref": r.ref, "version": r.version, "chunks": sizes.get((name, r.version))} for r in versions
            ],
            "aliases": aliases.get(("index", name), {}),
        }
        if json_out:
            typer.echo(orjson.dumps(item).decode())
            continue
        shown = ", ".join(f"{a}->{v}" for a, v in sorted(item["aliases"].items())) or "not built"
        latest = versions[-1] if versions else None
        chunks = f"{sizes.get((name, latest.version))} chunks" if latest else ""
        typer.echo(f"index:{name:<24} {len(versions):>3} version(s)  {shown}  {chunks}")


@index_app.command("show")
def show_cmd(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS (default production).")],
    json_out: JsonOption = False,
) -> None:
    """One index version: its spec, build statistics, skipped files and manifest size."""
    from sqlalchemy.orm import Session

    from gateway.retrieval.records import build_of
    from gateway.retrieval.store import collection_name

    _, engine = _context()
    record = _resolve(engine, ref)
    with Session(engine) as s:
        build = build_of(s, record.name, record.version)
        stats = dict(build.stats) if build else {}
        files = len(build.manifest) if build else None
    data = {
        "ref": record.ref,
        "collection": collection_name(record.name, record.version, record.content_hash),
        "spec": record.spec,
        "source_path": record.source_path,
        "git_commit": record.git_commit,
        "created_at": record.created_at.isoformat(),
        "created_by": record.created_by,
        "manifest_files": files,
        "stats": stats,
    }
    if json_out:
        typer.echo(orjson.dumps(data).decode())
        return
    for field in (
        "ref",
        "collection",
        "source_path",
        "git_commit",
        "created_at",
        "created_by",
        "manifest_files",
    ):
        typer.echo(f"{field:<15} {data[field]}")
    for field in ("documents", "chunks", "seconds", "embed_seconds"):
        typer.echo(f"{field:<15} {stats.get(field)}")
    for skip in stats.get("skipped") or []:
        typer.echo(f"skipped         {skip['path']}: {skip['error']}")


def _resolve(engine: Any, ref: str) -> Any:
    from gateway.registry.refs import parse_ref
    from gateway.registry.store import VersionStore

    try:
        parsed = parse_ref(ref, default_kind="index")
    except OpsgateError as exc:
        _fail(exc.message, 2)
    try:
        return VersionStore(engine).resolve(parsed)
    except OpsgateError as exc:
        _fail(f"{exc.message}; `opsgate index list` shows what exists")


@index_app.command("query")
def query_cmd(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS (default production).")],
    text: Annotated[str, typer.Argument(help="The question.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=100)] = 4,
    mode: Annotated[
        str | None, typer.Option(help="dense, lexical or hybrid (default: the measured best, lexical).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Retrieve from an index version, as a RAG prompt would (local embedder only)."""
    from gateway.providers.minilm import MiniLMEmbedder
    from gateway.retrieval.retriever import IndexLibrary
    from gateway.retrieval.search import DEFAULT_MODE, MODES
    from gateway.retrieval.spec import IndexSpec
    from gateway.retrieval.store import make_store

    if mode is not None and mode not in MODES:
        _fail(f"--mode must be one of {', '.join(MODES)}", 2)
    settings, engine = _context()
    record = _resolve(engine, ref)
    spec = IndexSpec.model_validate(record.spec)
    if spec.embedder.type != "local" and mode != "lexical":
        _fail("this index embeds through a router: query it through the gateway, or use --mode lexical", 2)
    minilm = MiniLMEmbedder()
    library = IndexLibrary(
        make_store(settings.resolved_data_dir(), settings.chroma_url, minilm),
        settings.resolved_data_dir(),
        minilm,
    )
    chosen = mode or DEFAULT_MODE
    try:
        reader = library.reader(record, spec)
        vector = None if chosen == "lexical" else minilm.encode([text])[0]
        hits = reader.search(text, vector, top_k, chosen)
    except OpsgateError as exc:
        _fail(exc.message)
    for hit in hits:
        if json_out:
            typer.echo(orjson.dumps(hit.context(record.ref)).decode())
        else:
            snippet = " ".join(hit.text.split())[:160]
            typer.echo(f"{hit.score:8.4f}  [{hit.id}]  {snippet}")
