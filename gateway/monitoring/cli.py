"""`opsgate alerts list`: the alert rules in force and where each stands (ok, pending, firing)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer

from gateway.cli_common import fail
from gateway.cli_common import load_settings as _settings
from gateway.cli_common import open_engine as _engine
from gateway.errors import OpsgateError

alerts_app = typer.Typer(help="Alert rules (config/alerts.yaml) and their states.", no_args_is_help=True)


def _line(rule: dict[str, Any]) -> str:
    firing = [s["subject"] for s in rule["subjects"] if s["state"] != "ok"]
    return (
        f"{rule['state']:<8} {rule['severity']:<8} {rule['name']}  {rule['condition']}"
        + (f" for {rule['for_s']:g}s" if rule["for_s"] else "")
        + (f"  [{', '.join(firing)}]" if firing else "")
    )


@alerts_app.command("list")
def list_cmd(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every rule with its state: firing, pending (breached, waiting out its `for`) or ok."""
    from gateway.monitoring.alerting import AlertEngine, load_file_rules
    from gateway.monitoring.alertrules import ALERTS_FILE

    settings = _settings()
    try:
        file_rules = load_file_rules(
            settings.config_dir, settings.display_path(settings.config_dir / ALERTS_FILE)
        )
    except OpsgateError as exc:
        fail(exc.message, 2)
    states = AlertEngine(_engine(settings), file_rules).states()
    if json_out:
        typer.echo(orjson.dumps(states, option=orjson.OPT_INDENT_2).decode())
        return
    typer.echo(f"rules: {states['source']}", err=True)
    for rule in states["rules"]:
        typer.echo(_line(rule))
