"""The Lua scripts of jobs/lua/, loaded as package data and called with named KEYS and ARGV.

A script's file opens with comment lines that declare what it takes, in the order Redis gets it:

    -- KEYS: job events
    -- ARGV: token fields history? ttl layout
    -- USES: emit tenancy

The loader puts a prologue in front that binds each name into the Lua tables KEY and ARG
(`KEY.job`, `ARG.ttl`), then the shared preludes that USES names (files of the same folder, which
may USE others in turn and declare the KEYS/ARGV names they read), then the file itself. Python
calls it with mappings, `script(keys={"job": ...}, args={"ttl": ...})`; exactly the declared names
must be given, or ValueError is raised before anything reaches Redis.

Absent values, one rule everywhere: a name marked `?` may be absent. Python passes None; it travels
as "" and the script reads nil (`if ARG.history then`). An empty value for such a name would read
as absent too, so it is refused. Any other name must have a value (None is refused), which reaches
the script as it is, "" included. Values travel as Redis sends them: bytes untouched (images are
not UTF-8), numbers as their decimal text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
import redis.asyncio as aioredis

Key = str | bytes
Value = str | bytes | int | float | None  # None: absent (optional names only)

_DIRECTIVE = re.compile(r"--\s*(KEYS|ARGV|USES):(.*)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A name becomes a Lua table field read as `ARG.name`: a keyword there is a syntax error.
_LUA_KEYWORDS = frozenset(
    {"and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in", "local"}
    | {"nil", "not", "or", "repeat", "return", "then", "true", "until", "while"}
)


@dataclass(frozen=True)
class _Header:
    keys: tuple[str, ...]
    args: tuple[str, ...]
    optional: frozenset[str]
    uses: tuple[str, ...]
    declared: frozenset[str]  # which of KEYS, ARGV, USES the file declares


def _read(name: str) -> str:
    # Anchored on the folder itself, not on `jobs`: an editable install made while jobs/ had no
    # __init__.py imports `jobs` as a namespace package, which importlib.resources cannot read.
    return resources.files("jobs.lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


def _names(file: str, kind: str, words: list[str], *, optional_allowed: bool) -> tuple[list[str], set[str]]:
    names: list[str] = []
    optional: set[str] = set()
    for word in words:
        name = word.removesuffix("?")
        if word.endswith("?"):
            if not optional_allowed:
                raise ValueError(f"{file}: {kind} cannot mark {name} optional")
            optional.add(name)
        if not _NAME.fullmatch(name) or name in _LUA_KEYWORDS:
            raise ValueError(f"{file}: {kind} name {word!r} is a Lua keyword or not an identifier")
        if name in names:
            raise ValueError(f"{file}: {kind} names {name} twice")
        names.append(name)
    return names, optional


def _parse(file: str, text: str) -> _Header:
    """The directives of the file's opening comment block (the first code line ends it)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break
        match = _DIRECTIVE.fullmatch(stripped)
        if match is None:
            continue
        if match[1] in found:
            raise ValueError(f"{file}: {match[1]} declared twice")
        found[match[1]] = match[2].split()
    keys, _ = _names(file, "KEYS", found.get("KEYS", []), optional_allowed=False)
    args, optional = _names(file, "ARGV", found.get("ARGV", []), optional_allowed=True)
    uses, _ = _names(file, "USES", found.get("USES", []), optional_allowed=False)
    return _Header(tuple(keys), tuple(args), frozenset(optional), tuple(uses), frozenset(found))


@functools.cache
def _prelude(name: str) -> tuple[_Header, str]:
    text = _read(name)
    return _parse(f"{name}.lua", text), text


def _preludes(uses: tuple[str, ...], chain: tuple[str, ...]) -> list[str]:
    """The preludes `uses` needs, each after the ones it uses itself, each once."""
    order: list[str] = []
    for name in uses:
        if name in chain:
            raise ValueError(f"{name}.lua: USES goes round in a circle: {' -> '.join((*chain, name))}")
        header, _ = _prelude(name)
        for needed in [*_preludes(header.uses, (*chain, name)), name]:
            if needed not in order:
                order.append(needed)
    return order


