"""A pipeline's data: read from its source, then cleaned by the produced model's own input rules.

Sources: a CSV or Parquet file in the project (read without following links), a read-only SQL query on a
database the operator named, or the model's logged predictions joined with their feedback. Every source
yields a DataFrame and a data hash (sha256 of the bytes read, or of a canonical CSV of the rows) that the
candidate version carries as lineage.

Cleaning applies the checks of gateway/ml/schema.py (the very ones the gateway runs on request rows:
required, type, finite, min, max, categories) to every input cell; per rule the file says `drop` (the
row leaves) or `fix` (min/max: clipped to the bound; other rules on a nullable field: the cell becomes
missing). Rows without a label always leave. The counts of rows dropped and cells fixed per rule (and
per field) are reported.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session

from gateway.db.generation import utcnow
from gateway.errors import ConfigError
from gateway.ml.pipelines.spec import PipelineSpec
from gateway.ml.schema import _MISSING, coerce_csv_value, field_check
from gateway.registry.tree import is_under, normalise, own_dirs, read_project_file

GATEWAY_DATABASE = "gateway"  # ml.pipelines.databases value: the gateway's own database


@dataclass
class Loaded:
    frame: Any  # pandas DataFrame
    data_hash: str
    source: str  # what was read, for the report


@dataclass
class Cleaned:
    x: Any  # DataFrame of the input columns
    y: Any  # Series: the label
    order: Any  # Series: the time-split column, or None
    report: dict[str, Any] = field(default_factory=dict)


def load(
    spec: PipelineSpec,
    project_dir: Path,
    *,
    engine: Engine | None = None,
    databases: dict[str, str] | None = None,
    data_dir: Path | None = None,
) -> Loaded:
    src = spec.source
    if src.file is not None:
        return _load_file(spec, project_dir, src.file, data_dir)
    if src.sql is not None:
        assert src.database is not None
        return _load_sql(src.sql, src.database, databases or {}, engine)
    assert engine is not None, "the feedback source reads the gateway's database"
    return _load_feedback(spec, engine)


def _load_file(spec: PipelineSpec, project_dir: Path, rel: str, data_dir: Path | None = None) -> Loaded:
    import pandas as pd

    if is_under(normalise(rel), own_dirs(project_dir, data_dir)):  # the spec refuses .git and .opsgate
        raise ConfigError(f"source.file {rel!r} is in a folder opsgate keeps for itself (its data directory)")
    try:
        data = read_project_file(project_dir, rel)
    except OSError as exc:
        raise ConfigError(f"source.file {rel!r}: cannot read it ({exc.strerror or exc})") from exc
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if rel.lower().endswith(".csv"):
        try:
            raw = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"source.file {rel!r} is not a readable CSV: {exc}") from exc
        return Loaded(_typed_csv(spec, raw), digest, rel)
    try:
        frame = pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises its own types
        raise ConfigError(f"source.file {rel!r} is not a readable Parquet file: {exc}") from exc
    return Loaded(frame, digest, rel)


def _typed_csv(spec: PipelineSpec, raw: Any) -> Any:
    """CSV cells are text: input columns are read as their field's type exactly as the gateway reads a
    CSV request (gateway/ml/schema.py coerce_csv_value); the label and other columns as numbers where
    every cell is one."""
    import pandas as pd

    out = {}
    for col in raw.columns:
        values = raw[col].tolist()
        fld = spec.produces.inputs.get(col)
        if fld is not None:
            out[col] = pd.Series([coerce_csv_value(fld, v) for v in values], dtype=object)
            continue
        cells = [v for v in values if v != ""]
        try:
            numbers = [float(v) for v in cells]
        except ValueError:
            out[col] = pd.Series([v if v != "" else None for v in values], dtype=object)
            continue
        ints = all(n.is_integer() and "." not in v for n, v in zip(numbers, cells, strict=True))
        out[col] = pd.Series(
            [None if v == "" else (int(float(v)) if ints else float(v)) for v in values], dtype=object
        )
    return pd.DataFrame(out, columns=list(raw.columns))


def database_url(name: str, databases: dict[str, str], engine: Engine | None) -> Engine:
    """The operator's database by name: 'gateway' (the gateway's own) or an environment variable that
    holds the URL. A pipeline file names the database, never its URL or credentials."""
    target = databases.get(name)
    if target is None:
        known = ", ".join(sorted(databases)) or "none configured"
        raise ConfigError(
            f"source.database {name!r} is not one of the operator's ml.pipelines.databases"
            f" (config/gateway.yaml: {known})"
        )
    if target == GATEWAY_DATABASE:
        if engine is None:
            raise ConfigError("source.database: the gateway's database is not open here")
        return engine
    url = os.environ.get(target)
    if not url:
        raise ConfigError(f"source.database {name!r}: the environment variable {target} is not set")
    return create_engine(url)


def _load_sql(sql: str, name: str, databases: dict[str, str], engine: Engine | None) -> Loaded:
    import pandas as pd

    db = database_url(name, databases, engine)
    with db.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET TRANSACTION READ ONLY"))
            _refuse_server_file_access(conn, name)
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA query_only = ON")
        try:
            frame = pd.read_sql(text(sql.strip().rstrip(";")), conn)
        except Exception as exc:
            raise ConfigError(f"source.sql failed on database {name!r}: {type(exc).__name__}: {exc}") from exc
        finally:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA query_only = OFF")
            conn.rollback()
    frame = frame.astype(object).where(frame.notna(), None)
    return Loaded(frame, _frame_hash(frame), f"sql on {name}")


# A role that can read or write files on the database server, or run programs there: a SELECT alone could
# then read any file the server can (pg_read_file, pg_read_binary_file), read-only transaction or not.
_SERVER_FILE_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program")
_FILE_POWERS = text(
    "SELECT r.rolname, r.rolsuper OR EXISTS (SELECT 1 FROM pg_roles p WHERE p.rolname IN"
    " ('pg_read_server_files', 'pg_write_server_files', 'pg_execute_server_program')"
    " AND pg_has_role(current_user, p.oid, 'USAGE')) FROM pg_roles r WHERE r.rolname = current_user"
)


def _refuse_server_file_access(conn: Any, name: str) -> None:
    """A pipeline's query is an author's: it runs only as a role that cannot reach the server's files."""
    row = conn.execute(_FILE_POWERS).one_or_none()
    if row is None or row[1]:
        role = row[0] if row is not None else "(unknown)"
        raise ConfigError(
            f"source.database {name!r}: the operator's role {role!r} can read files on the database server (a"
            f" superuser, or a member of {', '.join(_SERVER_FILE_ROLES)}), so an author's SELECT could read"
            " them; nothing was run. Give ml.pipelines.databases the URL of a role with SELECT on the tables"
            " pipelines read and nothing more"
        )


