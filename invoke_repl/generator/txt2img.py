"""txt2img: all `steps` steps of the schedule from pure seeded noise; the loop itself is core's."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch
from PIL import Image

from invoke_repl.components import Components
from invoke_repl.generator.core import ImageJob, StepInfo, decode_latents, plan_schedule, sample
from invoke_repl.generator.previews import render_previews
from invoke_repl.request import Request


def run(
    components: Components,
    request: Request,
    jobs: Sequence[ImageJob],
    cond: torch.Tensor,
    uncond: torch.Tensor,
    *,
    cancel: threading.Event | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    previews: bool = False,
    progress: bool = True,
) -> list[tuple[Image.Image, list[Image.Image]]]:
    """Images (and their step previews) for a batch of jobs sharing `request`'s prompt, size and sampler."""
    schedule = plan_schedule(request.sampler, components.scheduler_config, request.steps, request.steps)
    latents, steps = sample(
        components,
        schedule,
        jobs,
        cond,
        uncond,
        request.cfg_scale,
        cancel=cancel,
        on_step=on_step,
        iterations=request.iterations,
        keep_previews=previews,
        progress=progress,
    )
    images = decode_latents(components, latents)
    strips = render_previews(components, steps, images[0].size) if previews else [[] for _ in images]
    return list(zip(images, strips, strict=True))
