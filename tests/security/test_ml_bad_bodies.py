"""Issue 11, finding 12 (classic models): bad bodies to /v1/ml answered 500 and wrote no log row (JSON
nested 100,000 levels deep to /predict), and the model list and card wrote no log row at all.

Secure outcome, on SQLite and PostgreSQL: every bad body to the ML routes (deep nesting, numbers out of
range, lone surrogates, NUL characters in names and values, non-UTF-8, CSV with NUL bytes, oversized
feedback, ...) gets a 4xx with OpenAI-style error JSON naming the field where there is one, and writes
exactly one log row; the gateway keeps answering and keeps logging (a row that cannot be stored would
fail the writer's whole batch). The list and card routes write their rows too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import skops.io as sio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, commit_project
from tests.security._ml import rows, small_model, spec

DEEP = 100_000
ROW = '{"f0": 12.5, "f1": 19.0, "f2": 80.0, "f3": 500.0}'


@pytest.fixture(scope="module")
def gw(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory, db_url: str
) -> Iterator[GatewayProcess]:
    model, _x = small_model()
    project = project_factory(files={"config/gateway.yaml": FAST_GATEWAY_YAML})
    folder = project / "config" / "models"
    folder.mkdir(parents=True)
    sio.dump(model, folder / "scored.skops")
    (folder / "scored.yaml").write_text(spec("scored", "scored.skops", "skops"), encoding="utf-8")
    commit_project(project, "scored")
    with gateway_factory(project, database_url=None if db_url.startswith("sqlite") else db_url) as gateway:
        yield gateway


# (route, raw body, content type, status, code, param)
CASES: list[tuple[str, bytes, str, int, str, str | None]] = [
    ("predict", b'{"records": ' + b"[" * DEEP + b"]" * DEEP + b"}", "json", 422, "too_deep", "records"),
    ("predict", b"[" * DEEP + b"]" * DEEP, "json", 422, "too_deep", None),
    ("predict", b'{"explain": false, "records": [' + b'{"a": ' * DEEP + b"1" + b"}" * DEEP + b"]}", "json",
     422, "too_deep", "records"),
    ("predict", b'{"records": [{"f0": ' + b"[" * 1000 + b"]" * 1000 + b"}]}", "json", 422, "data_quality",
     "rows[0].f0"),
    ("predict", b'{"records": [' + ROW.encode()[:-1] + b', "x": ' + b"{\"a\": " * 1000 + b"1" + b"}" * 1000
     + b"}]}", "json", 422, "data_quality", "rows[0].x"),
    ("predict", b'{"records": [' + b"[" * 1000 + b"]" * 1000 + b"]}", "json", 422, "data_quality", "rows[0].*"),
    ("predict", b'{"records": [{"f0": 1e400, "f1": 1, "f2": 1, "f3": 1}]}', "json", 422, "data_quality",
     "rows[0].f0"),
    ("predict", b'{"records": [{"f0": NaN, "f1": 1' + b"0" * 400 + b', "f2": 1, "f3": 1}]}', "json", 422,
     "data_quality", "rows[0].f0"),
    ("predict", b'{"records": [{"f0": NaN, "f1": ' + b"9" * 5000 + b"}]}", "json", 400, "invalid_json", None),
    ("predict", b'{"records": [{"f0": NaN, "f1": "\\ud800"}]}', "json", 400, "invalid_json", None),
    ("predict", b'{"records": [{"f0": 1, "f1": 1, "f2": 1, "f3": 1, "x\\u0000y": "\\u0000"}]}', "json", 422,
     "data_quality", "rows[0].x\x00y"),
    ("predict", b'{"records": [' + ROW.encode() + b'], "x\\u0000": 1}', "json", 422, "invalid_fields",
     "'x\\x00'"),
    ("predict", b'{"records": [' + ROW.encode() + b'], "explain": "yes"}', "json", 422, "invalid_fields",
     "explain"),
    ("predict", b'{"records": {"f0": 1}}', "json", 422, "invalid_fields", "records"),
    ("predict", b"\xff\xfe\x00", "json", 400, "invalid_json", None),
    ("predict", b"", "json", 400, "invalid_json", None),
    ("predict", b"[]", "json", 422, "invalid_body", None),
    ("invocations", b'{"instances": ' + b"[" * DEEP + b"]" * DEEP + b"}", "json", 422, "too_deep", "instances"),
    ("invocations", b"f0,f1,f2,f3\n1,2,3,\x004\n", "csv", 422, "data_quality", "rows[0].f3"),
    ("invocations", b"f0,f1,f2,f3\n" + b"1," * 3 + b"9" * 200_000 + b"\n", "csv", 422, "invalid_csv", None),
    ("feedback", b'{"feedback": ' + b"[" * DEEP + b"]" * DEEP + b"}", "json", 422, "too_deep", "feedback"),
    ("feedback", b'{"prediction_id": "req_\\u0000:0", "label": 1}', "json", 404, "prediction_not_found", None),
    ("feedback", b'{"prediction_id": {"a": 1}, "label": 1}', "json", 422, "invalid_feedback",
     "feedback[0].prediction_id"),
    ("feedback", b'{"feedback": [' + b",".join([b'{"prediction_id": "r:0", "label": 1}'] * 10_001) + b"]}",
     "json", 422, "invalid_fields", "feedback"),
]  # fmt: skip


def check(gw: GatewayProcess, r: httpx.Response, status: int, code: str, param: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/json")
    assert "Traceback" not in r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert (error["code"], error["param"]) == (code, param), error
    assert len(error["message"]) > 20
    request_id = r.headers["x-opsgate-request-id"]
    row = gw.log_row(request_id)
    assert gw.count_rows(request_id) == 1
    assert row["status"] == status and row["error_type"] == code
    return row


@pytest.mark.parametrize(("route", "raw", "kind", "status", "code", "param"), CASES)
def test_bad_bodies_are_4xx_naming_the_field_with_one_log_row(
    gw: GatewayProcess, route: str, raw: bytes, kind: str, status: int, code: str, param: str | None
) -> None:
    headers = {**gw.auth(), "content-type": "text/csv" if kind == "csv" else "application/json"}
    with gw.http(headers=headers) as http:
        r = http.post(f"/v1/ml/scored/{route}", content=raw)
        check(gw, r, status, code, param)
        # the gateway still answers and logs (a row that could not be stored would sink its batch)
        ok = http.post(
            "/v1/ml/scored/predict", json={"records": [{"f0": 12.5, "f1": 19.0, "f2": 80.0, "f3": 500.0}]}
        )
        assert ok.status_code == 200 and gw.log_row(ok.headers["x-opsgate-request-id"])["status"] == 200


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/ml/a%00b/predict", 400, "invalid_reference"),
        ("/v1/ml/scored@99999999999999999999/predict", 400, "invalid_reference"),  # beyond any version column
        ("/v1/ml/scored@%E2%80%8Bproduction/predict", 400, "invalid_reference"),
    ],
)
def test_bad_model_names_are_4xx_with_one_log_row(
    gw: GatewayProcess, path: str, status: int, code: str
) -> None:
    with gw.http(headers=gw.auth()) as http:
        r = http.post(path, json={"records": rows(small_model()[1], 1)})
        row = check(gw, r, status, code, "model")
        assert row["model"] is None or "\x00" not in row["model"]


def test_model_list_and_card_write_their_log_rows(gw: GatewayProcess) -> None:
    with gw.http(headers=gw.auth()) as http:
        for path, route in (("/v1/ml", "/v1/ml"), ("/v1/ml/scored", "/v1/ml/{name}")):
            r = http.get(path)
            assert r.status_code == 200
            row = gw.log_row(r.headers["x-opsgate-request-id"])
            assert row["status"] == 200 and row["route"] == route
        missing = http.get("/v1/ml/nope")
        check(gw, missing, 404, "model_not_found", "model")
        unauthenticated = httpx.get(gw.root_url + "/v1/ml")
        check(gw, unauthenticated, 401, "invalid_api_key", None)


SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
)
FIELD_NAMES = st.sampled_from(["f0", "f1", "f2", "f3", "explain", "records", "x\x00", ""])
ROWS = st.lists(st.dictionaries(FIELD_NAMES, JSON, max_size=5) | JSON, max_size=4)
BODIES = st.one_of(
    JSON,
    st.fixed_dictionaries({"records": ROWS}, optional={"explain": JSON}),
    st.fixed_dictionaries({}, optional={"dataframe_records": ROWS, "instances": JSON, "inputs": JSON,
                                         "dataframe_split": JSON, "params": JSON}),
    st.fixed_dictionaries({}, optional={"feedback": JSON, "prediction_id": JSON, "label": JSON}),
)  # fmt: skip


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(route=st.sampled_from(["predict", "invocations", "feedback"]), body=BODIES)
def test_generated_bodies_never_get_a_5xx_and_always_one_log_row(
    gw: GatewayProcess, route: str, body: Any
) -> None:
    raw = json.dumps(body, allow_nan=True).encode()
    with gw.http(headers={**gw.auth(), "content-type": "application/json"}) as http:
        r = http.post(f"/v1/ml/scored/{route}", content=raw)
    assert r.status_code < 500, (raw[:300], r.text[:300])
    if r.status_code >= 400:
        assert r.json()["error"]["message"]
    request_id = r.headers["x-opsgate-request-id"]
    assert gw.log_row(request_id)["status"] == r.status_code and gw.count_rows(request_id) == 1
