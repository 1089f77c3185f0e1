"""The seeded-noise and scheduler core shared by txt2img and img2img (DESIGN.md, "The seeded-noise and scheduler
core"): portable seeded noise, variations by slerp, schedule planning by schedule index, the denoise loop, and
the VAE at both ends. Both paths call `sample()`; neither has its own loop.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import PNDMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from invoke_repl.accel import unet_forward
from invoke_repl.components import Components
from invoke_repl.generator.events import Cancelled, StepInfo
from invoke_repl.generator.samplers import check_strides, make_scheduler, sampler_substitution, step_kwargs
from invoke_repl.request import Request, RequestError

__all__ = [
    "Cancelled",
    "StepInfo",
    "ImageJob",
    "Schedule",
    "seeded_noise",
    "slerp",
    "mixed_noise",
    "latent_shape",
    "make_scheduler",
    "sampler_substitution",
    "plan_schedule",
    "sample",
    "encode_image",
    "decode_latents",
]

SEED_SPACE = 2**32


# --- noise ---------------------------------------------------------------------------------------------------


def seeded_noise(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """Gaussian noise for `seed`, drawn on the CPU in float32: the same on every machine and device.

    Drawing on the GPU would tie an image to the GPU's RNG (CUDA and MPS streams differ from the CPU's), so the
    noise is made here and moved to the device by the caller.
    """
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float32)


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (InvokeAI's variation rule), computed in float64.

    Noise vectors of this size are almost orthogonal, and slerp keeps the mix on the Gaussian shell where
    linear interpolation would shrink it (|mix| ≈ 0.71 at t=0.5). Nearly parallel inputs fall back to lerp.
    t=0 returns v0 unchanged, so `-v 0` is exactly the base image.
    """
    if t == 0:
        return v0
    if t == 1:
        return v1
    a, b = v0.double(), v1.double()
    dot = float((a * b).sum() / (a.norm() * b.norm()))
    if abs(dot) > dot_threshold:
        mixed = (1 - t) * a + t * b
    else:
        theta = float(np.arccos(dot))
        sin_theta = float(np.sin(theta))
        mixed = (np.sin(theta * (1 - t)) / sin_theta) * a + (np.sin(theta * t) / sin_theta) * b
    return mixed.to(v0.dtype)


def mixed_noise(seed: int, variations: Sequence[tuple[int, float]], shape: Sequence[int]) -> torch.Tensor:
    """Noise of `seed` with each (variation seed, weight) slerped in, in order (`-V s1:w1,s2:w2`)."""
    noise = seeded_noise(seed, shape)
    for vseed, weight in variations:
        noise = slerp(float(weight), noise, seeded_noise(vseed, shape))
    return noise


def latent_shape(components: Components, width: int, height: int) -> tuple[int, int, int, int]:
    factor = components.vae_scale_factor
    return (1, components.latent_channels, height // factor, width // factor)


@dataclass
class ImageJob:
    """One image of a command, ready to sample: its resolved request and its own seeded noise and RNG."""

    index: int  # position within the command (-n)
    request: Request  # fully resolved: seed, size, strength, variations
    noise: torch.Tensor  # (1, C, h, w), CPU float32
    # CPU generator seeded with the image's seed, advanced past the base noise: ancestral/SDE samplers draw their
    # per-step noise from it, exactly as diffusers' pipelines do with the generator they are given. Per image, so
    # a batched image draws the same per-step noise as the same image run alone.
    generator: torch.Generator


def make_job(index: int, request: Request, shape: Sequence[int]) -> ImageJob:
    """The job for one resolved request: base noise from its seed, its variations slerped in, in order."""
    assert request.seed is not None
    seed = request.seed
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)  # == seeded_noise(seed, shape)
    noise = base
    for vseed, weight in request.with_variations:
        noise = slerp(float(weight), noise, seeded_noise(vseed, shape))
    return ImageJob(index, request, noise, generator)


