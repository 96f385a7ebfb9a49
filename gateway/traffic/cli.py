"""`opsgate logs replay` and `opsgate eval dataset from-logs`: stored traffic, replayed and made datasets."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from gateway.cli_common import fail, parse_since
from gateway.cli_common import load_settings as _settings
from gateway.cli_common import open_engine as _engine
from gateway.errors import OpsgateError

dataset_app = typer.Typer(help="Build eval datasets from stored traffic.", no_args_is_help=True)


def replay_command(
    request_id: Annotated[
        str, typer.Argument(help="The request id (x-opsgate-request-id) of a stored call.")
    ],
    to: Annotated[
        str | None, typer.Option("--to", help="Send it to this version instead, e.g. prompt:docs_qa@7.")
    ] = None,
    send: Annotated[bool, typer.Option("--send", help="Send it again and diff the answers.")] = False,
    url: Annotated[
        str | None, typer.Option(help="The gateway (default: server.host:port of config).")
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", envvar="OPSGATE_API_KEY", help="API key for --send.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Show a stored call's upstream request and versions, what has moved on since, and (--send) its
    answer again from the same versions (or --to another) with a diff."""
    from gateway.traffic.replay import load_case, moved_on, rerender

    settings = _settings()
    engine = _engine(settings)
    try:
        case = load_case(engine, request_id)
    except OpsgateError as exc:
        fail(exc.message)
    report: dict[str, Any] = {
        "request_id": request_id,
        "route": case.route,
        "versions": [str(v) for v in case.versions],
        "deployment": case.row.get("deployment"),
        "upstream_model": case.row.get("upstream_model"),
        "retrieved_chunk_ids": [
            c["id"] for c in ((case.row.get("extra") or {}).get("retrieval") or {}).get("chunks", [])
        ],
        "upstream_sha256": case.stored.payload.get("upstream_sha256"),
        "upstream_request": case.stored.payload.get("upstream"),
        "moved_on": moved_on(engine, case.versions),
        "target": to or case.target,
    }
    try:
        report["rendered"] = rerender(engine, case, to)
    except OpsgateError as exc:
        report["rendered"] = {"error": exc.message}
    if send:
        report["replay"] = _send(settings, url, key, case.route, case.request_body(to))
        report["answer"] = case.answer
        report["diff"] = list(
            difflib.unified_diff(
                case.answer.splitlines(),
                report["replay"]["answer"].splitlines(),
                "stored",
                "replayed",
                lineterm="",
            )
        )
    if json_out:
        typer.echo(orjson.dumps(report).decode())
        return
    typer.echo(
        f"request {request_id}  {case.route}  deployment {report['deployment']} ({report['upstream_model']})"
    )
    typer.echo("versions: " + ", ".join(report["versions"]))
    for note in report["moved_on"] or ["nothing has moved on: the same versions would serve it"]:
        typer.echo(f"  {note}")
    typer.echo("upstream request (redacted):")
    typer.echo(orjson.dumps(report["upstream_request"], option=orjson.OPT_INDENT_2).decode())
    _echo_rendered(report["rendered"])
    if send:
        typer.echo(f"replayed to {report['target']}: {report['replay']['versions']}")
        typer.echo("\n".join(report["diff"]) or "answers are identical")


def _echo_rendered(rendered: dict[str, Any] | None) -> None:
    if rendered is None:
        typer.echo("rendered prompt: none (no prompt served it; the caller's messages went as sent)")
        return
    if "error" in rendered:
        typer.echo(f"rendered prompt: could not be rebuilt: {rendered['error']}")
        return
    if rendered["byte_equal"]:
        typer.echo(
            f"rendered prompt: {rendered['prompt']} re-renders byte-equal (sha256 {rendered['sha256']})"
        )
    elif rendered["equal_after_redaction"]:
        typer.echo(f"rendered prompt: {rendered['prompt']} re-renders equal to the stored (redacted) messages;"
                   " byte equality cannot be checked (redacted variables, or a call stored before it was)")  # fmt: skip
    else:
        typer.echo(f"rendered prompt: {rendered['prompt']} does NOT re-render what was sent:")
        typer.echo("\n".join(rendered["diff"]))
    moved = rendered.get("moved")
    if moved is not None:
        if "error" in moved:
            typer.echo(f"{moved['prompt']} cannot render this call: {moved['error']}")
        else:
            typer.echo(f"rendered with {moved['prompt']}:")
            typer.echo("\n".join(moved["diff"]) or "  the same messages")


def _send(
    settings: Any, url: str | None, key: str | None, route: str, body: dict[str, Any]
) -> dict[str, Any]:
    import httpx

    from gateway.evaluation.cli import _api_key

    config = settings.load_gateway_config().server
    base = (url or f"http://{config.host}:{config.port}").rstrip("/")
    headers = {"Authorization": f"Bearer {_api_key(key, settings)}"}
    with httpx.Client(trust_env=False, timeout=120) as http:
        r = http.post(base + route, json=body, headers=headers)
    if r.status_code != 200:
        fail(f"the replay was refused: {r.status_code} {r.text[:500]}")
    from gateway.traffic.replay import answer_text

    data = r.json()
    return {
        "request_id": r.headers.get("x-opsgate-request-id"),
        "versions": r.headers.get("x-opsgate-versions"),
        "answer": answer_text(data) if route == "/v1/chat/completions" else orjson.dumps(data).decode(),
    }


@dataset_app.command("from-logs")
def from_logs_command(
    prompt: Annotated[str, typer.Option(help="The prompt whose stored calls become cases.")],
    since: Annotated[str, typer.Option(help="ISO time or duration (7d, 12h).")] = "7d",
    sample: Annotated[
        int, typer.Option(min=1, help="At most this many cases (a seeded random sample).")
    ] = 200,
    out: Annotated[
        Path | None, typer.Option(help="The JSONL file (default: evals/data/<prompt>_traffic.jsonl).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample (the same seed picks the same cases).")] = 0,
) -> None:
    """Write an eval dataset (JSONL: question, answer, contexts, versions) from the stored calls of a prompt;
    their text was redacted of personal data when it was stored."""
    from gateway.traffic.replay import dataset_lines

    settings = _settings()
    lines = dataset_lines(_engine(settings), prompt, parse_since(since), sample, seed)
    if not lines:
        fail(
            f"no stored calls of prompt {prompt!r} since {since} (calls are stored with store: true or traffic.prompts)"
        )
    path = out or settings.project_dir / "evals" / "data" / f"{prompt}_traffic.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    typer.echo(f"wrote {len(lines)} cases to {path}")
