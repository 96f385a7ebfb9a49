"""The dashboard at /ui: server-rendered pages for approvers, risk readers, operators, and artifacts.

Pages, in the order of who they serve: approvals (a pending promotion's diffs, eval evidence and checks,
approve or reject), risk (drift, fairness, accuracy, policy decisions, the audit chain), operator (per
version traffic and latency, the alerts firing, a request search, one request's lineage), alerts (each
rule's state per subject, its figure against the threshold, its notices), rollouts (arms, tests,
decisions and their audit evidence), artifacts (versions, aliases, diffs, eval runs, promotion history). Every page needs a signed-in key with a governance role (the admin
API's check, `require_reader`); approve and reject go through the promotion service the CLI and the admin
API use, so its roles and four-eyes rules apply unchanged. Charts are uPlot, served from
/ui/static/vendor (no CDN); the only script of our own (static/charts.js) draws them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from gateway import kinds
from gateway.api.admin import bad_value, promotions_of, require_reader
from gateway.api.deps import call_for, gateway_of
from gateway.api.rollouts import rollouts_of
from gateway.db.generation import utcnow
from gateway.errors import InvalidRequest, NotFound, OpsgateError
from gateway.evaluation.online import rolling_means_from_db
from gateway.keys import Principal
from gateway.monitoring.alerting import AlertEngine
from gateway.registry.refs import parse_ref
from gateway.registry.store import VersionStore
from gateway.registry.views import artifact_detail, artifact_list, resolve_record
from gateway.ui import data
from gateway.ui.session import COOKIE, COOKIE_PATH, LIFETIME_S, LOGIN_COOKIE, SessionSigner, new_nonce

HERE = Path(__file__).resolve().parent
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
        " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

router = APIRouter(prefix="/ui", include_in_schema=False)
_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(("html",), default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["diff_lines"] = data.diff_lines
_env.filters["ms"] = lambda v: "-" if v is None else f"{v:,.1f}"
_env.filters["num"] = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"
_env.filters["prepend"] = lambda v, prefix: f"{prefix}{v}"
_env.filters["figure"] = lambda v: "-" if v is None else f"{v:.4g}"
_env.filters["iso"] = lambda v: v[:19].replace("T", " ") if v else "-"
_env.filters["when"] = lambda v: v.strftime("%Y-%m-%d %H:%M:%S") if v else "-"


def install(app: FastAPI, data_dir: Path) -> None:
    """Mount the dashboard: its routes, its static files, and the session signer (from the audit key)."""
    app.state.ui_sessions_dir = data_dir
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")


def _signer(request: Request) -> SessionSigner:
    signer = getattr(request.app.state, "ui_signer", None)
    if signer is None:  # first use: the audit key exists by then (prepare_database made it)
        parts = getattr(request.app.state, "parts", None)
        engine = parts.engine if parts is not None else None
        signer = SessionSigner.for_data_dir(request.app.state.ui_sessions_dir, engine)
        if engine is not None:  # kept once the database is there (sign-outs are shared through it)
            request.app.state.ui_signer = signer
    assert isinstance(signer, SessionSigner)
    return signer


# -- rendering ----------------------------------------------------------------------------------------


# the navigation entry each page belongs to (marked aria-current="page")
_SECTIONS = {
    "approvals.html": "approvals",
    "promotion.html": "approvals",
    "risk.html": "risk",
    "operator.html": "operator",
    "request.html": "operator",
    "alerts.html": "alerts",
    "rollouts.html": "rollouts",
    "artifacts.html": "artifacts",
    "artifact.html": "artifacts",
    "diff.html": "artifacts",
    "run.html": "artifacts",
}


def _html(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    body = _env.get_template(name).render(section=_SECTIONS.get(name), **context)
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def _error_page(exc: OpsgateError, viewer: Viewer | None) -> HTMLResponse:
    return _html("error.html", exc.status, viewer=viewer, error=exc, title=f"{exc.status} {exc.type}")


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


class Viewer:
    """The signed-in key as pages see it: never the key, only its id, name and roles."""

    def __init__(self, principal: Principal, csrf: str) -> None:
        self.principal = principal
        self.csrf = csrf
        self.key_id = principal.key_id
        self.name = principal.name
        self.roles = sorted(principal.roles)


def _viewer(request: Request) -> Viewer | None:
    session = _signer(request).check(request.cookies.get(COOKIE))
    if session is None:
        return None
    principals = gateway_of(request).catalog.snapshot.principals.values()
    principal = next((p for p in principals if p.key_id == session.key_id), None)
    if principal is None:  # revoked since: the session ends with it
        return None
    return Viewer(principal, _signer(request).csrf(session.nonce))


def _sign_in_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return _redirect(f"{COOKIE_PATH}/login?next={quote(target, safe='')}")


def _check_inputs(request: Request, form: dict[str, str] | None = None) -> None:
    """What the admin API refuses before the database sees it (NUL characters, integers no column
    holds) is a 400 page here too, never a database error."""
    values = [*request.path_params.items(), *request.query_params.multi_items(), *(form or {}).items()]
    for name, value in values:
        if problem := bad_value(str(value), name):
            raise problem


def _page(request: Request, render: Callable[[Viewer], Response]) -> Response:
    """Signed in, with a governance role; errors become an HTML page with the error's status."""
    viewer = _viewer(request)
    if viewer is None:
        return _sign_in_redirect(request)
    try:
        require_reader(viewer.principal, "the dashboard")
        _check_inputs(request)
        return render(viewer)
    except OpsgateError as exc:
        return _error_page(exc, viewer)


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form (first value of each field); more than 20 fields is no form of ours: empty,
    so its CSRF check fails."""
    raw = (await request.body()).decode("utf-8", errors="replace")
    try:
        fields = parse_qs(raw, keep_blank_values=True, max_num_fields=20)
    except ValueError:
        return {}
    return {k: v[0] for k, v in fields.items()}


async def _post(request: Request, act: Callable[[Viewer, dict[str, str]], Response]) -> Response:
    """A form POST: signed in, the session's CSRF token, a governance role; then `act` in a thread."""
    viewer = _viewer(request)
    if viewer is None:
        return _sign_in_redirect(request)
    form = await _form(request)
    session = _signer(request).check(request.cookies.get(COOKIE))
    if session is None or not _signer(request).csrf_ok(session.nonce, form.get("csrf")):
        return _csrf_refused(viewer)
    try:
        require_reader(viewer.principal, "the dashboard")
        _check_inputs(request, form)
        return await asyncio.to_thread(act, viewer, form)
    except OpsgateError as exc:
        return _error_page(exc, viewer)


