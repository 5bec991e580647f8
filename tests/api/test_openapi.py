"""The OpenAPI document is one a generated client can use: a client generated from the live
`/openapi.json` by openapi-python-client runs a job end to end. Also the answers that go with it:
problem types that resolve to a page, 409s worded for the job's status, offline API docs."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs.problems import PROBLEM_TYPES
from jobs.view import JobPublic, ProgressEvent, SnapshotEvent, StatusEvent, undeclared_fields
from tests.conftest import SAMPLES
from tests.services import HANG, Service, is_final, poll, submit

COFFEE = SAMPLES / "coffee.png"
STARRY = SAMPLES / "starry_night.jpg"
SCREAM = SAMPLES / "the_scream.jpg"
TINY = {"height": 32, "width": 32}

OPERATION_IDS = {
    ("post", "/jobs"): "submit_job",
    ("get", "/jobs/{job_id}/timelapse"): "get_timelapse",
    ("post", "/sweeps"): "submit_sweep",
    ("get", "/sweeps/{sweep_id}"): "get_sweep",
    ("get", "/sweeps/{sweep_id}/sheet"): "get_sweep_sheet",
    ("post", "/sweeps/{sweep_id}/cancel"): "cancel_sweep",
    ("delete", "/sweeps/{sweep_id}"): "delete_sweep",
    ("get", "/jobs"): "list_jobs",
    ("get", "/jobs/{job_id}"): "get_job",
    ("post", "/jobs/{job_id}/cancel"): "cancel_job",
    ("delete", "/jobs/{job_id}"): "delete_job",
    ("get", "/jobs/{job_id}/snapshots/{iteration}"): "get_snapshot",
    ("get", "/jobs/{job_id}/result"): "get_result",
    ("get", "/jobs/{job_id}/events"): "job_events",
    ("get", "/jobs/{job_id}/losses"): "get_loss_history",
    ("get", "/parameters"): "get_parameters",
    ("get", "/healthz"): "get_health",
    ("get", "/readyz"): "get_readiness",
}
# Each route's own error codes, and no others.
ERROR_CODES = {
    "submit_job": {413, 415, 422, 429, 503, 507},
    "get_timelapse": {404, 409, 416, 501, 503},
    "submit_sweep": {413, 415, 422, 429, 503, 507},
    "get_sweep": {404, 503},
    "get_sweep_sheet": {404, 503},
    "cancel_sweep": {404, 503},
    "delete_sweep": {404, 503},
    "delete_job": {404, 503},
    "list_jobs": {422, 503},
    "get_job": {404, 503},
    "cancel_job": {404, 409, 503},
    "get_snapshot": {404, 416, 503},
    "get_result": {404, 409, 416, 503},
    "job_events": {404, 503},
    "get_loss_history": {404, 503},
    "get_parameters": set(),
    "get_health": set(),
    "get_readiness": {503},
}


@pytest.fixture(scope="module")
def document(service: Service) -> dict[str, Any]:
    return httpx.get(f"{service.url}/openapi.json").json()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield method, path, operation


def test_operation_ids_and_error_responses_are_each_route_s_own(document: dict[str, Any]) -> None:
    found = {(method, path): op["operationId"] for method, path, op in operations(document)}
    assert found == OPERATION_IDS
    for _, _, operation in operations(document):
        codes = {int(code) for code in operation["responses"] if int(code) >= 400}
        assert codes == ERROR_CODES[operation["operationId"]], operation["operationId"]
        for code in codes:
            content = operation["responses"][str(code)]["content"]
            assert content == {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    problem = document["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"])


def test_images_are_binary_and_headers_and_timestamps_are_declared(document: dict[str, Any]) -> None:
    paths = document["paths"]
    images = {"/jobs/{job_id}/result": "image/png", "/jobs/{job_id}/snapshots/{iteration}": "image/jpeg"}
    for path, media_type in images.items():
        content = paths[path]["get"]["responses"]["200"]["content"]
        assert content[media_type]["schema"] == {"type": "string", "format": "binary"}
    assert "X-Iteration" in paths["/jobs/{job_id}/snapshots/{iteration}"]["get"]["responses"]["200"]["headers"]
    for path in images:  # conditional and ranged GETs (api/byte_ranges.py)
        image = paths[path]["get"]
        assert {"ETag", "Accept-Ranges", "Content-Length"} <= set(image["responses"]["200"]["headers"])
        assert "Content-Range" in image["responses"]["206"]["headers"] and "304" in image["responses"]
        assert "Content-Range" in image["responses"]["416"]["headers"]
        assert {"if-none-match", "range", "if-range"} <= {p["name"].lower() for p in image["parameters"]}
    assert "Location" in paths["/jobs/{job_id}/result"]["get"]["responses"]["307"]["headers"]
    assert "Location" in paths["/jobs"]["post"]["responses"]["202"]["headers"]
    assert "Retry-After" in paths["/jobs"]["post"]["responses"]["429"]["headers"]
    get_job = paths["/jobs/{job_id}"]["get"]
    assert "ETag" in get_job["responses"]["200"]["headers"] and "304" in get_job["responses"]
    assert "if-none-match" in {p["name"].lower() for p in get_job["parameters"]}
    job = document["components"]["schemas"]["JobPublic"]["properties"]
    assert job["created_at"] == {"type": "string", "format": "date-time", "title": "Created At"}
    assert {"type": "string", "format": "date-time"} in job["started_at"]["anyOf"]


def test_params_is_declared_as_the_parameters_object(document: dict[str, Any]) -> None:
    body = document["paths"]["/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["properties"]["params"]["$ref"] == "#/components/schemas/StyleParams"
    assert body["encoding"]["params"]["contentType"] == "application/json"
    params = document["components"]["schemas"]["StyleParams"]
    assert params["additionalProperties"] is False and params["properties"]["iterations"]["default"] == 2500


def test_params_as_a_json_part_and_as_curl_s_text_field_both_work(service: Service) -> None:
    files = [("content", ("c.png", COFFEE.read_bytes())), ("style", ("s.jpg", STARRY.read_bytes()))]
    small = b'{"iterations": 1, "height": 16, "width": 16}'
    as_part = ("params", (None, small, "application/json"))
    as_named_part = ("params", ("params.json", small, "application/json"))
    for params in (as_part, as_named_part):
        answer = httpx.post(f"{service.url}/jobs", files=[*files, params])
        assert answer.status_code == 202, answer.text
        assert answer.json()["params"]["iterations"] == 1
    as_text = httpx.post(f"{service.url}/jobs", files=files, data={"params": small.decode()})
    assert as_text.status_code == 202 and as_text.json()["params"]["width"] == 16
    zero = ("params", (None, b'{"iterations": 0}', "application/json"))
    bad = httpx.post(f"{service.url}/jobs", files=[*files, zero])
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "params.iterations"


def generate_client(url: str, out: Path) -> Any:
    """openapi-python-client's package for the live document, imported. The generator reads
    OpenAPI 3.1 at most: it takes the document's 3.1 rendering, as docs/api.md tells users to."""
    document = out / "openapi.json"
    document.write_bytes(httpx.get(f"{url}/openapi-3.1.json").content)
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(document),
         "--output-path", str(out / "nst_client"), "--meta", "none"],
        capture_output=True, text=True, timeout=HANG, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Unsupported content_type" not in done.stdout + done.stderr
    sys.path.insert(0, str(out))
    return importlib.import_module("nst_client")


