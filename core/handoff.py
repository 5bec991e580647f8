"""Tensors handed from the optimisation loop to another thread without making the loop wait.

On CUDA the copy goes into pinned host memory asynchronously, on the loop's stream, and an event
marks when it has landed: the loop does not synchronise; the reader waits on the event. On the
CPU it is a plain copy (there is nothing to overlap).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class HostCopy:
    tensors: tuple[torch.Tensor, ...]
    ready: torch.cuda.Event | None  # None: already there

    def get(self) -> tuple[torch.Tensor, ...]:
        """The tensors on the host, once their copy has landed (waits for it on CUDA)."""
        if self.ready is not None:
            self.ready.synchronize()
        return self.tensors


def copy_to_host(*tensors: torch.Tensor) -> HostCopy:
    """Snapshot `tensors` as they are now; later writes to them do not change the copy."""
    if tensors and tensors[0].device.type == "cuda":
        # On the tensors' own device (cuda:1 for a worker on the second GPU): the event must be
        # recorded on the stream the copies run on.
        with torch.cuda.device(tensors[0].device):
            hosts = []
            for tensor in tensors:
                host = torch.empty_like(tensor, device="cpu", pin_memory=True)  # keeps the layout: a plain DMA
                host.copy_(tensor.detach(), non_blocking=True)
                hosts.append(host)
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]  # torch leaves Event.__new__ unannotated
            ready.record(torch.cuda.current_stream(tensors[0].device))
        return HostCopy(tuple(hosts), ready)
    return HostCopy(tuple(t.detach().clone() for t in tensors), None)