def _load_feedback(spec: PipelineSpec, engine: Engine) -> Loaded:
    import pandas as pd

    from gateway.ml.tables import MLFeedback, MLPrediction

    fb = spec.source.feedback
    assert fb is not None
    q = (
        select(MLPrediction.id, MLPrediction.ts, MLPrediction.inputs, MLFeedback.label)
        .join(MLFeedback, MLFeedback.prediction_id == MLPrediction.id)
        .where(MLPrediction.name == spec.model, MLPrediction.ts >= utcnow() - timedelta(days=fb.days))
        .order_by(MLPrediction.ts, MLFeedback.id)
    )
    if fb.versions:
        q = q.where(MLPrediction.version.in_(fb.versions))
    rows: dict[str, dict[str, Any]] = {}
    with Session(engine) as session:
        for pid, ts, inputs, label in session.execute(q):
            rows[pid] = {**(inputs or {}), spec.target: label, "_ts": ts}  # the newest feedback wins
    frame = pd.DataFrame(list(rows.values()), dtype=object)
    if frame.empty:
        frame = pd.DataFrame(columns=[*spec.produces.inputs, spec.target, "_ts"], dtype=object)
    frame = frame.where(frame.notna(), None)
    return Loaded(frame, _frame_hash(frame), f"feedback of model:{spec.model} ({fb.days:g} days)")


def _frame_hash(frame: Any) -> str:
    return "sha256:" + hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()


