"""The UNet phase's training objective: what the UNet is asked to predict, and how much each sample counts.

Kept apart from ``train.py`` so tests can pin it to diffusers' own conventions (``get_velocity``, the samplers'
``pred_original_sample``) without importing the trainer, which sets process-wide OpenMP settings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def target(z0: torch.Tensor, noise: torch.Tensor, a: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Epsilon, or v = sqrt(a)·eps − sqrt(1−a)·x0 (Salimans & Ho 2022), for noisy latents sqrt(a)·x0 + sqrt(1−a)·eps.

    `a` is alphas_cumprod at each sample's timestep, shaped to broadcast (B, 1, 1, 1).
    """
    if prediction_type == "v_prediction":
        return a.sqrt() * noise - (1 - a).sqrt() * z0
    if prediction_type == "epsilon":
        return noise
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def loss_weights(
    a: torch.Tensor, min_snr_gamma: float, prediction_type: str, high_noise_weight: float | None = None
) -> torch.Tensor:
    """Per-sample weights (B,) for the MSE against `target`; all ones when `min_snr_gamma` is 0.

    In x0 terms an eps loss weighs an error by the SNR and a v loss by SNR+1. Min-SNR-γ (Hang et al. 2023, about
    3× faster convergence) caps the x0 weight of easy low-noise samples. For eps that gives min(SNR, γ), which is
    0.0047 at t=999 on SD's schedule: the noisiest steps, where the layout is decided, taught almost nothing, and
    the eps model put objects where the noise leaned (position right 31 %). For v we use min(SNR, γ) + c, which
    keeps the high-noise weight at about c. c = 1 (plain v below γ) made positions 100 % right but left shapes
    soft (55 %). `high_noise_weight` is c: 1 for v unless given, 0 for eps unless given. An eps model with c > 0
    gets the same x0 weights as a v model with that c, and the same soft shapes (run 7, c = 0.25: 56 %), so the
    floor, not the parametrization, costs the shapes. Lowering the floor to 0.08 in a fine-tune of run 7 (run 9,
    shipped) kept the positions and brought shapes to 79 %.
    """
    a = a.reshape(-1)
    if not min_snr_gamma:
        return torch.ones_like(a)
    snr = a / (1 - a)
    capped = snr.clamp(max=min_snr_gamma)
    if prediction_type == "v_prediction":
        c = 1.0 if high_noise_weight is None else high_noise_weight
        return (capped + c) / (snr + 1)
    return (capped + (high_noise_weight or 0.0)) / snr


def layout_loss(
    pred: torch.Tensor, tgt: torch.Tensor, a: torch.Tensor, prediction_type: str, weight: float, grid: int = 4
) -> torch.Tensor:
    """Per-sample (B,) loss on the coarse part of the clean-image error only: its means over a `grid`×`grid` grid.

    Where the object sits and what colour the ground is are coarse; a star's points are fine. At the noisiest steps
    the text can only say the coarse part, and the fine part of the clean image is a guess that no model can make
    (the jitter of this seed's picture). A floor c on the whole x0 error there (`loss_weights`) taught positions,
    but it also fed that unguessable fine part into every batch's gradient. This term gives the coarse part the
    weight `weight` in x0 terms at every step and leaves the fine part to the Min-SNR weights. The x0 error is the
    prediction error times sqrt(1/SNR) for eps and sqrt(1−a) for v; block means are linear, so they pool first.

    Tried once and not used: run 8 (eps, no floor, weight 0.25) drew two objects for position prompts and blobs for
    shapes (3.6 %). Kept for the record and its tests; the shipped recipe is the floor (MODEL_CARD.md).
    """
    if not weight:
        return torch.zeros(pred.shape[0], dtype=pred.dtype)
    a = a.reshape(-1)
    scale = (1 - a) / a if prediction_type == "epsilon" else 1 - a
    coarse = F.adaptive_avg_pool2d(pred - tgt, grid)
    return weight * scale * coarse.pow(2).mean(dim=(1, 2, 3))


def training_noise(z0: torch.Tensor, offset: float = 0.0, pyramid: float = 0.0) -> torch.Tensor:
    """The noise added to latents in training: white, plus optional low-frequency parts the model cannot trust.

    At the noisiest steps SD's schedule still leaks the picture's lowest frequencies into the noisy latents
    (sqrt(alphas_cumprod) = 0.068 at t = 999), while sampling starts from pure white noise. A model that learned to
    read those frequencies from its input then takes them from the seed's noise instead of from the words. On the
    16×16 latents the mean is the background colour: `offset` (a constant per channel, std `offset`) fixed it
    (run 2). One level up is where the object sits: an epsilon model put objects where the noise leaned (position
    right 31 %). `pyramid` adds bilinear-upsampled 2×2 and 4×4 noise of std `pyramid` (multi-resolution noise,
    J. Whitaker 2023), so that the model has to take the layout from the text. Alone it did not teach the position
    words (run 6). Draws nothing extra from the RNG for a zero share, so a
    resumed run repeats its noise.
    """
    noise = torch.randn_like(z0)
    b, c, h, w = z0.shape
    if offset:
        noise = noise + offset * torch.randn(b, c, 1, 1)
    if pyramid:
        for side in (2, 4):
            low = torch.randn(b, c, side, side)
            noise = noise + pyramid * F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return noise
