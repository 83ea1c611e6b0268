"""The Renkei FastAPI app mounted by the plugin: server-rendered pages over the warehouse.

Every request, on every path (pages, the style sheet, unknown paths), is authenticated first
and needs read access (renkei.ui.auth); approve/reject also needs edit access and a form token,
and only records a request that the apply_review_decisions Dag applies (this process holds no
keyring). A notice's health facts and window need the health-facts permission.
"""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path

from fastapi import FastAPI, Form, HTTPException, Query, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from renkei.errors import RenkeiError
from renkei.ui import auth, data, trends
from renkei.ui.plugin import PAGES

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Same-origin framing only: the Airflow UI shows these pages in an iframe of its own.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'self'; form-action 'self'; base-uri 'none'",
}
COMMENT_MAX = 500
# GX Data Docs pages (/datadocs/, renkei.quality.datadocs) carry GX's inline scripts and styles:
# 'unsafe-inline' there only. Still nothing but this origin: the pages' assets are served here.
DATA_DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                 "img-src 'self' data:; font-src 'self' data:; frame-ancestors 'self'; form-action 'none'; "
                 "base-uri 'none'")


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def create_app() -> FastAPI:
    app = FastAPI(title="Renkei", docs_url=None, redoc_url=None, openapi_url=None)
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.globals["data_docs_page"] = data.data_docs_page  # a source's GX Data Docs page, in any template

    def page(request: Request, template: str, code: int = 200, **ctx) -> HTMLResponse:
        user = request.state.renkei_user
        base = request.scope.get("root_path", "").rstrip("/")
        html = env.get_template(template).render(
            base=base, pages=PAGES, user_name=user.get_name(), current=template.split(".")[0],
            can_review=auth.allowed(user, auth.REVIEW), **ctx)
        return HTMLResponse(html, status_code=code)

    def refuse(request: Request, code: int, detail: str) -> Response:
        if _wants_html(request) and getattr(request.state, "renkei_user", None) is not None:
            return page(request, "error.html", code=code, message=detail)
        return JSONResponse({"detail": detail}, status_code=code)

    @app.middleware("http")
    async def gate(request: Request, call_next):
        request.state.renkei_user = None
        try:
            user = await auth.authenticate(request)
        except HTTPException as exc:
            if exc.status_code == 401 and request.method == "GET" and _wants_html(request):  # none or expired
                response: Response = RedirectResponse(auth.login_url(request), status_code=status.HTTP_303_SEE_OTHER)
            else:
                response = JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
        else:
            # an auth manager may ask a database or an identity provider: not on the event loop
            if await run_in_threadpool(auth.allowed, user, auth.READ):
                request.state.renkei_user = user
                response = await call_next(request)
            else:
                response = JSONResponse({"detail": f"Forbidden: reading the Renkei pages needs read access to the "
                                         f"{auth.GUARD_DAG} Dag"}, status_code=status.HTTP_403_FORBIDDEN)
        response.headers.update(SECURITY_HEADERS)
        if getattr(request.state, "renkei_csp", None):  # a Data Docs page (data_docs below)
            response.headers["Content-Security-Policy"] = request.state.renkei_csp
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return refuse(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RenkeiError)
    async def renkei_error(request: Request, exc: RenkeiError):
        return refuse(request, status.HTTP_400_BAD_REQUEST, str(exc))

    @app.get("/")
    def index(request: Request):
        return RedirectResponse(f"{request.scope.get('root_path', '').rstrip('/')}/runs", status_code=status.HTTP_303_SEE_OTHER)

    @app.get("/static/renkei.css")
    def css():
        return Response((HERE / "static" / "renkei.css").read_text(encoding="utf-8"), media_type="text/css")

    @app.get("/datadocs/{path:path}")
    def data_docs(request: Request, path: str):
        """A file of the GX Data Docs site (pages and their offline assets), behind the same gate."""
        found = data.data_docs_file(path)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no Data Docs file {path!r}: the ingest builds a "
                                "source's page when it validates a batch (RENKEI_DATA_DOCS, docs/OPERATIONS.md)")
        if found.suffix == ".html":
            request.state.renkei_csp = DATA_DOCS_CSP
        return FileResponse(found, media_type=mimetypes.guess_type(found.name)[0] or "application/octet-stream")

    @app.get("/runs", response_class=HTMLResponse)
    def runs(request: Request):
        return page(request, "runs.html", report=data.run_report(), rate_chart=trends.for_runs_page())

    @app.get("/quarantine", response_class=HTMLResponse)
    def quarantine(request: Request, source: str | None = None, reason: str | None = None,
                   page_no: int = Query(1, alias="page", ge=1)):
        return page(request, "quarantine.html", q=data.quarantine_page(source or None, reason or None, page_no))

    @app.get("/review", response_class=HTMLResponse)
    def review(request: Request, all: bool = False, requested: str | None = None):  # noqa: A002 - the query name
        user = request.state.renkei_user
        return page(request, "review.html", items=data.review_items(include_resolved=all), show_all=all,
                    requested=requested, csrf=auth.csrf_token(user.get_name()), age_chart=trends.for_review_page())

    @app.post("/review/{item_id}")
    def review_decide(request: Request, item_id: str, decision: str = Form(...), comment: str = Form(""),
                      csrf: str = Form("")):
        user = request.state.renkei_user
        auth.check_post(request, user.get_name(), csrf)
        if not auth.allowed(user, auth.REVIEW):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"approving or rejecting needs edit access to the {auth.GUARD_DAG} Dag; ask an admin")
        if len(comment) > COMMENT_MAX:
            raise RenkeiError(f"review item {item_id}: the comment is longer than {COMMENT_MAX} characters: shorten it")
        req = data.request_decision(item_id, decision, user.get_name(), comment)
        log.info("renkei ui: review item %s: %s requested by %s (request %s, pending application)",
                 req["item_id"], req["decision"], req["reviewer"], req["request_id"])
        base = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(f"{base}/review?requested={req['item_id']}", status_code=status.HTTP_303_SEE_OTHER)

    @app.get("/review/summary", response_class=HTMLResponse)
    def review_summary(request: Request):
        """The queue in figures (renkei.linkage.review_summary), as a page or (``Accept:
        application/json``) as JSON: counts and waiting times only."""
        from renkei.linkage.review_summary import COLUMNS, summary  # noqa: PLC0415

        s = summary(data.warehouse_url())
        if _wants_json(request):
            return JSONResponse(jsonable_encoder(s))
        return page(request, "review_summary.html", s=s, columns=COLUMNS)

    @app.get("/notices", response_class=HTMLResponse)
    def notices(request: Request, service: str | None = None, kind: str | None = None,
                page_no: int = Query(1, alias="page", ge=1)):
        with_windows = auth.sees_health_facts(request.state.renkei_user)
        return page(request, "notices.html", q=data.notices_page(service or None, kind or None, page_no, with_windows),
                    per_day_chart=trends.for_notices_page())

    @app.get("/trends", response_class=HTMLResponse)
    def trend_page(request: Request):
        return page(request, "trends.html", t=trends.for_trends_page())

    @app.get("/notices/{notice_id}", response_class=HTMLResponse)
    def notice(request: Request, notice_id: str):
        """The explanation, as a page or (``Accept: application/json``) as JSON: the same fields,
        the facts and window only with the health-facts permission."""
        x = data.explain(notice_id, with_facts=auth.sees_health_facts(request.state.renkei_user))
        if _wants_json(request):
            return JSONResponse(jsonable_encoder(x))
        return page(request, "notice.html", x=x)

    return app
