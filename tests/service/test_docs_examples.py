"""Every shell and Python block of the README and docs/ runs as written against a live service.

Three things differ from a reader's machine, and only these: the service's address (this test's
stack instead of 127.0.0.1:8000, its Redis instead of 127.0.0.1:6379), random weights, and `$HOME`
(a temporary folder). Each block runs on its own, from a folder that holds the project's
examples/ and a link to its .venv, in `bash -euo pipefail` (a Python block in the venv's Python),
with no `.venv/bin` on PATH: a block that calls `nst` says how it gets it. The block must exit 0,
and the API must have answered no 4xx or 5xx meanwhile, except the statuses the block's marker
says it provokes on purpose.

Markers, an HTML comment on the line before the block:
- `<!-- example: not run (why) -->`: not run here (Docker, a GPU, a server that runs until Ctrl-C);
- `<!-- example: keys -->`: against the stack with API keys (its file is $HOME/nst/api-keys.jsonl);
- `<!-- example: expects 401 -->`: the API answers that status on purpose. `;` joins these two.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.services import Service, StartService

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"(?:^<!-- example: (?P<marker>[^\n]*?) -->\n)?^```(?P<language>sh|python)\n(?P<body>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
ACCESS = re.compile(r'"(?:GET|POST|HEAD|PUT|DELETE|PATCH|OPTIONS) \S+ HTTP/1\.1" (\d{3})')


@dataclass(frozen=True)
class Example:
    document: Path
    line: int
    language: str
    body: str
    marker: str

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"

    @property
    def markers(self) -> list[str]:
        if self.marker.strip().startswith("not run"):  # its reason may say anything
            return [self.marker.strip()]
        return [part.strip() for part in self.marker.split(";") if part.strip()]

    @property
    def skipped(self) -> str | None:
        """Why it is not run, or None."""
        for part in self.markers:
            if part.startswith("not run"):
                return part
        return None

    @property
    def keys(self) -> bool:
        return "keys" in self.markers

    @property
    def expected(self) -> set[int]:
        found = set()
        for part in self.markers:
            if part.startswith("expects"):
                found |= {int(code) for code in re.findall(r"\d{3}", part)}
        return found


def all_examples() -> list[Example]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("language")) + 1
            found.append(Example(document, line, match["language"], match["body"], match["marker"] or ""))
    return found


EXAMPLES = all_examples()
RUN = [example for example in EXAMPLES if example.skipped is None]


def test_the_documents_have_examples_and_each_not_run_says_why() -> None:
    assert len(RUN) >= 10, [example.name for example in RUN]
    for example in EXAMPLES:
        reason = example.skipped
        assert reason is None or re.fullmatch(r"not run \(.{8,}\)", reason), f"{example.name}: say why: {reason}"
        unknown = [m for m in example.markers if not m.startswith(("not run", "keys", "expects"))]
        assert unknown == [], f"{example.name}: unknown markers {unknown}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the blocks run: the project's examples/ (copied: blocks write there) and its .venv."""
    root = tmp_path_factory.mktemp("docs-run")
    shutil.copytree(ROOT / "examples", root / "examples")
    (root / ".venv").symlink_to(ROOT / ".venv")
    (root / "home").mkdir()
    return root


@pytest.fixture(scope="module")
def stacks(service: Service, start_service: StartService, workdir: Path) -> dict[str, Service]:
    """The shared stack, and one with API keys (no worker) of this module's own."""
    keys_file = workdir / "home" / "nst" / "api-keys.jsonl"  # as the documents' $HOME/nst/api-keys.jsonl
    return {"open": service, "keys": start_service({"NST_API_KEYS_FILE": str(keys_file)}, workers=0)}


def block_env(workdir: Path) -> dict[str, str]:
    venv_bin = str(ROOT / ".venv" / "bin")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    env = {name: value for name, value in os.environ.items() if not name.startswith(("NST_", "VIRTUAL_ENV"))}
    return env | {"PATH": path or "/usr/bin:/bin", "HOME": str(workdir / "home"), "NST_VGG_WEIGHTS": "random"}


def api_statuses(service: Service, start: int) -> tuple[list[int], int]:
    """The statuses the API's access log shows after byte `start`, and where the log ends now."""
    text = (service.root / "api.log").read_text(errors="replace")
    return [int(status) for status in ACCESS.findall(text[start:])], len(text)


@pytest.mark.parametrize("example", RUN, ids=[example.name for example in RUN])
def test_the_example_runs_as_written(example: Example, stacks: dict[str, Service], workdir: Path) -> None:
    if example.language == "sh" and shutil.which("curl") is None:
        pytest.skip("curl is not installed (.ci/run installs it)")
    service = stacks["keys" if example.keys else "open"]
    text = example.body.replace("127.0.0.1:8000", f"127.0.0.1:{service.api_port}")
    text = text.replace("127.0.0.1:6379", f"127.0.0.1:{service.redis_port}")
    if example.language == "sh":
        command = ["bash", "-euo", "pipefail", "-c", text]
    else:
        command = [str(ROOT / ".venv" / "bin" / "python"), "-c", text]
    _, start = api_statuses(service, 0)
    done = subprocess.run(command, cwd=workdir, env=block_env(workdir), capture_output=True, text=True, timeout=900)
    output = f"{example.name}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    assert done.returncode == 0, output
    statuses, _ = api_statuses(service, start)
    unexpected = [status for status in statuses if status >= 400 and status not in example.expected]
    assert unexpected == [], f"the API answered {unexpected}: {output}\n{service.logs()}"
    for status in example.expected:
        assert status in statuses, f"{example.name} says it provokes {status}; it did not: {output}"
