"""The generator: one `Request` → an iterator of `GeneratedImage`s, each with the exact request that remakes it.

This module imports no torch at import time (the session imports it to reach `Cancelled` before the model is
loaded); `generate()` imports the heavy parts on first use.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from invoke_repl.generator.events import Cancelled, StepInfo
from invoke_repl.request import Request
from invoke_repl.results import GeneratedImage

if TYPE_CHECKING:
    from PIL import Image

    from invoke_repl.components import Components

__all__ = ["Cancelled", "StepInfo", "generate", "resolve_requests", "sampler_substitution"]

SEED_SPACE = 2**32


def sampler_substitution(name: str) -> str | None:
    """The one-line note the session prints (once) when `name` runs a stand-in scheduler; None when faithful."""
    from invoke_repl.generator.samplers import sampler_substitution as lookup

    return lookup(name)


def resolve_requests(request: Request, model: str, size: tuple[int, int], seed: int | None = None) -> list[Request]:
    """One fully resolved request per image of the command, each able to remake its image alone.

    Image k of `-n N --seed S` is seed S+k. With `-v A`, every image keeps base seed S and gets variation seed
    S+1+k at weight A, folded into `with_variations` (so the canonical line carries `-V …` and no `-v`). A
    `-v 0` cannot be told from no `-v` (0 is the field's default) and is exactly the base image anyway.
    """
    base_seed = request.seed if request.seed is not None else seed
    if base_seed is None:
        base_seed = secrets.randbelow(SEED_SPACE)
    width, height = size
    amount = request.variation_amount
    strength = request.effective_strength
    out = []
    for k in range(request.iterations):
        if amount > 0:
            image_seed = base_seed
            variations = (*request.with_variations, ((base_seed + 1 + k) % SEED_SPACE, amount))
        else:
            image_seed = (base_seed + k) % SEED_SPACE
            variations = request.with_variations
        out.append(
            request.replace(
                seed=image_seed,
                iterations=1,
                width=width,
                height=height,
                strength=strength,
                with_variations=variations,
                variation_amount=0.0,
                model=model,
                # --fit is folded into the size it produced: re-fitting an already fitted size can lose 8 px.
                fit=False,
            )
        )
    return out


def _check_init_size(image_size: tuple[int, int], size: tuple[int, int], request: Request) -> None:
    """The size an init image would be diffused at must be one a line may ask for; say so in the image's terms
    when it is the image's own size (or aspect ratio) that takes it out of range, not a -W/-H the user typed."""
    from invoke_repl.request import MAX_SIZE, MIN_SIZE, RequestError

    if all(MIN_SIZE <= side <= MAX_SIZE for side in size):
        return
    w, h = image_size
    typed = " and ".join(f"-{k} {v}" for k, v in (("W", request.width), ("H", request.height)) if v is not None)
    reason = f"with {typed} that makes {size[0]}×{size[1]}" if typed else f"that is {size[0]}×{size[1]} after flooring"
    raise RequestError(
        f"the init image is {w}×{h} px; {reason}, outside {MIN_SIZE}–{MAX_SIZE} px a side: "
        "give -W and -H (with --fit to keep its shape) to resize it"
    )


def _default_batch(components: Components) -> int:
    # On a GPU, batch 1 mostly waits on kernel launches (issue 7: batch 4 costs 1.73 s vs 1.65 s for batch 1 on
    # an H200), so -n goes through the UNet 4 at a time. On the CPU batching buys little and would make an
    # image differ by kernel rounding from the same seed run alone, so it stays at 1 there.
    return 4 if components.device.type == "cuda" else 1


def generate(
    components: Components,
    request: Request,
    *,
    init_image: Image.Image | None = None,
    cancel: threading.Event | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    previews: bool = False,
    progress: bool = True,
    batch_size: int | None = None,
) -> Iterator[GeneratedImage]:
    """Run `request` on `components`, yielding each image as soon as its batch is done.

    `init_image` is the loaded init image for img2img (loaded from `request.init_img` when not given). `cancel`
    is checked before every UNet call and between batches; setting it raises `Cancelled`. `on_step` is called
    once per step actually taken (not per UNet call). `previews` fills each image's `previews` with one RGB
    frame per step. `batch_size` images share a UNet call (default: 4 on CUDA, 1 on CPU); each keeps its own
    seeded noise and per-step RNG, so it matches its single run up to kernel rounding.
    """
    if request.seed is not None and request.seed < 0:
        raise ValueError("seed -1 (the previous image's seed) must be resolved by the session first")
    if request.cfg_scale is None:  # no -C: the model's own default, written into every image's request
        request = request.replace(cfg_scale=components.default_cfg)

    from invoke_repl.generator import img2img, txt2img
    from invoke_repl.generator.conditioning import encode_prompts
    from invoke_repl.generator.core import encode_image, latent_shape, make_job

    init_latents = None
    if request.is_img2img:
        if init_image is None:
            from invoke_repl.images import load_init_image

            init_image = load_init_image(request.init_img)  # type: ignore[arg-type]
        size = img2img.init_size(init_image.size, request.width, request.height, request.fit)
        _check_init_size(init_image.size, size, request)  # before the VAE spends seconds encoding it
        init_latents = encode_image(components, img2img.fit_init_image(init_image, size))
    else:
        native_w, native_h = components.native_size
        size = (request.width or native_w, request.height or native_h)

    resolved = resolve_requests(request, components.name, size)
    cond, uncond = encode_prompts(components, request.prompt, request.negative)
    shape = latent_shape(components, *size)
    chunk = max(1, batch_size or _default_batch(components))
    loop = {"cancel": cancel, "on_step": on_step, "previews": previews, "progress": progress}
    made_on = {"device": components.device.type, "precision": str(components.dtype).removeprefix("torch.")}

    for first in range(0, len(resolved), chunk):
        if cancel is not None and cancel.is_set():
            raise Cancelled("generation cancelled")
        jobs = [make_job(k, resolved[k], shape) for k in range(first, min(first + chunk, len(resolved)))]
        if init_latents is not None:
            results = img2img.run(components, request, jobs, cond, uncond, init_latents, **loop)
        else:
            results = txt2img.run(components, request, jobs, cond, uncond, **loop)
        for job, (image, strip) in zip(jobs, results, strict=True):
            yield GeneratedImage(image, job.request, job.request.steps_taken, strip, **made_on)