def _csrf_refused(viewer: Viewer | None) -> HTMLResponse:
    error = OpsgateError("the form's CSRF token is missing or wrong; reload the page and try again")
    error.status, error.type, error.code = 403, "permission_error", "csrf_failed"
    return _error_page(error, viewer)


# -- sign in and out ----------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    if target and target.startswith(COOKIE_PATH + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{COOKIE_PATH}/approvals"


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


@router.get("/login")
def login_form(request: Request, next: str | None = None) -> Response:
    nonce = new_nonce()
    response = _html(
        "login.html", viewer=None, csrf=_signer(request).csrf(nonce), next=_safe_next(next), title="Sign in"
    )
    _cookie(response, request, LOGIN_COOKIE, nonce, 3600)
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    signer = _signer(request)
    if not signer.csrf_ok(request.cookies.get(LOGIN_COOKIE), form.get("csrf")):
        return _csrf_refused(None)
    target = _safe_next(form.get("next"))
    try:
        principal = gateway_of(request).authenticate(
            call_for(request, "/ui/login"), f"Bearer {form.get('key', '').strip()}"
        )
        require_reader(principal, "the dashboard")
    except OpsgateError as exc:
        if exc.status == 401:
            nonce = new_nonce()
            page = _html(
                "login.html",
                401,
                viewer=None,
                csrf=signer.csrf(nonce),
                next=target,
                problem="That key is unknown or was revoked.",
                title="Sign in",
            )
            _cookie(page, request, LOGIN_COOKIE, nonce, 3600)
            return page
        return _error_page(exc, None)
    response: Response = _redirect(target)
    _cookie(response, request, COOKIE, signer.issue(principal), LIFETIME_S)
    response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    form = await _form(request)
    signer = _signer(request)
    session = signer.check(request.cookies.get(COOKIE))
    if session is not None:
        if not signer.csrf_ok(session.nonce, form.get("csrf")):
            return _csrf_refused(None)
        signer.sign_out(session)
    response = _redirect(f"{COOKIE_PATH}/login")
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


