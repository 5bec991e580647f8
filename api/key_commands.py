"""`nst keys add|list|remove`: the API keys in NST_API_KEYS_FILE (see api/keys_file.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from core.errors import CommandError

FILE_HELP = "the keys file (default: $NST_API_KEYS_FILE)"


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = commands.add_parser(
        "keys",
        help="manage the API keys in $NST_API_KEYS_FILE",
        description="Manage the API keys the HTTP API accepts when NST_API_KEYS_FILE is set. The API reads the "
        "file again within a second of a change: no restart.",
    )
    actions = keys.add_subparsers(dest="keys_command", required=True)
    add = actions.add_parser(
        "add",
        help="make a key; prints it once on stdout",
        description="Make a key named NAME and print it on stdout, once: only its hash is kept.",
    )
    add.add_argument("name", metavar="NAME")
    add.set_defaults(handler=run_add)
    listing = actions.add_parser("list", help="list the keys: name, id, created", description="List the keys.")
    listing.set_defaults(handler=run_list)
    remove = actions.add_parser(
        "remove",
        help="remove the key named NAME",
        description="Remove the key named NAME; its jobs stay until they expire, visible to no key.",
    )
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(handler=run_remove)
    for action in (add, listing, remove):
        action.add_argument("--file", type=Path, default=None, help=FILE_HELP)


def keys_path(args: argparse.Namespace) -> Path:
    if args.file is not None:
        return Path(args.file)
    from jobs.settings import Settings  # the file the API reads, named the same way

    named = Settings().api_keys_file
    if named is None:
        raise CommandError("no keys file: set NST_API_KEYS_FILE (as for the API) or give --file")
    return named


def run_add(args: argparse.Namespace, stderr: TextIO, stdout: TextIO | None = None) -> None:
    from api.keys_file import add_key

    path = keys_path(args)
    record, secret = add_key(path, args.name)
    out = stdout or sys.stdout
    out.write(secret + "\n")  # the only line on stdout, for `KEY=$(nst keys add NAME)`
    out.flush()
    stderr.write(f"added key {record.name!r} (id {record.id}) to {path}; it is shown only this once\n")


def run_list(args: argparse.Namespace, stderr: TextIO, stdout: TextIO | None = None) -> None:
    from api.keys_file import read_keys

    path = keys_path(args)
    keys = read_keys(path)
    out = stdout or sys.stdout
    if not keys:
        stderr.write(f"no keys in {path}\n")
        return
    width = max(len("NAME"), *(len(key.name) for key in keys))
    out.write(f"{'NAME':{width}}  {'ID':18}  CREATED\n")
    for key in keys:
        out.write(f"{key.name:{width}}  {key.id:18}  {key.created_at}\n")


def run_remove(args: argparse.Namespace, stderr: TextIO, stdout: TextIO | None = None) -> None:
    from api.keys_file import remove_key

    path = keys_path(args)
    record = remove_key(path, args.name)
    stderr.write(f"removed key {record.name!r} (id {record.id}) from {path}\n")