def _cell(value: Any) -> Any:
    """pandas' missing values are the gateway's null; numpy scalars are plain Python values."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def clean(spec: PipelineSpec, loaded: Loaded) -> Cleaned:
    """Apply the produced model's input rules row by row; count what was dropped or fixed."""
    import pandas as pd

    frame = loaded.frame
    rules = spec.cleaning
    inputs = spec.produces.inputs
    n = len(frame)
    if spec.target not in frame.columns:
        raise ConfigError(f"target {spec.target!r} is not a column of the data ({_columns(frame)})")
    order_col = spec.split.column
    if order_col is not None and order_col not in frame.columns:
        raise ConfigError(f"split.column {order_col!r} is not a column of the data ({_columns(frame)})")
    columns = {
        name: [_cell(v) for v in frame[name].tolist()] if name in frame.columns else None for name in inputs
    }
    labels = [_cell(v) for v in frame[spec.target].tolist()]
    keep = [True] * n
    counts: dict[str, dict[str, int]] = {}
    by_field: dict[str, dict[str, int]] = {}

    def count(rule: str, what: str, fld: str | None = None, k: int = 1) -> None:
        counts.setdefault(rule, {"dropped": 0, "fixed": 0})[what] += k
        if fld is not None:
            by_field.setdefault(f"{fld}:{rule}", {"dropped": 0, "fixed": 0})[what] += k

    for i, label in enumerate(labels):
        if label is None or (isinstance(label, str) and not label.strip()):
            keep[i] = False
            count("missing_target", "dropped")
    for name, fld in inputs.items():
        check = field_check(fld)
        values = columns[name]
        for i in range(n):
            if not keep[i]:
                continue
            value = _MISSING if values is None else values[i]
            broken = check(value)
            if broken is None:
                continue
            rule = broken[0]
            action = getattr(rules, rule, "drop")
            if action == "fix" and rule in ("min", "max") and values is not None:
                values[i] = fld.min if rule == "min" else fld.max
                if fld.type == "integer":
                    values[i] = math.ceil(values[i]) if rule == "min" else math.floor(values[i])
                count(rule, "fixed", name)
            elif action == "fix" and fld.nullable and values is not None:
                values[i] = None
                count(rule, "fixed", name)
            else:
                keep[i] = False
                count(rule, "dropped", name)
    x = pd.DataFrame(
        {name: (values if values is not None else [None] * n) for name, values in columns.items()},
        dtype=object,
    )
    y = pd.Series(labels, dtype=object, name=spec.target)
    order = frame[order_col].reset_index(drop=True) if order_col is not None else None
    mask = pd.Series(keep)
    x, y = x[mask].reset_index(drop=True), y[mask].reset_index(drop=True)
    order = order[mask].reset_index(drop=True) if order is not None else None
    if rules.duplicates == "drop":
        dup = x.assign(_y=y).astype(str).duplicated()
        if dup.any():
            count("duplicates", "dropped", None, int(dup.sum()))
            x, y = x[~dup].reset_index(drop=True), y[~dup].reset_index(drop=True)
            order = order[~dup].reset_index(drop=True) if order is not None else None
    x = _typed(x, inputs)
    y = _typed_labels(y)
    ignored = [c for c in frame.columns if c not in inputs and c not in (spec.target, order_col, "_ts")]
    report = {
        "rows_in": n,
        "rows_out": len(x),
        "rules": counts,
        "by_field": dict(sorted(by_field.items(), key=lambda kv: -(kv[1]["dropped"] + kv[1]["fixed"]))),
        "ignored_columns": [str(c) for c in ignored],
    }
    if len(x) == 0:
        raise ConfigError(f"no row is left after cleaning ({n} read): {counts}")
    return Cleaned(x, y, order, report)


def _typed(x: Any, inputs: dict[str, Any]) -> Any:
    """Number fields become float columns (missing: NaN, for imputers), others stay objects."""
    import pandas as pd

    out = {}
    for name, fld in inputs.items():
        col = x[name]
        if fld.type in ("number", "integer"):
            out[name] = pd.to_numeric(col, errors="coerce").astype(float)
        elif fld.type == "boolean":
            out[name] = col.map(lambda v: None if v is None else float(bool(v))).astype(float)
        else:
            out[name] = col
    return pd.DataFrame(out)


def _typed_labels(y: Any) -> Any:
    values = y.tolist()
    if all(isinstance(v, bool) for v in values) or not all(isinstance(v, int | float) for v in values):
        return y.astype(str) if not all(isinstance(v, bool) for v in values) else y
    if all(float(v).is_integer() for v in values):
        return y.astype("int64")
    return y.astype(float)


def _columns(frame: Any) -> str:
    cols = [str(c) for c in frame.columns]
    return ", ".join(cols[:20]) + (" ..." if len(cols) > 20 else "")
