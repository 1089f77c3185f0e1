"""Step previews: one small RGB picture per denoising step actually taken (the seed guide's "latent steps" strips).

Two renderers, chosen by what is cheap for the model at hand:
- the model's own VAE decoder when the VAE is small (tiny-random: 0.24 M parameters; the embedded model), which
  shows what the model itself would make of the latents;
- otherwise, for 4-channel SD latents, InvokeAI's linear latent→RGB map (`SD1_5_LATENT_RGB_FACTORS` in
  invoke-ai/InvokeAI invokeai/app/util/step_callback.py, adapted there from @erucipe and @keturn's
  discuss.huggingface.co thread "decoding-latents-to-rgb-without-upscaling", v1.5 numbers from @torridgristle),
  a (4×3) matrix applied per latent pixel and upscaled to image size. A full SD VAE decode (83 M parameters) per
  step would cost as much as the step itself, which DESIGN.md rules out unless asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from invoke_repl.components import Components

SD1_5_LATENT_RGB_FACTORS = (
    #   R        G        B
    (0.3444, 0.1385, 0.0670),  # L1
    (0.1247, 0.4027, 0.1494),  # L2
    (-0.3192, 0.2513, 0.2103),  # L3
    (-0.1307, -0.1874, -0.7445),  # L4
)

# Below this many VAE parameters a per-step decode is cheap (tiny-random's VAE: 242 k parameters, ~15 ms at
# 64×64 on this CPU); SD's AutoencoderKL has 83.7 M and takes the linear map instead.
CHEAP_VAE_PARAMETERS = 10_000_000


def vae_is_cheap(components: Components) -> bool:
    return sum(p.numel() for p in components.vae.parameters()) <= CHEAP_VAE_PARAMETERS


def render_previews(
    components: Components, steps: list[torch.Tensor], size: tuple[int, int]
) -> list[list[Image.Image]]:
    """Per image of the batch, one RGB preview per step. `steps[i]` is the batch's (B, C, h, w) latents after
    step i, already scaled to unit variance (what a DDPM-style sampler would hold at that point)."""
    if not steps:
        return []
    batch = steps[0].shape[0]
    out: list[list[Image.Image]] = [[] for _ in range(batch)]
    if vae_is_cheap(components) or components.latent_channels != len(SD1_5_LATENT_RGB_FACTORS):
        from invoke_repl.generator.core import decode_latents

        stacked = torch.cat(steps, dim=0)  # (steps × B, C, h, w): one decode call for the whole strip
        images = decode_latents(components, stacked)
        for k, image in enumerate(images):
            out[k % batch].append(image)
        return out
    factors = torch.tensor(SD1_5_LATENT_RGB_FACTORS, dtype=torch.float32)
    for latents in steps:
        rgb = torch.einsum("bchw,cr->bhwr", latents.detach().float().cpu(), factors)
        pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
        for k in range(batch):
            small = Image.fromarray(np.ascontiguousarray(pixels[k]), "RGB")
            out[k].append(small.resize(size, Image.Resampling.BILINEAR))
    return out
