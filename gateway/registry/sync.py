"""`opsgate sync`: register what the repository holds at HEAD.

For each artifact file whose canonical content hash is new, a new immutable version records the commit
that last changed the file, its author and message. Unchanged content is a no-op. Invalid files are
reported with file, line and field while valid ones still sync. A working copy with uncommitted changes
under prompts/ or config/ is refused unless `allow_dirty`, and versions from such files are marked dirty.
Files are read from git at HEAD (a clean working copy) or from the working tree (`allow_dirty`), never
through a link (gateway/registry/tree.py). A prompt that names a router, index or judge that neither the
project nor the registry has is refused, naming the prompt file and line.
Indexes are not registered here: `opsgate index build` registers an index version once it is built.

The first registration into an empty registry is the bootstrap (gateway/registry/bootstrap.py): whether
it comes from `opsgate sync` or from the first `opsgate serve` (`bootstrap` below), it points
`production` at each artifact's version 1, once, audited.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway import kinds
from gateway.db.models import ArtifactVersion
from gateway.errors import ConfigError, Conflict
from gateway.registry import audit
from gateway.registry.blobs import BlobStore
from gateway.registry.bootstrap import (
    BootstrapReport,
    Candidate,
    register_bootstrap,
    registry_open_now,
)
from gateway.registry.files import ArtifactFile, file_context, load_artifacts, spec_files
from gateway.registry.git import GitRepo
from gateway.registry.rules import RULE_KINDS, RuleFile, read_rules, register_rules
from gateway.registry.store import (
    SourceInfo,
    VersionRecord,
    previous_commit,
    register_version,
    set_alias,
)
from gateway.registry.tree import GitTree, Tree, WorkingTree
from gateway.yamlspec import line_of, parse_yaml_text


def watched() -> list[str]:
    """The top-level folders that hold artifact files (every kind's folder, and config/ for the rules)."""
    return list(dict.fromkeys([*(k.folder.split("/")[0] for k in kinds.registry().values()), "config"]))


@dataclass
class SyncReport:
    commit: str | None
    registered: list[VersionRecord] = field(default_factory=list)
    unchanged: list[VersionRecord] = field(default_factory=list)
    errors: list[ConfigError] = field(default_factory=list)
    dirty_files: list[str] = field(default_factory=list)
    bootstrapped: bool = False  # this sync was the first registration: production -> version 1
    rules: list[VersionRecord] = field(default_factory=list)  # new policy / governance versions


def _source(
    repo: GitRepo | None,
    art: ArtifactFile,
    dirty_files: set[str],
    head: str | None,
    engine: Engine | None = None,
) -> SourceInfo:
    if repo is None:
        return SourceInfo(path=art.path, dirty=True)
    touched = {art.path} | art.referenced_paths()
    dirty = bool(touched & dirty_files)
    commit = repo.last_commit(art.path)
    authors = version_authors(repo, engine, art, head)
    if dirty or commit is None:
        return SourceInfo(
            path=art.path,
            commit=head,
            author=repo.user(),
            message="uncommitted changes",
            dirty=True,
            authors=tuple(authors),
        )
    return SourceInfo(
        path=art.path, commit=commit.sha, author=commit.author, message=commit.message, authors=tuple(authors)
    )


def version_authors(repo: GitRepo, engine: Engine | None, art: ArtifactFile, head: str | None) -> list[str]:
    """Everyone who committed to the spec file or any file it references since the artifact's previous
    version (its whole history for a first version): four-eyes keeps all of them from approving it."""
    if head is None:
        return []
    since = previous_commit(engine, art.kind, art.name) if engine is not None else None
    return repo.authors(sorted({art.path} | art.referenced_paths()), since=since, until=head)


def _bare_name_clash(session: Session, art: ArtifactFile) -> str | None:
    if art.kind not in ("prompt", "router"):
        return None
    other = "router" if art.kind == "prompt" else "prompt"
    hit = session.scalar(
        select(ArtifactVersion.id)
        .where(ArtifactVersion.kind == other, ArtifactVersion.name == art.name)
        .limit(1)
    )
    return other if hit is not None else None


def register_artifact(
    engine: Engine,
    art: ArtifactFile,
    source: SourceInfo,
    *,
    actor: str,
    bootstrap_alias: str | None = None,
    blobs: BlobStore | None = None,
) -> tuple[VersionRecord, bool]:
    """Register one file's content (no-op when known). `bootstrap_alias` is set for a first version only.

    Referenced binary files (model files, reference data) go to the blob store under the version's hash,
    so the version stays servable whatever later happens to the files in the project."""
    _stash(art, blobs)

    def work(session: Session) -> tuple[VersionRecord, bool]:
        clash = _bare_name_clash(session, art)
        if clash:
            raise ConfigError(
                f"the bare name {art.name!r} is already a {clash} in the registry; a {art.kind} may not share it",
                path=art.path,
                line=1,
            )
        record, created = register_version(
            session,
            kind=art.kind,
            name=art.name,
            spec=art.spec_json(),
            content_hash=art.content_hash,
            source=source,
            actor=actor,
            files=art.stored_files(),
        )
        if created and bootstrap_alias and record.version == 1:
            set_alias(
                session,
                kind=art.kind,
                name=art.name,
                alias=bootstrap_alias,
                version=1,
                actor=actor,
                action="alias.bootstrap",
                reason="first version of a new artifact on a fresh install",
            )
        return record, created

    return audit.write_transaction(engine, work)


def _stash(art: ArtifactFile, blobs: BlobStore | None) -> None:
    if blobs is not None and art.referenced and art.stored_files() is None:
        blobs.stash(art.content_hash, art.referenced)


def _candidate(art: ArtifactFile, source: SourceInfo) -> Candidate:
    return Candidate(art.kind, art.name, art.spec_json(), art.content_hash, source, art.stored_files())


def git_tree(repo: GitRepo, commit: str) -> GitTree:
    """The artifact folders (and the files they reference, which live below them) at `commit`."""
    return GitTree(
        repo, commit, tuple(dict.fromkeys(k.folder.split("/")[0] for k in kinds.registry().values()))
    )


def sync(
    engine: Engine,
    project_dir: Path,
    *,
    actor: str,
    allow_dirty: bool = False,
    blobs: BlobStore | None = None,
) -> SyncReport:
    repo = GitRepo(project_dir)
    if not repo.is_repo():
        raise ConfigError(f"{project_dir} is not a git repository: `opsgate sync` registers what git holds")
    head = repo.head()
    dirty = repo.dirty_paths([p for p in watched() if (project_dir / p).exists()])
    if dirty and not allow_dirty:
        shown = ", ".join(dirty[:10]) + (" ..." if len(dirty) > 10 else "")
        raise Conflict(
            f"the working copy has uncommitted changes ({shown}); commit them, or pass --allow-dirty to register"
            " them as dirty versions",
            code="dirty_working_copy",
        )
    report = SyncReport(commit=head, dirty_files=dirty)
    tree: Tree = WorkingTree(project_dir) if dirty else git_tree(repo, head)
    artifacts, errors = load_artifacts(project_dir, kinds.synced(), tree)
    indexes, index_errors = load_artifacts(project_dir, kinds.built(), tree)
    artifacts, dangling = refuse_dangling(engine, artifacts, {a.name for a in indexes} | _index_files(tree))
    report.errors.extend(errors + index_errors + dangling)
    dirty_set = set(dirty)
    sourced = [(art, _source(repo, art, dirty_set, head, engine)) for art in artifacts]
    try:
        context = file_context(project_dir)
    except ConfigError:  # config/gateway.yaml is invalid: reported by load_artifacts above
        context = None
    rule_files, rule_errors = read_rules(tree, context)
    rule_files, refused = refuse_dangling_alerts(engine, tree, rule_files, artifacts + indexes)
    report.errors.extend(rule_errors + rule_file_twins(tree) + refused)
    if registry_open_now(engine) and _sync_as_bootstrap(engine, report, sourced, actor=actor, blobs=blobs):
        _sync_rules(engine, repo, head, rule_files, report, actor=actor, dirty=dirty_set)
        return report
    _sync_rules(engine, repo, head, rule_files, report, actor=actor, dirty=dirty_set)
    for art, source in sourced:
        try:
            record, created = register_artifact(engine, art, source, actor=actor, blobs=blobs)
        except ConfigError as exc:
            report.errors.append(exc)
            continue
        (report.registered if created else report.unchanged).append(record)
    return report


def _sync_rules(
    engine: Engine,
    repo: GitRepo,
    head: str,
    files: list[RuleFile],
    report: SyncReport,
    *,
    actor: str,
    dirty: set[str],
) -> None:
    """Policy and governance rules are registered like the other kinds (gateway/registry/rules.py)."""
    for record, created in register_rules(engine, repo, head, files, actor=actor, dirty_files=dirty):
        if created:
            report.rules.append(record)


def _index_files(tree: Tree) -> set[str]:
    """Names of index files, valid or not: an invalid index file is reported as such, not as missing."""
    try:
        paths = spec_files(tree, "index")
    except ConfigError:  # the folder is a link: reported by load_artifacts, and no index is there
        return set()
    return {p.rsplit("/", 1)[-1].rsplit(".", 1)[0] for p in paths}


def _sync_as_bootstrap(
    engine: Engine,
    report: SyncReport,
    sourced: list[tuple[ArtifactFile, SourceInfo]],
    *,
    actor: str,
    blobs: BlobStore | None,
) -> bool:
    """The first sync into an empty registry is the bootstrap; False when another process won the race."""
    for art, _ in sourced:
        _stash(art, blobs)
    skipped = [
        f"{art.path}: uncommitted changes: registered, not production" for art, s in sourced if s.dirty
    ]
    records = register_bootstrap(
        engine, [_candidate(a, s) for a, s in sourced], actor=actor, commit=report.commit, skipped=skipped
    )
    if records is None:
        return False
    report.registered = records
    report.bootstrapped = bool(records)
    return True


def rule_file_twins(tree: Tree) -> list[ConfigError]:
    """`config/alerts.yml` (beside or instead of config/alerts.yaml) would be ignored in silence, as would
    `config/policies.yml` or `config/gateway.yml`: each is an error naming the file that is read."""
    errors = []
    for rule in RULE_KINDS.values():
        folder, name = rule.path.rsplit("/", 1)
        twin = f"{folder}/{name.removesuffix('.yaml')}.yml"
        present = tree.files(folder)
        if twin not in present:
            continue
        problem = (
            f"{rule.path} and {twin} both hold the {rule.kind} rules; keep {rule.path}"
            if rule.path in present
            else f"this file is never read: the {rule.kind} rules are read from {rule.path}; rename it"
        )
        errors.append(ConfigError(problem, path=twin, line=1))
    return errors


def refuse_dangling_alerts(
    engine: Engine, tree: Tree, rule_files: list[RuleFile], artifacts: list[ArtifactFile]
) -> tuple[list[RuleFile], list[ConfigError]]:
    """Alert rules that watch an artifact existing nowhere (not in the project, not in the registry) would
    never fire: the alert file is refused, naming the rule's line."""
    alerts = next((f for f in rule_files if f.rule.kind == "alert"), None)
    if alerts is None:
        return rule_files, []
    known = {(a.kind, a.name) for a in artifacts} | _registered(engine)
    for i, rule in enumerate(alerts.spec.get("rules") or ()):
        artifact = rule.get("artifact")
        kind, _, rest = str(artifact or "").partition(":")
        if not artifact or (kind, rest.partition("@")[0]) in known:
            continue
        path = alerts.rule.path
        root = parse_yaml_text(tree.read(path).decode("utf-8"), path)[1]
        error = ConfigError(
            f"rules.{i}.artifact: {artifact!r} is not in the project or the registry: the rule would never"
            f" fire; name an existing {kind} (kind:name)",
            path=path,
            line=line_of(root, ("rules", i, "artifact")),
        )
        return [f for f in rule_files if f is not alerts], [error]
    return rule_files, []


def _registered(engine: Engine) -> set[tuple[str, str]]:
    with Session(engine) as s:
        return {
            (kind, name)
            for kind, name in s.execute(select(ArtifactVersion.kind, ArtifactVersion.name).distinct())
        }


def refuse_dangling(
    engine: Engine, artifacts: list[ArtifactFile], index_names: set[str]
) -> tuple[list[ArtifactFile], list[ConfigError]]:
    """Prompts whose router, judge or index exists nowhere (not in the project, not in the registry) are
    refused: they would only fail at request time."""
    problems = dangling_references(engine, artifacts, index_names)
    refused = {id(art) for art, _ in problems}
    return [a for a in artifacts if id(a) not in refused], [err for _, err in problems]


def dangling_references(
    engine: Engine, artifacts: list[ArtifactFile], index_names: set[str]
) -> list[tuple[ArtifactFile, ConfigError]]:
    """(prompt, error) for each prompt naming a router, judge or index that neither the project's files
    nor the registry have. One error per prompt (its first missing name)."""
    registered = _registered(engine)
    routers = {a.name for a in artifacts if a.kind == "router"} | {n for k, n in registered if k == "router"}
    indexes = index_names | {n for k, n in registered if k == "index"}
    out = []
    for art in artifacts:
        if art.kind != "prompt":
            continue
        for loc, kind, name in _prompt_references(art):
            known = routers if kind == "router" else indexes
            if name not in known:
                folder = kinds.get(kind).folder
                out.append(
                    (
                        art,
                        ConfigError(
                            f"{'.'.join(loc)}: {name!r} is not {_a(kind)}: there is no {folder}/{name}.yaml and"
                            f" no {kind}:{name} in the registry; name an existing {kind} or add its file",
                            path=art.path,
                            line=art.line_of(*loc),
                        ),
                    )
                )
                break
    return out


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _prompt_references(art: ArtifactFile) -> list[tuple[tuple[str, ...], str, str]]:
    spec = art.spec
    refs: list[tuple[tuple[str, ...], str, str]] = []
    router = getattr(spec, "router", None)
    if isinstance(router, str):
        refs.append((("router",), "router", router.partition("@")[0]))
    retrieval = getattr(spec, "retrieval", None)
    if retrieval is not None:
        refs.append((("retrieval", "index"), "index", str(retrieval.index).partition("@")[0]))
    online = getattr(spec, "online_eval", None)
    if online is not None and online.judge:
        refs.append((("online_eval", "judge"), "router", str(online.judge).partition("@")[0]))
    return refs


def bootstrap(
    engine: Engine,
    project_dir: Path,
    *,
    actor: str,
    blobs: BlobStore | None = None,
    working_tree: bool = False,
) -> BootstrapReport:
    """The first start of a gateway on an empty registry: register what git holds at HEAD, point each
    artifact's `production` at version 1, once, audited (gateway/registry/bootstrap.py). Uncommitted and
    untracked files are not registered (`skipped` names them); files that cannot be read or parsed at
    HEAD are reported in `errors` and left out. A directory that is not a git repository registers
    nothing unless `working_tree` (the operator's OPSGATE_BOOTSTRAP_WORKING_TREE): then its working tree,
    read without following links, is registered as dirty versions."""
    if not registry_open_now(engine):
        return BootstrapReport()
    repo = GitRepo(project_dir)
    folders = [k.folder for k in kinds.registry().values() if (project_dir / k.folder).is_dir()]
    if repo.is_repo() and repo.has_commit():
        head: str | None = repo.head()
        assert head is not None
        artifacts, errors = load_artifacts(project_dir, kinds.synced(), git_tree(repo, head))
        skipped = [_skipped_line(p) for p in repo.dirty_paths(folders)] if folders else []
        skipped += [_ignored_line(p) for p in repo.ignored_paths(folders) if p.endswith((".yaml", ".yml"))]
        sourced = [(art, _committed_source(repo, art, head)) for art in artifacts]
    elif working_tree:
        head = None
        artifacts, errors = load_artifacts(project_dir, kinds.synced())
        skipped = []
        sourced = [(art, _source(None, art, set(), None)) for art in artifacts]
    else:
        why = "has no commit yet" if repo.is_repo() else "is not a git repository"
        return BootstrapReport(
            skipped=[
                f"{project_dir} {why}: nothing was registered. Commit the project (git add -A && git commit)"
                " and start again, or set OPSGATE_BOOTSTRAP_WORKING_TREE=true to register its working tree"
            ]
        )
    report = BootstrapReport(skipped=skipped, errors=errors)
    for art, _ in sourced:
        _stash(art, blobs)
    records = register_bootstrap(
        engine, [_candidate(a, s) for a, s in sourced], actor=actor, commit=head, skipped=skipped
    )
    report.ran = records is not None
    report.registered = records or []
    return report


def _skipped_line(path: str) -> str:
    return (
        f"{path} has uncommitted changes (or is not in git): they were not registered; commit them, then"
        " `opsgate sync` and promote"
    )


def _ignored_line(path: str) -> str:
    return f"{path} is ignored by git (.gitignore), so it is not committed: it was not registered"


def uncommitted(project_dir: Path, folder: str, *, working_tree: bool) -> set[str] | None:
    """Files under `folder` that are not committed as they are; None means none may be used (a directory
    that is not a git repository, without the operator's OPSGATE_BOOTSTRAP_WORKING_TREE)."""
    repo = GitRepo(project_dir)
    if repo.is_repo() and repo.has_commit():
        return set(repo.dirty_paths([folder])) if (project_dir / folder).is_dir() else set()
    return set() if working_tree else None


def _committed_source(repo: GitRepo, art: ArtifactFile, head: str) -> SourceInfo:
    commit = repo.last_commit(art.path)
    if commit is None:  # listed by git at HEAD, so it has a commit; kept total for the type checker
        return SourceInfo(path=art.path, dirty=True)
    authors = tuple(version_authors(repo, None, art, head))
    return SourceInfo(
        path=art.path, commit=commit.sha, author=commit.author, message=commit.message, authors=authors
    )


def drifted(engine: Engine, project_dir: Path, *, alias: str = "production") -> list[str]:
    """Artifacts whose file no longer matches the version their alias serves (a hint to sync and promote)."""
    from gateway.registry.store import VersionStore

    artifacts, _ = load_artifacts(project_dir, kinds.synced())
    store = VersionStore(engine)
    aliases = store.aliases()
    hashes = {(r.kind, r.name, r.version): r.content_hash for r in store.versions()}
    out: list[str] = []
    for art in artifacts:
        version = aliases.get((art.kind, art.name), {}).get(alias)
        if version is not None and hashes.get((art.kind, art.name, version)) != art.content_hash:
            out.append(f"{art.path} differs from {art.kind}:{art.name}@{alias} (version {version})")
    return out


def dangling_in_project(engine: Engine, project_dir: Path) -> list[str]:
    """Warnings for `opsgate serve`: prompt files naming a router, judge or index that does not exist."""
    artifacts, _ = load_artifacts(project_dir, kinds.synced())
    tree = WorkingTree(project_dir)
    return [err.message for _, err in dangling_references(engine, artifacts, _index_files(tree))]


def dangling_alerts_in_project(engine: Engine, project_dir: Path) -> list[str]:
    """Warnings for `opsgate serve`: alert rules in config/alerts.yaml watching an artifact that exists
    nowhere."""
    artifacts, _ = load_artifacts(project_dir, (*kinds.synced(), *kinds.built()))
    tree = WorkingTree(project_dir)
    rule_files, _ = read_rules(tree)
    return [err.message for err in refuse_dangling_alerts(engine, tree, rule_files, artifacts)[1]]
