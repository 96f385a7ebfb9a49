"""`opsgate pipeline run NAME`: train, validate and register a candidate model version from a pipeline."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from gateway.cli_common import KeyOption, authenticate_cli, fail, load_settings, open_engine
from gateway.errors import OpsgateError

pipeline_app = typer.Typer(
    help="Training pipelines: run one, producing a candidate model version.", no_args_is_help=True
)


@pipeline_app.command("run")
def run_cmd(
    target: Annotated[
        str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS (default: production, else newest).")
    ],
    key: KeyOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run's report as JSON.")] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show the stages' progress bar.")
    ] = True,
) -> None:
    """Train and validate; on success register a candidate version of the model (no alias moves: promote it)."""
    from gateway.ml.pipelines.run import run_pipeline
    from gateway.registry.promotion import governance_in_force

    settings = load_settings()
    engine = open_engine(settings)
    try:
        config = settings.load_gateway_config()
    except OpsgateError as exc:
        fail(exc.message, 2)
    principal = authenticate_cli(engine, key, *governance_in_force(engine, config.governance).registrar_roles)
    try:
        result = run_pipeline(
            engine,
            settings.project_dir,
            target,
            actor=principal.actor,
            data_dir=settings.resolved_data_dir(),
            config=config,
            show_progress=progress and not json_out,
        )
    except OpsgateError as exc:
        fail(exc.message, 1)
    if json_out:
        typer.echo(orjson.dumps(result.report, option=orjson.OPT_SERIALIZE_NUMPY, default=str).decode())
    else:
        report = result.report
        cleaning = report.get("cleaning", {})
        if cleaning:
            rules = ", ".join(
                f"{r}: {c['dropped']} dropped, {c['fixed']} fixed" for r, c in cleaning["rules"].items()
            )
            typer.echo(
                f"cleaning   {cleaning['rows_in']} rows in, {cleaning['rows_out']} out ({rules or 'nothing to clean'})"
            )
        if report.get("split"):
            typer.echo(f"split      {report['split']}")
        metrics = report.get("metrics", {})
        prod = (metrics.get("production") or {}).get("metrics", {})
        for name, value in (metrics.get("candidate") or {}).items():
            base = prod.get(name)
            shown = f"{value:.4f}" if value is not None else "-"
            typer.echo(
                f"metric     {name:<10} candidate {shown}"
                + (f"  production {base:.4f}" if base is not None else "")
            )
        for gate in report.get("gates", []):
            typer.echo(
                f"gate       {'pass' if gate['passed'] else 'FAIL'}  {gate['gate']}  {gate.get('detail') or gate.get('skipped', '')}"
            )
        typer.echo(f"report     {' '.join(result.report_paths)}")
        if result.status == "passed" and result.candidate:
            typer.echo(
                f"registered {result.candidate} (a candidate: promote it with `opsgate promote {result.candidate.split('#')[0]} --to staging`)"
            )
    if result.status == "failed":
        fail(f"{result.pipeline}: gate failed, nothing registered: {'; '.join(result.failed_gates)}", 1)
    if result.status == "timeout":
        fail(f"{result.pipeline}: {result.error}", 1)
    if result.status == "error":
        fail(f"{result.pipeline}: {result.error}; nothing registered", 1)
