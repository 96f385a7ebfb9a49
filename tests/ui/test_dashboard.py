"""The dashboard (/ui) on a real gateway: sign-in, roles, CSRF and cookies over plain HTTP, then a person's
path through it in Debian's headless chromium (Playwright): sign in, find a version, open a diff, approve a
promotion (applied, and in the audit log), open a request's lineage, with no console error, keyboard and
labels on the approval flow, and a screenshot of each page (test-artifacts/ui/, ignored by git).

One gateway for the module: a RAG prompt `kbqa` (template in a referenced file) on a router whose first
deployment fails once (a fallback), v1 served; v2 committed by Alice, evaluated against v1 and requested
for production by Carol (a prompt engineer); Bob (an approver) decides.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, commit_project, deployment
from tests.fakes.upstream import FakeUpstream, Hit

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
ALICE = ("Alice Author", "alice@example.com")
KBQA = """\
name: kbqa
router: tagged
retrieval: {index: kb, top_k: 2, mode: dense}
messages:
  - role: system
    file: kbqa_system.j2
"""
DESCRIPTION = "description: Answers with the second reply tag.\n"
SYSTEM_V1 = "Reply tag: TAG-ONE. Answer from this context.\n{% for c in context %}[{{ c.id }}] {{ c.text }}\n{% endfor %}"
SYSTEM_V2 = SYSTEM_V1.replace("TAG-ONE", "TAG-TWO")
POLICY = """\
rules:
  - name: everyone
    match: {roles: [app, admin]}
    checks:
      - {type: injection, mode: flag}
      - {type: token_cap, max_input_tokens: 8000}
