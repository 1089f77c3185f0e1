"""What the generator reports while it runs: step events and cancellation.

Kept free of torch so the session, the REPL and tests can import `Cancelled` and `StepInfo` without paying for
torch's import (issue 7: the prompt must appear before torch is imported).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class Cancelled(Exception):
    """The caller's cancel event was set; raised at the next step boundary (or between images)."""


@dataclass(frozen=True)
class StepInfo:
    """One denoising step finished for a batch of images of one command.

    `step` counts steps, not UNet calls (Heun and DPM2 call the UNet twice a step, PLMS twice on its first step),
    so it runs 1..`total` with `total` = the image's `steps_taken`. `latents` is the batch's current latent tensor
    on the model's device; reading it on the host forces a device sync, so only do that when you need pixels.
    """

    step: int
    total: int
    images: tuple[int, ...]  # 0-based indices, within the command, of the images in this batch
    iterations: int  # images in the whole command (-n)
    latents: torch.Tensor
