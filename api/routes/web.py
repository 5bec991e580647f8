"""What a browser opens: the page at `/`, its files, the API docs (served from the project, so they
work offline), a page for each problem type, and the parameter schema the page builds its form from."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from api.deps import SettingsDep
from api.openapi import OPENAPI_31_URL, as_openapi_31
from api.problems import not_found
from api.schemas import ParameterSchema, UploadLimits
from api.security import PAGE_CSP, inline_hashes
from core.params import StyleParams
from jobs.problems import PROBLEM_TYPES

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
STATIC = "/static"

router = APIRouter()


def mount_static(app: FastAPI) -> None:
    app.mount(STATIC, StaticFiles(directory=WEB_DIR), name="static")


PAGE_HEADERS = {"Content-Security-Policy": PAGE_CSP}


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"} | PAGE_HEADERS)


def with_inline_csp(page: HTMLResponse, extra: str = "") -> HTMLResponse:
    """The page's CSP, allowing exactly its own inline scripts and styles (by hash) and `extra`."""
    html = bytes(page.body).decode()
    scripts, styles = inline_hashes(html, "script"), inline_hashes(html, "style")
    policy = f"{PAGE_CSP}; script-src 'self' {scripts}; style-src 'self' {styles}{extra}"
    page.headers["Content-Security-Policy"] = policy
    return page


@router.get("/docs", include_in_schema=False)
async def swagger_ui() -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="neural-style-service: API",
        swagger_js_url=f"{STATIC}/vendor/swagger-ui-bundle.js",
        swagger_css_url=f"{STATIC}/vendor/swagger-ui.css",
        swagger_favicon_url=f"{STATIC}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},  # its badge would call validator.swagger.io
    )
    return with_inline_csp(page)


@router.get("/redoc", include_in_schema=False)
async def redoc() -> HTMLResponse:
    page = get_redoc_html(
        openapi_url="/openapi.json",
        title="neural-style-service: API",
        redoc_js_url=f"{STATIC}/vendor/redoc.standalone.js",
        redoc_favicon_url=f"{STATIC}/favicon.png",
        with_google_fonts=False,
    )
    # ReDoc writes its styles into <style> elements as it renders, and searches in a blob: worker.
    page = with_inline_csp(page, "; worker-src blob:")
    policy = page.headers["Content-Security-Policy"]
    page.headers["Content-Security-Policy"] = re.sub(r"style-src [^;]*", "style-src 'self' 'unsafe-inline'", policy)
    return page


@router.get(OPENAPI_31_URL, include_in_schema=False)
async def openapi_31(request: Request) -> JSONResponse:
    """/openapi.json in OpenAPI 3.1, for client generators that do not read 3.2 yet."""
    return JSONResponse(as_openapi_31(request.app.openapi()))


PROBLEM_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="{static}/style.css"></head>
<body class="problem-page"><main>
<p><a href="/">neural-style-service</a> / problem types</p>
<h1>{title}</h1><p><code>/problems/{kind}</code></p><p>{description}</p>
<p>Every error of this service is an RFC 9457 <code>application/problem+json</code> object with
<code>type</code> (this page's address), <code>title</code>, <code>status</code> and <code>detail</code>.</p>
</main></body></html>
"""


@router.get("/problems/{kind}", include_in_schema=False)
async def problem_type(kind: str) -> HTMLResponse:
    """The page a problem's `type` URI resolves to."""
    known = PROBLEM_TYPES.get(kind)
    if known is None:
        raise not_found("problem type")
    page = PROBLEM_PAGE.format(
        title=html.escape(known.title),
        kind=html.escape(kind),
        description=html.escape(known.description),
        static=STATIC,
    )
    return HTMLResponse(page, headers=PAGE_HEADERS)


def parameter_schema(max_iterations: int, max_side: int) -> dict[str, Any]:
    """StyleParams' JSON Schema with this service's limits where they are tighter."""
    schema = StyleParams.json_schema()
    properties = schema["properties"]
    properties["iterations"]["maximum"] = min(properties["iterations"]["maximum"], max_iterations)
    for side in ("height", "width"):
        properties[side]["maximum"] = min(properties[side]["maximum"], max_side)
    return schema


@router.get("/parameters", operation_id="get_parameters", tags=["jobs"])
async def get_parameters(settings: SettingsDep) -> ParameterSchema:
    """Every job parameter with its type, default, limits and description, and the upload limits."""
    return ParameterSchema(
        parameters=parameter_schema(settings.max_iterations, settings.max_side),
        limits=UploadLimits(
            max_styles=settings.max_styles,
            max_upload_bytes=settings.max_upload_bytes,
            max_input_pixels=settings.max_input_pixels,
        ),
    )
