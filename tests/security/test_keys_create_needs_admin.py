"""Issue 11, finding 13: `opsgate keys create` minted any key, admin included, for whoever could run the
command. Now it needs an admin key, except for the very first key (the key table is empty: the bootstrap,
as `opsgate serve` does on its first start), or `--local-admin`: the operator on the machine, who proves it
by writing to the data directory, and is audited as such.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ProjectFactory
from tests.fakes.gateway import Cli


def audit_actors(cli: Cli, key: str) -> list[tuple[str, str]]:
    out = cli("audit", "list", "--json", key=key).stdout
    return [
        (e["actor"], e["action"]) for e in map(json.loads, out.splitlines()) if e["action"] == "key.create"
    ]


def test_keys_create_needs_an_admin_key_after_the_first(
    make_project: ProjectFactory, cli_for: Callable[..., Cli]
) -> None:
    cli = cli_for(make_project())
    owner = cli.first_admin_key()  # the key table was empty: no key needed, once

    anonymous = cli("keys", "create", "--name", "intruder", "--role", "admin")
    assert anonymous.returncode == 1
    assert "creating a key needs an admin key" in anonymous.stderr and "--local-admin" in anonymous.stderr
    app = cli("keys", "create", "--name", "app", "--role", "app", "--api-key", owner)
    assert app.returncode == 0, app.stderr
    app_key = app.stdout.strip().splitlines()[-1]
    for escalation in (
        cli("keys", "create", "--name", "intruder", "--role", "admin", "--api-key", app_key),
        cli("keys", "create", "--name", "intruder", "--role", "admin", key=app_key),  # OPSGATE_API_KEY
        cli("keys", "create", "--name", "intruder", "--role", "admin", "--api-key", "sk-made-up-0123456789"),
    ):
        assert escalation.returncode == 1
        assert "permission denied" in escalation.stderr or "invalid API key" in escalation.stderr
    listed = cli("keys", "list", "--json", key=owner).stdout
    assert "intruder" not in listed

    created = cli("keys", "create", "--name", "ci", "--role", "approver", key=owner)
    assert created.returncode == 0, created.stderr
    actors = audit_actors(cli, owner)
    assert actors[0] == ("local:cli (first key)", "key.create")
    assert actors[1][0].startswith("owner (key key_") and actors[2][0].startswith("owner (key key_")


def test_local_admin_needs_write_access_to_the_data_dir_and_is_audited(
    make_project: ProjectFactory,
    cli_for: Callable[..., Cli],
    new_pg_database: Callable[[], str],
    tmp_path: Path,
) -> None:
    cli = cli_for(make_project())
    owner = cli.first_admin_key()
    local = cli("keys", "create", "--name", "rescue", "--role", "admin", "--local-admin")
    assert local.returncode == 0, local.stderr
    actor, _ = audit_actors(cli, owner)[-1]
    assert actor.startswith("local-admin ") and "(--local-admin, data dir " in actor

    # On PostgreSQL the data directory is not where the database is: a machine without it is no operator's.
    elsewhere = cli_for(make_project(), {"OPSGATE_DATABASE_URL": new_pg_database()})
    elsewhere.first_admin_key()
    missing = tmp_path / "no-such-data-dir"
    elsewhere.env["OPSGATE_DATA_DIR"] = str(missing)
    refused = elsewhere("keys", "create", "--name", "rescue", "--role", "admin", "--local-admin")
    assert refused.returncode == 1
    assert f"--local-admin needs write access to the data directory {missing}" in refused.stderr
