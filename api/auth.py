"""Who is calling: the Authorization header turned into the caller (an API key's id), for every
`/jobs` route, when NST_API_KEYS_FILE is set. Without it the service is open and the caller is
None. The key itself is hashed and compared here, and goes nowhere else: not to Redis, not to a
log (our messages name a key by its id; uvicorn's access log has no headers)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from api.keys_file import KeyRing
from api.problems import PROBLEM_MEDIA_TYPE, Problem
from jobs.settings import Settings

log = logging.getLogger(__name__)

REALM = "nst"
SCHEME_NAME = "bearer"  # the name of the security scheme in the OpenAPI document


def load_keyring(settings: Settings) -> KeyRing | None:
    """The keys the API accepts, or None when the service is open (no NST_API_KEYS_FILE)."""
    if settings.api_keys_file is None:
        return None
    return KeyRing(settings.api_keys_file)


def unauthorized(detail: str, error: str | None = None) -> Problem:
    """401 with the challenge RFC 6750 asks for: the realm alone when no key came (the client may
    not know a key is needed), and `error="invalid_token"` when one came that is not known."""
    challenge = f'Bearer realm="{REALM}"'
    if error:
        challenge += f', error="{error}", error_description="{detail}"'
    return Problem("unauthorized", detail, headers={"WWW-Authenticate": challenge})


def authenticate(request: Request) -> str | None:
    """The caller's key id; None when keys are off; 401 when a key is needed and not given or not
    known. Cheap enough for every poll: a dict read, a SHA-256 of ~50 bytes, a compare per key."""
    keyring: KeyRing | None = request.app.state.keyring
    if keyring is None:
        return None
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise unauthorized("this service needs an API key: send Authorization: Bearer KEY")
    found = keyring.lookup(key.strip())
    if found is None:
        raise unauthorized("the API key is not known (mistyped, or removed)", "invalid_token")
    return found.id


async def _caller(request: Request) -> str | None:
    return authenticate(request)


# The caller of a `/jobs` route: the id of its API key, or None when the service has no keys.
CallerDep = Annotated[str | None, Depends(_caller)]


def declare_bearer_security(app: FastAPI, schema: dict[str, Any]) -> None:
    """With keys on, the OpenAPI document says so: a bearer scheme, required by every `/jobs`
    and `/sweeps` operation, each of which may answer 401. Without keys it says nothing (nothing is needed)."""
    if getattr(app.state, "keyring", None) is None:
        return
    schema.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME_NAME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key from `nst keys add NAME`, as `Authorization: Bearer KEY`",
    }
    challenge = {"description": "the challenge (RFC 6750)", "schema": {"type": "string"}}
    for path, operations in schema["paths"].items():
        if path.split("/")[1] not in ("jobs", "sweeps"):
            continue
        for operation in operations.values():
            operation["security"] = [{SCHEME_NAME: []}]
            operation["responses"]["401"] = {
                "description": "no API key, or one that is not known",
                "headers": {"WWW-Authenticate": challenge},
                "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
            }
            if operation.get("operationId") in ("submit_job", "submit_sweep") and "429" in operation["responses"]:
                response = operation["responses"]["429"]
                response["description"] += "; or this key has NST_MAX_ACTIVE_JOBS_PER_KEY jobs queued or running"
