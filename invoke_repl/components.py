"""The loaded parts of one Stable Diffusion model, as the generator needs them.

The model manager produces these (from a diffusers folder, a single-file checkpoint or a built-in recipe) and the
generator consumes them; neither needs to know how the other works. Geometry (latent scale factor, native size,
latent channels) is read from the modules' own configs, never assumed: the embedded model downsamples by 4, SD by 8.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer


@dataclass
class Components:
    name: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    sha256: str = ""
    family: str = "sd-1"
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def default_cfg(self) -> float:
        """The CFG a line without -C gets: the catalogue entry's `cfg_scale`, else the global default.

        Small models trained here want less guidance than SD's 7.5 (the embedded model's card has the sweep).
        """
        from invoke_repl.request import DEFAULT_CFG

        value = self.extras.get("cfg_scale")
        return float(value) if value is not None else DEFAULT_CFG

    @property
    def native_size(self) -> tuple[int, int]:
        """(width, height) a line without -W/-H gets: the catalogue entry's `width`/`height` where it sets them,
        else the size the model was trained at (UNet sample size × VAE factor)."""
        sample = self.unet.config.sample_size
        h, w = (sample, sample) if isinstance(sample, int) else sample
        width, height = self.extras.get("width"), self.extras.get("height")
        return int(width or int(w) * self.vae_scale_factor), int(height or int(h) * self.vae_scale_factor)
