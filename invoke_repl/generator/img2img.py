"""img2img: the init image, encoded deterministically, enters the schedule ⌊steps × strength⌋ steps before the end.

As the seed guide describes: the first steps of the `steps`-step schedule are skipped and the init latents,
mixed with exactly the noise of the entry point (the shared seeded noise, so seeds and variations work here
too), take their place. Strength 1 runs every step from pure noise (the init image only sets the size);
strength 0 runs none and returns the init image as the model sees it (VAE decode of its encoding).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch
from PIL import Image

from invoke_repl.components import Components
from invoke_repl.generator.core import ImageJob, StepInfo, decode_latents, plan_schedule, sample
from invoke_repl.generator.previews import render_previews
from invoke_repl.request import Request, img2img_steps


def _floor8(value: float) -> int:
    return max(8, int(value) // 8 * 8)


def init_size(image_size: tuple[int, int], width: int | None, height: int | None, fit: bool) -> tuple[int, int]:
    """(width, height) the init image is brought to, every side a multiple of 8.

    - neither -W nor -H: the image's own size floored to multiples of 8;
    - one of them: that one, the other from the image's aspect ratio (floored);
    - both: exactly W×H (stretching), or with `fit` the largest size with the image's aspect ratio that fits
      inside W×H (InvokeAI's --fit: scale to fit, never pad), floored to multiples of 8.
    """
    iw, ih = image_size
    if width is None and height is None:
        return _floor8(iw), _floor8(ih)
    if height is None:
        assert width is not None
        return width, _floor8(width * ih // iw)
    if width is None:
        return _floor8(height * iw // ih), height
    if not fit:
        return width, height
    # Whole numbers only: iw * (width / iw) is 63.99999999999999 for iw = 107, width = 64, and flooring that to a
    # multiple of 8 cost the fitted side 8 pixels (about 1 in 16 image/box pairs).
    if width * ih <= height * iw:  # the width binds
        return width, min(height, _floor8(width * ih // iw))
    return min(width, _floor8(height * iw // ih)), height


def fit_init_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The init image resized to `size` (LANCZOS, as InvokeAI does); untouched when already that size."""
    image = image.convert("RGB")
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def run(
    components: Components,
    request: Request,
    jobs: Sequence[ImageJob],
    cond: torch.Tensor,
    uncond: torch.Tensor,
    init_latents: torch.Tensor,
    *,
    cancel: threading.Event | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    previews: bool = False,
    progress: bool = True,
) -> list[tuple[Image.Image, list[Image.Image]]]:
    """Images (and step previews) for a batch of jobs; `init_latents` from `core.encode_image` of the fitted init."""
    strength = request.effective_strength
    assert strength is not None, "img2img needs an init image"
    taken = img2img_steps(request.steps, strength)
    if taken == 0:
        if cancel is not None and cancel.is_set():
            from invoke_repl.generator.events import Cancelled

            raise Cancelled("generation cancelled")
        image = decode_latents(components, init_latents)[0]
        return [(image.copy(), []) for _ in jobs]
    schedule = plan_schedule(request.sampler, components.scheduler_config, request.steps, taken)
    latents, steps = sample(
        components,
        schedule,
        jobs,
        cond,
        uncond,
        request.cfg_scale,
        init_latents=init_latents,
        cancel=cancel,
        on_step=on_step,
        iterations=request.iterations,
        keep_previews=previews,
        progress=progress,
    )
    images = decode_latents(components, latents)
    strips = render_previews(components, steps, images[0].size) if previews else [[] for _ in images]
    return list(zip(images, strips, strict=True))
