"""`nst stylize`: the optimisation from a shell, every StyleParams field an option."""

from __future__ import annotations

import argparse
import logging
import sys
import types
import typing
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import ValidationError

from core.errors import CommandError, StyleError
from core.logs import configure_logging
from core.params import StyleParams

if TYPE_CHECKING:
    from core.transfer import Progress

# Other packages add subcommands through this entry-point group (the service's API and worker
# do, pyproject.toml): each names a function that takes argparse's subparsers. A module that
# cannot be imported (its extras are not installed) adds nothing.
COMMAND_ENTRY_POINTS = "nst.commands"

log = logging.getLogger("nst")


def _option_for(name: str, annotation: Any) -> dict[str, Any]:
    """argparse keyword arguments for one StyleParams field, from its type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):  # `X | None`
        inner = [a for a in args if a is not type(None)]
        return _option_for(name, inner[0])
    if origin is typing.Annotated:
        return _option_for(name, args[0])
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        return {"choices": list(args)}
    if origin is list:
        return {"nargs": "+", "metavar": "VALUE"}
    return {"type": annotation, "metavar": annotation.__name__.upper()}


def _split_list(values: list[str]) -> list[str]:
    """`--style-layers conv1_1 conv2_1` and `--style-layers conv1_1,conv2_1` mean the same;
    pydantic turns the strings into numbers where the field wants numbers."""
    return [part for value in values for part in value.split(",") if part]


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line on stderr and exit status 2, not a usage block."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="nst", description="Neural style transfer (Gatys et al., VGG-19).")
    commands = parser.add_subparsers(dest="command", required=True)
    add_stylize_command(commands)
    fetch = commands.add_parser(
        "fetch-weights",
        help="load the VGG-19 weights that $NST_VGG_WEIGHTS names (downloads torchvision's into its cache)",
    )
    fetch.set_defaults(handler=run_fetch_weights)
    for entry_point in sorted(entry_points(group=COMMAND_ENTRY_POINTS), key=lambda e: e.name):
        try:
            add_commands = entry_point.load()
        except ImportError:  # installed without the extras its commands need
            continue
        add_commands(commands)
    return parser


def add_stylize_command(commands: argparse._SubParsersAction[OneLineParser]) -> None:
    sub = commands.add_parser(
        "stylize",
        help="stylise a content image with one or more style images",
        description="Optimise an image with CONTENT's content and the style of STYLE(s).",
    )
    sub.add_argument("content", type=Path, metavar="CONTENT")
    sub.add_argument("styles", type=Path, nargs="+", metavar="STYLE")
    sub.add_argument("-o", "--output", type=Path, required=True, help="result image (.png, .jpg, ...)")
    sub.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA if available)")
    sub.add_argument(
        "--weights",
        default=None,
        help="VGG-19 weights: imagenet, random (tests only) or a .pth file (default: $NST_VGG_WEIGHTS or imagenet)",
    )
    sub.add_argument("--snapshots", type=Path, default=None, metavar="DIR", help="save every snapshot here")
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    group = sub.add_argument_group("style parameters (defaults: the seed's)")
    for name, info in StyleParams.model_fields.items():
        if name == "scales":
            group.add_argument(
                "--scales",
                dest=name,
                default=None,
                metavar="auto|SIZE:ITERATIONS,...",
                help='coarse-to-fine: "auto" (from 128 px up by sqrt(2)) or stages such as 256:300,512:200 '
                "(long side in px : iterations, the last at the working size's long side; default: one scale)",
            )
            continue
        options = _option_for(name, info.annotation)
        default = info.get_default(call_default_factory=True)
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            help=f"{info.description} (default: {default})",
            **options,
        )
    sub.set_defaults(handler=run_stylize)


def params_from_args(args: argparse.Namespace) -> StyleParams:
    given: dict[str, Any] = {}
    for name in StyleParams.model_fields:
        value = getattr(args, name)
        if value is None:
            continue
        if name == "scales":
            given[name] = parse_scales(value)
            continue
        given[name] = _split_list(value) if isinstance(value, list) else value
    try:
        return StyleParams(**given)
    except ValidationError as exc:
        raise CommandError(describe_validation_error(exc)) from exc


def parse_scales(text: str) -> str | list[dict[str, str]]:
    """`auto`, or `256:300,512:200` as [{"size": "256", "iterations": "300"}, ...] for pydantic."""
    if text.strip() == "auto":
        return "auto"
    stages = []
    for part in text.split(","):
        size, colon, iterations = part.strip().partition(":")
        if not colon or not size or not iterations:
            raise CommandError(f"--scales: {part.strip()!r} is not SIZE:ITERATIONS (e.g. 256:300,512:200) or auto")
        stages.append({"size": size, "iterations": iterations})
    return stages


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"] if p not in ("list", "auto")) or "parameters"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def run_stylize(args: argparse.Namespace, stderr: TextIO) -> None:
    from core.decode import open_image
    from core.output import save_image
    from core.progress_bar import ProgressBar
    from core.transfer import stylize
    from core.weights import WeightsSource

    params = params_from_args(args)
    content = open_image(args.content)
    styles = [open_image(path) for path in args.styles]
    if args.output.parent and not args.output.parent.is_dir():
        raise CommandError(f"{args.output.parent}: no such directory for the output")
    if args.snapshots is not None:
        args.snapshots.mkdir(parents=True, exist_ok=True)
    source = WeightsSource.parse(args.weights) if args.weights is not None else WeightsSource.from_env()
    checkpointing = plan_memory(params, content.size[::-1], args.device)
    bar = None if args.quiet else ProgressBar(stderr, params.iterations)
    label = source.label

    def on_progress(progress: Progress) -> None:
        if bar is not None:
            bar.update(progress)
        if args.snapshots is not None and progress.is_snapshot:
            target = args.snapshots / f"snapshot_{progress.iteration:05d}.jpg"
            save_image(progress.image(), target, {"weights": label, "iteration": str(progress.iteration)})

    result = stylize(
        content,
        styles,
        params,
        device=args.device,
        weights=source,
        on_progress=on_progress,
        report_every=1 if bar is not None and bar.interactive else None,
        checkpointing=checkpointing,
    )
    if bar is not None:
        bar.close()
    metadata = {
        "weights": result.weights,
        "seed": str(result.seed),
        "params": params.model_dump_json(),
        "checkpointing": str(result.checkpointing).lower(),
    }
    save_image(result.image, args.output, metadata)
    if not args.quiet and result.losses is not None:
        stderr.write(
            f"saved {args.output} ({result.image.width}x{result.image.height}); lowest loss "
            f"{result.losses.total:.4g} at iteration {result.best_iteration} of {result.iterations_run}; "
            f"{result.elapsed:.1f} s on {result.device}; weights: {result.weights}; seed {result.seed}\n"
        )


def plan_memory(params: StyleParams, original: tuple[int, int], device: str | None) -> bool:
    """Whether to checkpoint, as the service's worker decides it: within NST_MEMORY_BUDGET_BYTES
    or 85% of the memory free now; a job that cannot fit even so is refused before it starts."""
    import os

    from core.device import resolve_device
    from core.engine import EngineOptions
    from core.memory import DeviceType, JobTooBig, default_budget, fit_job

    resolved = resolve_device(device)
    raw = os.environ.get("NST_MEMORY_BUDGET_BYTES", "").strip()
    if raw and not (raw.isascii() and raw.isdigit()):
        raise CommandError(f"NST_MEMORY_BUDGET_BYTES={raw!r}: give a number of bytes")
    budget = int(raw) if raw else default_budget(str(resolved))
    device_type: DeviceType = "cuda" if resolved.type == "cuda" else "cpu"
    precision = EngineOptions.for_device(resolved).precision
    try:
        estimate = fit_job(params, original, budget, device_type=device_type, precision=precision)
    except JobTooBig as exc:
        raise CommandError(str(exc)) from exc
    if estimate.checkpointing:
        log.warning("recomputing activations (checkpointing) to fit the memory budget: slower, same picture")
    return estimate.checkpointing


def run_fetch_weights(args: argparse.Namespace, stderr: TextIO) -> None:
    from core.weights import WeightsSource, features_state_dict

    source = WeightsSource.from_env()
    features_state_dict(source)
    stderr.write(f"VGG-19 weights ready: {source.label}\n")


def main(argv: Sequence[str] | None = None, stderr: TextIO | None = None) -> int:
    stderr = stderr or sys.stderr
    try:
        configure_logging(logging.WARNING, stderr)
    except ValueError as exc:  # a bad NST_LOG_FORMAT
        stderr.write(f"nst: error: {exc}\n")
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args, stderr)
    except (CommandError, StyleError, ValueError, OSError, RuntimeError) as exc:
        stderr.write(f"nst: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        stderr.write("nst: interrupted\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
