"""Pieces of the OpenAPI document that FastAPI cannot infer: each route's own problems, binary
images, declared headers, and the multipart body of `POST /jobs` with `params` as a JSON part."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from api.auth import declare_bearer_security
from api.problems import PROBLEM_MEDIA_TYPE
from core.params import fill_defaults
from jobs.settings import Settings
from jobs.view import ProgressEvent, SnapshotEvent, StatusEvent

# OpenAPI 3.2 describes an event stream item by item (`itemSchema`); generators that stop at 3.1
# (openapi-python-client) read the same document at OPENAPI_31_URL, where the stream is a string.
OPENAPI_VERSION = "3.2.0"
OPENAPI_31_URL = "/openapi-3.1.json"

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}}
UNSATISFIED_RANGE = {
    "Content-Range": {
        "description": "`bytes */SIZE`: the image's size in bytes",
        "schema": {"type": "string", "pattern": r"^bytes \*/\d+$"},
    }
}

# Said once for every route that reads Redis.
UNAVAILABLE = "the job store is not answering (Redis restarting); see Retry-After"


def problems(**described: str) -> dict[Any, dict[str, Any]]:
    """Responses for a route's own error codes, each an application/problem+json Problem:
    `problems(e404="no such job", e409="...")`. Keyed by Any so that a route's own responses
    (keyed by int) join them with `|`."""
    responses: dict[int | str, dict[str, Any]] = {}
    for name, description in described.items():
        status = int(name.removeprefix("e"))
        response: dict[str, Any] = {
            "description": description,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}},
        }
        if status in (429, 503):
            response["headers"] = RETRY_AFTER
        elif status == 416:
            response["headers"] = UNSATISFIED_RANGE
        responses[status] = response
    return responses


OCTET_STREAM = "application/octet-stream"


def _header(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "schema": schema}


# What every image answer says about itself, so that a client can revalidate it and resume it.
IMAGE_HEADERS = {
    "ETag": _header("send it back in If-None-Match (304 while unchanged) or If-Range", {"type": "string"}),
    "Accept-Ranges": _header("`bytes`: a Range header gets part of the image (206)", {"type": "string"}),
    "Content-Length": _header("the bytes of the body", {"type": "integer", "minimum": 0}),
}
CONTENT_RANGE = {
    "Content-Range": _header(
        "`bytes FIRST-LAST/SIZE`: which bytes of the image the body is",
        {"type": "string", "pattern": r"^bytes \d+-\d+/\d+$"},
    )
}
# The request headers of a conditional or ranged GET of an image (api/byte_ranges.py).
IMAGE_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "description": "an ETag this image answered with (or `*`): 304 instead of the bytes",
        "schema": {"type": "string"},
    },
    {
        "name": "Range",
        "in": "header",
        "required": False,
        "description": "one byte range: `bytes=FIRST-LAST`, `bytes=FIRST-` or `bytes=-SUFFIX` (the last SUFFIX "
        "bytes); 206 with those bytes, 416 when FIRST is past the end. A header that does not parse, or asks for "
        "several ranges, gets the whole image (200).",
        "schema": {"type": "string"},
        "example": "bytes=0-65535",
    },
    {
        "name": "If-Range",
        "in": "header",
        "required": False,
        "description": "the ETag the first part came with: Range is honoured only while the image still has it "
        "(otherwise 200, the whole image)",
        "schema": {"type": "string"},
    },
]


def binary(media_type: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A 200 whose body is an image: `type: string, format: binary`, so generated clients keep the
    bytes. Also offered as application/octet-stream (`Accept: application/octet-stream` gets that
    type), which generators that know no image types read as bytes. It declares the headers of a
    ranged, conditional answer (ETag, Accept-Ranges, Content-Length) besides `headers`."""
    schema = {"schema": {"type": "string", "format": "binary"}}
    content = {media_type: schema, OCTET_STREAM: schema}
    return {"description": description, "content": content, "headers": IMAGE_HEADERS | (headers or {})}


def image_responses(media_type: str, description: str, headers: dict[str, Any] | None = None) -> dict[Any, Any]:
    """An image's 200, its 206 (one byte range, api/byte_ranges.py) and its 304; a route adds its
    416 through problems(e416=...)."""
    whole = binary(media_type, description, headers)
    part = whole | {
        "description": "the bytes the Range header asked for",
        "headers": whole["headers"] | CONTENT_RANGE,
    }
    unchanged = {
        "description": "the image is the one in If-None-Match: no body",
        "headers": {name: IMAGE_HEADERS[name] for name in ("ETag", "Accept-Ranges")} | (headers or {}),
    }
    return {200: whole, 206: part, 304: unchanged}


REDIRECT = {
    307: {
        "description": "with NST_RESULT_REDIRECT_SECONDS and an S3 store: the result is at a signed URL, valid "
        "that long; follow Location (without this service's Authorization header)",
        "headers": {"Location": _header("the signed URL of the result", {"type": "string", "format": "uri"})},
    }
}


def image_media_type(accept: str | None, media_type: str) -> str:
    """The image's own type, unless the client asked for octet-stream and for no image type."""
    accept = accept or ""
    return OCTET_STREAM if OCTET_STREAM in accept and "image/" not in accept else media_type


