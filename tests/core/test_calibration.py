"""The device measurement a worker runs at start (core.calibration), on this machine's CPU."""

from __future__ import annotations

import pytest
import torch

from core import calibration, engine
from core.calibration import CalibrationConfig, PeakPoint, calibrate, fit_constants
from core.memory import MemoryModel, estimate_bytes, written_model
from core.params import StyleParams
from core.peak_probe import ProbeError, probe_in_child
from core.weights import WeightsSource

CPU = torch.device("cpu")
RANDOM = WeightsSource.parse("random")
LEFT_OUT = (448, 448)  # larger than every side the fit saw (192, 256, 320)


def test_a_fit_at_small_sizes_predicts_the_peak_of_a_larger_one_within_10_percent() -> None:
    result = calibrate(CPU, RANDOM, CalibrationConfig(speed_size=(32, 32)))
    assert result.checks["memory"].outcome == "measured", result.checks["memory"]
    assert result.model.source == "measured" and {p.size[0] for p in result.peaks} == {192, 256, 320}
    measured = [probe_in_child([(LEFT_OUT, checkpointing)])[0] for checkpointing in (False, True)]  # fresh processes
    for checkpointing, peak in zip((False, True), measured, strict=True):
        estimate = estimate_bytes(
            LEFT_OUT, StyleParams(), checkpointing=checkpointing, original=LEFT_OUT, model=result.model
        )
        assert abs(estimate - peak) / peak < 0.10, (checkpointing, estimate, peak, result.model)
    # What a worker reports: the fitted constants, a speed, and each check's outcome.
    report = result.report()
    assert MemoryModel.from_report(report["memory_model"]) == result.model
    assert result.ms_per_iteration is not None and result.ms_per_iteration > 0
    assert report["calibration"]["precision"]["outcome"] == "skipped"  # fp32 on the CPU: nothing to compare


def test_the_fit_is_least_squares_and_never_takes_a_negative_fixed_part() -> None:
    line = [PeakPoint((s, s), False, c, 2 * c + 1000, 0) for s, c in ((1, 10_000), (2, 20_000), (3, 40_000))]
    fitted = fit_constants(line)
    assert fitted.scale == pytest.approx(2.0) and fitted.fixed == pytest.approx(1000, abs=1)
    # Points whose line crosses zero below the origin: no fixed part, the largest ratio instead.
    steep = [PeakPoint((1, 1), False, 10_000, 5_000, 0), PeakPoint((2, 2), False, 20_000, 20_000, 0)]
    assert fit_constants(steep).fixed == 0 and fit_constants(steep).scale == pytest.approx(1.0)


def test_bad_settings_are_refused_with_their_value() -> None:
    bad = (("384", "auto"), ("8x8", "auto"), ("5000x512", "auto"), ("384x512", "128"), ("384x512", "128,128"))
    for speed, sides in (*bad, ("1x2", "a,b")):
        with pytest.raises(ValueError, match="calibration"):
            CalibrationConfig.parse(speed, sides)
    assert CalibrationConfig.parse("384x512", "auto").sides_for(CPU) == (192, 256, 320)
    assert CalibrationConfig.parse("32X64", "96, 64").memory_sides == (64, 96)


def test_a_straying_bf16_and_a_compile_that_raises_fall_back_and_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calibration, "TEST_FAULTS", frozenset({"bf16"}))
    monkeypatch.setattr(engine, "TEST_FAULTS", frozenset({"compile"}))
    monkeypatch.setattr(calibration, "PRECISION_ITERATIONS", 4)  # bf16 is slow on a CPU without it
    monkeypatch.setenv("NST_PRECISION", "bf16")
    monkeypatch.setenv("NST_COMPILE", "1")
    config = CalibrationConfig(speed_size=(32, 32), memory_sides=(64, 96))
    try:
        result = calibrate(CPU, RANDOM, config)
        assert (result.precision, result.compile) == ("fp32", False)
        precision, compiled = result.checks["precision"], result.checks["compile"]
        assert precision.calibrated and precision.outcome == "fp32" and "strays" in precision.detail, precision
        assert compiled.calibrated and compiled.outcome == "eager", compiled
        assert "NST_TEST_FAULTS=compile" in compiled.detail and "serving eagerly" in compiled.detail
        assert result.checks["speed"].outcome == "measured" and result.ms_per_iteration is not None
        result.apply()  # from now on the process serves what was decided, whatever the variables say
        assert (engine.EngineOptions.for_device(CPU).precision, engine.EngineOptions.for_device(CPU).compile) == (
            "fp32", False,
        )  # fmt: skip
    finally:
        engine.decide()
    assert engine.EngineOptions.for_device(CPU).precision == "bf16"  # the variables again


def test_a_compile_that_failed_in_the_warm_up_is_tried_again_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.transfer import stylize

    monkeypatch.setattr(engine, "TEST_FAULTS", frozenset({"compile"}))
    monkeypatch.setenv("NST_COMPILE", "1")
    content, style = calibration.test_pair((32, 32))
    try:
        # The warm-up's compile fails first (as a worker's would, before it calibrates) ...
        stylize(content, [style], StyleParams(iterations=2, height=32, width=32, seed=0), device=CPU, weights=RANDOM)
        result = calibrate(CPU, RANDOM, CalibrationConfig(speed_size=(32, 32), memory_sides=(64, 96)))
        # ... and the compile check still sees it fail, rather than timing eager as "compiled".
        compiled = result.checks["compile"]
        assert (compiled.outcome, result.compile) == ("eager", False) and "compiling failed" in compiled.detail
        assert "\n" not in compiled.detail and len(compiled.detail) < 300
    finally:
        engine.decide()


def test_a_memory_check_that_fails_keeps_the_written_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> list[int]:
        raise ProbeError("no /proc here")

    monkeypatch.setattr(calibration, "probe_in_child", broken)
    result = calibrate(CPU, RANDOM, CalibrationConfig(speed_size=(32, 32), memory_sides=(64, 96)))
    memory = result.checks["memory"]
    assert (memory.calibrated, memory.outcome) == (False, "written") and "no /proc here" in memory.detail
    assert result.model == written_model("cpu")
