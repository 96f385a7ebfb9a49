"""The `opsgate` command. Scripts and CI rely on its output contract (see README).

Heavy imports (FastAPI app, litellm, torch) happen inside the commands that need them, so
`opsgate --help` and the small commands stay fast.
"""

from __future__ import annotations

import re
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NoReturn

import orjson
import typer

from gateway.errors import OpsgateError
from gateway.offline import apply_offline_env

app = typer.Typer(help="opsgate: a ModelOps gateway.", no_args_is_help=True, pretty_exceptions_enable=False)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
logs_app = typer.Typer(help="Read the request log.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(logs_app, name="logs")

KeyOption = Annotated[
    str | None, typer.Option("--key", envvar="OPSGATE_API_KEY", help="Your API key (or OPSGATE_API_KEY).")
]


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"opsgate: {message}", err=True)
    raise typer.Exit(code)


def _settings() -> Any:
    from gateway.settings import Settings

    return Settings()


def _engine(settings: Any) -> Any:
    from gateway.db.engine import make_engine, migrate

    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    return engine


def authenticate_cli(engine: Any, key: str | None, *roles: str) -> Any:
    """Governance commands act as the principal of a key: local DB access is no licence to skip checks."""
    from gateway.keys import KeyService, hash_key

    if not key:
        fail("this command needs an API key: set OPSGATE_API_KEY or pass --key", 1)
    principal = KeyService(engine).active_principals().get(hash_key(str(key)))
    if principal is None:
        fail("invalid API key: it is unknown or was revoked", 1)
    if roles and not principal.has_role(*roles):
        fail(
            f"permission denied: this needs the role {' or '.join(roles)} (key {principal.key_id} has "
            f"{', '.join(sorted(principal.roles))})",
            1,
        )
    return principal


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

    import uvicorn

    from gateway.app import create_app

    settings = _settings()
    try:
        config = settings.load_gateway_config()
        from gateway.registry.files import load_artifacts

        _, errors = load_artifacts(settings.project_dir, ("router",))
        if errors:
            for err in errors:
                typer.echo(f"opsgate: {err.message}", err=True)
            raise typer.Exit(2)
    except OpsgateError as exc:
        fail(exc.message, 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    bind_host = host or config.server.host
    bind_port = port if port is not None else config.server.port
    typer.echo(
        f"opsgate {settings.project_dir} -> http://{bind_host}:{bind_port}/v1 (data: "
        f"{settings.resolved_data_dir()})",
        err=True,
    )
    uvicorn.run(
        create_app(settings),
        host=bind_host,
        port=bind_port,
        loop="uvloop",
        http="httptools",
        access_log=config.server.access_log,
        log_level="info",
        timeout_graceful_shutdown=10,
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
) -> None:
    """Create (or import) a key; prints the key alone on the last line. Local use needs no key."""
    from gateway.keys import KeyService

    settings = _settings()
    engine = _engine(settings)
    try:
        record, plaintext = KeyService(engine).create(
            name=name, roles=role, principal=principal, allow=allow or ["*"], value=key, actor="local:cli"
        )
    except OpsgateError as exc:
        fail(exc.message)
    typer.echo(f"created {record.id} for {record.principal} with roles {', '.join(record.roles)}", err=True)
    typer.echo(plaintext)


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

_RELATIVE = re.compile(r"^(\d+)\s*([smhd])$")


def parse_since(value: str) -> datetime:
    match = _RELATIVE.match(value.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        seconds = amount * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            "use an ISO time (2026-11-28T10:00) or a duration (30s, 10m, 2h, 1d)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


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

    from gateway.db.models import RequestLog
    from gateway.db.state import as_utc

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


def main() -> None:
    try:
        app()
    except OpsgateError as exc:
        typer.echo(f"opsgate: {exc.message}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