# `Prefer: wait=N` on POST /jobs (RFC 7240; api/prefer_wait.py).
PREFER_WAIT: dict[str, Any] = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "`wait=N` (RFC 7240): wait up to N seconds (at most 60; more counts as 60) for the job to end, "
    "and answer 200 with the finished job if it does, 202 as usual if not. Preferences it does not know, or a "
    "`wait` that is not a number of seconds, are ignored.",
    "schema": {"type": "string"},
}
PREFERENCE_APPLIED = {
    "Preference-Applied": _header("`wait=N` when the answer waited (N: the seconds it allowed)", {"type": "string"})
}


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
                        "maxItems": 3,
                        "uniqueItems": True,
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


# The operations that take a job's id, each reachable by an OpenAPI link from an answer naming a job.
JOB_OPERATIONS = ("get_job", "cancel_job", "job_events", "get_loss_history", "get_result")


def job_links(job_id: str) -> dict[str, Any]:
    """OpenAPI links from an answer that names a job (`job_id`, a runtime expression such as
    `$response.body#/id`) to that job's operations, so that generated clients and testers can
    follow a job from its submission."""
    links: dict[str, Any] = {
        name: {"operationId": name, "parameters": {"job_id": job_id}, "description": f"{name} for this job"}
        for name in JOB_OPERATIONS
    }
    links["get_latest_snapshot"] = {
        "operationId": "get_snapshot",
        "parameters": {"job_id": job_id, "iteration": "latest"},
        "description": "the job's latest snapshot",
    }
    return links


EVENT_STREAM = "text/event-stream"
COMPONENT = "#/components/schemas/{model}"
# Each event's name and the schema of its `data` (JSON text).
EVENT_DATA: dict[str, str | type[BaseModel]] = {
    "job": "JobPublic",
    "status": StatusEvent,
    "progress": ProgressEvent,
    "snapshot": SnapshotEvent,
    "end": "JobPublic",
}


def event_stream_content(description: str) -> dict[str, Any]:
    """A `text/event-stream` answer as OpenAPI 3.2 writes one: `itemSchema` is one event (event,
    id, data and retry, as an SSE parser reads them), its `data` the JSON of that event's payload."""
    variants = []
    for name, model in EVENT_DATA.items():
        ref = model if isinstance(model, str) else model.__name__
        payload = {"$ref": COMPONENT.format(model=ref)}
        data = {"type": "string", "contentMediaType": "application/json", "contentSchema": payload}
        variants.append({"properties": {"event": {"const": name}, "data": data}})
    item = {
        "type": "object",
        "description": description,
        "required": ["event", "data", "id"],
        "properties": {
            "event": {"type": "string", "enum": list(EVENT_DATA)},
            "data": {"type": "string"},
            "id": {"type": "string", "pattern": r"^\d+-\d+$", "description": "send it back as Last-Event-ID"},
            "retry": {"type": "integer", "description": "milliseconds EventSource waits before it reconnects"},
        },
        "oneOf": variants,
    }
    return {EVENT_STREAM: {"itemSchema": item}}


def add_event_schemas(schema: dict[str, Any]) -> None:
    """The events' payload models, which no route returns as such, into the components."""
    components = schema["components"]["schemas"]
    for model in EVENT_DATA.values():
        if isinstance(model, str):
            continue
        found = model.model_json_schema(ref_template=COMPONENT)
        components.update(found.pop("$defs", {}))
        components[model.__name__] = found


def as_openapi_31(schema: dict[str, Any]) -> dict[str, Any]:
    """The document in OpenAPI 3.1, for generators that do not read 3.2 yet: the same but for the
    event stream, which 3.1 can only call a string."""
    older = copy.deepcopy(schema)
    older["openapi"] = "3.1.0"
    for operations in older["paths"].values():
        for operation in operations.values():
            for response in operation["responses"].values():
                stream = response.get("content", {}).get(EVENT_STREAM)
                if stream is not None and "itemSchema" in stream:
                    response["content"][EVENT_STREAM] = {"schema": {"type": "string"}}
    return older


def apply_service_limits(schema: dict[str, Any], settings: Settings) -> None:
    """The document says this service's limits where they are tighter than the parameters' own
    (NST_MAX_ITERATIONS, NST_MAX_SIDE, NST_MAX_STYLES), as GET /parameters does: a generated
    client or a fuzzer then sends what the service can take."""
    components = schema["components"]["schemas"]
    for name, field, limit in (
        ("StyleParams", "iterations", settings.max_iterations),
        ("StyleParams", "height", settings.max_side),
        ("StyleParams", "width", settings.max_side),
        ("Scale", "size", settings.max_side),
        ("Scale", "iterations", settings.max_iterations),
    ):
        bounds = components[name]["properties"][field]
        bounds["maximum"] = min(bounds.get("maximum", limit), limit)
    for path in ("/jobs", "/sweeps"):
        if path in schema["paths"]:
            form = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
            form["properties"]["style"]["maxItems"] = settings.max_styles


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
            apply_service_limits(schema, app.state.settings)
            add_event_schemas(schema)
            declare_bearer_security(app, schema)
            schema["openapi"] = OPENAPI_VERSION
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
