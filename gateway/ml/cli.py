"""`opsgate ml ...`: register a model file as an artifact, print a version's monitoring figures.

Heavy imports (scikit-learn, pandas, scipy) happen inside the commands, so `opsgate --help` stays fast.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from gateway.cli_common import fail as _fail
from gateway.errors import OpsgateError

ml_app = typer.Typer(help="Classic ML models: register, monitor.", no_args_is_help=True)


def _read_schema(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path}: must hold a mapping of columns (or a spec with inputs:)")
    return data if "inputs" in data else {"inputs": data}


def _read_model(path: Path, trusted: bool) -> Any:
    data = path.read_bytes()
    if path.suffix == ".skops":
        import skops.io as sio

        untrusted = sio.get_untrusted_types(data=data)
        if untrusted and not trusted:
            _fail(
                f"{path} holds types outside skops' safe set: {', '.join(untrusted)}; pass --trusted if you trust them"
            )
        return sio.loads(data, trusted=untrusted)
    if not trusted:
        _fail(
            f"{path} is a pickle/joblib file, which runs code when loaded; pass --trusted if you produced it"
            " yourself (it is converted to skops)"
        )
    import joblib

    return joblib.load(path)


@ml_app.command("register")
def register_cmd(
    name: Annotated[str, typer.Option("--name", help="The model's name (config/models/<name>.yaml).")],
    model: Annotated[
        Path,
        typer.Option(
            "--model", exists=True, dir_okay=False, help=".skops, or a pickle/joblib with --trusted."
        ),
    ],
    schema: Annotated[
        Path,
        typer.Option(
            "--schema",
            exists=True,
            dir_okay=False,
            help="YAML/JSON: columns -> rules, or a spec fragment with inputs:.",
        ),
    ],
    reference: Annotated[
        Path | None, typer.Option("--reference", exists=True, dir_okay=False, help="CSV baseline for drift.")
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="The label column in the reference CSV.")
    ] = None,
    trusted: Annotated[
        bool, typer.Option("--trusted", help="Allow loading a pickle/joblib file (converted to skops).")
    ] = False,
) -> None:
    """Write config/models/<name>.yaml, the skops file and the reference; then commit and `opsgate sync`."""
    from gateway.ml.register import register
    from gateway.settings import Settings

    fragment = _read_schema(schema)
    estimator = _read_model(model, trusted)
    frame = None
    if reference is not None:
        import pandas as pd

        frame = pd.read_csv(reference)
    inputs = fragment.pop("inputs")
    try:
        path = register(
            estimator, name, inputs, frame, project_dir=Settings().project_dir, target=target, **fragment
        )
    except (ValueError, OpsgateError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {path}; commit it and run `opsgate sync` to register the version")


@ml_app.command("monitor")
def monitor_cmd(
    target: Annotated[str, typer.Argument(help="NAME or NAME@VERSION / NAME@ALIAS.")],
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per version.")] = False,
    alert: Annotated[
        bool, typer.Option("--alert", help="Judge too: store reports, send alerts, trigger retraining.")
    ] = False,
) -> None:
    """Drift, data-quality, accuracy and fairness figures per version."""
    from gateway.cli_common import load_settings as _settings
    from gateway.cli_common import open_engine as _engine
    from gateway.ml.artifacts import ArtifactStore
    from gateway.ml.monitor import figures
    from gateway.ml.service import load_served
    from gateway.ml.spec import stored_spec
    from gateway.ml.trust import LoadGrant, TrustList, approved
    from gateway.registry.blobs import blob_root
    from gateway.registry.rules import protected_aliases_in_force
    from gateway.registry.store import VersionStore

    settings = _settings()
    engine = _engine(settings)
    name, _, selector = target.partition("@")
    store = VersionStore(engine)
    aliases = store.aliases("model", name).get(("model", name), {})
    records = store.versions("model", name)
    if not records:
        _fail(f"model:{name} does not exist in the registry")
    if selector:
        version = int(selector) if selector.isdigit() else aliases.get(selector)
        records = [r for r in records if r.version == version]
        if not records:
            _fail(f"model:{name} has no version or alias {selector!r} (aliases: {aliases})")
    artifacts = ArtifactStore(blob_root(settings.resolved_data_dir()))
    config = settings.load_gateway_config()
    trust = TrustList.from_config(config.ml)
    protected = protected_aliases_in_force(engine, config.governance.protected_aliases)
    for record in records:
        by_alias = sorted(a for a, v in aliases.items() if v == record.version)
        # the gateway's rule here too: a file that runs code loads only if trusted and approved
        grant = LoadGrant(trust, approved(aliases, record.version, protected), protected)
        try:
            spec = stored_spec(record.spec, record.ref)
            served = load_served(record, spec, settings.project_dir, artifacts, grant=grant)
        except OpsgateError as exc:
            _print({"ref": record.ref, "aliases": by_alias, "error": exc.message}, json_out)
            continue
        if alert:
            found = asyncio.run(
                _judge(engine, settings.project_dir, config, served, settings.resolved_data_dir())
            )
        else:
            found = figures(engine, served)
        _print({"aliases": by_alias, **found}, json_out)


async def _judge(engine: Any, project_dir: Path, config: Any, served: Any, data_dir: Path) -> dict[str, Any]:
    """Judge and alert like the gateway's monitor; a retraining run is waited for (its output goes to
    the log, as in the gateway), and its final status shown."""
    from gateway.egress import Egress
    from gateway.ml.monitor import Monitor
    from gateway.monitoring.alerts import Alerts

    alerts = Alerts(config.alerts, Egress(config.egress))
    monitor = Monitor(
        engine,
        project_dir,
        commands=config.ml.retrain_commands,
        timeout_s=config.ml.retrain_timeout_s,
        data_dir=data_dir,
        config_loader=lambda: config,
    )
    try:
        found = await monitor.check(served, alerts.send)
        await monitor.runner.drain()
        if monitor.pipelines is not None:
            await monitor.pipelines.drain()
    finally:
        await alerts.close()
    command = found.get("retrain", {}).get("command")
    if command and command.get("run_id"):
        status = await asyncio.to_thread(monitor.runner.status, served.name, command["run_id"])
        found["retrain"]["command"] = {**command, **(status or {})}
    return found


def _print(found: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(orjson.dumps(found, option=orjson.OPT_SERIALIZE_NUMPY).decode())
        return
    aliases = f" ({', '.join(found['aliases'])})" if found.get("aliases") else ""
    if "error" in found:
        typer.echo(f"{found['ref']}{aliases}  cannot be loaded: {found['error']}")
        return
    typer.echo(f"{found['ref']}{aliases}  predictions {found['predictions']}")
    q = found["data_quality"]
    top = ", ".join(f"{k} {n}" for k, n in list(q["violations"].items())[:5]) or "none"
    typer.echo(
        f"  data quality  rejected {q['rejected_requests']} requests, flagged {q['flagged_rows']} rows; violations: {top}"
    )
    d = found["drift"]
    if d.get("status") == "ok":
        pred = d.get("prediction_drift") or {}
        typer.echo(
            f"  drift         dataset drift {'YES' if d['dataset_drift'] else 'no'}: {len(d['drifted_columns'])}/{d['columns']}"
            f" columns (share {d['share']:.2f}, threshold {d['threshold']}); prediction drift"
            f" {'YES' if pred.get('drifted') else 'no'} ({pred.get('test', '-')} {pred.get('score', float('nan')):.3g})"
        )
        for col in d["drifted_columns"][:10]:
            c = d["columns_detail"][col]
            typer.echo(f"                {col}: {c['test']} {c['score']:.3g} (threshold {c['threshold']})")
    else:
        typer.echo(f"  drift         {d.get('status')} ({d.get('rows', 0)} rows)")
    a = found["accuracy"]
    window: dict[str, Any] = next((w for k, w in a["windows"].items() if k.startswith("last_")), {})
    shown = " ".join(f"{k} {v:.3f}" for k, v in window.items() if k != "n" and isinstance(v, float))
    verdict = ("BREACH " + "; ".join(a["broken"])) if a.get("breached") else a.get("status")
    typer.echo(f"  accuracy      labelled {a['labelled']}: {shown or '-'}  [{verdict}]")
    f = found["fairness"]
    if f.get("status") == "ok":
        for attr, r in f["attributes"].items():
            di = r.get("disparate_impact")
            parts = [f"DI {di:.2f}" if di is not None else "DI -"]
            for key, short in (
                ("demographic_parity_difference", "DPD"),
                ("equal_opportunity_difference", "EOD"),
            ):
                parts.append(f"{short} {r[key]:.2f}" if r.get(key) is not None else f"{short} -")
            state = (
                ("BREACH " + ", ".join(r["breaches"]))
                if r["breaches"]
                else ("ok" if r["judged"] else "groups too small")
            )
            typer.echo(f"  fairness      {attr}: {' '.join(parts)}  [{state}]")
    else:
        typer.echo(f"  fairness      {f.get('status')}")