# --- schedule ------------------------------------------------------------------------------------------------


@dataclass
class Schedule:
    scheduler: SchedulerMixin
    timesteps: torch.Tensor  # the entries to run (UNet calls), possibly more than `steps` for 2nd-order samplers
    steps: int  # steps actually taken
    from_noise: bool  # True: start from pure noise (txt2img, strength 1); False: noise init latents to entry 0


def plan_schedule(sampler: str, scheduler_config: dict, steps: int, steps_taken: int) -> Schedule:
    """The last `steps_taken` steps of the `steps`-step schedule of `sampler`, addressed by schedule index.

    Indexing (not searching for a timestep value) matters because Karras sigmas at low strength can give
    repeated timesteps, where a value search lands on the wrong entry. Schedulers that carry a step index get
    `set_begin_index`, so their `add_noise` and first `step` both use the entry's own sigma.
    """
    if not 0 <= steps_taken <= steps:
        raise ValueError(f"steps_taken must be within 0..{steps}, got {steps_taken}")
    scheduler = make_scheduler(sampler, scheduler_config)
    scheduler.set_timesteps(steps, device="cpu")
    if _broken_spacing(scheduler, steps):
        scheduler = make_scheduler(sampler, {**scheduler_config, "timestep_spacing": "trailing"})
        scheduler.set_timesteps(steps, device="cpu")
        if not check_strides(scheduler):  # never on SD's 1000 timesteps (samplers._stride_for)
            raise RequestError(
                f"{sampler} cannot take {steps} steps on this model's {scheduler.config.num_train_timesteps}-timestep "
                "schedule (its steps are too uneven for this sampler); use another step count or sampler"
            )
    sigmas = getattr(scheduler, "sigmas", None)
    if scheduler.order == 1 and isinstance(sigmas, torch.Tensor) and len(sigmas) > 2:
        # A step of zero width divides by zero in DPM-Solver (NaN from there on): its 1000-step schedule on a
        # 1000-timestep model repeats one timestep whatever the spacing.
        if bool((torch.diff(sigmas[:-1].float()) >= 0).any()):
            raise RequestError(
                f"{sampler} cannot take {steps} steps on this model's {scheduler.config.num_train_timesteps}-timestep "
                "schedule (two steps land on the same noise level); use fewer steps"
            )
    skipped = steps - steps_taken
    if isinstance(scheduler, PNDMScheduler):
        timesteps = _plms_tail(scheduler.timesteps, steps_taken)
        scheduler.timesteps = timesteps
    else:
        start = skipped * scheduler.order  # 2nd-order samplers hold two entries per step (stock img2img rule)
        timesteps = scheduler.timesteps[start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
    return Schedule(scheduler, timesteps, steps_taken, from_noise=skipped == 0)


def _broken_spacing(scheduler: SchedulerMixin, steps: int) -> bool:
    """Whether the config's timestep spacing breaks down at this step count, so "trailing" must stand in.

    SD's configs ask for "leading" spacing (timesteps k·⌊T/N⌋ + offset), which is fine where ⌊T/N⌋ is close to
    T/N. Elsewhere it is not (T = 1000, audit 2026-11-28, embedded model): at N = 1 the only timestep is 1, so the
    image is decoded noise; past N = 100 the floor starts the schedule well below T (N = 600: at t = 600, from pure
    noise, visibly noisy); at N = 1000 DDIM and PLMS index past the schedule's end, and DPM++ 2M's own variant of
    the rule makes every timestep 1, a NaN image. "Trailing" spacing ends at T − 1 for every N. A schedule that
    starts within 5 % of where leading spacing means to start (T·(1 − 1/N)), and inside [0.6·T, T − 1], is kept, so
    most step counts people use give exactly stock diffusers' images: of 1-100 on T = 1000, all but 1, 2, 59, 63,
    67, 72, 77-79, 84-86 and 91-94 (k_dpmpp_2, by its own rounding: 1, 58, 62, 66, 71, 76-78, 83-85, 90-93, 100;
    pinned by test_samplers). DDIM and PLMS need `samplers._SchedulePrevious` to step on the uneven trailing
    schedule.
    """
    train = int(scheduler.config.num_train_timesteps)
    if len(scheduler.timesteps) == 0:
        return False
    first = float(scheduler.timesteps.max())
    return first > train - 1 or first < max(0.95 * train * (1 - 1 / steps), 0.6 * train)


def _plms_tail(full: torch.Tensor, n: int) -> torch.Tensor:
    """PLMS entries for its last `n` steps, as a fresh PLMS run would take them.

    diffusers' PLMS list for N steps is [T0, T1, T1, T2, …, T(N-1)]: its first step evaluates the model twice
    (T0, then T1 for the pseudo-improved-Euler correction). Slicing that list as stock img2img does leaves the
    correction pairing on the wrong entries, so the tail is rebuilt with the same shape: [Ta, Ta+1, Ta+1, …].
    """
    if n == 0:
        return full[:0]
    distinct = torch.cat([full[:1], full[2:]]) if len(full) > 1 else full  # T0..T(N-1)
    tail = distinct[len(distinct) - n :]
    return torch.cat([tail[:1], tail[1:2], tail[1:]]) if n > 1 else tail


def _step_completed(scheduler: SchedulerMixin) -> bool:
    """After `scheduler.step`, did that call finish a whole step (vs. the first half of a 2-call step)?"""
    in_first_order = getattr(scheduler, "state_in_first_order", None)  # Heun, DPM2, DPM2 a
    if in_first_order is not None:
        return bool(in_first_order)
    if isinstance(scheduler, PNDMScheduler):
        return scheduler.counter != 1  # counter 1: PLMS has only predicted its first step, correction pending
    return True


# --- the loop ------------------------------------------------------------------------------------------------


# no_grad per call, never around the caller's generator: grad mode is per-thread global state and must not leak
# into the caller's code between yielded images.
@torch.no_grad()
def sample(
    components: Components,
    schedule: Schedule,
    jobs: Sequence[ImageJob],
    cond: torch.Tensor,
    uncond: torch.Tensor,
    cfg_scale: float,
    *,
    init_latents: torch.Tensor | None = None,
    cancel: threading.Event | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    iterations: int = 1,
    keep_previews: bool = False,
    progress: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Denoise a batch of images (one per job) along `schedule`; return final latents and per-step previews.

    Classifier-free guidance is one batched UNet call on [uncond × B, cond × B] (diffusers' order), skipped
    (cond only) at cfg_scale == 1, where uncond + 1·(cond − uncond) is cond up to rounding, as in diffusers.
    Nothing in the loop reads a device value on the host (no `.item()`, no host-side branching on tensors), so
    a GPU can run ahead; previews are kept as device tensors and rendered after the loop.
    """
    scheduler = schedule.scheduler
    device, dtype = components.device, components.dtype
    batch = len(jobs)
    noise = torch.cat([job.noise for job in jobs]).to(device=device, dtype=dtype)
    if schedule.from_noise:
        latents = noise * scheduler.init_noise_sigma
    else:
        assert init_latents is not None, "img2img schedule needs init latents"
        start = schedule.timesteps[:1].repeat(batch)
        latents = scheduler.add_noise(init_latents.expand(batch, -1, -1, -1), noise, start)

    guided = cfg_scale != 1.0
    context = cond.expand(batch, -1, -1)
    if guided:
        context = torch.cat([uncond.expand(batch, -1, -1), context])
    generators = [job.generator for job in jobs]
    extra = step_kwargs(scheduler, generators[0] if batch == 1 else generators)
    images = tuple(job.index for job in jobs)
    previews: list[torch.Tensor] = []
    bar = _progress_bar(schedule.steps, images, iterations, progress)
    done = 0
    last = len(schedule.timesteps) - 1
    # The scheduler keeps its CPU timesteps (it indexes CPU tables with them); the UNet gets a device copy made
    # once here, because a per-step copy of a pageable CPU scalar to the GPU can stall on the stream.
    unet_timesteps = schedule.timesteps.to(device)
    forward = None
    try:
        for i, t in enumerate(schedule.timesteps):
            if cancel is not None and cancel.is_set():
                raise Cancelled("generation cancelled")
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            if forward is None:  # the compiled UNet for these exact shapes when the fast path has one ready
                forward = unet_forward(components, model_input, context)
            prediction = forward(model_input, unet_timesteps[i], encoder_hidden_states=context, return_dict=False)[0]
            if guided:
                uncond_pred, cond_pred = prediction.chunk(2)
                prediction = uncond_pred + cfg_scale * (cond_pred - uncond_pred)
            latents = scheduler.step(prediction, t, latents, return_dict=False, **extra)[0]
            if i == last or _step_completed(scheduler):
                done += 1
                if bar is not None:
                    bar.update(1)
                if keep_previews:
                    previews.append(_unit_variance(scheduler, latents, t, final=i == last))
                if on_step is not None:
                    on_step(StepInfo(done, schedule.steps, images, iterations, latents))
    finally:
        if bar is not None:
            bar.close()
    return latents, previews


def _unit_variance(scheduler: SchedulerMixin, latents: torch.Tensor, t: torch.Tensor, final: bool) -> torch.Tensor:
    """Latents as a DDPM-style sampler would hold them at this point, for previews.

    k-samplers carry x·sqrt(σ²+1); their own `scale_model_input` (which reads the scheduler's step index, now
    pointing at the next entry) divides that out; DDIM/PLMS/DPM-Solver return the input unchanged.
    """
    if final:
        return latents.detach().clone()
    return scheduler.scale_model_input(latents, t).detach().clone()


def _progress_bar(total: int, images: tuple[int, ...], iterations: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    label = f"image {images[0] + 1}" if len(images) == 1 else f"images {images[0] + 1}-{images[-1] + 1}"
    return tqdm(total=total, desc=f"{label}/{iterations}", unit="step", file=sys.stderr, leave=False)


class NumericalError(RuntimeError):
    """The numbers went bad (NaN/inf): a one-line error instead of a black image."""


# --- VAE -----------------------------------------------------------------------------------------------------


def encode_image(components: Components, image: Image.Image) -> torch.Tensor:
    """Init image → scaled latents (1, C, h, w), deterministically: the posterior MEAN, not a random sample.

    Stock diffusers samples the latent distribution (InvokeAI 2.3 did too, unseeded), which makes the same line
    give different images; the mean is what the image "is" to the model.
    """
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # diffusers' VaeImageProcessor scaling
    pixels = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0
    vae = components.vae
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    with torch.no_grad():
        mean = vae.encode(pixels).latent_dist.mean
    return (mean * vae.config.scaling_factor).to(dtype=components.dtype)


def decode_latents(components: Components, latents: torch.Tensor) -> list[Image.Image]:
    """Scaled latents (B, C, h, w) → B RGB images, rounded to 8 bits as diffusers' postprocess does."""
    vae = components.vae
    with torch.no_grad():
        pixels = vae.decode(latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor).sample
    pixels = (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    if not np.isfinite(pixels).all():  # NaN would be saved as a black image, with only a numpy warning
        where = "the sampler" if not bool(torch.isfinite(latents).all()) else "the VAE decode"
        raise NumericalError(
            f"{where} produced NaN (not-a-number) values, so there is no image to save; "
            "try --precision float32, another sampler or another step count"
        )
    array = (pixels * 255).round().astype(np.uint8)
    return [Image.fromarray(a, "RGB") for a in array]