def test_a_generated_client_runs_a_job_end_to_end(service: Service, tmp_path: Path) -> None:
    nst_client = generate_client(service.url, tmp_path)
    from nst_client.api.jobs import get_job, get_result, get_snapshot, submit_job
    from nst_client.models import JobPublic as ClientJob
    from nst_client.models import JobPublicStatus, Problem, StyleParams, SubmitJobBody
    from nst_client.types import File

    client = nst_client.Client(base_url=service.url, raise_on_unexpected_status=True)
    body = SubmitJobBody(
        content=File(payload=COFFEE.open("rb"), file_name="coffee.png", mime_type="image/png"),
        style=[
            File(payload=STARRY.open("rb"), file_name="starry_night.jpg", mime_type="image/jpeg"),
            File(payload=SCREAM.open("rb"), file_name="the_scream.jpg", mime_type="image/jpeg"),
        ],
        params=StyleParams(iterations=60, height=32, width=32, style_blend_weights=[2.0, 1.0], seed=7),
    )
    submitted = submit_job.sync_detailed(client=client, body=body)
    assert submitted.status_code == 202 and isinstance(submitted.parsed, ClientJob)
    assert submitted.headers["location"] == f"/jobs/{submitted.parsed.id}"
    job = submitted.parsed
    assert job.params.style_blend_weights == [2.0, 1.0] and job.params.seed == 7
    while job.status not in (JobPublicStatus.SUCCEEDED, JobPublicStatus.FAILED, JobPublicStatus.CANCELED):
        job = get_job.sync(job.id, client=client)
        assert isinstance(job, ClientJob)
    assert job.status == JobPublicStatus.SUCCEEDED and job.finished_at is not None and job.created_at.tzinfo
    result = get_result.sync(job.id, client=client)
    assert isinstance(result, File) and result.payload.read().startswith(b"\x89PNG")
    snapshot = get_snapshot.sync(job.id, "latest", client=client)
    assert isinstance(snapshot, File) and snapshot.payload.read()[:2] == b"\xff\xd8"
    missing = get_job.sync("0" * 32, client=client)
    assert isinstance(missing, Problem) and missing.status == 404 and missing.type_ == "/problems/not-found"


