"""Pieces of the worker's runner that need no service around them."""

from __future__ import annotations

import torch

from worker.device_profile import is_out_of_memory


def test_out_of_memory_is_recognised_on_both_devices() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: 4 GB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("can't allocate memory"))


def test_a_real_failed_cpu_allocation_is_recognised() -> None:
    try:
        torch.empty(2**50, dtype=torch.uint8)  # a petabyte: refused at once, nothing is touched
    except RuntimeError as exc:
        assert is_out_of_memory(exc)
    else:
        raise AssertionError("the allocation should have failed")
