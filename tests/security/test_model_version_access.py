"""Issue 11, finding 6 (classic models): every registered version was servable to any key by number or
`latest`, so a version nobody approved (a fresh sync, a dirty one) answered application traffic.

Secure outcome: an application key is served a model version only while it is approved (a protected
alias points at it), on /predict, /invocations and the model card, however it names it; `latest`, an
unprotected alias (`beta`, `canary`, which a prompt engineer moves at once) or the number of an
unapproved version is a 403 naming what to do, with one log row. The prompt-engineer, approver and admin
roles reach any version (evaluation), and so does a key granted a selector explicitly
(`--allow model:NAME@latest`). The card shows an application key only the aliases it may name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import skops.io as sio

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, commit_project
from tests.security._ml import make_key, rows, small_model, spec, wait_until


@pytest.fixture(scope="module")
def served(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory
) -> Iterator[tuple[GatewayProcess, dict[str, str], list[dict[str, float]]]]:
    """`scored`: version 1 (bootstrapped to production), version 2 synced (latest) and put behind the
    unprotected alias `beta` by a prompt engineer."""
    model, x = small_model()
    project = project_factory(files={"config/gateway.yaml": FAST_GATEWAY_YAML})
    folder = project / "config" / "models"
    folder.mkdir(parents=True)
    sio.dump(model, folder / "scored.skops")
    (folder / "scored.yaml").write_text(spec("scored", "scored.skops", "skops"), encoding="utf-8")
    commit_project(project, "scored v1")
    with gateway_factory(project) as gw:
        keys = {
            "engineer": make_key(gw, "engineer", "prompt-engineer"),
            "app": make_key(gw, "app", "app"),
            "granted": make_key(gw, "granted", "app", "model:scored@latest"),
        }
        write_version_2(folder, x)
        commit_project(project, "scored v2")
        assert "registered model:scored@2" in gw.cli("sync", key=keys["engineer"]).stdout
        for alias in ("beta", "canary"):  # unprotected: they move at once
            gw.cli("promote", "model:scored@2", "--to", alias, key=keys["engineer"])
        with gw.http(headers=gw.auth()) as http:
            wait_until(lambda: http.get("/v1/ml/scored@beta").status_code == 200)
        yield gw, keys, rows(x)


def write_version_2(folder: Path, x: Any) -> None:
    from sklearn.linear_model import LogisticRegression

    flipped = LogisticRegression(max_iter=5000).fit(x, (x[:, 0] < 14).astype(int))  # a different model
    sio.dump(flipped, folder / "scored.skops")


def call(http: httpx.Client, target: str, route: str, body: list[dict[str, float]]) -> httpx.Response:
    if route == "predict":
        return http.post(f"/v1/ml/{target}/predict", json={"records": body})
    if route == "invocations":
        return http.post(f"/v1/ml/{target}/invocations", json={"dataframe_records": body})
    return http.get(f"/v1/ml/{target}")


ROUTES = ("predict", "invocations", "card")
ALLOWED = ("scored", "model:scored", "scored@production", "scored@1")
CANDIDATES = ("scored@2", "scored@latest", "scored@beta", "scored@canary")


def test_app_keys_reach_only_their_aliases(served: tuple[GatewayProcess, dict[str, str], Any]) -> None:
    gw, keys, body = served
    with gw.http(headers=gw.auth(keys["app"])) as http:
        for route in ROUTES:
            for target in ALLOWED:
                r = call(http, target, route, body)
                assert r.status_code == 200, (target, route, r.text)
                assert r.headers["x-opsgate-versions"].startswith("model:scored@1#")
            for target in CANDIDATES:
                r = call(http, target, route, body)
                assert r.status_code == 403, (target, route, r.text)
                error = r.json()["error"]
                assert error["code"] == "version_not_approved" and error["param"] == "model"
                assert (
                    "prompt-engineer" in error["message"] and "--allow 'model:scored@*'" in error["message"]
                )
                request_id = r.headers["x-opsgate-request-id"]
                assert gw.log_row(request_id)["status"] == 403 and gw.count_rows(request_id) == 1
        card = http.get("/v1/ml/scored").json()["opsgate"]
        assert card["aliases"] == {"production": 1}  # latest, beta and canary are not shown to an app key
        listed = http.get("/v1/ml").json()["data"]
        assert [c["opsgate"]["aliases"] for c in listed] == [{"production": 1}]


def test_a_grant_on_the_key_reaches_that_selector_only(
    served: tuple[GatewayProcess, dict[str, str], Any],
) -> None:
    gw, keys, body = served
    with gw.http(headers=gw.auth(keys["granted"])) as http:
        r = call(http, "scored@latest", "predict", body)
        assert r.status_code == 200 and r.json()["version"] == 2
        assert call(http, "scored", "predict", body).json()["version"] == 1
        assert call(http, "scored@1", "predict", body).status_code == 200  # approved
        for target in ("scored@2", "scored@beta", "scored@canary"):
            assert call(http, target, "predict", body).status_code == 403, target


@pytest.mark.parametrize("who", ["engineer", "admin"])
def test_evaluating_roles_reach_every_version(
    served: tuple[GatewayProcess, dict[str, str], Any], who: str
) -> None:
    gw, keys, body = served
    key = gw.admin_key if who == "admin" else keys[who]
    with gw.http(headers=gw.auth(key)) as http:
        for route in ROUTES:
            for target in ALLOWED + CANDIDATES:
                r = call(http, target, route, body)
                assert r.status_code == 200, (target, route, r.text)
        aliases = http.get("/v1/ml/scored").json()["opsgate"]["aliases"]
        assert set(aliases) == {"latest", "production", "beta", "canary"}
        assert call(http, "scored@beta", "predict", body).json()["version"] == 2
