"""The averaged image of crowsonkb/style-transfer-pytorch: a bias-corrected exponential moving
average of the optimised image, which smooths away the last steps' noise.

It starts from zero and takes the stage's starting image as its first sample, then one sample
after every optimiser step; its value is divided by 1 - decay^n after n samples (the bias
correction of Adam's moments), so after one sample it is that image exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageAverage:
    decay: float
    value: torch.Tensor  # the uncorrected average, in the image's space and layout
    count: int  # samples taken

    @classmethod
    def start(cls, decay: float, image: torch.Tensor) -> ImageAverage:
        average = cls(decay, torch.zeros_like(image.detach()), 0)
        average.update(image)
        return average

    @torch.no_grad()
    def update(self, image: torch.Tensor) -> None:
        self.value.mul_(self.decay).add_(image.detach(), alpha=1.0 - self.decay)
        self.count += 1

    def get(self) -> torch.Tensor:
        """The bias-corrected average (a new tensor)."""
        if self.count == 0:
            raise ValueError("the average has no sample yet")
        return self.value / (1.0 - self.decay**self.count)
