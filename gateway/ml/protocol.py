"""Request bodies -> rows (a list of {column: value}), for opsgate's own endpoint and MLflow's.

MLflow's scoring protocol (`POST /invocations`), so MLflow serving clients can switch by changing the URL:
    {"dataframe_split": {"columns": [...], "data": [[...], ...]}}      pandas "split" orient
    {"dataframe_records": [{col: value, ...}, ...]}                     pandas "records" orient
    {"instances": [{...}, ...] | [[...], ...]}                           TF-serving row format
    {"inputs": {col: [values], ...} | [{...}, ...] | [[...], ...]}       TF-serving columnar format
    text/csv with a header row
An optional "params" object is accepted and ignored (sklearn models take no inference params).
Positional rows (lists) follow the model's feature order.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

import orjson

from gateway.errors import InvalidFields, InvalidJSON, OpsgateError
from gateway.ml.schema import coerce_csv_value
from gateway.ml.spec import ModelSpec

MAX_DEPTH = 1024  # orjson's limit; a request body needs 4 ({"dataframe_split": {"data": [[...]]}})
MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
Rows = list[Any]


def loads(raw: bytes) -> Any:
    """JSON, also with NaN/Infinity literals (Python's json writes them), so they reach the data checks.
    Nesting deeper than orjson's limit (1,024 levels) is a 422 naming the top-level field; shallower
    nesting inside rows is refused by the data checks (rows hold flat values), which never repr it."""
    if not raw.strip():
        raise InvalidJSON("the request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _lenient(raw, exc)


def _lenient(raw: bytes, exc: orjson.JSONDecodeError) -> Any:
    """The standard library's parser, for the NaN/Infinity literals orjson refuses."""
    reason = str(exc).split(":", 1)[0]
    if "depth" in reason or "recursion" in reason.lower():
        raise _too_deep(raw, exc) from exc
    try:
        data = json.loads(raw, parse_int=_int)
    except RecursionError:
        raise _too_deep(raw, exc) from exc
    except (ValueError, UnicodeDecodeError) as err:
        detail = reason if isinstance(err, json.JSONDecodeError) else str(err).split(":", 1)[0]
        raise InvalidJSON(f"the request body is not valid JSON ({detail})") from exc
    try:  # what the standard parser lets through must still be loggable (the log writers use orjson)
        orjson.dumps(data)
    except orjson.JSONEncodeError as bad:
        raise InvalidJSON(f"the request body holds a value that cannot be stored ({bad})") from exc
    return data


def _too_deep(raw: bytes, exc: orjson.JSONDecodeError) -> InvalidFields:
    field = _top_level_key(raw, exc.pos)
    return InvalidFields(
        f"{field or 'the request body'}: nested too deep (more than {MAX_DEPTH} levels, at character"
        f' {exc.pos}); send flat rows, e.g. {{"records": [{{"column": 1.5}}]}}',
        param=field,
        code="too_deep",
    )


def _int(text: str) -> int | float:
    """Integers as orjson reads them: 64-bit ones exactly, larger ones as floats (inf beyond the range
    of a double, which the data checks refuse as not finite)."""
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(text)


_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}:,]')
KEY_SCAN_BYTES = 65536


def _top_level_key(raw: bytes, pos: int) -> str | None:
    """The key of the body's top-level object under which position `pos` lies (scans at most 64 KiB)."""
    if pos > KEY_SCAN_BYTES or not raw.lstrip().startswith(b"{"):
        return None
    depth, key, last_string = 0, None, None
    for token in _TOKEN.finditer(raw, 0, pos):
        text = token.group()
        if text in (b"{", b"["):
            depth += 1
        elif text in (b"}", b"]"):
            depth -= 1
        elif text == b":" and depth == 1:
            key = last_string
        elif text.startswith(b'"'):
            last_string = text
    try:
        return str(json.loads(key)) if key is not None else None
    except ValueError:
        return None


def field_name(name: str) -> str:
    """A caller's field name as a message and the log show it: short and printable (no NUL), else repr'd."""
    return name if len(name) <= 64 and name.isprintable() else repr(name[:64])


def _rows_list(value: Any, param: str) -> Rows:
    if not isinstance(value, list):
        raise InvalidFields(f"{param}: must be a list of rows", param=param)
    if not value:
        raise InvalidFields(f"{param}: send at least one row", param=param)
    return value


def positional(rows: list[Any], spec: ModelSpec, param: str) -> Rows:
    """Rows given as lists of values, in the model's feature order."""
    order = spec.feature_order or spec.feature_names
    out: Rows = []
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            return rows  # mixed shapes: leave it to the row checks, which name the row
        if len(row) != len(order):
            raise InvalidFields(
                f"{param}[{i}]: has {len(row)} values; positional rows need {len(order)} in the order"
                f" {order}",
                param=f"{param}[{i}]",
            )
        out.append(dict(zip(order, row, strict=True)))
    return out


