"""The plan of the code, checked: which package may import which, and who may name a Redis key.

    core/    the optimisation: no web, no queue, no service
    jobs/    the job contract that api/ and worker/ share: no web server, no torch
    api/     the HTTP front end  -> jobs, core (no torch at run time)
    worker/  the GPU worker      -> jobs, core

Every import counts, also one inside a function (those run too, only later).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "jobs", "api", "worker")

# package -> top-level modules it must never import
FORBIDDEN = {
    "core": {"api", "worker", "jobs", "fastapi", "starlette", "uvicorn", "celery", "kombu", "redis"},
    "jobs": {"api", "worker", "fastapi", "starlette", "uvicorn", "torch", "torchvision"},
    "api": {"worker", "torch", "torchvision"},
    "worker": {"api", "fastapi", "starlette", "uvicorn"},
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, relative ones made absolute."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return found


def sources(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_its_floor_allows(package: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sources(package)
        for line, module in imports_of(path)
        if module.split(".")[0] in FORBIDDEN[package]
    ]
    assert not wrong, "\n".join(wrong)


def test_only_the_contract_package_names_redis_keys() -> None:
    # jobs/keys.py (and the Lua scripts beside it) name every key; jobs/ turns them into reads
    # and writes. Anything else asks jobs/ for what it wants.
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for package in ("api", "worker", "core")
        for path in sources(package)
        for line, module in imports_of(path)
        if module in ("jobs.keys", "jobs.fair_queue")
    ]
    assert not wrong, "\n".join(wrong)


def test_the_checks_above_can_fail(tmp_path: Path) -> None:
    # A file that breaks both rules is seen, whether its import is at the top or in a function.
    bad = ROOT / "worker" / "_architecture_probe.py"
    bad.write_text("def f():\n    from api.app import create_app\n    from jobs.keys import job_key\n")
    try:
        modules = [module for _, module in imports_of(bad)]
        assert modules == ["api.app", "jobs.keys"]
        with pytest.raises(AssertionError, match=r"imports api\.app"):
            test_each_package_imports_only_what_its_floor_allows("worker")
        with pytest.raises(AssertionError, match=r"imports jobs\.keys"):
            test_only_the_contract_package_names_redis_keys()
    finally:
        bad.unlink()
