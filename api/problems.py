"""RFC 9457 problem+json: one error type for the API, turned into a response at one edge."""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from jobs.problems import problem_type_uri

PROBLEM_MEDIA_TYPE = "application/problem+json"
# A request whose client went away before it was read whole (nginx's code for it): no one reads
# the answer; the metrics count it as this, neither a client error nor a server error.
CLIENT_CLOSED_REQUEST = 499

log = logging.getLogger(__name__)


class Problem(Exception):
    """An error a client can read: status, a stable type, a title, a detail that says what to fix."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        problem_type_uri(kind)  # an unknown kind fails where it is raised, in the tests
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": problem_type_uri(self.kind),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        return body | self.extra


def problem_response(problem: Problem, instance: str | None = None) -> JSONResponse:
    return JSONResponse(
        problem.body(instance), status_code=problem.status, headers=problem.headers, media_type=PROBLEM_MEDIA_TYPE
    )


def not_found(what: str = "job") -> Problem:
    return Problem(404, "not-found", "Not found", f"no such {what}")


def file_problem(status: int, kind: str, title: str, field: str, message: str) -> Problem:
    """A problem with one upload, named in `errors` as validation problems name their fields."""
    return Problem(status, kind, title, f"{field}: {message}", errors=[{"field": field, "message": message}])


def validation_problem(errors: list[dict[str, Any]], detail: str | None = None) -> Problem:
    """422 with every error as {"field": "params.iterations", "message": "..."}."""
    listed = [{"field": e["field"], "message": e["message"]} for e in errors]
    summary = detail or "; ".join(f"{e['field']}: {e['message']}" for e in listed)
    return Problem(422, "invalid-request", "Invalid request", summary, errors=listed)


# Tags pydantic puts in an error's location for the branch of a union it tried (core.params'
# `scales`): the client wrote `params.scales.0.size`, not `params.scales.list.0.size`.
UNION_TAGS = frozenset({"list", "auto"})


def pydantic_errors(raw: list[Any], prefix: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    out = []
    for error in raw:
        location = [str(part) for part in (*prefix, *error.get("loc", ())) if part != "body" and part not in UNION_TAGS]
        out.append(
            {"field": ".".join(location) or "request", "message": str(error["msg"]).removeprefix("Value error, ")}
        )
    return out


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(validation_problem(pydantic_errors(list(exc.errors()))), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
        problem = Problem(exc.status_code, kind, title, str(exc.detail), headers=dict(exc.headers or {}))
        return problem_response(problem, request.url.path)

    @app.exception_handler(ClientDisconnect)
    async def on_client_gone(request: Request, exc: ClientDisconnect) -> Response:
        log.info("%s %s: the client disconnected before its request was read", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback; the client gets a problem like every other error. This
        # answer is made outside every middleware: it brings the security headers itself.
        from api.security import ALL_SECURITY_HEADERS

        problem = Problem(
            500, "internal-error", "Internal error", "the server failed to answer; it has been logged",
            headers=ALL_SECURITY_HEADERS,
        )  # fmt: skip
        return problem_response(problem, request.url.path)

    @app.exception_handler(redis.RedisError)
    async def on_redis(request: Request, exc: redis.RedisError) -> JSONResponse:
        problem = Problem(
            503, "unavailable", "Service unavailable", "the job store is not answering; try again shortly",
            headers={"Retry-After": "5"},
        )  # fmt: skip
        return problem_response(problem, request.url.path)
