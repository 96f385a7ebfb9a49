"""What every `opsgate` sub-command shares: the key option, failing with a message, settings, the
database, and acting as the principal of a key. Its own module so sub-apps (index, eval, ml) can import
it at module level without importing the main CLI."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NoReturn

import typer

KeyOption = Annotated[
    str | None, typer.Option("--key", envvar="OPSGATE_API_KEY", help="Your API key (or OPSGATE_API_KEY).")
]


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"opsgate: {message}", err=True)
    raise typer.Exit(code)


def load_settings() -> Any:
    from gateway.settings import Settings

    return Settings()


def open_engine(settings: Any) -> Any:
    """The database of these settings, migrated to the current schema."""
    from gateway.db.engine import make_engine, migrate
    from gateway.registry import audit

    eng = make_engine(settings.resolved_database_url())
    migrate(eng)
    data_dir = settings.resolved_data_dir()
    # CLI writes are keyed and anchored like the gateway's; a data directory that does not exist (a
    # PostgreSQL install run from another machine) is not created here: set OPSGATE_AUDIT_KEY there
    audit.setup(eng, data_dir, create=data_dir.is_dir() or settings.database_url is None)
    return eng


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


def no_key_ever_created(engine: Any) -> bool:
    """True while the key table is empty (revoked keys count): the one time a key needs no key."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from gateway.db.models import ApiKey

    with Session(engine) as session:
        return session.scalar(select(ApiKey.id).limit(1)) is None


def local_admin_actor(settings: Any) -> str:
    """`--local-admin`: the operator on this machine acts without a key. Proof is write access to the
    data directory (the database, the admin key file and the blobs live there), checked by writing a
    file; the audit records who and where."""
    import getpass
    import os
    import socket
    import tempfile

    data_dir = settings.resolved_data_dir()
    try:
        fd, probe = tempfile.mkstemp(prefix=".local-admin-", dir=data_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        fail(
            f"--local-admin needs write access to the data directory {data_dir} ({exc.strerror}): run it as"
            " the user that runs the gateway, or pass an admin key instead"
        )
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"local-admin {user}@{socket.gethostname()} (--local-admin, data dir {data_dir})"


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
    # In UTC: SQLite stores times without their offset, so 10:00+02:00 must be compared as 08:00.
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
