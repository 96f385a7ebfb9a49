"""`opsgate rollout start|status|stop|check`: rollouts from the command line, acting as a key's principal."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer

from gateway.cli_common import KeyOption, authenticate_cli, fail
from gateway.cli_common import load_settings as _settings
from gateway.cli_common import open_engine as _engine
from gateway.errors import OpsgateError

rollout_app = typer.Typer(help="Canary rollouts judged by a sequential test.", no_args_is_help=True)


def _service() -> tuple[Any, Any]:
    from gateway.registry.promotion import PromotionService
    from gateway.rollouts.service import RolloutService

    settings = _settings()
    engine = _engine(settings)
    try:
        governance = settings.load_gateway_config().governance
    except OpsgateError as exc:
        fail(exc.message, 2)
    return RolloutService(engine, PromotionService(engine, governance)), engine


def _line(r: dict[str, Any]) -> str:
    check = r.get("last_check") or {}
    tests = ", ".join(
        f"{t['metric']} {t['mean_control']:.4g}->{t['mean_candidate']:.4g} p={t['p_value']:.3g} {t['verdict']}"
        for t in check.get("tests", [])
    )
    return (
        f"{r['id']}  {r['kind']}:{r['name']}@{r['alias']}  {r['control_version']} -> {r['candidate_version']}"
        f"  share {r['share']:.0%}{' shadow' if r.get('mode') == 'shadow' else ''}  {r['state']}"
        + (f"  n={check['requests']['control']}/{check['requests']['candidate']}" if check else "")
        + (f"  [{tests}]" if tests else "")
        + (
            f"  promotion {r['promotion_id']}"
            if r.get("promotion_id") and r["state"] == "awaiting_approval"
            else ""
        )
    )


@rollout_app.command("start")
def start_cmd(
    ref: Annotated[str, typer.Argument(help="KIND:NAME@CANDIDATE_VERSION")],
    alias: Annotated[str, typer.Option("--alias", help="The alias whose traffic it meets.")] = "production",
    mode: Annotated[
        str, typer.Option(help="canary, or shadow (the candidate answers a copy of live requests).")
    ] = "canary",
    share: Annotated[
        float, typer.Option(help="Canary: share of callers in the candidate arm; shadow: of requests (0-1].")
    ] = 0.1,
    step: Annotated[
        list[str] | None, typer.Option("--step", help="AFTER_S:SHARE, e.g. 3600:0.5 (repeatable).")
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric", help="error_rate, latency_ms, cost_usd or an online eval metric (repeatable)."
        ),
    ] = None,
    min_sample: Annotated[int, typer.Option(help="Per arm before any verdict.")] = 100,
    max_sample: Annotated[
        int | None, typer.Option(help="Candidate requests after which it succeeds.")
    ] = None,
    alpha: Annotated[float, typer.Option(help="False-rollback rate the test guarantees.")] = 0.05,
    interval: Annotated[float, typer.Option(help="Seconds between checks.")] = 60.0,
    on_success: Annotated[str, typer.Option(help="promote or hold.")] = "hold",
    reason: Annotated[str | None, typer.Option(help="Why.")] = None,
    key: KeyOption = None,
) -> None:
    """Start a canary or shadow rollout; prints its id on the last line. On a protected alias it files a
    promotion request and waits for its approvals."""
    from pydantic import ValidationError

    from gateway.registry.refs import parse_ref
    from gateway.rollouts.service import RolloutSpec

    try:
        parsed = parse_ref(ref)
        if parsed.kind is None or parsed.version is None:
            raise ValueError("name the candidate as KIND:NAME@VERSION")
        steps = [{"after_s": float(s.split(":")[0]), "share": float(s.split(":")[1])} for s in step or []]
        spec = RolloutSpec.model_validate(
            {
                "kind": parsed.kind,
                "name": parsed.name,
                "alias": alias,
                "candidate": parsed.version,
                "mode": mode,
                "share": share,
                "schedule": steps,
                "metrics": [{"metric": m} for m in metric or ["error_rate"]],
                "min_sample": min_sample,
                "max_sample": max_sample,
                "alpha": alpha,
                "interval_s": interval,
                "on_success": on_success,
                "reason": reason,
            }
        )
    except (ValueError, IndexError, ValidationError, OpsgateError) as exc:
        fail(f"bad rollout: {exc}", 2)
    service, engine = _service()
    principal = authenticate_cli(engine, key)
    try:
        out = service.start(principal, spec)
    except OpsgateError as exc:
        fail(exc.message)
    typer.echo(_line(out), err=True)
    typer.echo(out["id"])


@rollout_app.command("status")
def status_cmd(
    rollout_id: Annotated[
        str | None, typer.Argument(help="One rollout (default: all, newest first).")
    ] = None,
    live: Annotated[bool, typer.Option("--live", help="Only live rollouts.")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show rollouts with their last check: figures, sample sizes, test results."""
    service, _ = _service()
    try:
        rows = [service.get(rollout_id)] if rollout_id else service.list_rollouts(live_only=live)
    except OpsgateError as exc:
        fail(exc.message)
    for row in rows:
        typer.echo(orjson.dumps(row).decode() if json_out else _line(row))


@rollout_app.command("check")
def check_cmd(rollout_id: Annotated[str, typer.Argument()]) -> None:
    """Evaluate now (the gateway's evaluator does it every interval) and print the result."""
    service, _ = _service()
    try:
        service.get(rollout_id)
        result = service.check(rollout_id)
    except OpsgateError as exc:
        fail(exc.message)
    typer.echo(orjson.dumps(result).decode())


@rollout_app.command("stop")
def stop_cmd(
    rollout_id: Annotated[str, typer.Argument()],
    reason: Annotated[str, typer.Option(help="Why (required).")],
    key: KeyOption = None,
) -> None:
    """Stop a live rollout: the candidate serves no more traffic (an alias the rollout moved goes back)."""
    service, engine = _service()
    principal = authenticate_cli(engine, key)
    try:
        out = service.stop(principal, rollout_id, reason=reason)
    except OpsgateError as exc:
        fail(exc.message)
    typer.echo(_line(out))
