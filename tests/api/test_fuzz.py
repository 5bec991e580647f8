"""Property-based fuzzing of the API from its own OpenAPI schema: no input may cause a 5xx.

The service here has Redis and the API but no worker, so that generated jobs (which may ask for
4096x4096 pixels) only queue; the queue's limit answers 429 once it is full.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.services import Service, StartService


@pytest.fixture(scope="module")
def service(start_service: StartService) -> Service:
    return start_service({"NST_MAX_QUEUED_JOBS": "20"}, workers=0)


@pytest.fixture(scope="module")
def api_schema(service: Service) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{service.url}/openapi.json")


OPERATIONS = [
    ("POST", "/jobs"),
    ("GET", "/jobs"),
    ("GET", "/jobs/{job_id}"),
    ("POST", "/jobs/{job_id}/cancel"),
    ("DELETE", "/jobs/{job_id}"),
    ("GET", "/jobs/{job_id}/snapshots/{iteration}"),
    ("GET", "/jobs/{job_id}/result"),
    ("GET", "/jobs/{job_id}/events"),
    ("GET", "/jobs/{job_id}/losses"),
    ("GET", "/jobs/{job_id}/timelapse"),
    ("POST", "/sweeps"),
    ("GET", "/sweeps/{sweep_id}"),
    ("GET", "/sweeps/{sweep_id}/sheet"),
    ("POST", "/sweeps/{sweep_id}/cancel"),
    ("DELETE", "/sweeps/{sweep_id}"),
    ("GET", "/parameters"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
]


def test_the_schema_lists_every_operation(api_schema: schemathesis.BaseSchema) -> None:
    listed = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert listed == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_request_makes_a_server_error(api_schema: schemathesis.BaseSchema, method: str, path: str) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case) -> None:
        response = case.call()
        if path == "/readyz" and response.status_code == 503:
            return  # its documented answer: this service has no worker
        assert response.status_code < 500, f"{method} {case.formatted_path}: {response.status_code} {response.text}"
        if response.status_code >= 400:
            content_type = response.headers.get("content-type") or [""]
            content_type = content_type[0] if isinstance(content_type, list) else content_type
            assert content_type.startswith("application/problem+json"), response.text

    check()


def test_the_api_is_still_up_after_fuzzing(service: Service) -> None:
    assert httpx.get(f"{service.url}/healthz").status_code == 200
    assert service.api is not None and service.api.poll() is None
