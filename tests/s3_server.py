"""An S3-compatible server for the tests: moto's (the S3 wire protocol over HTTP), in its own process.

`start_s3_server()` runs it on a free port of 127.0.0.1 (or on `host`, for a test host in a
network namespace: `prefix` is the command line that enters it) and creates a bucket;
`S3Server.env()` gives the AWS_* variables and NST_BLOB_STORE that point a service at it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx

from tests.services import HANG
from worker.local import free_port, wait_for_port

BUCKET = "nst-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_REGION": "us-east-1"}


@dataclass
class S3Server:
    process: subprocess.Popen[bytes]
    host: str
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self, prefix: str = "blobs") -> dict[str, str]:
        """What a service process needs to keep its pictures under s3://BUCKET/prefix here."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint, "NST_BLOB_STORE": f"s3://{BUCKET}/{prefix}"}

    def client(self) -> object:
        """A boto3 S3 client, to look at what the service stored."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_REGION"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under `prefix`."""
        client = self.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)  # type: ignore[attr-defined]
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def moto_command(host: str, port: int) -> list[str]:
    moto = Path(sys.executable).with_name("moto_server")
    return [str(moto), "-H", host, "-p", str(port)]


def start_s3_server(
    log_file: Path, host: str = "127.0.0.1", port: int | None = None, prefix: tuple[str, ...] = ()
) -> S3Server:
    """moto's server with the test bucket made; `prefix` runs it elsewhere (`ip netns exec HOST`)."""
    port = port or free_port()
    with log_file.open("ab") as log:
        process = subprocess.Popen([*prefix, *moto_command(host, port)], stdout=log, stderr=subprocess.STDOUT)
    server = S3Server(process, host, port)
    if not prefix:
        wait_for_port(port, process, timeout=HANG)
    else:
        _wait_for_endpoint(server)
    server.client().create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
    return server


def _wait_for_endpoint(server: S3Server) -> None:
    """For a server in another namespace: try its endpoint until it answers (or the process dies)."""
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {server.process.returncode}")
        try:
            httpx.get(server.endpoint, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("moto_server did not answer")