"""
FILES = {
    "config/gateway.yaml": FAST_GATEWAY_YAML,
    "config/policies.yaml": POLICY,
    "prompts/kbqa.yaml": KBQA,
    "prompts/kbqa_system.j2": SYSTEM_V1,
    "config/indexes/kb.yaml": "name: kb\nsource: {type: files, paths: ['kb/*.md']}\n"
    "embedder: {type: router, router: vectors}\n",
    "kb/billing.md": "# Billing\nBilling questions go to the billing team.\n",
    "kb/shipping.md": "# Shipping\nOrders ship within two days.\n",
    "evals/kbqa_tags.yaml": "name: kbqa_tags\ntarget: prompt:kbqa@production\ndataset: evals/kbqa.jsonl\n"
    "metrics: [string_presence]\n",
    "evals/kbqa.jsonl": '{"id": "ship", "question": "How fast do orders ship?", "reference": "TAG-ONE"}\n'
    '{"id": "bill", "question": "Who answers billing questions?", "reference": "TAG-ONE"}\n'
    '{"id": "other", "question": "Anything else?", "reference": "context"}\n',
}
SECRET_MARKERS = ("sk-og-", "sk-test-")


async def mode_system(hit: Hit) -> web.StreamResponse | None:
    """`uisys`: a chat answer that quotes the system message (so v1 and v2 answer differently)."""
    if hit.endpoint != "chat/completions":
        return None
    system = next((m["content"] for m in hit.body["messages"] if m.get("role") == "system"), "")
    return await hit.reply(content=str(system)[:200])


def _key(gw: GatewayProcess, name: str, role: str) -> str:
    """A key made by the admin through the admin API (the promotions are requested by another key,
    Carol's: four-eyes also refuses keys the requester created)."""
    with gw.http() as api:
        made = api.post(
            "/admin/keys",
            json={"name": name, "roles": [role], "principal": f"{name}@example.com"},
            headers=gw.auth(),
        )
    assert made.status_code == 201, made.text
    gw.wait_for_key(made.json()["key"])
    return str(made.json()["key"])


@pytest.fixture(scope="module")
def gw(
    fake_upstream: FakeUpstream, project_factory: ProjectFactory, gateway_factory: GatewayFactory
) -> Iterator[GatewayProcess]:
    fake_upstream.add_mode("uisys", mode_system)
    routers: dict[str, Any] = {
        "tagged": {
            "deployments": [
                deployment("first", fake_upstream.url("flaky-1-ui")),
                deployment("second", fake_upstream.url("uisys")),
            ]
        },
        "vectors": {"kind": "embedding", "deployments": [deployment("up", fake_upstream.url("ok"))]},
    }
    project = project_factory(routers, files=FILES)
    with gateway_factory(project) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def world(gw: GatewayProcess) -> dict[str, Any]:
    """Traffic on v1, v2 committed by Alice and synced, an eval of v2 against production, a pending
    promotion requested by Carol (prompt engineer), keys for Bob (approver) and an app, monitor reports."""
    with gw.http() as http:
        rids = []
        for text in ("How fast do orders ship?", "Who answers billing questions?"):
            r = http.post(
                "/v1/chat/completions",
                json={"model": "kbqa", "messages": [{"role": "user", "content": text}]},
                headers=gw.auth(),
            )
            assert r.status_code == 200, r.text
            rids.append(r.headers["x-opsgate-request-id"])
        (gw.project_dir / "prompts" / "kbqa_system.j2").write_text(SYSTEM_V2, encoding="utf-8")
        (gw.project_dir / "prompts" / "kbqa.yaml").write_text(
            KBQA.replace("router:", DESCRIPTION + "router:")
        )
        commit_project(gw.project_dir, "kbqa: new reply tag", author=ALICE)
        r = http.post("/admin/sync", json={}, headers=gw.auth())
        assert r.status_code == 200 and [v.split("#")[0] for v in r.json()["registered"]] == [
            "prompt:kbqa@2"
        ], r.text
        done = gw.cli(
            "eval", "run", "evals/kbqa_tags.yaml", "--target", "prompt:kbqa@2", "--baseline", "production",
            "--url", gw.root_url, "--no-progress", key=gw.admin_key,
        )  # fmt: skip
        assert done.returncode in (0, 1), done.stderr
        carol = _key(gw, "carol", "prompt-engineer")
        r = http.post(
            "/admin/promotions", json={"ref": "prompt:kbqa@2", "to": "production"}, headers=gw.auth(carol)
        )
        assert r.status_code == 201 and r.json()["state"] == "pending", r.text
        promotion = r.json()["id"]
    return {
        "requests": rids,
        "carol": carol,
        "promotion": promotion,
        "bob": _key(gw, "bob", "approver"),
        "app": _key(gw, "appuser", "app"),
        "reports_at": _monitor_reports(gw),
    }


def _monitor_reports(gw: GatewayProcess) -> datetime:
    """Reports as the ML monitor stores them (gateway/ml/monitor.py) for model:churn@3: two drift reports
    five minutes apart, one fairness, one accuracy. Returns the time of the newest."""
    from sqlalchemy.orm import Session

    from gateway.db.generation import utcnow
    from gateway.ml.tables import MLReport

    now = utcnow().replace(microsecond=0)
    fairness = {"attributes": {"sex": {"disparate_impact": 0.62, "breaches": ["disparate_impact"]}}}
    reports = [
        ("drift", 300, False, {"share": 0.25, "dataset_drift": False}),
        ("drift", 0, True, {"share": 0.75, "dataset_drift": True}),
        ("fairness", 0, True, fairness),
        ("accuracy", 0, False, {"windows": {"last_200": {"n": 250, "accuracy": 0.91}}}),
    ]
    with Session(gw._db()) as s:
        for kind, ago, breached, result in reports:
            s.add(
                MLReport(
                    ts=now - timedelta(seconds=ago),
                    name="churn",
                    version=3,
                    kind=kind,
                    breached=breached,
                    result=result,
                )
            )
        s.commit()
    return now


# -- plain HTTP: sign-in, roles, CSRF, cookies --------------------------------------------------------


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def sign_in(http: httpx.Client, key: str, target: str = "/ui/approvals") -> httpx.Response:
    form = http.get("/ui/login")
    return http.post("/ui/login", data={"key": key, "csrf": _csrf(form.text), "next": target})


def _set_cookie(response: httpx.Response, name: str) -> str:
    line = next(h for h in response.headers.get_list("set-cookie") if h.startswith(name + "="))
    return line


def test_pages_need_a_session_and_the_session_cookie_is_httponly_strict_and_holds_no_key(
    gw: GatewayProcess, world: dict[str, Any]
) -> None:
    with gw.http() as http:
        r = http.get("/ui/operator?status=error")
        assert r.status_code == 303
        assert r.headers["location"] == "/ui/login?next=%2Fui%2Foperator%3Fstatus%3Derror"
        r = sign_in(http, world["bob"], "/ui/operator?status=error")
        assert r.status_code == 303 and r.headers["location"] == "/ui/operator?status=error"
        cookie = _set_cookie(r, "opsgate_ui")
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/ui"} <= flags
        assert world["bob"] not in cookie and world["bob"][8:] not in cookie
        page = http.get("/ui/approvals")
        assert page.status_code == 200
        assert page.headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'")
        assert world["bob"] not in page.text and not any(m in page.text for m in SECRET_MARKERS)
        assert "Review prompt:kbqa@2 → production" in page.text
        # a forged or edited cookie is no session
        value = cookie.split(";")[0].split("=", 1)[1]
        forged = value.replace(value.split(".")[0], "key_admin", 1)
    with gw.http(cookies={"opsgate_ui": forged}) as other:
        assert other.get("/ui/approvals").status_code == 303


def test_a_wrong_key_is_refused_and_a_key_without_a_governance_role_gets_a_403_page(
    gw: GatewayProcess, world: dict[str, Any]
) -> None:
    with gw.http() as http:
        r = sign_in(http, "sk-og-not-a-key")
        assert r.status_code == 401 and "unknown or was revoked" in r.text
        assert "sk-og-not-a-key" not in r.text
        r = sign_in(http, world["app"])
        assert r.status_code == 403 and r.headers["content-type"].startswith("text/html")
        assert "the dashboard needs one of the roles prompt-engineer, approver, admin" in r.text
        assert "opsgate_ui=" not in "".join(r.headers.get_list("set-cookie"))
        assert http.get("/ui/risk").status_code == 303  # still not signed in


def test_posts_without_the_csrf_token_are_refused(gw: GatewayProcess, world: dict[str, Any]) -> None:
    with gw.http() as http:
        http.get("/ui/login")
        r = http.post("/ui/login", data={"key": world["bob"]})  # no token: no sign-in
        assert r.status_code == 403 and "csrf_failed" in r.text
        assert sign_in(http, world["bob"]).status_code == 303
        token = http.cookies["opsgate_ui"]
        pid = world["promotion"]
        for data in ({"reason": "no"}, {"reason": "no", "csrf": "forged"}):
            r = http.post(f"/ui/promotions/{pid}/reject", data=data)
            assert r.status_code == 403 and "csrf_failed" in r.text
        with gw.http() as admin_api:
            state = admin_api.get(f"/admin/promotions/{pid}", headers=gw.auth()).json()["state"]
        assert state in (
            "pending",
            "applied",
        )  # never rejected by a forged form (the browser test applies it)
        # sign-out needs the token too, and ends the session
        assert http.post("/ui/logout", data={}).status_code == 403
        page = http.get("/ui/approvals")
        r = http.post("/ui/logout", data={"csrf": _csrf(page.text)})
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        assert "max-age=0" in _set_cookie(r, "opsgate_ui").lower()
        assert http.get("/ui/approvals").status_code == 303
    with gw.http(cookies={"opsgate_ui": token}) as replay:
        assert replay.get("/ui/approvals").status_code == 303  # the old token is signed out


# -- in the browser -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(
            "opsgate: the dashboard test needs Debian's chromium: run 'sudo apt-get install -y chromium'"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        yield b
        b.close()


def test_an_approver_signs_in_reads_the_diff_and_evidence_approves_and_follows_a_request(
    gw: GatewayProcess, world: dict[str, Any], browser: Any
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    outside: list[str] = []
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(10_000)
    page.on(
        "console",
        lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None,
    )
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.on("request", lambda r: None if r.url.startswith(gw.root_url) else outside.append(r.url))

    def shot(name: str) -> None:
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    # sign in
    page.goto(gw.root_url + "/ui/approvals")
    assert page.url.startswith(gw.root_url + "/ui/login")
    shot("01-sign-in")
    page.get_by_label("API key").fill(world["bob"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/approvals")
    assert page.get_by_role("heading", name="Pending promotions").is_visible()
    page.keyboard.press("Tab")  # the first stop skips the navigation
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    assert page.get_by_role("link", name="Approvals").get_attribute("aria-current") == "page"
    shot("02-approvals")

    # find the version and open a diff between v1 and v2
    page.get_by_role("link", name="Artifacts").click()
    shot("03-artifacts")
    page.get_by_role("link", name="prompt:kbqa").click()
    versions = page.locator("#versions")
    assert "alice@example.com" in versions.inner_text() and "kbqa: new reply tag" in versions.inner_text()
    page.get_by_label("From version").select_option("prompt:kbqa@1")
    page.get_by_label("To version").select_option("prompt:kbqa@2")
    shot("04-artifact")
    page.get_by_role("button", name="Show diff").click()
    page.wait_for_url("**/ui/diff?**")
    diff = page.get_by_label("Diff of kbqa_system.j2")
    assert "-Reply tag: TAG-ONE" in diff.inner_text() and "+Reply tag: TAG-TWO" in diff.inner_text()
    shot("05-diff")

    # the promotion: its evidence, then approve with the keyboard
    page.get_by_role("link", name="Approvals").click()
    page.get_by_role("link", name="Review prompt:kbqa@2 → production").click()
    assert page.locator("h1").inner_text().startswith("Promotion of prompt:kbqa@2"), page.locator(
        "main"
    ).inner_text()
    assert page.locator("#promotion-state").inner_text() == "pending"
    body = page.locator("main").inner_text()
    assert "+Reply tag: TAG-TWO" in body  # the referenced file's diff
    assert "+description: Answers with the second reply tag." in body  # the spec's
    changed = page.get_by_role("heading", name="Changed cases").locator("xpath=following-sibling::table[1]")
    assert re.search(r"ship\s+string_presence\s+1\.000\s+0\.000\s+-1\.000", changed.inner_text())
    shot("06-promotion")
    page.get_by_role("link", name=re.compile(r"^run_")).first.click()  # the candidate's eval run
    assert page.locator("h1").inner_text().startswith("Eval run run_")
    assert page.locator("figure.svg svg").count() >= 3  # the comparison, string_presence, latency_ms
    assert page.get_by_role("heading", name="Candidate against baseline").is_visible()
    shot("07-eval-run")
    page.go_back()
    approve = page.get_by_role("button", name="Approve promotion")
    reject = page.get_by_role("button", name="Reject promotion")
    assert approve.is_visible() and reject.is_visible()
    assert page.get_by_label("Reason for rejecting (required)").get_attribute("required") is not None
    page.get_by_label("Approval comment (optional)").focus()
    page.keyboard.type("diff and eval read")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Approve promotion"
    page.keyboard.press("Enter")
    page.wait_for_url("**?done=approved")
    assert page.locator("#promotion-state").inner_text() == "applied"
    assert page.get_by_role("status").inner_text().startswith("Your decision was recorded")
    shot("08-approved")
    with gw.http() as http:
        served = http.get("/admin/artifacts/prompt/kbqa", headers=gw.auth()).json()["aliases"]
    assert served["production"] == 2

    # the audit log shows it, and the chain verifies
    page.get_by_role("link", name="Risk & compliance").click()
    page.locator("#chart-drift[data-ready='1'] .uplot").wait_for()
    assert page.locator("#audit-verify").inner_text().startswith("The hash chain verifies")
    audit = page.locator("#audit tbody tr").all_inner_texts()
    assert any("bob@example.com" in row and "prompt:kbqa" in row for row in audit), audit
    decided = page.locator("#policy-decisions").inner_text()
    assert re.search(r"prompt:kbqa@1\s+injection\s+input\s+allowed\s+\d+", decided), decided
    shot("09-risk")

    # operations: charts drawn by uPlot, then one request's lineage
    page.get_by_role("link", name="Operations").click()
    page.locator("#chart-requests[data-ready='1'] .uplot").wait_for()
    assert "prompt:kbqa@1" in page.locator("#traffic").inner_text()
    page.locator("#chart-latency .u-legend").wait_for()
    shot("10-operator")
    page.get_by_label("Request id").fill(world["requests"][0])
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name=world["requests"][0]).click()
    versions_text = page.locator("#lineage-versions").inner_text()
    assert re.search(r"prompt:kbqa@1\s+[0-9a-f]{12}", versions_text), versions_text
    assert "index:kb@1" in versions_text and "router:tagged@1" in versions_text
    assert page.locator("#chunks tbody tr").count() == 2
    decisions = page.locator("#decisions tbody tr").all_inner_texts()
    assert any(re.match(r"injection\teveryone\tinput\tallowed\t\d", d) for d in decisions), decisions
    attempts = page.locator("#attempts tbody tr").all_inner_texts()
    assert len(attempts) == 2 and "first" in attempts[0] and "ok" in attempts[1], attempts
    assert "How fast do orders ship" not in page.content()  # the question is never on a page
    shot("11-lineage")

    page.close()
    assert problems == []
    assert outside == []


def test_revoking_the_key_ends_its_sessions(gw: GatewayProcess, world: dict[str, Any]) -> None:
    with gw.http() as admin:
        made = admin.post(
            "/admin/keys", json={"name": "dave", "roles": ["prompt-engineer"]}, headers=gw.auth()
        ).json()
        gw.wait_for_key(made["key"])
        with gw.http() as http:
            assert sign_in(http, made["key"]).status_code == 303
            assert http.get("/ui/artifacts").status_code == 200
            assert admin.delete(f"/admin/keys/{made['id']}", headers=gw.auth()).status_code == 200
            gw.wait_for_key(made["key"], valid=False)
            r = http.get("/ui/artifacts")
            assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")


def test_the_risk_page_charts_the_monitor_reports_of_each_model_version(
    gw: GatewayProcess, world: dict[str, Any]
) -> None:
    """The newest figures per version in the table, every report as a point of the version's series."""
    import orjson

    now = world["reports_at"]
    with gw.http() as http:
        sign_in(http, world["bob"])
        page = http.get("/ui/risk").text
    row = re.search(r"model:churn@3</a></th>(.*?)</tr>", page, re.S)
    assert row, page
    cells = re.findall(r"<td>(.*?)</td>", row.group(1), re.S)
    assert cells[:3] == ["0.750", "0.620", "0.910"]
    assert "drift" in cells[3] and "fairness" in cells[3] and "accuracy" not in cells[3]
    drift = orjson.loads(re.search(r'id="chart-drift-data">(.*?)</script>', page, re.S).group(1))
    t0, t1 = (now - timedelta(seconds=300)).timestamp(), now.timestamp()
    assert drift == {
        "x": [t0, t1],
        "series": [{"label": "model:churn@3", "points": [[t0, 0.25], [t1, 0.75]]}],
    }


def test_four_eyes_holds_on_the_dashboard_and_a_rejection_needs_a_reason(
    gw: GatewayProcess, world: dict[str, Any]
) -> None:
    """Alice wrote v2: her approval is refused with the service's own message; Bob rejects with a reason,
    and the promotion and the audit log say so."""
    with gw.http() as api:
        r = api.post(
            "/admin/promotions",
            json={"ref": "prompt:kbqa@2", "to": "staging"},
            headers=gw.auth(world["carol"]),
        )
        assert r.status_code == 201 and r.json()["state"] == "pending", r.text
        pid = r.json()["id"]
    alice = _key(gw, "alice", "approver")
    with gw.http() as http:
        sign_in(http, alice)
        page = http.get(f"/ui/promotions/{pid}")
        r = http.post(f"/ui/promotions/{pid}/approve", data={"csrf": _csrf(page.text), "comment": "mine"})
        assert r.status_code == 403 and "author" in r.text, r.text
    with gw.http() as http:
        sign_in(http, world["bob"])
        csrf = _csrf(http.get(f"/ui/promotions/{pid}").text)
        r = http.post(f"/ui/promotions/{pid}/reject", data={"csrf": csrf, "reason": "  "})
        assert r.status_code == 400 and "a rejection needs a reason" in r.text
        r = http.post(f"/ui/promotions/{pid}/reject", data={"csrf": csrf, "reason": "tag two is not ready"})
        assert r.status_code == 303 and r.headers["location"] == f"/ui/promotions/{pid}?done=rejected"
        page = http.get(r.headers["location"]).text
        assert 'id="promotion-state">rejected<' in page and "tag two is not ready" in page
        risk = http.get("/ui/risk").text
    entry = re.search(r"<tr><td>\d+</td>(?:(?!</tr>).)*tag two is not ready</td></tr>", risk, re.S)
    assert entry and "bob@example.com" in entry.group(0) and "prompt:kbqa" in entry.group(0), risk
    with gw.http() as api:
        assert api.get(f"/admin/promotions/{pid}", headers=gw.auth()).json()["state"] == "rejected"


def test_bad_input_gets_an_html_error_page_with_its_status(gw: GatewayProcess, world: dict[str, Any]) -> None:
    with gw.http() as http:
        sign_in(http, world["bob"])
        cases = {
            "/ui/operator?request_id=req_%00": (400, "NUL characters are not allowed"),
            "/ui/diff?a=prompt:kbqa@99999999999&b=prompt:kbqa@1": (400, "out of range"),
            "/ui/diff?a=prompt:kbqa@1&b=prompt:kbqa@9": (404, "prompt:kbqa@9"),
            "/ui/promotions/prm_nope": (404, "no promotion"),
            "/ui/requests/req_nope": (404, "no request"),
            "/ui/eval-runs/run_nope": (404, "no eval run"),
            "/ui/artifacts/prompt/nope": (404, "prompt:nope does not exist"),
        }
        for path, (status, text) in cases.items():
            r = http.get(path)
            assert (r.status_code, r.headers["content-type"][:9]) == (status, "text/html"), (path, r.text)
            assert text in r.text, (path, r.text)
        page = http.get("/ui/approvals").text
        fields = "&".join(f"f{i}=x" for i in range(30))
        r = http.post(
            "/ui/logout",
            content=f"csrf={_csrf(page)}&{fields}",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert (
            r.status_code == 403 and "csrf_failed" in r.text
        )  # not a form of ours: refused, signed in still
        assert http.get("/ui/approvals").status_code == 200
