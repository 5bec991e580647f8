"""Every problem type the service answers with, and what each means (RFC 9457).

A problem's `type` is the relative URI `/problems/{kind}`; the API serves a page there that
explains it, so a client (or a person) can follow the link. Both halves build every problem with
`problem_body`: the API for its errors, the worker for a job's `error`. A kind's status and title
live here only.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class ProblemType(NamedTuple):
    status: int  # the HTTP status it is answered with (a job's error carries it too)
    title: str  # the same for every problem of the kind (RFC 9457)
    description: str  # what the page at its type URI says


PROBLEM_TYPES: dict[str, ProblemType] = {
    "not-found": ProblemType(
        404,
        "Not found",
        "No such job, snapshot or page: the id is unknown, or the job has expired (jobs are kept for "
        "NST_JOB_TTL_SECONDS after they end).",
    ),
    "method-not-allowed": ProblemType(405, "Method not allowed", "The path exists but not with this HTTP method."),
    "http-error": ProblemType(400, "HTTP error", "A protocol-level error; `status` and `detail` say which."),
    "internal-error": ProblemType(
        500, "Internal error", "The server failed to answer because of a bug; it is logged with its traceback."
    ),
    "invalid-request": ProblemType(
        422,
        "Invalid request",
        "The form or a parameter is wrong. `errors` lists each as {field, message}, e.g. "
        '{"field": "params.iterations", "message": "Input should be less than or equal to 20000"}.',
    ),
    "unsupported-media-type": ProblemType(
        415, "Unsupported media type", "POST /jobs takes multipart/form-data with the fields content, style and params."
    ),
    "not-an-image": ProblemType(
        415,
        "Not an image",
        "An upload could not be decoded as an image (JPEG, PNG, WebP, GIF, BMP, TIFF and the other "
        "formats Pillow reads). `errors[0].field` names the upload.",
    ),
    "too-large": ProblemType(
        413,
        "Too large",
        "An upload is larger than NST_MAX_UPLOAD_BYTES, or the request body than all the uploads "
        "together may be. The limit is checked while the bytes arrive.",
    ),
    "too-many-parts": ProblemType(
        413, "Request too large", "Too many files or fields in the form, or a text field over 64 KB."
    ),
    "too-many-pixels": ProblemType(
        413,
        "Image too large",
        "An image has more pixels than NST_MAX_INPUT_PIXELS (read from its header, before "
        "decoding: decompression bombs are refused here).",
    ),
    "queue-full": ProblemType(
        429,
        "Too many queued jobs",
        "NST_MAX_QUEUED_JOBS jobs are waiting. Retry after the number of seconds in Retry-After.",
    ),
    "unauthorized": ProblemType(
        401,
        "Unauthorized",
        "This service needs an API key on every /jobs request (NST_API_KEYS_FILE is set): send it as "
        "`Authorization: Bearer KEY`. A key comes from the operator (`nst keys add NAME`); the answer's "
        "WWW-Authenticate header says whether the key was missing or not known.",
    ),
    "too-many-active-jobs": ProblemType(
        429,
        "Too many active jobs",
        "This API key (every client together, on a service without keys) has NST_MAX_ACTIVE_JOBS_PER_KEY jobs "
        "queued or running. Retry after the number of seconds in Retry-After, or cancel one of them.",
    ),
    "too-many-submissions": ProblemType(
        429,
        "Too many submissions",
        "This API key (every client together, on a service without keys) has had NST_MAX_SUBMISSIONS_PER_MINUTE "
        "jobs accepted this minute. Retry after the number of seconds in Retry-After.",
    ),
    "too-much-stored": ProblemType(
        429,
        "Too much stored",
        "This API key's jobs (everyone's, on a service without keys) hold NST_MAX_STORED_BYTES_PER_KEY bytes, or "
        "would with this job's uploads: uploads until their job ends, snapshots and results until they expire "
        "(NST_JOB_TTL_SECONDS after the job ends). Retry once some have expired.",
    ),
    "unavailable": ProblemType(
        503,
        "Service unavailable",
        "Redis (the job store and queue) is not answering, e.g. while it restarts. Retry "
        "after Retry-After; jobs already accepted are not lost.",
    ),
    "busy": ProblemType(
        503,
        "Server busy",
        "This API process is decoding as many uploaded pixels as it may at once (NST_MAX_DECODE_PIXELS) and "
        "the submission could not start within NST_DECODE_WAIT_SECONDS. Retry after Retry-After; nothing was "
        "stored.",
    ),
    "no-workers": ProblemType(503, "No workers", "Readiness: no worker has reported in the last few heartbeats."),
    "already-finished": ProblemType(
        409, "Job already finished", "A cancel arrived after the job had succeeded or failed; the job is unchanged."
    ),
    "not-finished": ProblemType(
        409,
        "Not finished",
        "The result exists once the job has succeeded; it is still queued or running. Watch "
        "GET /jobs/{id} or its events.",
    ),
    "no-result": ProblemType(
        409, "No result", "The job was canceled or failed, so it has no result; a failed job's `error` says why."
    ),
    "job-failed": ProblemType(500, "Job failed", "The optimisation stopped with an internal error."),
    "invalid-job": ProblemType(
        422, "Job failed", "The job could not run as asked, e.g. its inputs had expired; `detail` says what."
    ),
    "out-of-memory": ProblemType(
        507, "Out of memory", "The worker's device ran out of memory; a smaller height and width need less."
    ),
    "too-much-memory": ProblemType(
        422,
        "Job too large for memory",
        "The job needs more memory than any live worker's budget (NST_MEMORY_BUDGET_BYTES, by default 85% "
        "of the device's free memory), even with activation checkpointing. `detail` names the working "
        "size, the memory it needs and the budget; `memory_needed_bytes` and `memory_budget_bytes` give "
        "them as numbers. A smaller height and width, or a worker with more memory, runs it.",
    ),
    "unknown-host": ProblemType(
        421,
        "Unknown host",
        "The request's Host header names a host this server does not answer to (421). It answers to IP "
        "addresses, localhost and the names in NST_ALLOWED_HOSTS; this stops DNS rebinding, where a web page "
        "reaches a service on your machine or network through a name its attacker controls.",
    ),
    "cross-origin": ProblemType(
        403,
        "Cross-origin request refused",
        "A web page of another origin sent a request that changes something (a submission, a cancel). Only "
        "the service's own page and the origins in NST_CORS_ORIGINS may; scripts and curl send no Origin and "
        "are not affected.",
    ),
    "headers-too-large": ProblemType(
        431,
        "Request headers too large",
        "The request's headers were larger than NST_MAX_HEADER_BYTES (431); the connection was closed.",
    ),
    "header-timeout": ProblemType(
        408,
        "Request header timeout",
        "The request's headers did not arrive whole within NST_HEADER_TIMEOUT_SECONDS (408); the connection "
        "was closed.",
    ),
    "diverged": ProblemType(
        422,
        "Job diverged",
        "Every loss of the optimisation was infinite or not a number, so there is no picture to keep: the "
        "weights are too large (content_weight, style_weight, tv_weight or a layer weight); smaller ones run.",
    ),
    "timeout": ProblemType(504, "Job timed out", "The job ran past NST_JOB_TIMEOUT_SECONDS and was stopped."),
    "worker-lost": ProblemType(
        500,
        "Worker lost",
        "The worker running the job stopped (it crashed or was killed) NST_MAX_ATTEMPTS times; each "
        "time the job was resumed from its last checkpoint on another worker.",
    ),
    "service-full": ProblemType(
        503,
        "Service full",
        "Redis (job state, events, snapshots) holds more than NST_REDIS_HIGH_WATER of its maxmemory: no new "
        "job is stored until finished jobs expire or are deleted. Try again after Retry-After.",
    ),
    "storage-full": ProblemType(
        507,
        "Storage full",
        "The blob store (NST_BLOB_STORE) has no room for the uploads: its disk would keep less than "
        "NST_BLOB_MIN_FREE_BYTES free, or the S3 service said it is full. Nothing was stored.",
    ),
    "storage-unavailable": ProblemType(
        503,
        "Storage unavailable",
        "The blob store (NST_BLOB_STORE) did not answer or refused a read or a write; nothing was kept. "
        "For a job's error: the worker could not store its result after retrying.",
    ),
    "range-not-satisfiable": ProblemType(
        416,
        "Range not satisfiable",
        "The Range header asks for bytes the image does not have; Content-Range says its size.",
    ),
    "no-snapshot-yet": ProblemType(
        409,
        "No snapshot yet",
        "The job has no snapshot yet (it is queued, or has not reached its first iteration), so there is nothing "
        "to make a timelapse of. Its first snapshot comes at iteration 1; watch GET /jobs/{id} or its events.",
    ),
    "timelapse-unsupported": ProblemType(
        501,
        "Timelapse not supported",
        "This API process's Pillow cannot write animated WebP (it was built without libwebp's animation "
        "support), so GET /jobs/{id}/timelapse is not available here; the snapshots themselves are.",
    ),
}


def problem_type_uri(kind: str) -> str:
    """The type URI of a known kind; an unknown kind is a bug, caught here rather than by a client."""
    if kind not in PROBLEM_TYPES:
        raise ValueError(f"unknown problem type {kind!r}: add it to jobs/problems.py")
    return f"/problems/{kind}"


def problem_body(kind: str, detail: str, *, status: int | None = None, **extra: Any) -> dict[str, Any]:
    """The RFC 9457 object for a problem of `kind`: its type, title and status from the catalogue
    (`status` only where the kind spans several, as http-error does), `detail` saying what went
    wrong and what to change, and any `extra` members (instance, errors, figures)."""
    known = PROBLEM_TYPES.get(kind)
    if known is None:
        raise ValueError(f"unknown problem type {kind!r}: add it to jobs/problems.py")
    body: dict[str, Any] = {"type": problem_type_uri(kind), "title": known.title, "status": status or known.status}
    return body | {"detail": detail} | extra
