"""`opsgate eval ...`: run suites, list metrics and runs, compare runs, read online scores.

`opsgate eval run` exits 0 when every gate passed, 1 when a gate failed, 2 when the run could not be
made (an invalid suite, an unknown target, a bad key, a gateway that does not answer). Its last line on
stdout is the run id. Heavy imports (ragas, the app) happen inside the commands.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer

from gateway.cli_common import fail
from gateway.cli_common import load_settings as _settings
from gateway.cli_common import open_engine as _engine

eval_app = typer.Typer(
    help="Evaluate prompts and routers: suites as CI gates, runs, comparisons.", no_args_is_help=True
)

EXIT_PASS, EXIT_GATE, EXIT_ERROR = 0, 1, 2

KeyOption = Annotated[
    str | None,
    typer.Option("--key", envvar="OPSGATE_API_KEY", help="Your API key (default: the local admin key file)."),
]


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    fail(message, code)


def _api_key(key: str | None, settings: Any) -> str:
    if key:
        return key
    key_file = settings.resolved_data_dir() / "admin.key"
    if key_file.exists():
        return str(key_file.read_text(encoding="utf-8").strip())
    _fail("an eval run calls the gateway with an API key: set OPSGATE_API_KEY or pass --key")


@eval_app.command("run")
def run_command(
    suite: Annotated[Path, typer.Argument(help="The suite file, e.g. evals/support_qa.yaml.")],
    target: Annotated[
        str | None, typer.Option(help="Evaluate this instead of the suite's target, e.g. prompt:x@5.")
    ] = None,
    baseline: Annotated[
        str | None, typer.Option(help="Compare with this version or alias (e.g. production).")
    ] = None,
    url: Annotated[str | None, typer.Option(help="A running gateway (default: the app in-process).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the JSON report here.")] = None,
    junit_path: Annotated[Path | None, typer.Option("--junit", help="Write JUnit XML here.")] = None,
    html_path: Annotated[Path | None, typer.Option("--html", help="Write the HTML report here.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N cases.")] = None,
    key: KeyOption = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Run a suite; store the run; write reports; exit 0 (pass), 1 (a gate failed) or 2 (error)."""
    from gateway.offline import apply_offline_env

    apply_offline_env()
    from gateway.app import create_app
    from gateway.errors import OpsgateError
    from gateway.evaluation.service import RunRequest, execute

    settings = _settings()
    try:
        if url:
            engine = _engine(settings)
        else:  # in-process: the database as the app prepares it on start (first start: admin key file)
            from gateway.app import prepare_database

            engine = prepare_database(settings)
        request = RunRequest(
            suite_file=suite,
            project_dir=settings.project_dir,
            api_key=_api_key(key, settings),
            target=target,
            baseline=baseline,
            url=url,
            app=functools.partial(create_app, settings),
            limit=limit,
            data_dir=settings.resolved_data_dir(),
        )
        outcome = _with_progress(lambda p: execute(request, engine, p), enabled=progress)
    except OpsgateError as exc:
        _fail(exc.message)
    _write_reports(outcome, json_path, junit_path, html_path)
    _print_outcome(outcome)
    _print_call_errors(outcome.run)
    if outcome.status == "error":
        _fail("every call failed; nothing was evaluated (see the errors above)")
    raise typer.Exit(EXIT_PASS if outcome.status == "passed" else EXIT_GATE)