def _prologue(name: str, header: _Header) -> str:
    """One line that binds KEY and ARG from KEYS and ARGV, in the declared order."""

    def arg(index: int, arg_name: str) -> str:
        if arg_name in header.optional:  # "" on the wire is absent: nil here
            return f"{arg_name} = ARGV[{index}] ~= '' and ARGV[{index}] or nil"
        return f"{arg_name} = ARGV[{index}]"

    keys = ", ".join(f"{key} = KEYS[{i}]" for i, key in enumerate(header.keys, 1))
    args = ", ".join(arg(i, arg_name) for i, arg_name in enumerate(header.args, 1))
    # A caller that bypasses the Python check (a positional call) still cannot shift the names.
    count = len(header.keys), len(header.args)
    check = (
        f"if #KEYS ~= {count[0]} or #ARGV ~= {count[1]} then "
        f"return redis.error_reply('{name}.lua takes {count[0]} keys and {count[1]} arguments') end"
    )
    return f"{check} local KEY = {{{keys}}} local ARG = {{{args}}}"


@dataclass(frozen=True)
class LuaScript:
    """A loaded script: its declared names and the whole text Redis runs."""

    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    optional: frozenset[str]
    source: str

    def wire(self, keys: Mapping[str, Key], args: Mapping[str, Value]) -> tuple[list[Key], list[str | bytes | float]]:
        """KEYS and ARGV in the declared order; raises ValueError unless exactly the declared names are given."""
        _exactly(self.name, "keys", self.keys, keys)
        _exactly(self.name, "args", self.args, args)
        values: list[str | bytes | float] = []
        for name in self.args:
            value = args[name]
            if name in self.optional:
                if value in ("", b""):
                    raise ValueError(f"{self.name}.lua: an empty {name} would read as absent; pass None")
                values.append("" if value is None else value)
            elif value is None:
                raise ValueError(f"{self.name}.lua: {name} is not optional; None is no value")
            else:
                values.append(value)
        return [keys[name] for name in self.keys], values

    def register(self, client: redis.Redis) -> Bound:
        """The script on a synchronous client (its calls may name a pipeline instead)."""
        return Bound(self, client.register_script(self.source))

    def register_async(self, client: aioredis.Redis) -> AsyncBound:
        """The script on an asyncio client (its calls may name a pipeline instead)."""
        return AsyncBound(self, client.register_script(self.source))


def _exactly(script: str, kind: str, declared: tuple[str, ...], given: Mapping[str, object]) -> None:
    missing = [name for name in declared if name not in given]
    unknown = sorted(name for name in given if name not in declared)
    if missing or unknown:
        wrong = [
            f"{label} {', '.join(names)}" for label, names in (("missing", missing), ("unknown", unknown)) if names
        ]
        raise ValueError(f"{script}.lua {kind}: {'; '.join(wrong)} (declared: {', '.join(declared)})")


class Bound:
    """A script registered on a synchronous client, called with named keys and arguments."""

    def __init__(self, spec: LuaScript, script: redis.commands.core.Script) -> None:
        self.spec = spec
        self._script = script

    def __call__(self, *, keys: Mapping[str, Key], args: Mapping[str, Value], client: redis.Redis | None = None) -> Any:
        wire_keys, wire_args = self.spec.wire(keys, args)
        return self._script(keys=wire_keys, args=wire_args, client=client)


class AsyncBound:
    """A script registered on an asyncio client; awaiting a call in a pipeline only queues it there."""

    def __init__(self, spec: LuaScript, script: redis.commands.core.AsyncScript) -> None:
        self.spec = spec
        self._script = script

    def __call__(
        self, *, keys: Mapping[str, Key], args: Mapping[str, Value], client: aioredis.Redis | None = None
    ) -> Awaitable[Any]:
        wire_keys, wire_args = self.spec.wire(keys, args)  # raises here, before any await
        return self._script(keys=wire_keys, args=wire_args, client=client)


@functools.cache
def load(name: str) -> LuaScript:
    """jobs/lua/`name`.lua with its preludes; raises ValueError for a file whose declarations do not hold."""
    file = f"{name}.lua"
    text = _read(name)
    header = _parse(file, text)
    if not {"KEYS", "ARGV"} <= header.declared:  # a script says what it takes, even if nothing
        raise ValueError(f"{file}: declare -- KEYS: and -- ARGV: (empty if none)")
    parts = [_prologue(name, header)]
    for prelude in _preludes(header.uses, (name,)):
        needs, body = _prelude(prelude)
        for kind, wanted, have in (("KEYS", needs.keys, header.keys), ("ARGV", needs.args, header.args)):
            absent = [n for n in wanted if n not in have]
            if absent:
                raise ValueError(f"{file}: {prelude}.lua reads {kind} {absent}, which {file} does not declare")
        loose = [n for n in needs.args if n not in needs.optional and n in header.optional]
        if loose:
            raise ValueError(f"{file}: {prelude}.lua needs {loose}, which {file} marks optional")
        parts.append(body)
    parts.append(text)
    return LuaScript(name, header.keys, header.args, header.optional, "\n".join(parts))
