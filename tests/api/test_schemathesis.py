"""A standard API fuzzer against the live stack with API keys on: schemathesis's checks that the
service answers no 5xx and only what its OpenAPI document says (codes, content types, bodies,
headers; the event stream event by event), then its stateful phase, which follows the document's
links from a submitted or listed job to the job's operations. Each phase runs once: the same
cases whatever the machine's speed (a time budget would test less on a slower one); about 35 s on
two quiet cores.

The job limits of this stack are small (64 px, 50 iterations) so that the jobs it submits run in
moments; the document says so, as it does on any service.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx
import pytest

from api.keys_file import add_key
from tests.conftest import ROOT, SAMPLES
from tests.services import HANG, Service, StartService, is_final, poll, submit

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance"
)


@pytest.fixture(scope="module")
def key_and_service(tmp_path_factory: pytest.TempPathFactory, start_service: StartService) -> tuple[str, Service]:
    keys_file = tmp_path_factory.mktemp("schemathesis-keys") / "api-keys.jsonl"
    _, key = add_key(keys_file, "fuzzer")
    env = {"NST_API_KEYS_FILE": str(keys_file), "NST_MAX_SIDE": "64", "NST_MAX_ITERATIONS": "50"}
    return key, start_service(env, workers=1)


def test_schemathesis_finds_no_failure_and_follows_the_links(key_and_service: tuple[str, Service]) -> None:
    key, service = key_and_service
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=service.url, timeout=60, headers=auth) as http:
        # A finished job with snapshots: list_jobs' links lead the fuzzer to its result and images.
        job = submit(http, SAMPLES / "coffee.png", [SAMPLES / "starry_night.jpg"], {
            "iterations": 20, "height": 32, "width": 32, "snapshot_every": 10,
        }).json()  # fmt: skip
        assert poll(http, job["id"], is_final)["status"] == "succeeded"
    env = os.environ | {"SCHEMATHESIS_HOOKS": "tests.api.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    seed = os.environ.get("NST_FUZZ_SEED", "1")  # the same cases in every run unless asked otherwise
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{service.url}/openapi.json",
        "--header", f"Authorization: Bearer {key}", "--checks", CHECKS,
        "--phases", "coverage,fuzzing,stateful", "--seed", seed,
        # An event stream is read for the request timeout, then cut: 5 s keeps the fuzzer moving. An
        # answer that a busy machine makes later than that is asked for again, not a failure.
        "--request-timeout", "5", "--request-retries", "3",
        # DELETE would remove the finished job the links lead to; test_fuzz.py fuzzes it alone.
        "--exclude-method", "DELETE",
    ]  # fmt: skip
    run = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=2 * HANG)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-8000:]
    assert "Open API 3.2.0" in report
    assert re.search(r"Stateful \(in [\d.]+s\)", report), report[-3000:]

    log = (service.root / "api.log").read_text()
    answered = re.findall(r'"(GET|POST) (/jobs[^ ?]*)[^"]*" (\d{3})', log)
    assert not [line for line in answered if line[2].startswith("5")], "a 5xx reached the client"
    reached = {(method, re.sub(r"[0-9a-f]{32}", "ID", path), status) for method, path, status in answered}
    # The links took the fuzzer to a job's own operations with ids it could not have guessed.
    for wanted in (
        ("POST", "/jobs", "202"),
        ("GET", "/jobs/ID", "200"),
        ("GET", "/jobs/ID/result", "200"),
        ("GET", "/jobs/ID/snapshots/latest", "200"),
        ("GET", "/jobs/ID/events", "200"),
        ("GET", "/jobs/ID/losses", "200"),
    ):
        assert wanted in reached, f"never answered {wanted}"
    assert "Traceback" not in log and "Traceback" not in (service.root / "worker0.log").read_text()


def test_the_document_is_valid_openapi_3_2_and_its_3_1_rendering_valid_3_1(
    key_and_service: tuple[str, Service],
) -> None:
    import jsonschema_rs
    from schemathesis.specs.openapi.definitions import OPENAPI_31, OPENAPI_32

    _, service = key_and_service
    current = httpx.get(f"{service.url}/openapi.json").json()
    older = httpx.get(f"{service.url}/openapi-3.1.json").json()
    assert current["openapi"] == "3.2.0" and older["openapi"] == "3.1.0"
    assert [error.message for error in jsonschema_rs.validator_for(OPENAPI_32).iter_errors(current)] == []
    assert [error.message for error in jsonschema_rs.validator_for(OPENAPI_31).iter_errors(older)] == []
    stream = current["paths"]["/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    events = {variant["properties"]["event"]["const"] for variant in stream["itemSchema"]["oneOf"]}
    assert events == {"job", "status", "progress", "snapshot", "end"}
    submitted = current["paths"]["/jobs"]["post"]["responses"]["202"]["links"]
    listed = current["paths"]["/jobs"]["get"]["responses"]["200"]["links"]
    assert {link["operationId"] for link in submitted.values()} == {
        "get_job", "cancel_job", "job_events", "get_loss_history", "get_result", "get_snapshot",
    }  # fmt: skip
    assert submitted["get_job"]["parameters"] == {"job_id": "$response.body#/id"}
    assert listed["get_job"]["parameters"] == {"job_id": "$response.body#/items/0/id"}
    assert current["components"]["schemas"]["StyleParams"]["properties"]["height"]["maximum"] == 64  # NST_MAX_SIDE
