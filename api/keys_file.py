"""The API keys file (`NST_API_KEYS_FILE`): who may call the `/jobs` routes.

One JSON object per line, in the order the keys were made:

    {"id": "k1f0c9e2a7b3d4e5f", "name": "alice", "sha256": "<64 hex digits>", "created_at": "2026-01-01T00:00:00.000Z"}

- `id`: stable and not secret; it names the key's owner in Redis (a job's `owner`) and in logs.
- `name`: what the operator calls it (`nst keys add NAME`); unique in the file.
- `sha256`: SHA-256 of the key, hex. The key itself is shown once, when it is made, and is
  stored nowhere. A fast hash is right here, unlike for passwords: a key is 256 random bits, so
  there is nothing to guess from a dictionary, and no work factor could make 2**256 smaller.
  It also keeps the check cheap on the hot poll of `GET /jobs/{id}`.

Blank lines are ignored. The file is rewritten whole, atomically (a temporary file renamed over
it, mode 0600), under a lock file beside it so that two `nst keys add` do not lose one another.
Standard library only: the `nst keys` commands use it without the API's dependencies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

KEY_PREFIX = "nst_"  # says what a leaked string is (secret scanners match on it)
MAX_KEY_LENGTH = 200  # longer is not one of ours: refused before hashing
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
FILE_MODE = 0o600


class KeysFileError(ValueError):
    """The keys file cannot be read or changed as asked; the message says why."""


@dataclass(frozen=True)
class ApiKey:
    """One line of the file: everything about a key except the key."""

    id: str
    name: str
    sha256: str
    created_at: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """256 random bits, URL-safe, with a recognisable prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "k" + secrets.token_hex(8)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_keys(text: str, source: str = "keys file") -> list[ApiKey]:
    """The keys in the file's text; a malformed line is an error naming its line number."""
    keys: list[ApiKey] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
            key = ApiKey(
                id=str(fields["id"]),
                name=str(fields["name"]),
                sha256=str(fields["sha256"]),
                created_at=str(fields.get("created_at", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise KeysFileError(f"{source}, line {number}: not a key record ({exc})") from None
        if not ID_PATTERN.fullmatch(key.id) or not SHA256_PATTERN.fullmatch(key.sha256):
            raise KeysFileError(f"{source}, line {number}: a bad id or sha256")
        if any(k.id == key.id or k.name == key.name for k in keys):
            raise KeysFileError(f"{source}, line {number}: the id or the name {key.name!r} is there twice")
        keys.append(key)
    return keys


def read_keys(path: Path) -> list[ApiKey]:
    """The file's keys; a missing file has none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KeysFileError(f"{path}: {exc.strerror}") from exc
    return parse_keys(text, str(path))


def write_keys(path: Path, keys: list[ApiKey]) -> None:
    """Replace the file atomically: readers see the old keys or the new ones, never half."""
    text = "".join(json.dumps(asdict(key)) + "\n" for key in keys)
    directory = path.parent if str(path.parent) else Path(".")
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        os.fchmod(descriptor, FILE_MODE)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Changes one at a time: a lock on a file beside the keys (the keys file itself is replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def add_key(path: Path, name: str) -> tuple[ApiKey, str]:
    """Make a key named `name` and append its record; returns the record and the key, which is
    not kept anywhere: the caller shows it once."""
    if not NAME_PATTERN.fullmatch(name):
        raise KeysFileError(f"{name!r}: a name is 1-64 letters, digits and . _ @ + - (starting with a letter or digit)")
    with _locked(path):
        keys = read_keys(path)
        if any(key.name == name for key in keys):
            raise KeysFileError(f"a key named {name!r} exists already (nst keys remove {name} first)")
        secret = new_key()
        record = ApiKey(id=new_key_id(), name=name, sha256=hash_key(secret), created_at=_utc_now())
        write_keys(path, [*keys, record])
    return record, secret


def remove_key(path: Path, name: str) -> ApiKey:
    """Remove the key named `name`; its jobs stay until they expire, visible to no one."""
    with _locked(path):
        keys = read_keys(path)
        removed = [key for key in keys if key.name == name]
        if not removed:
            raise KeysFileError(f"no key named {name!r} in {path}")
        write_keys(path, [key for key in keys if key.name != name])
    return removed[0]


class KeyRing:
    """The keys the API accepts, read from the file again when it changes (checked at most once
    per `check_seconds`, by its size, modification time and inode), so `nst keys add` and
    `remove` take effect without a restart. A file that became unreadable or malformed keeps
    the keys last read (and says so in the log); a file that was removed has no keys."""

    def __init__(self, path: Path, check_seconds: float = 1.0) -> None:
        self.path = path
        self.check_seconds = check_seconds
        self._keys: tuple[ApiKey, ...] = ()
        self._signature: tuple[int, int, int] | None = None
        self._loaded = False
        self._checked = time.monotonic()
        self._load(strict=True)

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        self._refresh()
        return self._keys

    def lookup(self, key: str) -> ApiKey | None:
        """The record of `key`, or None. Every record is compared, in constant time each, so
        the answer takes as long whichever key (if any) matched."""
        self._refresh()
        if not key or len(key) > MAX_KEY_LENGTH:
            return None
        digest = hash_key(key)
        found = None
        for record in self._keys:
            if hmac.compare_digest(record.sha256, digest):
                found = record
        return found

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_seconds:
            return
        self._checked = now
        self._load(strict=False)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _load(self, strict: bool) -> None:
        try:
            signature = self._stat()
            if self._loaded and signature == self._signature:
                return
            keys = read_keys(self.path) if signature is not None else []
        except (KeysFileError, OSError) as exc:
            if strict:
                raise KeysFileError(str(exc)) from exc
            log.error("API keys not reloaded, keeping the %d read before: %s", len(self._keys), exc)
            return
        if signature is None:
            log.warning("API keys file %s does not exist: /jobs refuses every request until `nst keys add`", self.path)
        else:
            log.info("API keys %s from %s: %d keys", "reloaded" if self._loaded else "read", self.path, len(keys))
        self._keys = tuple(keys)
        self._signature = signature
        self._loaded = True
