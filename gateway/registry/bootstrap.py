"""The bootstrap: the first registration into an empty registry points `production` at version 1, once.

A new project must reach its first answer without tripping over governance, and a running install must
never make anything `production` behind governance's back. So the registry is *open* for a bootstrap while
it holds no prompt, router or model version and has never been bootstrapped. The first registration into
it, by `opsgate sync` or by the first `opsgate serve`, is the bootstrap: in one transaction it registers
the files committed in git, points each new artifact's `production` alias at its version 1 (audited
`alias.bootstrap`), appends one `registry.bootstrap` audit entry (actor, commit, what was registered and
what was skipped) and records `registry_bootstrapped` in gateway_state, so it never runs again. From then
on an alias moves only through a promotion.

Indexes are built, not synced: their first versions become `production` while `indexes_bootstrapped` is
not recorded, which the first `opsgate serve` records once its start-up build of the project's indexes
has run (audited `index.bootstrap`). An index built after that goes through promotion like the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway import kinds
from gateway.db.generation import lock_key, set_counter
from gateway.db.models import ArtifactVersion, GatewayState
from gateway.errors import ConfigError
from gateway.registry import audit
from gateway.registry.store import SourceInfo, VersionRecord, register_version, set_alias

REGISTRY_BOOTSTRAPPED = "registry_bootstrapped"
INDEXES_BOOTSTRAPPED = "indexes_bootstrapped"
BOOTSTRAP_LOCK = "bootstrap_lock"
BOOTSTRAP_ALIAS = "production"


@dataclass
class BootstrapReport:
    """What a bootstrap did. `ran` is False when the registry was not open (or nothing could be read)."""

    ran: bool = False
    registered: list[VersionRecord] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # why files were not registered, one line each
    errors: list[ConfigError] = field(default_factory=list)


@dataclass(frozen=True)
class Candidate:
    """One artifact the bootstrap may register: its spec, content and where it came from."""

    kind: str
    name: str
    spec: dict[str, object]
    content_hash: str
    source: SourceInfo
    files: dict[str, str] | None = None


def _marked(session: Session, key: str) -> bool:
    return session.get(GatewayState, key) is not None


def registry_open(session: Session) -> bool:
    """True while no prompt, router or model was ever registered and no bootstrap ran."""
    if _marked(session, REGISTRY_BOOTSTRAPPED):
        return False
    any_version = session.scalar(
        select(ArtifactVersion.id).where(ArtifactVersion.kind.in_(kinds.synced())).limit(1)
    )
    return any_version is None


def registry_open_now(engine: Engine) -> bool:
    with Session(engine) as session:
        return registry_open(session)


def indexes_open(session: Session) -> bool:
    """True until the first serve has built the project's indexes at start-up."""
    return not _marked(session, INDEXES_BOOTSTRAPPED)


def indexes_open_now(engine: Engine) -> bool:
    with Session(engine) as session:
        return indexes_open(session)


def register_bootstrap(
    engine: Engine, candidates: list[Candidate], *, actor: str, commit: str | None, skipped: list[str]
) -> list[VersionRecord] | None:
    """Register `candidates` as the bootstrap, in one transaction; None when the registry was no longer
    open (another process bootstrapped it meanwhile: the caller registers the ordinary way).

    Only committed content becomes `production`: a dirty candidate (`opsgate sync --allow-dirty`) is
    registered but gets no alias. `commit` None means the project is not a git repository and the
    operator said to register its working tree anyway (OPSGATE_BOOTSTRAP_WORKING_TREE): that say-so
    stands in for the missing commit."""

    def work(session: Session) -> list[VersionRecord] | None:
        lock_key(session, BOOTSTRAP_LOCK)  # two processes starting at once: one bootstraps, one waits
        if not registry_open(session):
            return None
        records = []
        for item in candidates:
            record, created = register_version(
                session,
                kind=item.kind,
                name=item.name,
                spec=item.spec,
                content_hash=item.content_hash,
                source=item.source,
                actor=actor,
                files=item.files,
            )
            records.append(record)
            if created and record.version == 1 and (commit is None or not item.source.dirty):
                set_alias(
                    session,
                    kind=item.kind,
                    name=item.name,
                    alias=BOOTSTRAP_ALIAS,
                    version=1,
                    actor=actor,
                    action="alias.bootstrap",
                    reason="the first registration into an empty registry",
                )
        if not records:
            return records  # nothing registered: the registry stays open for the first real registration
        audit.append(
            session,
            actor=actor,
            action="registry.bootstrap",
            target="registry",
            after={
                "commit": commit,
                "registered": [r.ref for r in records],
                "production": [r.ref for r in records if commit is None or not r.dirty],
                "skipped": skipped,
            },
            reason="the first registration into an empty registry; from now on aliases move by promotion",
        )
        set_counter(session, REGISTRY_BOOTSTRAPPED, 1)
        return records

    return audit.write_transaction(engine, work)


def close_index_bootstrap(engine: Engine, *, actor: str, built: list[str], skipped: list[str]) -> None:
    """Record that the first serve built the project's indexes: later first versions are not production."""

    def work(session: Session) -> None:
        lock_key(session, BOOTSTRAP_LOCK)
        if not indexes_open(session):
            return
        audit.append(
            session,
            actor=actor,
            action="index.bootstrap",
            target="registry",
            after={"built": built, "skipped": skipped},
            reason="indexes built at the first start; from now on index aliases move by promotion",
        )
        set_counter(session, INDEXES_BOOTSTRAPPED, 1)

    audit.write_transaction(engine, work)
