"""Where the service keeps its large files: uploads, results and checkpoints (NST_BLOB_STORE).

Redis keeps a job's state, events, losses and snapshots; the pictures go to a blob store that
every API and worker host reaches: a directory (`file:///var/lib/nst/blobs`, or a plain path)
on one machine or a shared volume, or any S3-compatible service (`s3://bucket/prefix`, with the
usual AWS_* variables; AWS_ENDPOINT_URL for MinIO, R2 and the like).

obstore gives one API over both (and GCS and Azure): sync and async calls, ranged and
streaming reads, multipart writes from a file, listing and signed URLs, in one compiled wheel
with no further dependency. Objects of a job live under `jobs/{id}/`, so a job's objects are
one listing away (DELETE, the sweeper).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlparse

import obstore
from obstore.exceptions import BaseError, NotFoundError
from obstore.store import LocalStore, S3Store

if TYPE_CHECKING:
    from obstore import Attributes, ObjectMeta

JOBS_PREFIX = "jobs/"
STREAM_CHUNK_BYTES = 256 * 1024  # what a streamed read hands out at a time


def content_path(job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}/content"


def style_path(job_id: str, index: int) -> str:
    return f"{JOBS_PREFIX}{job_id}/style-{index}"


def input_paths(job_id: str, style_count: int) -> list[str]:
    return [content_path(job_id), *(style_path(job_id, index) for index in range(style_count))]


def result_path(job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}/result.png"


def checkpoint_path(job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}/checkpoint"


class BlobError(RuntimeError):
    """The store did not do what was asked (unreachable, refused): the caller answers 503 or retries."""


class StoreFull(BlobError):
    """The store has no room: a disk with too little space left, or an S3 service that says so (507)."""


@dataclass(frozen=True)
class BlobInfo:
    size: int
    etag: str  # quoted, as HTTP wants it
    modified: datetime


# Words with which a filesystem or an S3-compatible server says it is full.
_FULL_MARKERS = ("No space left on device", "XMinioStorageFull", "StorageFull", "Disk quota exceeded")


def _failure(action: str, path: str, exc: Exception) -> BlobError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if any(marker in str(exc) for marker in _FULL_MARKERS) or getattr(exc, "errno", None) == errno.ENOSPC:
        return StoreFull(f"the blob store is full ({action} {path}): {text}")
    return BlobError(f"the blob store failed ({action} {path}): {text}")


def _quoted(etag: str | None, size: int, modified: datetime) -> str:
    if etag:
        return etag if etag.startswith(('"', 'W/"')) else f'"{etag}"'
    return f'"{size}-{modified.timestamp()}"'


class BlobStore:
    """A directory or an S3 bucket (with a prefix) holding the service's large files."""

    def __init__(self, url: str, min_free_bytes: int = 0) -> None:
        self.url = url
        self.min_free_bytes = min_free_bytes
        self.root: Path | None = None
        if "://" not in url or url.startswith("file://"):
            raw = url.removeprefix("file://") if url.startswith("file://") else url
            self.root = Path(raw).expanduser().resolve()
            self.root.mkdir(parents=True, exist_ok=True)
            self.kind = "file"
            self._store: LocalStore | S3Store = LocalStore(self.root)
        elif urlparse(url).scheme == "s3":
            self.kind = "s3"
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
            # MinIO and moto on a private network speak plain HTTP; obstore refuses it unless told.
            parsed = urlparse(url)
            prefix = parsed.path.strip("/") or None
            if endpoint.startswith("http://"):
                self._store = S3Store(parsed.netloc, prefix=prefix, client_options={"allow_http": True})
            else:
                self._store = S3Store(parsed.netloc, prefix=prefix)
        else:
            raise ValueError(f"NST_BLOB_STORE must be file:///path, a directory or s3://bucket/prefix, not {url!r}")

    def __repr__(self) -> str:
        return f"BlobStore({self.url!r})"

    @property
    def can_sign(self) -> bool:
        return self.kind == "s3"

    # -- room --------------------------------------------------------------------------------
    def free_bytes(self) -> int | None:
        """Bytes free on the directory's disk; None for S3 (it says so only when a write fails)."""
        if self.root is None:
            return None
        return shutil.disk_usage(self.root).free

    def check_room(self, incoming: int) -> None:
        """StoreFull unless `incoming` bytes fit and leave NST_BLOB_MIN_FREE_BYTES free."""
        free = self.free_bytes()
        if free is not None and free - incoming < self.min_free_bytes:
            raise StoreFull(
                f"the blob store's disk has {free} bytes free; {incoming} more would leave less than the "
                f"{self.min_free_bytes} it keeps free"
            )

    # -- sync (the worker, the API's submit and delete, the sweeper) ---------------------------
    def put(self, path: str, data: bytes | BinaryIO, content_type: str | None = None) -> None:
        """Store `data` (bytes, or a file read from where it stands, in parts for a large one).
        `content_type` is what a signed URL serves the object as (S3 keeps it with the object)."""
        attributes: Attributes | None = {"Content-Type": content_type} if content_type and self.kind == "s3" else None
        try:
            obstore.put(self._store, path, data, attributes=attributes)
        except (BaseError, OSError) as exc:
            raise _failure("writing", path, exc) from exc

    def get(self, path: str) -> bytes | None:
        try:
            return bytes(obstore.get(self._store, path).bytes())
        except (NotFoundError, FileNotFoundError):
            return None
        except (BaseError, OSError) as exc:
            raise _failure("reading", path, exc) from exc

    def delete(self, paths: Iterable[str]) -> None:
        """Remove objects; one that is not there is no error."""
        for path in paths:
            try:
                obstore.delete(self._store, path)
            except (NotFoundError, FileNotFoundError):
                continue
            except (BaseError, OSError) as exc:
                raise _failure("deleting", path, exc) from exc

    def job_objects(self, job_id: str) -> list[str]:
        return [item["path"] for item in self._list(f"{JOBS_PREFIX}{job_id}/")]

    def delete_job(self, job_id: str, paths: Iterable[str] | None = None) -> int:
        """Remove every object of the job (`paths`, when a listing gave them already); returns
        how many there were."""
        paths = list(paths) if paths is not None else self.job_objects(job_id)
        self.delete(paths)
        if self.root is not None:  # the local store leaves the empty directory behind
            shutil.rmtree(self.root / JOBS_PREFIX / job_id, ignore_errors=True)
        return len(paths)

    def jobs(self) -> dict[str, dict[str, datetime]]:
        """Every job with objects here -> its objects' paths and when each was written: one
        listing of the whole store (for the sweeper)."""
        found: dict[str, dict[str, datetime]] = {}
        for item in self._list(JOBS_PREFIX):
            parts = item["path"].split("/")
            if len(parts) >= 3:
                found.setdefault(parts[1], {})[item["path"]] = item["last_modified"]
        return found

    def _list(self, prefix: str) -> list[ObjectMeta]:
        try:
            return [item for batch in obstore.list(self._store, prefix) for item in batch]
        except (NotFoundError, FileNotFoundError):
            return []
        except (BaseError, OSError) as exc:
            raise _failure("listing", prefix, exc) from exc

    def sign(self, path: str, seconds: int) -> str:
        """A URL that reads the object for `seconds` without credentials (S3 only)."""
        if not isinstance(self._store, S3Store):
            raise BlobError("a directory store cannot sign URLs")
        try:
            return obstore.sign(self._store, "GET", path, timedelta(seconds=seconds))
        except (BaseError, OSError) as exc:
            raise _failure("signing", path, exc) from exc

    # -- async (the API's read path) -----------------------------------------------------------
    async def head_async(self, path: str) -> BlobInfo | None:
        try:
            info = await obstore.head_async(self._store, path)
        except (NotFoundError, FileNotFoundError):
            return None
        except (BaseError, OSError) as exc:
            raise _failure("reading", path, exc) from exc
        size, modified = int(info["size"]), info["last_modified"]
        return BlobInfo(size, _quoted(info["e_tag"], size, modified), modified)

    async def stream_async(self, path: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the object, a chunk at a time (never the whole object in memory)."""
        if end <= start:
            return
        try:
            result = await obstore.get_async(self._store, path, options={"range": (start, end)})
            async for chunk in result.stream(min_chunk_size=STREAM_CHUNK_BYTES):
                yield bytes(chunk)
        except (BaseError, OSError) as exc:
            raise _failure("reading", path, exc) from exc
