"""Continuous batching in core: a job in a batch gets the picture it would get alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core import Progress, StyleParams, stylize
from core.batch import BatchedRun, batch_member
from core.batching import batch_key, key_size
from core.checkpoint import Checkpoint
from core.transfer import StyleResult
from tests.conftest import gradient_image

SIZE = {"height": 40, "width": 48}


def content() -> Image.Image:
    # At the working size, so the result is compared pixel for pixel without resampling.
    return gradient_image(48, 40, seed=1)


def styles(*seeds: int) -> list[Image.Image]:
    return [gradient_image(40, 40, seed=s).rotate(45) for s in seeds]


@dataclass
class Case:
    styles: list[Image.Image]
    params: StyleParams
    seen: list[Progress] = field(default_factory=list)


def cases() -> list[Case]:
    """Jobs that differ in everything a batch lets differ."""
    return [
        Case(styles(2), StyleParams(iterations=30, seed=1, snapshot_every=10, **SIZE)),
        Case(styles(3), StyleParams(iterations=18, seed=2, style_weight=1e4, learning_rate=2.0, **SIZE)),
        Case(
            styles(2, 4),
            StyleParams(iterations=24, seed=3, content_weight=5.0, tv_weight=1e-3, init="content", **SIZE),
        ),
        Case(styles(5), StyleParams(iterations=12, seed=4, init="noise", average=0.9, style_scale=0.5, **SIZE)),
    ]


def alone(case: Case) -> StyleResult:
    seen: list[Progress] = []
    result = stylize(content(), case.styles, case.params, on_progress=seen.append, report_every=1)
    case.seen = seen
    return result


def run_batch(batch_cases: list[Case], joins: dict[int, int] | None = None) -> dict[int, StyleResult]:
    """Each case in one batch; `joins` maps a case to the batch step before which it joins."""
    joins = joins or {}
    batch = BatchedRun()
    results: dict[int, StyleResult] = {}
    waiting = dict(enumerate(batch_cases))
    step = 0
    while waiting or len(batch):
        for index in [i for i in waiting if joins.get(i, 0) <= step]:
            case = waiting.pop(index)
            member = batch_member(
                content(), case.styles, case.params, name=str(index), on_progress=case.seen.append, report_every=1
            )
            batch.add(member)
        for member in batch.step():
            assert member.result is not None
            results[int(member.name)] = member.result
        step += 1
    return results


def assert_same_picture(
    solo: StyleResult, batched: StyleResult, solo_seen: list[Progress], seen: list[Progress]
) -> None:
    assert solo.losses is not None and batched.losses is not None
    assert batched.iterations_run == solo.iterations_run and batched.seed == solo.seed
    assert [p.iteration for p in seen] == [p.iteration for p in solo_seen]
    for mine, theirs in zip(seen, solo_seen, strict=True):
        for name in ("total", "content", "style"):
            assert getattr(mine.losses, name) == pytest.approx(getattr(theirs.losses, name), rel=1e-4, abs=1e-12)
    assert batched.losses.total == pytest.approx(solo.losses.total, rel=1e-4)
    difference = np.abs(np.asarray(batched.image, dtype=int) - np.asarray(solo.image, dtype=int))
    assert difference.max() <= 1


def test_each_job_in_a_batch_gets_its_solo_picture() -> None:
    solo_cases, batch_cases = cases(), cases()
    solo = [alone(case) for case in solo_cases]
    batched = run_batch(batch_cases)
    for index, result in enumerate(solo):
        assert_same_picture(result, batched[index], solo_cases[index].seen, batch_cases[index].seen)
    # Each kept its own count and snapshots: the first job's every 10 of its own iterations.
    assert [p.iteration for p in batch_cases[0].seen if p.is_snapshot] == [1, 10, 20, 30]


def test_a_job_that_joins_mid_run_gets_its_solo_picture() -> None:
    solo_cases, batch_cases = cases()[:3], cases()[:3]
    solo = [alone(case) for case in solo_cases]
    batched = run_batch(batch_cases, joins={1: 5, 2: 20})  # the third joins after the second left
    for index, result in enumerate(solo):
        assert_same_picture(result, batched[index], solo_cases[index].seen, batch_cases[index].seen)


def test_a_stopped_job_leaves_and_the_others_go_on() -> None:
    batch = BatchedRun()
    stop = {"now": False}
    first = batch_member(content(), styles(2), StyleParams(iterations=20, seed=1, **SIZE), name="a")
    second = batch_member(
        content(), styles(3), StyleParams(iterations=20, seed=2, **SIZE), name="b", should_stop=lambda: stop["now"]
    )
    batch.add(first)
    batch.add(second)
    for _ in range(5):
        assert batch.step() == []
    stop["now"] = True
    left = batch.step()
    assert [m.name for m in left] == ["b"] and left[0].result is not None
    assert left[0].result.stopped and left[0].result.iterations_run == 5
    while len(batch):
        left = batch.step()
    assert [m.name for m in left] == ["a"] and left[0].result is not None
    assert not left[0].result.stopped and left[0].result.iterations_run == 20


def test_a_checkpointed_batch_job_resumes_to_the_same_picture() -> None:
    params = StyleParams(iterations=20, seed=7, **SIZE)
    whole = alone(Case(styles(2), params))
    saved: list[Checkpoint] = []
    batch = BatchedRun()
    batch.add(
        batch_member(
            content(), styles(2), params, name="a", checkpoint_every=8, on_checkpoint=lambda c: saved.append(c)
        )
    )
    batch.add(batch_member(content(), styles(3), StyleParams(iterations=20, seed=1, **SIZE), name="b"))
    for _ in range(10):  # "the worker dies" after 10 iterations: the checkpoint is at 8
        batch.step()
    checkpoint = Checkpoint.from_bytes(saved[-1].to_bytes())
    assert checkpoint.iteration == 8
    resumed = BatchedRun()
    resumed.add(batch_member(content(), styles(2), params, name="a", resume=checkpoint))
    resumed.add(batch_member(content(), styles(4), StyleParams(iterations=5, seed=3, **SIZE), name="c"))
    results: dict[str, StyleResult] = {}
    while len(resumed):
        for member in resumed.step():
            assert member.result is not None
            results[member.name] = member.result
    assert results["a"].iterations_run == 20
    assert results["a"].losses is not None and whole.losses is not None
    assert results["a"].losses.total == pytest.approx(whole.losses.total, rel=1e-4)
    difference = np.abs(np.asarray(results["a"].image, dtype=int) - np.asarray(whole.image, dtype=int))
    assert difference.max() <= 1


def test_what_may_share_a_batch() -> None:
    base = StyleParams(**SIZE)
    key = batch_key(base, (40, 48))
    assert key is not None and key_size(key) == (40, 48)
    # Per-job numbers do not change the key.
    assert batch_key(base.model_copy(update={"style_weight": 1.0, "seed": 3, "iterations": 9}), (40, 48)) == key
    # The network's pass does.
    assert batch_key(StyleParams(height=48, width=48), (40, 48)) != key
    assert batch_key(base.model_copy(update={"pooling": "max"}), (40, 48)) != key
    fewer_layers = {"style_layers": ["relu1_1"], "style_layer_weights": [1.0]}
    assert batch_key(base.model_copy(update=fewer_layers), (40, 48)) != key
    # Some jobs always run alone.
    assert batch_key(base.model_copy(update={"optimizer": "lbfgs"}), (40, 48)) is None
    assert batch_key(StyleParams(iterations=20, scales="auto", height=256, width=256), (256, 256)) is None
    # A keep_aspect job's size comes from its content.
    aspect = StyleParams(height=64, width=64, keep_aspect=True)
    assert batch_key(aspect, (100, 50)) != batch_key(aspect, (50, 100))


def test_a_job_that_cannot_share_the_batch_is_refused() -> None:
    batch = BatchedRun()
    batch.add(batch_member(content(), styles(2), StyleParams(iterations=3, **SIZE), name="a"))
    with pytest.raises(ValueError, match="cannot join"):
        batch.add(batch_member(content(), styles(2), StyleParams(iterations=3, pooling="max", **SIZE), name="b"))
    with pytest.raises(ValueError, match="runs alone"):
        batch_member(content(), styles(2), StyleParams(iterations=3, optimizer="lbfgs", **SIZE), name="c")
    assert len(batch) == 1


def test_a_pass_that_runs_out_of_memory_is_split_and_the_pictures_stay_the_same() -> None:
    solo_cases, batch_cases = cases()[:3], cases()[:3]
    solo = [alone(case) for case in solo_cases]
    batch = BatchedRun()
    for index, case in enumerate(batch_cases):
        batch.add(
            batch_member(
                content(), case.styles, case.params, name=str(index), on_progress=case.seen.append, report_every=1
            )
        )
    real = batch._loss
    assert real is not None
    passes: list[int] = []

    def tight(xs: list, *rest: list) -> Any:  # the device holds two images a pass, no more
        if len(xs) > 2:
            raise MemoryError("can't allocate memory")
        passes.append(len(xs))
        return real(xs, *rest)

    batch._loss = tight
    results: dict[int, StyleResult] = {}
    while len(batch):
        for member in batch.step():
            assert member.result is not None
            results[int(member.name)] = member.result
    assert batch.chunk == 2 and set(passes) == {2, 1}  # 3 failed: passes of 2 and 1 from then on
    for index, result in enumerate(solo):
        assert_same_picture(result, results[index], solo_cases[index].seen, batch_cases[index].seen)


def test_a_job_whose_own_hooks_fail_leaves_alone() -> None:
    def broken(progress: Progress) -> None:
        if progress.iteration == 3:
            raise RuntimeError("its publisher broke")

    batch = BatchedRun()
    batch.add(batch_member(content(), styles(2), StyleParams(iterations=8, **SIZE), name="a"))
    batch.add(
        batch_member(
            content(), styles(3), StyleParams(iterations=8, **SIZE), name="b", on_progress=broken, report_every=1
        )
    )
    left: dict[str, Any] = {}
    while len(batch):
        for member in batch.step():
            left[member.name] = member
    assert left["b"].result is None and isinstance(left["b"].error, RuntimeError) and left["b"].done == 3
    assert left["a"].error is None and left["a"].result.iterations_run == 8


def test_chunks_are_powers_of_two_when_compiled() -> None:
    from core.batch import _chunks

    members = list(range(7))
    assert [len(c) for c in _chunks(members, None, compiled=False)] == [7]  # type: ignore[arg-type]
    assert [len(c) for c in _chunks(members, None, compiled=True)] == [4, 2, 1]  # type: ignore[arg-type]
    assert [len(c) for c in _chunks(members, 3, compiled=False)] == [3, 3, 1]  # type: ignore[arg-type]
    assert [len(c) for c in _chunks(members, 3, compiled=True)] == [2, 2, 2, 1]  # type: ignore[arg-type]
