"""The `opsgate` command. Scripts and CI rely on its output contract (see README).

Heavy imports (FastAPI app, litellm, torch) happen inside the commands that need them, so
`opsgate --help` and the small commands stay fast.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
import typer

from gateway import kinds
from gateway.cli_common import KeyOption, authenticate_cli, fail, parse_since
from gateway.cli_common import load_settings as _settings
from gateway.cli_common import open_engine as _engine
from gateway.errors import OpsgateError
from gateway.evaluation.cli import eval_app
from gateway.ml.cli import ml_app
from gateway.ml.pipelines.cli import pipeline_app
from gateway.monitoring.cli import alerts_app
from gateway.offline import apply_offline_env
from gateway.retrieval.cli import index_app
from gateway.rollouts.cli import rollout_app
from gateway.traffic.cli import dataset_app, replay_command

app = typer.Typer(help="opsgate: a ModelOps gateway.", no_args_is_help=True, pretty_exceptions_enable=False)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
logs_app = typer.Typer(help="Read the request log.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(logs_app, name="logs")
app.add_typer(ml_app, name="ml")
app.add_typer(index_app, name="index")
app.add_typer(eval_app, name="eval")
app.add_typer(rollout_app, name="rollout")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(alerts_app, name="alerts")
eval_app.add_typer(dataset_app, name="dataset")
logs_app.command("replay")(replay_command)

# -- serve ----------------------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on (default from config/gateway.yaml).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default from config/gateway.yaml, else 8080).")
    ] = None,
) -> None:
    """Run the gateway."""
    apply_offline_env()
    import logging

    settings = _settings()
    try:  # validate the files before importing the app (seconds), so a typo fails fast
        config = settings.load_gateway_config()
        from gateway.policy.setup import validate_policy_file
        from gateway.registry.files import load_artifacts
        from gateway.registry.sync import rule_file_twins
        from gateway.registry.tree import WorkingTree

        # every file start-up reads: a bad prompt or index failed later, inside the app, as a traceback (exit 3)
        _, errors = load_artifacts(settings.project_dir, kinds.names())
        errors += rule_file_twins(WorkingTree(settings.project_dir))  # config/alerts.yml is never read
        if errors:
            for err in errors:
                typer.echo(f"opsgate: {err.message}", err=True)
            raise typer.Exit(2)
        validate_policy_file(settings)
        from gateway.monitoring.alerting import load_file_rules
        from gateway.monitoring.alertrules import ALERTS_FILE

        load_file_rules(settings.config_dir, settings.display_path(settings.config_dir / ALERTS_FILE))
    except OpsgateError as exc:
        fail(exc.message, 2)
    from gateway import server
    from gateway.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    bind_host = host or config.server.host
    bind_port = port if port is not None else config.server.port
    typer.echo(
        f"opsgate {settings.project_dir} -> http://{bind_host}:{bind_port}/v1 (data: "
        f"{settings.resolved_data_dir()})",
        err=True,
    )
    server.run(
        create_app(settings),
        grace_s=config.server.shutdown_grace_s,
        header_timeout_s=config.server.header_timeout_s,
        max_header_bytes=config.server.max_header_bytes,
        host=bind_host,
        port=bind_port,
        loop="uvloop",
        access_log=config.server.access_log,
        log_level="info",
    )


# -- keys -----------------------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="A label for the key.")],
    role: Annotated[
        list[str], typer.Option("--role", help="app, prompt-engineer, approver, admin (repeatable).")
    ],
    principal: Annotated[str | None, typer.Option(help="Who the key acts for (default: the name).")] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option("--allow", help="What it may call, e.g. 'router:*' (repeatable; default *)."),
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="Import this key value instead of generating one.")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="OPSGATE_API_KEY", help="An admin key to act as (or OPSGATE_API_KEY)."
        ),
    ] = None,
    local_admin: Annotated[
        bool,
        typer.Option(
            "--local-admin",
            help="Act as the operator on this machine, without a key: needs write access to the data"
            " directory; audited as local-admin.",
        ),
    ] = False,
) -> None:
    """Create (or import) a key; prints the key alone on the last line. Needs an admin key (--api-key or
    OPSGATE_API_KEY), except for the very first key, or with --local-admin."""
    from gateway.keys import KeyService

    settings = _settings()
    engine = _engine(settings)
    actor, creator_key = _key_creator(settings, engine, api_key, local_admin)
    try:
        record, plaintext = KeyService(engine).create(
            name=name,
            roles=role,
            principal=principal,
            allow=allow or ["*"],
            value=key,
            actor=actor,
            created_by_key=creator_key,
        )
    except OpsgateError as exc:
        fail(exc.message)
    typer.echo(f"created {record.id} for {record.principal} with roles {', '.join(record.roles)}", err=True)
    typer.echo(plaintext)


def _key_creator(
    settings: Any, engine: Any, api_key: str | None, local_admin: bool
) -> tuple[str, str | None]:
    """Who creates a key (actor, and the creating key's id): an admin key's principal; anyone for the very
    first key (the bootstrap, as `opsgate serve` does on its first start); or the operator on this machine
    with --local-admin."""
    from gateway.cli_common import local_admin_actor, no_key_ever_created

    if local_admin:
        return local_admin_actor(settings), None
    if api_key:
        creator = authenticate_cli(engine, api_key, "admin")
        return str(creator.actor), str(creator.key_id)
    if no_key_ever_created(engine):
        return "local:cli (first key)", None
    fail(
        "creating a key needs an admin key: set OPSGATE_API_KEY or pass --api-key (the first admin key is in"
        " the data directory's admin.key), or, as the operator on this machine, pass --local-admin"
    )


@keys_app.command("list")
def keys_list(
    key: KeyOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
) -> None:
    """List keys (never their values). Needs an admin key."""
    from gateway.keys import KeyService

    settings = _settings()
    engine = _engine(settings)
    authenticate_cli(engine, key, "admin")
    for rec in KeyService(engine).list(include_revoked=all_keys):
        data = {
            "id": rec.id,
            "prefix": rec.prefix,
            "name": rec.name,
            "principal": rec.principal,
            "roles": rec.roles,
            "allow": rec.allow,
            "created_at": rec.created_at.isoformat(),
            "revoked": rec.revoked_at is not None,
        }
        if json_out:
            typer.echo(orjson.dumps(data).decode())
        else:
            state = "revoked" if rec.revoked_at else "active"
            typer.echo(f"{rec.id}  {rec.prefix}…  {rec.principal:<20} {','.join(rec.roles):<24} {state}")


@keys_app.command("revoke")
def keys_revoke(
    ident: Annotated[str, typer.Argument(help="Key id or prefix.")], key: KeyOption = None
) -> None:
    """Revoke a key at once (gateways drop it within a second). Needs an admin key."""
    from gateway.keys import KeyService

    settings = _settings()
    engine = _engine(settings)
    principal = authenticate_cli(engine, key, "admin")
    try:
        rec = KeyService(engine).revoke(ident, actor=principal.actor)
    except OpsgateError as exc:
        fail(exc.message)
    typer.echo(f"revoked {rec.id}")


# -- logs -----------------------------------------------------------------------------------------------


def _log_rows(
    engine: Any,
    *,
    limit: int,
    since: datetime | None,
    status: str | None,
    after_ts: Any = None,
    ascending: bool = False,
) -> list[dict[str, Any]]:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from gateway.db.generation import as_utc
    from gateway.db.models import RequestLog

    q = select(RequestLog)
    if since is not None:
        q = q.where(RequestLog.ts >= since)
    if after_ts is not None:
        q = q.where(RequestLog.ts > after_ts)
    if status:
        s = status.lower()
        if s.isdigit():
            q = q.where(RequestLog.status == int(s))
        elif re.fullmatch(r"[1-5]xx", s):
            base = int(s[0]) * 100
            q = q.where(RequestLog.status >= base, RequestLog.status < base + 100)
        elif s == "error":
            q = q.where(RequestLog.status >= 400)
        elif s == "ok":
            q = q.where(RequestLog.status < 400)
        else:
            raise typer.BadParameter("status: a code (200), a class (5xx), 'ok' or 'error'")
    q = q.order_by(RequestLog.ts.asc() if ascending else RequestLog.ts.desc()).limit(limit)
    with Session(engine) as session:
        rows = []
        for r in session.scalars(q):
            data = {c.name: getattr(r, c.key) for c in RequestLog.__table__.columns}
            data["ts"] = as_utc(r.ts).isoformat()
            rows.append(data)
    return rows


def _print_row(row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(orjson.dumps(row).decode())
        return
    typer.echo(
        f"{row['ts']}  {row['status']}  {row['route']:<22} {row['model'] or '-':<20} "
        f"{row['latency_ms']:8.1f} ms  {row['deployment'] or '-'}  {row['error_type'] or ''}"
    )


@logs_app.command("query")
def logs_query(
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows (newest first).")] = 100,
    since: Annotated[str | None, typer.Option(help="ISO time or duration (10m, 2h, 1d).")] = None,
    status: Annotated[str | None, typer.Option(help="200, 5xx, ok or error.")] = None,
) -> None:
    """Query the request log."""
    settings = _settings()
    engine = _engine(settings)
    for row in _log_rows(engine, limit=limit, since=parse_since(since) if since else None, status=status):
        _print_row(row, json_out)


@logs_app.command("tail")
def logs_tail(
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
    lines: Annotated[int, typer.Option("-n", help="Rows to show first.")] = 10,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", "-f", help="Keep printing new rows.")
    ] = True,
) -> None:
    """Show the newest rows, then follow new ones (Ctrl-C to stop)."""
    settings = _settings()
    engine = _engine(settings)
    rows = list(reversed(_log_rows(engine, limit=lines, since=None, status=None)))
    for row in rows:
        _print_row(row, json_out)
    last = datetime.fromisoformat(rows[-1]["ts"]) if rows else datetime.now(UTC) - timedelta(seconds=1)
    seen = {r["id"] for r in rows}
    while follow:
        time.sleep(1.0)
        for row in _log_rows(
            engine, limit=1000, since=None, status=None, after_ts=last - timedelta(seconds=2), ascending=True
        ):
            if row["id"] in seen:
                continue
            seen.add(row["id"])
            last = max(last, datetime.fromisoformat(row["ts"]))
            _print_row(row, json_out)


# -- registry: sync, inspect, promote ---------------------------------------------------------------------

audit_app = typer.Typer(help="Inspect and verify the audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


def _governance(settings: Any) -> Any:
    try:
        return settings.load_gateway_config().governance
    except OpsgateError as exc:
        fail(exc.message, 2)


def _ref(text: str, *, need_kind: bool = True, need_version: bool = False) -> Any:
    from gateway.registry.refs import parse_ref

    try:
        ref = parse_ref(text)
    except OpsgateError as exc:
        fail(exc.message, 2)
    if need_kind and ref.kind is None:
        fail(f"{text!r}: give the kind, e.g. prompt:{ref.name}", 2)
    if need_version and ref.version is None:
        fail(f"{text!r}: give a version number, e.g. {ref.kind}:{ref.name}@3", 2)
    return ref


def _print_json(data: Any) -> None:
    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())


@app.command("sync")
def sync_cmd(
    key: KeyOption = None,
    allow_dirty: Annotated[
        bool, typer.Option("--allow-dirty", help="Register uncommitted files as dirty versions.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Register the prompts, routers and models the repository holds at HEAD (new content only)."""
    from gateway.registry.blobs import BlobStore, blob_root
    from gateway.registry.sync import sync

    settings = _settings()
    engine = _engine(settings)
    from gateway.registry.promotion import governance_in_force

    governance = governance_in_force(engine, _governance(settings))
    principal = authenticate_cli(engine, key, *governance.registrar_roles)
    try:
        blobs = BlobStore(blob_root(settings.resolved_data_dir()))
        report = sync(
            engine, settings.project_dir, actor=principal.actor, allow_dirty=allow_dirty, blobs=blobs
        )
    except OpsgateError as exc:
        fail(exc.message, 1)
    if json_out:
        _print_json(
            {
                "commit": report.commit,
                "registered": [r.ref for r in report.registered],
                "unchanged": [r.ref for r in report.unchanged],
                "errors": [e.message for e in report.errors],
                "dirty_files": report.dirty_files,
                "bootstrapped": report.bootstrapped,
                "rules": [r.ref for r in report.rules],
            }
        )
    else:
        for record in report.registered:
            flag = " (dirty)" if record.dirty else " (production)" if report.bootstrapped else ""
            typer.echo(
                f"registered {record.ref}  {record.source_path}  {(record.git_commit or '')[:12]}{flag}"
            )
        if report.bootstrapped:
            typer.echo(
                "bootstrap: the registry was empty, so production points at version 1 of each committed"
                " artifact (audited); from now on aliases move only by promotion",
                err=True,
            )
        for record in report.unchanged:
            typer.echo(f"unchanged  {record.ref}")
        for record in report.rules:
            flag = " (dirty)" if record.dirty else ""
            typer.echo(
                f"registered {record.ref}  {record.source_path}  {(record.git_commit or '')[:12]}{flag}"
                f"  (rules: in force once promoted to production)"
            )
        for err in report.errors:
            typer.echo(f"error      {err.message}", err=True)
    if report.errors:
        raise typer.Exit(1)


@app.command("list")
def list_cmd(
    kind: Annotated[str | None, typer.Argument(help="prompt, router, index or model")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List artifacts with their versions and aliases."""
    from gateway.registry.views import artifact_list

    engine = _engine(_settings())
    items = artifact_list(engine, kind)
    if json_out:
        _print_json(items)
        return
    for item in items:
        aliases = ", ".join(f"{a}->{v}" for a, v in sorted(item["aliases"].items()))
        typer.echo(f"{item['kind']}:{item['name']:<28} {item['versions']:>3} version(s)  {aliases}")


@app.command("show")
def show_cmd(
    ref: Annotated[str, typer.Argument(help="KIND:NAME or KIND:NAME@VERSION|ALIAS")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show an artifact (its versions and aliases) or one version (spec, hash, commit, author)."""
    from gateway.registry.store import VersionStore
    from gateway.registry.views import artifact_detail, resolve_record, spec_text, version_dict

    parsed = _ref(ref)
    engine = _engine(_settings())
    try:
        if parsed.selector is None:
            data = artifact_detail(engine, parsed.kind, parsed.name)
            if json_out:
                _print_json(data)
                return
            typer.echo(f"{parsed.kind}:{parsed.name}")
            for v in data["versions"]:
                tags = f"  [{', '.join(v['aliases'])}]" if v["aliases"] else ""
                dirty = " dirty" if v["dirty"] else ""
                typer.echo(
                    f"  @{v['version']:<4} {v['hash'][:12]}  {(v['git_commit'] or '-')[:10]}  "
                    f"{v['git_author'] or v['created_by']}{dirty}{tags}"
                )
            return
        store = VersionStore(engine)
        record = resolve_record(store, parsed)
        data = version_dict(
            record, store.aliases(parsed.kind, parsed.name).get((parsed.kind, parsed.name), {})
        )
    except OpsgateError as exc:
        fail(exc.message)
    if json_out:
        _print_json(data)
        return
    for field in (
        "ref",
        "aliases",
        "source_path",
        "git_commit",
        "git_author",
        "git_message",
        "dirty",
        "created_at",
    ):
        typer.echo(f"{field:<12} {data[field]}")
    typer.echo("")
    typer.echo(spec_text(record))


@app.command("diff")
def diff_cmd(
    a: Annotated[str, typer.Argument(help="KIND:NAME@REF")],
    b: Annotated[str, typer.Argument(help="KIND:NAME@REF")],
) -> None:
    """Unified diff of two versions' specs (and referenced files)."""
    from gateway.registry.store import VersionStore
    from gateway.registry.views import diff, resolve_record

    store = VersionStore(_engine(_settings()))
    try:
        text = diff(resolve_record(store, _ref(a)), resolve_record(store, _ref(b)))
    except OpsgateError as exc:
        fail(exc.message)
    typer.echo(text or "(no differences)", nl=bool(not text))


def _parse_vars(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            fail(f"--var {pair!r}: use NAME=VALUE", 2)
        try:
            out[name] = orjson.loads(value) if value[:1] in '[{"' else value
        except orjson.JSONDecodeError:
            out[name] = value
    return out


@app.command("render")
def render_cmd(
    ref: Annotated[str, typer.Argument(help="prompt:NAME[@REF] (default: latest)")],
    var: Annotated[
        list[str] | None, typer.Option("--var", help="NAME=VALUE (repeatable; JSON values allowed).")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="A user message to append.")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show the exact messages a prompt version would send (retrieval context not included)."""
    from gateway.registry.store import VersionStore
    from gateway.registry.views import render, resolve_record

    parsed = _ref(ref if ":" in ref else f"prompt:{ref}")
    if parsed.kind != "prompt":
        fail("render works on prompts: prompt:NAME[@REF]", 2)
    store = VersionStore(_engine(_settings()))
    try:
        record = resolve_record(store, parsed)
        messages = render(record, _parse_vars(var or []), [{"role": "user", "content": user}] if user else [])
    except OpsgateError as exc:
        fail(exc.message)
    if json_out:
        _print_json({"ref": record.ref, "messages": messages})
        return
    typer.echo(f"# {record.ref}")
    for message in messages:
        typer.echo(f"--- {message['role']}")
        typer.echo(message["content"])


def _promotion_line(p: Any) -> str:
    approvals = len(p.approvals)
    needed = p.rule.get("approvals", 0) if isinstance(p.rule, dict) else 0
    return (
        f"{p.id}  {p.action:<8} {p.kind}:{p.name}@{p.version} -> {p.alias:<10} {p.state:<8} "
        f"approvals {approvals}/{needed}  by {p.requested_by}"
    )


@app.command("promote")
def promote_cmd(
    ref: Annotated[str, typer.Argument(help="KIND:NAME@VERSION")],
    to: Annotated[str, typer.Option("--to", help="The alias to move (e.g. staging, production).")],
    reason: Annotated[str | None, typer.Option(help="Why.")] = None,
    key: KeyOption = None,
) -> None:
    """Request a promotion; prints its id on the last line. Unprotected aliases move at once."""
    from gateway.registry.promotion import PromotionService

    parsed = _ref(ref, need_version=True)
    settings = _settings()
    engine = _engine(settings)
    principal = authenticate_cli(engine, key)
    try:
        record = PromotionService(engine, _governance(settings)).request(
            principal, kind=parsed.kind, name=parsed.name, version=parsed.version, alias=to, reason=reason
        )
    except OpsgateError as exc:
        fail(exc.message)
    typer.echo(_promotion_line(record), err=True)
    typer.echo(record.id)


@app.command("approve")
def approve_cmd(
    promotion_id: Annotated[str, typer.Argument()],
    comment: Annotated[str | None, typer.Option(help="A note for the record.")] = None,
    key: KeyOption = None,
) -> None:
    """Approve a pending promotion; the approval that completes its rule applies it."""
    _decide(key, lambda service, principal: service.approve(principal, promotion_id, comment=comment))


@app.command("reject")
def reject_cmd(
    promotion_id: Annotated[str, typer.Argument()],
    reason: Annotated[str, typer.Option(help="Why (required).")],
    key: KeyOption = None,
) -> None:
    """Reject a pending promotion."""
    _decide(key, lambda service, principal: service.reject(principal, promotion_id, reason=reason))


def _decide(key: str | None, action: Callable[[Any, Any], Any]) -> None:
    """Approve or reject as the key's principal; print the promotion's new state."""
    from gateway.registry.promotion import PromotionService

    settings = _settings()
    engine = _engine(settings)
    principal = authenticate_cli(engine, key)
    try:
        record = action(PromotionService(engine, _governance(settings)), principal)
    except OpsgateError as exc:
        fail(exc.message)
    typer.echo(_promotion_line(record))


@app.command("rollback")
def rollback_cmd(
    ref: Annotated[str, typer.Argument(help="KIND:NAME")],
    to: Annotated[int, typer.Option("--to", help="The version to go back to.")],
    reason: Annotated[str, typer.Option(help="Why (required).")],
    alias: Annotated[str, typer.Option(help="The alias to roll back.")] = "production",
    emergency: Annotated[
        bool, typer.Option("--emergency", help="Admins only: apply at once, no approval.")
    ] = False,
    key: KeyOption = None,
) -> None:
    """Roll an alias back to an earlier version (a promotion; prints its id on the last line)."""
    from gateway.registry.promotion import PromotionService

    parsed = _ref(ref)
    settings = _settings()
    engine = _engine(settings)
    principal = authenticate_cli(engine, key)
    try:
        record = PromotionService(engine, _governance(settings)).rollback(
            principal,
            kind=parsed.kind,
            name=parsed.name,
            to_version=to,
            reason=reason,
            alias=alias,
            emergency=emergency,
        )
    except OpsgateError as exc:
        fail(exc.message)
    typer.echo(_promotion_line(record), err=True)
    typer.echo(record.id)


@app.command("promotions")
def promotions_cmd(
    state: Annotated[str | None, typer.Option(help="pending, applied or rejected")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List promotion requests."""
    from gateway.registry.promotion import PromotionService

    settings = _settings()
    records = PromotionService(_engine(settings), _governance(settings)).list_promotions(state=state)
    for record in records:
        typer.echo(orjson.dumps(record.as_dict()).decode() if json_out else _promotion_line(record))


@audit_app.command("verify")
def audit_verify_cmd() -> None:
    """Check the audit hash chain: exit 0 when intact, 1 naming the first bad entry."""
    from gateway.registry import audit

    result = audit.verify(_engine(_settings()))
    if result.ok:
        typer.echo(f"audit log intact: {result.entries} entries")
        return
    typer.echo(f"audit log TAMPERED: {result.problem}", err=True)
    raise typer.Exit(1)


@audit_app.command("list")
def audit_list_cmd(
    limit: Annotated[int, typer.Option(min=1)] = 50,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The newest audit entries."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from gateway.api.admin import audit_dict
    from gateway.db.models import AuditEntry

    with Session(_engine(_settings())) as s:
        rows = list(s.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(limit)))
    for row in reversed(rows):
        data = audit_dict(row)
        if json_out:
            typer.echo(orjson.dumps(data).decode())
        else:
            typer.echo(
                f"{data['seq']:>5} {data['ts']}  {data['actor']:<32} {data['action']:<22} {data['target']}"
            )


def main() -> None:
    for i, arg in enumerate(sys.argv[1:], start=1):
        # bytes that are not UTF-8 reach Python as lone surrogates, which no database column or audit entry
        # can hold: refused here, by position, before anything is read or written
        if any(0xD800 <= ord(c) <= 0xDFFF for c in arg):
            typer.echo(
                f"opsgate: argument {i} ({arg.encode('utf-8', 'replace')!r}) is not valid UTF-8", err=True
            )
            sys.exit(2)
    try:
        app()
    except OpsgateError as exc:
        typer.echo(f"opsgate: {exc.message}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