def _with_progress(make: Any, *, enabled: bool) -> Any:
    """Run the coroutine `make(update)`; the bar appears with the first case (not before errors)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]eval[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
    tasks: list[Any] = []

    def update(done: int, total: int) -> None:
        if not tasks:
            bar.start()
            tasks.append(bar.add_task("cases", total=total, rate=""))
        task = bar.tasks[0]
        if task.total != total:  # a baseline run follows the candidate
            bar.reset(tasks[0], total=total)
        elapsed = task.elapsed or 0
        bar.update(tasks[0], completed=done, rate=f"{done / elapsed:.1f} cases/s" if elapsed > 0 else "")

    try:
        return asyncio.run(make(update))
    finally:
        bar.stop()


def _write_reports(
    outcome: Any, json_path: Path | None, junit_path: Path | None, html_path: Path | None
) -> None:
    from gateway.evaluation import reports

    if json_path:
        reports.write_json(outcome, json_path)
    if junit_path:
        reports.write_junit(outcome, junit_path)
    if html_path:
        reports.write_html(outcome, html_path)


def _print_call_errors(run: Any, shown: int = 10) -> None:
    """The distinct errors of failed calls with how many cases each hit (stderr), most frequent first."""
    from collections import Counter

    counts = Counter(r.output.error for r in run.results if r.output.error)
    if not counts:
        return
    typer.echo(f"{sum(counts.values())} of {len(run.results)} calls failed:", err=True)
    for error, count in counts.most_common(shown):
        typer.echo(f"  {count}x {error}", err=True)
    if len(counts) > shown:
        typer.echo(
            f"  ... and {len(counts) - shown} other errors (all of them are in the JSON report)", err=True
        )


def _print_outcome(outcome: Any) -> None:
    run = outcome.run
    typer.echo(
        f"suite {run.suite.spec.name} on {run.target.ref} ({len(run.results)} calls, {run.errors} failed)"
    )
    for key, stats in outcome.summary["metrics"].items():
        mean = "-" if stats["mean"] is None else f"{stats['mean']:.4f}"
        typer.echo(f"  {key:<28} mean {mean:>8}  n={stats['n']}")
    for gate in outcome.gates:
        mark = "skip" if gate.skipped else "pass" if gate.passed else "FAIL"
        typer.echo(f"  [{mark}] {gate.name}: {gate.detail}")
    typer.echo(f"{outcome.status.upper()}: run {run.id}", err=True)
    typer.echo(run.id)


@eval_app.command("metrics")
def metrics_command(
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """List every metric a suite may use."""
    from gateway.evaluation.metrics import registry

    for d in registry().defs:
        info = {
            "name": d.name,
            "pattern": d.pattern,
            "description": d.description,
            "judge": d.needs_judge,
            "embeddings": d.needs_embeddings,
            "online": d.reference_free,
            "params": sorted(d.params.model_fields),
        }
        if json_out:
            typer.echo(orjson.dumps(info).decode())
            continue
        flags = ",".join(
            f
            for f, on in (
                ("judge", d.needs_judge),
                ("embeddings", d.needs_embeddings),
                ("online", d.reference_free),
            )
            if on
        )
        params = f" params: {', '.join(sorted(d.params.model_fields))}" if d.params.model_fields else ""
        typer.echo(f"{d.name:<26} {d.description}{f' [{flags}]' if flags else ''}{params}")


@eval_app.command("runs")
def runs_command(
    suite: Annotated[str | None, typer.Option(help="Only this suite.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 20,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """List eval runs, newest first."""
    from gateway.evaluation.store import list_runs

    engine = _engine(_settings())
    for run in list_runs(engine, suite=suite, limit=limit):
        if json_out:
            typer.echo(orjson.dumps(run.as_dict()).decode())
        else:
            typer.echo(
                f"{run.id}  {run.started_at:%Y-%m-%d %H:%M}  {run.suite:<20} {run.label:<28} {run.status}"
            )


@eval_app.command("compare")
def compare_command(
    run_a: Annotated[str, typer.Argument(help="The reference run (e.g. the baseline).")],
    run_b: Annotated[str, typer.Argument(help="The run compared with it.")],
    confidence: Annotated[float, typer.Option(min=0.5, max=0.999)] = 0.95,
    top: Annotated[int, typer.Option(min=0, help="How many most-changed cases to show.")] = 10,
    json_out: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False,
) -> None:
    """Per-metric change from RUN_A to RUN_B with bootstrap confidence intervals, and the cases that changed most."""
    from gateway.errors import OpsgateError
    from gateway.evaluation.compare import compare_tables
    from gateway.evaluation.store import load_table

    engine = _engine(_settings())
    try:
        a, b = load_table(engine, run_a), load_table(engine, run_b)
    except OpsgateError as exc:
        _fail(exc.message)
    result = compare_tables(a, b, confidence=confidence, top=top)
    if json_out:
        typer.echo(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2).decode())
        return
    typer.echo(f"{a.label} ({a.run_id}) -> {b.label} ({b.run_id}), {confidence:.0%} bootstrap CI")
    for m in result.metrics:
        if m.delta is None:
            typer.echo(f"  {m.metric:<28} (not in both runs)")
            continue
        star = " *" if m.significant else ""
        typer.echo(
            f"  {m.metric:<28} {m.mean_a:9.4f} -> {m.mean_b:9.4f}  delta {m.delta:+.4f}"
            f"  [{m.ci_low:+.4f}, {m.ci_high:+.4f}]  n={m.paired}{star}"
        )
    if result.changed:
        typer.echo("cases that changed most:")
        for c in result.changed:
            typer.echo(f"  {c.case_id:<30} {c.metric:<24} {c.a:.4f} -> {c.b:.4f} ({c.delta:+.4f})")


@eval_app.command("online")
def online_command(
    prompt: Annotated[str | None, typer.Option(help="Only this prompt.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """Rolling means of online scores per prompt version and metric (the prompt's online_eval window)."""
    from gateway.evaluation.online import rolling_means_from_db

    engine = _engine(_settings())
    for row in rolling_means_from_db(engine, prompt=prompt):
        if json_out:
            typer.echo(orjson.dumps(row).decode())
        else:
            mean = "-" if row["mean"] is None else f"{row['mean']:.4f}"
            typer.echo(
                f"prompt:{row['prompt']}@{row['version']:<4} {row['metric']:<24} mean {mean} over {row['n']}"
            )