# -- approver -----------------------------------------------------------------------------------------


@router.get("")
@router.get("/")
def home(request: Request) -> Response:
    return _redirect(f"{COOKIE_PATH}/approvals")


@router.get("/approvals")
def approvals(request: Request) -> Response:
    def render(viewer: Viewer) -> Response:
        service = promotions_of(request)
        pending = service.list_promotions(state="pending")
        recent = [p for p in service.list_promotions() if p.state != "pending"][:20]
        return _html(
            "approvals.html", viewer=viewer, pending=pending, recent=recent, title="Pending promotions"
        )

    return _page(request, render)


@router.get("/promotions/{promotion_id}")
def promotion(request: Request, promotion_id: str) -> Response:
    def render(viewer: Viewer) -> Response:
        view = data.promotion_view(_engine(request), promotions_of(request), promotion_id)
        return _html(
            "promotion.html",
            viewer=viewer,
            view=view,
            p=view.promotion,
            done=request.query_params.get("done") in ("approved", "rejected"),
            title=f"Promotion of {view.promotion.kind}:{view.promotion.name}@{view.promotion.version}"
            f" to {view.promotion.alias}",
        )

    return _page(request, render)


@router.post("/promotions/{promotion_id}/approve")
async def approve(request: Request, promotion_id: str) -> Response:
    def act(viewer: Viewer, form: dict[str, str]) -> Response:
        comment = form.get("comment", "").strip() or None
        promotions_of(request).approve(viewer.principal, promotion_id, comment=comment)
        return _redirect(f"{COOKIE_PATH}/promotions/{quote(promotion_id)}?done=approved")

    return await _post(request, act)


@router.post("/promotions/{promotion_id}/reject")
async def reject(request: Request, promotion_id: str) -> Response:
    def act(viewer: Viewer, form: dict[str, str]) -> Response:
        reason = form.get("reason", "").strip()
        if not reason:
            raise InvalidRequest("a rejection needs a reason", param="reason")
        promotions_of(request).reject(viewer.principal, promotion_id, reason=reason)
        return _redirect(f"{COOKIE_PATH}/promotions/{quote(promotion_id)}?done=rejected")

    return await _post(request, act)


# -- risk and compliance ------------------------------------------------------------------------------


@router.get("/risk")
def risk(request: Request) -> Response:
    def render(viewer: Viewer) -> Response:
        engine = _engine(request)
        models = data.model_health(engine)
        charts = {
            kind: {
                "x": _padded(sorted({t for m in models for t, _ in m.series.get(kind, [])})),
                "series": [
                    {"label": f"model:{m.name}@{m.version}", "points": m.series[kind]}
                    for m in models
                    if kind in m.series
                ],
            }
            for kind in data.REPORT_KINDS
        }
        return _html(
            "risk.html",
            viewer=viewer,
            models=models,
            charts=charts,
            decisions=data.policy_decisions(engine, utcnow() - data.OPERATOR_WINDOW),
            online=rolling_means_from_db(engine),
            audit=data.audit_view(engine),
            title="Risk and compliance",
        )

    return _page(request, render)


def _padded(xs: list[float]) -> list[float]:
    """A lone report gets five empty minutes either side (a time axis of minutes, not of years)."""
    return [xs[0] - 300, xs[0], xs[0] + 300] if len(xs) == 1 else xs


# -- operator -----------------------------------------------------------------------------------------


@router.get("/operator")
def operator(request: Request, request_id: str = "", artifact: str = "", status: str = "") -> Response:
    def render(viewer: Viewer) -> Response:
        engine = _engine(request)
        versions = data.traffic(engine)
        searched = bool(request_id or artifact or status)
        found = (
            data.search_requests(
                engine, request_id=request_id.strip(), artifact=artifact.strip(), status=status
            )
            if searched
            else data.search_requests(engine, limit=20)
        )
        return _html(
            "operator.html",
            viewer=viewer,
            versions=versions,
            requests_chart=data.chart_series(versions, "requests"),
            latency_chart=data.chart_series(versions, "p95"),
            found=found,
            searched=searched,
            firing=data.firing(_alerting(request).states()),
            q={"request_id": request_id, "artifact": artifact, "status": status},
            title="Operations",
        )

    return _page(request, render)


