"""What the generator hands back for each image: the pixels and the exact request that reproduces them alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from invoke_repl.request import Request

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class GeneratedImage:
    image: Image.Image
    # Fully resolved: seed drawn, size filled in, iterations=1, strength filled for img2img, a -v variation
    # folded into with_variations, model named. canonical(request) regenerates exactly this image on the same
    # device type in the same precision; elsewhere pixels differ by a few levels (bf16 against fp32: up to 7 of
    # 255 on the embedded model, audit of 2026-11-28), which is why those two are recorded beside it.
    request: Request
    steps_taken: int
    previews: list[Image.Image] = field(default_factory=list)  # one per step actually taken, when asked
    device: str = ""  # torch device type that ran it: "cuda", "cpu", "mps"
    precision: str = ""  # "float32", "float16", "bfloat16"

    @property
    def seed(self) -> int:
        assert self.request.seed is not None
        return self.request.seed
