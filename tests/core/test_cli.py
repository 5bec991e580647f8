"""`nst stylize`: a real process for the happy path, in-process calls for bad arguments."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from core.cli import main
from core.output import read_metadata
from tests.conftest import SAMPLES
from tests.services import HANG


@pytest.mark.slow  # a process that loads torch and the network
def test_stylize_command_writes_result_and_snapshots(tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    snaps = tmp_path / "snaps"
    command = [
        sys.executable, "-m", "core.cli", "stylize", str(SAMPLES / "coffee.png"), str(SAMPLES / "starry_night.jpg"),
        "-o", str(out), "--iterations", "60", "--height", "32", "--width", "48", "--seed", "7",
        "--snapshots", str(snaps), "--style-layers", "conv1_1,conv2_1", "--style-layer-weights", "1", "2",
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=HANG, env=os.environ | {"NST_VGG_WEIGHTS": "random"}
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "60/60" not in done.stderr  # not a terminal: one line per snapshot, 1 and 50
    assert "1/60" in done.stderr and "50/60" in done.stderr and "it/s" in done.stderr
    with Image.open(out) as result:
        assert result.size == (600, 400)
        meta = read_metadata(result)
    assert meta["weights"] == "random" and meta["seed"] == "7" and '"iterations":60' in meta["params"]
    assert sorted(p.name for p in snaps.iterdir()) == ["snapshot_00001.jpg", "snapshot_00050.jpg"]
    with Image.open(snaps / "snapshot_00050.jpg") as snap:
        assert snap.format == "JPEG" and snap.size == (600, 400)
        assert read_metadata(snap)["weights"] == "random"


def run_main(*argv: str) -> tuple[int, str]:
    stderr = io.StringIO()
    try:
        code = main(list(argv), stderr=stderr)
    except SystemExit as exit_:  # argparse's own errors
        code = int(exit_.code or 0)
    return code, stderr.getvalue()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--iterations", "0"], "iterations"),
        (["--iterations", "lots"], "invalid int value"),
        (["--style-layers", "conv9_9", "--style-layer-weights", "1"], "unknown VGG-19 layer"),
        (["--style-layer-weights", "1", "2"], "style_layer_weights has 2 values for 5 style_layers"),
        (["--init", "zeros"], "invalid choice"),
        (["--style-blend-weights", "1", "1"], "style_blend_weights has 2 values for 1 style images"),
        (["--device", "cuda:7"] if not __import__("torch").cuda.is_available() else ["--device", "tpu"], "device"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_give_one_line_and_a_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    base = ["stylize", str(SAMPLES / "coffee.png"), str(SAMPLES / "starry_night.jpg"), "-o", str(tmp_path / "o.png")]
    code, stderr = run_main(*base, "--iterations", "2", "--height", "16", "--width", "16", *extra)
    stderr += capsys.readouterr().err
    assert code != 0
    lines = [line for line in stderr.splitlines() if line and "WARNING" not in line]
    assert len(lines) == 1 and message in lines[0], stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "o.png").exists()


def test_unreadable_image_gives_one_line(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not really a png")
    code, stderr = run_main("stylize", str(text), str(SAMPLES / "starry_night.jpg"), "-o", str(tmp_path / "o.png"))
    assert code == 1 and stderr.count("\n") == 1 and "notes.png" in stderr and "not an image" in stderr
    code, stderr = run_main("stylize", str(tmp_path / "absent.jpg"), str(text), "-o", str(tmp_path / "o.png"))
    assert code == 1 and "absent.jpg" in stderr


def test_missing_weights_give_one_line(tmp_path: Path) -> None:
    code, stderr = run_main(
        "stylize", str(SAMPLES / "coffee.png"), str(SAMPLES / "starry_night.jpg"), "-o", str(tmp_path / "o.png"),
        "--weights", str(tmp_path / "none.pth"), "--iterations", "1", "--height", "16", "--width", "16",
    )  # fmt: skip
    assert code == 1 and stderr.count("\n") == 1 and "NST_VGG_WEIGHTS" in stderr