@router.get("/alerts")
def alerts(request: Request) -> Response:
    def render(viewer: Viewer) -> Response:
        alerting = _alerting(request)
        states = alerting.states()
        spec, _ = alerting.rules()
        counts = {
            state: sum(r["state"] == state for r in states["rules"]) for state in ("firing", "pending", "ok")
        }
        return _html(
            "alerts.html",
            viewer=viewer,
            states=states,
            ranked=data.ranked(states),
            counts=counts,
            receivers=data.receiver_hosts(spec),
            title="Alerts",
        )

    return _page(request, render)


@router.get("/rollouts")
def rollouts(request: Request) -> Response:
    def render(viewer: Viewer) -> Response:
        views = data.rollout_views(_engine(request), rollouts_of(request))
        return _html("rollouts.html", viewer=viewer, views=views, title="Rollouts")

    return _page(request, render)


@router.get("/requests/{request_id}")
def request_lineage(request: Request, request_id: str) -> Response:
    def render(viewer: Viewer) -> Response:
        row = data.request_row(_engine(request), request_id)
        extra = row.extra or {}
        return _html(
            "request.html",
            viewer=viewer,
            row=row,
            versions=data.lineage_versions(row.artifacts),
            retrieval=extra.get("retrieval"),
            rollout=extra.get("rollout"),
            title=f"Request {row.id}",
        )

    return _page(request, render)


# -- artifacts ----------------------------------------------------------------------------------------


@router.get("/artifacts")
def artifacts(request: Request, kind: str = "") -> Response:
    def render(viewer: Viewer) -> Response:
        listed = artifact_list(_engine(request), kind or None)
        return _html(
            "artifacts.html",
            viewer=viewer,
            artifacts=sorted(listed, key=lambda a: (a["kind"], a["name"])),
            kinds=kinds.names(),
            kind=kind,
            title="Artifacts",
        )

    return _page(request, render)


@router.get("/artifacts/{kind}/{name}")
def artifact(request: Request, kind: str, name: str) -> Response:
    def render(viewer: Viewer) -> Response:
        parse_ref(f"{kind}:{name}")
        engine = _engine(request)
        detail = artifact_detail(engine, kind, name)
        return _html(
            "artifact.html",
            viewer=viewer,
            a=detail,
            runs=data.eval_runs_of(engine, kind, name),
            promotions=promotions_of(request).list_promotions(kind=kind, name=name),
            title=f"{kind}:{name}",
        )

    return _page(request, render)


@router.get("/eval-runs/{run_id}")
def eval_run(request: Request, run_id: str) -> Response:
    def render(viewer: Viewer) -> Response:
        view = data.run_view(_engine(request), run_id)
        return _html(
            "run.html",
            viewer=viewer,
            view=view,
            plots=[Markup(svg) for svg in view.plots],  # built by evaluation/reports.py, escaped there
            comparison=Markup(view.comparison) if view.comparison else None,
            title=f"Eval run {view.run.id}",
        )

    return _page(request, render)


@router.get("/diff")
def diff(request: Request, a: str = "", b: str = "") -> Response:
    def render(viewer: Viewer) -> Response:
        if not a or not b:
            raise InvalidRequest("choose two versions to compare (a and b)", param="a")
        store = VersionStore(_engine(request))
        ra, rb = resolve_record(store, parse_ref(a)), resolve_record(store, parse_ref(b))
        return _html("diff.html", viewer=viewer, diff=data.version_diff(ra, rb), title=f"{ra.ref} → {rb.ref}")

    return _page(request, render)


def _engine(request: Request) -> Any:
    parts = getattr(request.app.state, "parts", None)
    if parts is None:
        raise NotFound("the gateway is starting; try again in a moment")
    return parts.engine


def _alerting(request: Request) -> AlertEngine:
    alerting = getattr(request.app.state, "alerting", None)
    if alerting is None:
        raise NotFound("the gateway is starting; try again in a moment")
    assert isinstance(alerting, AlertEngine)
    return alerting