def test_answers_match_the_documented_job_model(client: httpx.Client) -> None:
    job = submit(client, COFFEE, [STARRY], {"iterations": 20, **TINY}).json()
    events = sse_events(client.get(f"/jobs/{job['id']}/events").text)  # from now until its end
    final = poll(client, job["id"], is_final)
    answers = [job, final, *client.get("/jobs").json()["items"], *(e for kind, e in events if kind in ("job", "end"))]
    for answer in answers:
        JobPublic.model_validate(answer)
        assert undeclared_fields(JobPublic, answer) == []  # nothing the document does not show
    models = {"progress": ProgressEvent, "snapshot": SnapshotEvent, "status": StatusEvent}
    for kind, data in events:
        if kind in models:
            models[kind].model_validate(data)
            assert undeclared_fields(models[kind], data) == [], kind
    assert events[-1][0] == "end"  # and, unless the job was over first, its progress on the way


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) of each event in a whole Server-Sent Events body."""
    found = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields and "data" in fields:
            found.append((fields["event"], json.loads(fields["data"])))
    return found


def test_problem_types_resolve_to_a_page(client: httpx.Client) -> None:
    for kind, problem_type in PROBLEM_TYPES.items():
        page = client.get(f"/problems/{kind}")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert problem_type.title in page.text
    missing = client.get(f"/jobs/{'0' * 32}").json()
    assert client.get(missing["type"]).status_code == 200
    assert client.get("/problems/no-such-kind").status_code == 404


def test_the_result_of_a_canceled_or_unfinished_job_is_a_409_that_says_why(client: httpx.Client) -> None:
    job = submit(client, COFFEE, [STARRY], {"iterations": 20000, **TINY}).json()
    poll(client, job["id"], lambda j: j["status"] == "running")
    running = client.get(f"/jobs/{job['id']}/result")
    assert running.status_code == 409 and running.json()["type"] == "/problems/not-finished"
    assert "running" in running.json()["detail"]
    client.post(f"/jobs/{job['id']}/cancel")
    poll(client, job["id"], is_final)
    canceled = client.get(f"/jobs/{job['id']}/result")
    assert canceled.status_code == 409 and canceled.json()["type"] == "/problems/no-result"
    assert "canceled" in canceled.json()["detail"] and "no result" in canceled.json()["detail"]


def test_the_api_docs_load_nothing_from_another_host(client: httpx.Client) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        assert not re.search(r"(src|href)=[\"']https?://", html.text), html.text
        for asset in re.findall(r"(?:src|href)=[\"'](/static/[^\"']+)", html.text):
            assert client.get(asset).status_code == 200, asset


def test_a_bug_is_answered_as_a_500_problem_too() -> None:
    import asyncio

    from api.app import create_app
    from jobs.settings import Settings

    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0"))

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("a bug")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            return await client.get("/broken")

    answer = asyncio.run(call())
    assert answer.status_code == 500 and answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == "/problems/internal-error" and "a bug" not in answer.text
