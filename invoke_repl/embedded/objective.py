"""The UNet phase's training objective: what the UNet is asked to predict, and how much each sample counts.

Kept apart from ``train.py`` so tests can pin it to diffusers' own conventions (``get_velocity``, the samplers'
``pred_original_sample``) without importing the trainer, which sets process-wide OpenMP settings.
"""

from __future__ import annotations

import torch


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
    a: torch.Tensor, min_snr_gamma: float, prediction_type: str, high_noise_weight: float = 1.0
) -> torch.Tensor:
    """Per-sample weights (B,) for the MSE against `target`; all ones when `min_snr_gamma` is 0.

    In x0 terms an eps loss weighs an error by the SNR and a v loss by SNR+1. Min-SNR-γ (Hang et al. 2023, about
    3× faster convergence) caps the x0 weight of easy low-noise samples. For eps that gives min(SNR, γ), which is
    0.0047 at t=999 on SD's schedule: the noisiest steps, where the layout is decided, taught almost nothing, and
    the eps model put objects where the noise leaned (position right 31 %). For v we use min(SNR, γ) + c, which
    keeps the high-noise weight at about c. c = 1 (plain v below γ) made positions 100 % right but left shapes
    soft (55 %): the noisiest steps took a large share of every batch's gradient. `high_noise_weight` is c.
    """
    a = a.reshape(-1)
    if not min_snr_gamma:
        return torch.ones_like(a)
    snr = a / (1 - a)
    capped = snr.clamp(max=min_snr_gamma)
    if prediction_type == "v_prediction":
        return (capped + high_noise_weight) / (snr + 1)
    return capped / snr