def loads_or_none(raw: bytes) -> Any:
    """`loads`, or None when the body is not JSON (the caller parses again to raise the error in turn)."""
    try:
        return loads(raw)
    except OpsgateError:
        return None


def end_user(data: Any) -> str | None:
    """The predict body's `user` (the application's end-user id, as in OpenAI's API): with the key's
    principal, a rollout's sticky assignment key. None when absent or not a short string."""
    user = data.get("user") if isinstance(data, dict) else None
    return user if isinstance(user, str) and 0 < len(user) <= 200 else None


def predict_rows(data: Any) -> tuple[Rows, bool]:
    """opsgate's own body: {"records": [...], "explain": false, "user": "..."}."""
    if not isinstance(data, dict):
        raise InvalidFields("the request body must be a JSON object with records", code="invalid_body")
    unknown = set(data) - {"records", "explain", "user"}
    if unknown:
        raise InvalidFields(
            f"{field_name(sorted(unknown)[0])}: unknown field; send records (a list of rows) and optionally"
            " explain and user",
            param=field_name(sorted(unknown)[0]),
        )
    if "user" in data and end_user(data) is None:
        raise InvalidFields("user: must be a string of 1 to 200 characters", param="user")
    if "records" not in data:
        raise InvalidFields("records: this field is required (a list of rows)", param="records")
    explain = data.get("explain", False)
    if not isinstance(explain, bool):
        raise InvalidFields("explain: must be true or false", param="explain")
    return _rows_list(data["records"], "records"), explain


def mlflow_rows(data: Any, spec: ModelSpec) -> Rows:
    if not isinstance(data, dict):
        raise InvalidFields("the body must be a JSON object with one of " + ", ".join(MLFLOW_KEYS))
    present = [k for k in MLFLOW_KEYS if k in data]
    extra = set(data) - set(MLFLOW_KEYS) - {"params"}
    if len(present) != 1 or extra:
        raise InvalidFields(
            "the body must have exactly one of dataframe_split, dataframe_records, instances or inputs"
            + (f" (unknown field: {field_name(sorted(extra)[0])})" if extra else ""),
            code="invalid_mlflow_input",
        )
    key = present[0]
    value = data[key]
    if key == "dataframe_split":
        return _split(value, spec)
    if key == "inputs" and isinstance(value, dict):
        return _columnar(value)
    rows = _rows_list(value, key)
    return positional(rows, spec, key)


def _split(value: Any, spec: ModelSpec) -> Rows:
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise InvalidFields(
            "dataframe_split: needs columns and data (a list of rows)", param="dataframe_split"
        )
    data = _rows_list(value["data"], "dataframe_split.data")
    columns = value.get("columns")
    if columns is None:
        return positional(data, spec, "dataframe_split.data")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InvalidFields(
            "dataframe_split.columns: must be a list of names", param="dataframe_split.columns"
        )
    out: Rows = []
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            raise InvalidFields(
                f"dataframe_split.data[{i}]: must be a list of {len(columns)} values (one per column)",
                param=f"dataframe_split.data[{i}]",
            )
        out.append(dict(zip(columns, row, strict=True)))
    return out


def _columnar(value: dict[str, Any]) -> Rows:
    lengths = {len(v) if isinstance(v, list) else -1 for v in value.values()}
    if not value or len(lengths) != 1 or -1 in lengths or 0 in lengths:
        raise InvalidFields("inputs: columnar inputs need one non-empty list per column, all of one length")
    (n,) = lengths
    return [{col: values[i] for col, values in value.items()} for i in range(n)]


def csv_rows(raw: bytes, spec: ModelSpec) -> Rows:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJSON("the CSV body is not UTF-8") from exc
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
        if not header:
            raise InvalidFields("the CSV body needs a header row naming the columns", code="invalid_csv")
        out = _csv_data(reader, header, spec)
    except csv.Error as exc:  # NUL bytes, a field over the csv module's size limit
        raise InvalidFields(
            f"the CSV body cannot be read at line {reader.line_num} ({exc})", code="invalid_csv"
        ) from exc
    if not out:
        raise InvalidFields("the CSV body has no data rows", code="invalid_csv")
    return out


def _csv_data(reader: Any, header: list[str], spec: ModelSpec) -> Rows:
    out: Rows = []
    for i, cells in enumerate(reader):
        if not cells:
            continue
        if len(cells) != len(header):
            raise InvalidFields(
                f"CSV row {i}: has {len(cells)} cells for {len(header)} columns", code="invalid_csv"
            )
        out.append({c: coerce_csv_value(spec.inputs.get(c), v) for c, v in zip(header, cells, strict=True)})
    return out
