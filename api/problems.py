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

from jobs.problems import problem_body

PROBLEM_MEDIA_TYPE = "application/problem+json"
# A request whose client went away before it was read whole (nginx's code for it): no one reads
# the answer; the metrics count it as this, neither a client error nor a server error.
CLIENT_CLOSED_REQUEST = 499

log = logging.getLogger(__name__)


class Problem(Exception):
    """An error a client can read: a kind from the catalogue (jobs/problems.py: its status and
    title), a detail that says what to fix, extra members, and headers for the answer."""

    def __init__(
        self, kind: str, detail: str, *, status: int | None = None, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self._body = problem_body(kind, detail, status=status, **extra)  # an unknown kind fails here
        self.kind = kind
        self.status: int = self._body["status"]
        self.detail = detail
        self.headers = headers or {}

    def body(self, instance: str | None = None) -> dict[str, Any]:
        return self._body | {"instance": instance} if instance else dict(self._body)


def problem_response(problem: Problem, instance: str | None = None) -> JSONResponse:
    return JSONResponse(
        problem.body(instance), status_code=problem.status, headers=problem.headers, media_type=PROBLEM_MEDIA_TYPE
    )


def not_found(what: str = "job") -> Problem:
    return Problem("not-found", f"no such {what}")


def file_problem(kind: str, field: str, message: str) -> Problem:
    """A problem with one upload, named in `errors` as validation problems name their fields."""
    return Problem(kind, f"{field}: {message}", errors=[{"field": field, "message": message}])


def validation_problem(errors: list[dict[str, Any]], detail: str | None = None) -> Problem:
    """422 with every error as {"field": "params.iterations", "message": "..."}."""
    listed = [{"field": e["field"], "message": e["message"]} for e in errors]
    summary = detail or "; ".join(f"{e['field']}: {e['message']}" for e in listed)
    return Problem("invalid-request", summary, errors=listed)


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
        problem = Problem(kind, str(exc.detail), status=exc.status_code, headers=dict(exc.headers or {}))
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
            "internal-error",
            "the server failed to answer; it has been logged",
            headers=ALL_SECURITY_HEADERS,
        )
        return problem_response(problem, request.url.path)

    @app.exception_handler(redis.RedisError)
    async def on_redis(request: Request, exc: redis.RedisError) -> JSONResponse:
        problem = Problem(
            "unavailable",
            "the job store is not answering; try again shortly",
            headers={"Retry-After": "5"},
        )
        return problem_response(problem, request.url.path)
