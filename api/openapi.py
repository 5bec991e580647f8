"""Pieces of the OpenAPI document that FastAPI cannot infer: each route's own problems, binary
images, declared headers, and the multipart body of `POST /jobs` with `params` as a JSON part."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.auth import declare_bearer_security
from api.problems import PROBLEM_MEDIA_TYPE
from core.params import fill_defaults

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}}

# Said once for every route that reads Redis.
UNAVAILABLE = "the job store is not answering (Redis restarting); see Retry-After"


def problems(**described: str) -> dict[int | str, dict[str, Any]]:
    """Responses for a route's own error codes, each an application/problem+json Problem:
    `problems(e404="no such job", e409="...")`."""
    responses: dict[int | str, dict[str, Any]] = {}
    for name, description in described.items():
        status = int(name.removeprefix("e"))
        response: dict[str, Any] = {
            "description": description,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}},
        }
        if status in (429, 503):
            response["headers"] = RETRY_AFTER
        responses[status] = response
    return responses


OCTET_STREAM = "application/octet-stream"


def binary(media_type: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A 200 whose body is an image: `type: string, format: binary`, so generated clients keep the
    bytes. Also offered as application/octet-stream (`Accept: application/octet-stream` gets that
    type), which generators that know no image types read as bytes."""
    schema = {"schema": {"type": "string", "format": "binary"}}
    response: dict[str, Any] = {"description": description, "content": {media_type: schema, OCTET_STREAM: schema}}
    if headers:
        response["headers"] = headers
    return response


def image_media_type(accept: str | None, media_type: str) -> str:
    """The image's own type, unless the client asked for octet-stream and for no image type."""
    accept = accept or ""
    return OCTET_STREAM if OCTET_STREAM in accept and "image/" not in accept else media_type


SUBMIT_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["content", "style"],
                "additionalProperties": False,
                "properties": {
                    "content": {"type": "string", "format": "binary", "description": "the content photo"},
                    "style": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "minItems": 1,
                        "description": "one or more style images (repeat the field)",
                    },
                    "params": {
                        "$ref": "#/components/schemas/StyleParams",
                        "description": "the parameters as a JSON object; unknown names are rejected. Sent as a "
                        "JSON part or as a plain text field holding the JSON (curl's -F 'params={...}').",
                    },
                    "webhook": {
                        "type": "string",
                        "format": "uri",
                        "maxLength": 2048,
                        "description": "an http(s) URL that gets the job's events as signed POSTs (Standard "
                        "Webhooks: webhook-id, webhook-timestamp, webhook-signature). Its host must resolve to public "
                        "addresses only (no loopback, private or link-local) unless the server allows them.",
                    },
                    "webhook_events": {
                        "type": "array",
                        "items": {"type": "string", "enum": ["started", "snapshot", "completed"]},
                        "description": "the events the webhook gets (default: completed): repeat the field, or give "
                        "a comma-separated list in one field (`started,completed`). `snapshot` is sent at most once "
                        "every few seconds.",
                    },
                },
            },
            "encoding": {
                "params": {"contentType": "application/json"},
                "content": {"contentType": "image/*"},
                "style": {"contentType": "image/*"},
            },
        }
    },
}


def install_openapi(app: FastAPI) -> None:
    """FastAPI's document, less the 422 it adds to every route with a path parameter (a string
    path parameter cannot fail validation, and the routes that can answer 422 declare it), and
    with every parameter's default (pydantic leaves out those of a default_factory)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                separate_input_output_schemas=False,
            )
            for operations in schema["paths"].values():
                for operation in operations.values():
                    invalid = operation["responses"].get("422", {})
                    if PROBLEM_MEDIA_TYPE not in invalid.get("content", {PROBLEM_MEDIA_TYPE: None}):
                        del operation["responses"]["422"]
            for name in ("HTTPValidationError", "ValidationError"):
                schema["components"]["schemas"].pop(name, None)
            fill_defaults(schema["components"]["schemas"]["StyleParams"])
            declare_bearer_security(app, schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
