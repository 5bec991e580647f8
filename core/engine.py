"""How an iteration runs on a device: precision, memory layout, compilation.

Tensors are channels_last everywhere. On CUDA the default is the fast path besides: the
convolutions in bfloat16 under autocast (Grams and losses in fp32), and the loss function
compiled by torch.compile with CUDA graphs, once per working size and kept for later jobs of
that size. On the CPU the default is fp32, eager. `NST_PRECISION=fp32|bf16`, `NST_COMPILE=0|1` and
`NST_CHANNELS_LAST=0|1` override; a compilation that fails falls back to eager with a warning.
A worker measures its device at start (core.calibration) and `decide`s: where bf16 strays from
fp32 or compiling does not pay, its choice wins over the default and the variables for the rest
of the process. `options_override` changes them for the calibration's own runs.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from core.device import is_out_of_memory
from core.objective import BatchLoss, LossFunction
from core.params import StyleParams
from core.vgg import VGGFeatures

log = logging.getLogger(__name__)

LossCall = Callable[[torch.Tensor, list[torch.Tensor], list[torch.Tensor]], torch.Tensor]
# Images, each one's content targets, style targets and (alpha, beta, tv_weight): (B, 4) terms.
BatchLossCall = Callable[
    [list[torch.Tensor], list[list[torch.Tensor]], list[list[torch.Tensor]], list[tuple[Any, Any, Any]]], torch.Tensor
]

# Faults a test asks of this process, comma-separated (core.calibration's checks must catch them):
# "compile" makes every compiled call raise, "bf16" makes the bf16 calibration run stray.
TEST_FAULTS = frozenset(f for f in os.environ.get("NST_TEST_FAULTS", "").replace(" ", "").split(",") if f)


class InjectedFault(RuntimeError):
    """A failure NST_TEST_FAULTS asked for."""


@dataclass(frozen=True)
class EngineOptions:
    precision: Literal["fp32", "bf16"]
    channels_last: bool
    compile: bool

    @classmethod
    def for_device(cls, device: torch.device) -> EngineOptions:
        cuda = device.type == "cuda"
        precision = os.environ.get("NST_PRECISION", "auto").strip().lower()
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"NST_PRECISION={precision!r}: use auto, fp32 or bf16")
        compiled = os.environ.get("NST_COMPILE", "auto").strip().lower()
        if compiled not in ("auto", "0", "1"):
            raise ValueError(f"NST_COMPILE={compiled!r}: use auto, 0 or 1")
        layout = os.environ.get("NST_CHANNELS_LAST", "auto").strip().lower()
        if layout not in ("auto", "0", "1"):
            raise ValueError(f"NST_CHANNELS_LAST={layout!r}: use auto, 0 or 1")
        precisions: dict[str, Literal["fp32", "bf16"]] = {
            "auto": "bf16" if cuda else "fp32",
            "fp32": "fp32",
            "bf16": "bf16",
        }
        options = cls(
            precision=precisions[precision],
            # channels_last helps cuDNN and oneDNN alike (about 12% on this project's 2-core CPU).
            channels_last=layout in ("auto", "1"),
            compile=cuda if compiled == "auto" else compiled == "1",
        )
        changes: dict[str, Any] = {**_decided, **dict(_override.get())}
        return replace(options, **changes)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


# What this process decided after measuring its device (set once, at a worker's start), and a
# temporary change for the calibration's own runs on this thread.
_decided: dict[str, object] = {}
_override: ContextVar[tuple[tuple[str, object], ...]] = ContextVar("nst_engine_override", default=())


def decide(*, precision: Literal["fp32", "bf16"] | None = None, compile: bool | None = None) -> None:
    """From now on this process runs with `precision` and `compile` (None: as the defaults say)."""
    for name, value in (("precision", precision), ("compile", compile)):
        if value is None:
            _decided.pop(name, None)
        else:
            _decided[name] = value


@contextmanager
def options_override(**changes: object) -> Iterator[None]:
    """EngineOptions fields (precision, compile, channels_last) changed inside the block."""
    token = _override.set(tuple({**dict(_override.get()), **changes}.items()))
    try:
        yield
    finally:
        _override.reset(token)


_lock = threading.Lock()
# One compiled loss function per network, layers, weights and options: torch.compile then keeps
# one graph per working size inside it, so a worker compiles each size once, not once a job.
_compiled: dict[tuple[object, ...], LossCall] = {}
_failed: set[tuple[object, ...]] = set()
# Why each failed compilation failed, in order (core.calibration reads the ones its run added).
compile_errors: list[str] = []
# Every graph (each size, image layout - L-BFGS's image is contiguous - and loss function) hangs
# on LossFunction.forward's one code object, and dynamo runs a code object eagerly, with one
# warning, once it has 8: a worker would stop compiling after a few jobs' sizes.
RECOMPILE_LIMIT = 128


def retry_failed_compilations() -> None:
    """Forget which compilations failed, so the next call of each compiles again (calibration
    retries one that failed in the warm-up, to see it fail and say why)."""
    with _lock:
        _failed.clear()


def loss_function(extractor: VGGFeatures, params: StyleParams, options: EngineOptions) -> LossCall:
    """The loss function for this job, compiled when the options say so."""
    eager = LossFunction(extractor, params, bf16=options.precision == "bf16")
    if not options.compile:
        return eager
    call: LossCall = _compiled_or_eager(_key(extractor, eager, options), eager, extractor.input_offset.device)
    return call


def batch_loss_function(extractor: VGGFeatures, params: StyleParams, options: EngineOptions) -> BatchLossCall:
    """The loss of a batch of images that share `params`' network (core.batching): one pass for
    all, each image's terms with its own targets and weights. Compiled when the options say so;
    torch.compile then keeps one graph per working size and batch size."""
    eager = BatchLoss(LossFunction(extractor, params, bf16=options.precision == "bf16"))
    if not options.compile:
        return eager
    # Not alpha, beta or tv_weight: each image brings its own (tensors, when compiled).
    objective = eager.objective
    key = ("batch", id(extractor.features[0]), extractor.layers, extractor.checkpointing,
           objective.content_layer_weights, objective.style_layer_weights, objective.style_kind, options)  # fmt: skip
    batched: BatchLossCall = _compiled_or_eager(key, eager, extractor.input_offset.device)
    return batched


def _key(extractor: VGGFeatures, eager: LossFunction, options: EngineOptions) -> tuple[object, ...]:
    return (
        id(extractor.features[0]),  # the shared, cached network (core.vgg keeps it alive)
        extractor.layers,
        extractor.checkpointing,
        eager.content_layer_weights,
        eager.style_layer_weights,
        eager.alpha,
        eager.beta,
        eager.tv_weight,
        eager.style_kind,
        options,
    )


def _compiled_or_eager(key: tuple[object, ...], eager: Callable[..., torch.Tensor], device: torch.device) -> Any:
    """`eager` compiled once per key (and kept), run eagerly instead if compiling fails."""
    with _lock:
        if key in _failed:
            return eager
        if key not in _compiled:
            dynamo_config = torch._dynamo.config
            # recompile_limit since torch 2.6 or so; cache_size_limit before (torch>=2.4 is allowed).
            name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), RECOMPILE_LIMIT))
            mode = "reduce-overhead" if device.type == "cuda" else "default"
            _compiled[key] = torch.compile(eager, mode=mode, dynamic=False)
        compiled = _compiled[key]

    def call(*args: Any) -> torch.Tensor:
        if key in _failed:
            return eager(*args)
        try:
            if "compile" in TEST_FAULTS:
                raise InjectedFault("compiling failed: NST_TEST_FAULTS=compile")
            result: torch.Tensor = compiled(*args)
            return result
        except Exception as exc:  # a backend that cannot compile this graph: run it eagerly
            if is_out_of_memory(exc):  # not the compiler's fault: the caller decides (core.batch splits)
                raise
            log.warning("torch.compile failed (%s: %s); running eagerly", type(exc).__name__, exc)
            with _lock:
                _failed.add(key)
                compile_errors.append(f"{type(exc).__name__}: {exc}")
            return eager(*args)

    return call


def mark_iteration(options: EngineOptions, device: torch.device) -> None:
    """Tell CUDA graph trees a new iteration starts (the last one's outputs are consumed)."""
    if options.compile and device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]  # unannotated in torch
