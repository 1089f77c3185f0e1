"""The embedded model's training objective agrees with diffusers' conventions for the samplers that use it."""

import pytest
import torch
from diffusers import DDPMScheduler

from invoke_repl.embedded import arch, objective


def _scheduler(prediction_type: str) -> DDPMScheduler:
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample")
    return DDPMScheduler(**{k: arch.SCHEDULER_CONFIG[k] for k in keys}, prediction_type=prediction_type)


@pytest.mark.parametrize("t", [1, 161, 500, 999])
def test_v_target_is_diffusers_velocity(t):
    sched = _scheduler("v_prediction")
    g = torch.Generator().manual_seed(t)
    z0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    a = sched.alphas_cumprod[t].float().view(1, 1, 1, 1).expand(2, 1, 1, 1)
    ours = objective.target(z0, noise, a, "v_prediction")
    theirs = sched.get_velocity(z0, noise, torch.tensor([t, t]))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("t", [20, 400, 999])
def test_a_perfect_prediction_gives_the_clean_latents_back(prediction_type, t):
    """What the samplers read from the UNet output (pred_original_sample) is the training image."""
    sched = _scheduler(prediction_type)
    g = torch.Generator().manual_seed(7)
    z0, noise = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    a = sched.alphas_cumprod[t].float().view(1, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    out = sched.step(objective.target(z0, noise, a, prediction_type), t, zt, generator=g)
    torch.testing.assert_close(out.pred_original_sample, z0, rtol=1e-4, atol=1e-4)


def test_min_snr_weights_keep_the_noisiest_steps_for_v_and_cap_the_easy_ones():
    acp = _scheduler("epsilon").alphas_cumprod.float()
    a = acp[torch.tensor([999, 500, 1])]
    snr = a / (1 - a)
    w_v = objective.loss_weights(a, 5.0, "v_prediction")
    w_eps = objective.loss_weights(a, 5.0, "epsilon")
    x0_v, x0_eps = w_v * (snr + 1), w_eps * snr  # the weight each puts on an error in the clean image
    torch.testing.assert_close(x0_v[0], 1 + snr[0])  # ~1 at t=999, where eps gave ~0.005
    assert x0_eps[0] < 0.01 and x0_v[0] > 100 * x0_eps[0]
    torch.testing.assert_close(x0_v[1], snr[1] + 1)  # below γ nothing is capped
    torch.testing.assert_close(x0_v[2], torch.tensor(6.0))  # capped at γ + 1 at t=1
    torch.testing.assert_close(x0_eps[2], torch.tensor(5.0))
    assert torch.equal(objective.loss_weights(a, 0.0, "v_prediction"), torch.ones(3))
    lighter = objective.loss_weights(a, 5.0, "v_prediction", high_noise_weight=0.25) * (snr + 1)
    torch.testing.assert_close(lighter, snr.clamp(max=5.0) + 0.25)  # c sets the floor, γ the cap


def test_an_eps_floor_gives_the_x0_weights_of_a_v_model_with_the_same_floor():
    acp = _scheduler("epsilon").alphas_cumprod.float()
    a = acp[torch.tensor([999, 800, 500, 1])]
    snr = a / (1 - a)
    eps = objective.loss_weights(a, 5.0, "epsilon", high_noise_weight=0.25) * snr
    v = objective.loss_weights(a, 5.0, "v_prediction", high_noise_weight=0.25) * (snr + 1)
    torch.testing.assert_close(eps, v)
    assert eps[0] > 50 * (objective.loss_weights(a, 5.0, "epsilon") * snr)[0]  # the noisiest steps now count


def test_unknown_prediction_type_is_refused():
    with pytest.raises(ValueError, match="prediction_type"):
        objective.target(torch.zeros(1), torch.zeros(1), torch.ones(1), "sample")


def _block_std(x: torch.Tensor, block: int) -> float:
    return torch.nn.functional.avg_pool2d(x, block).std().item()


def test_training_noise_without_extras_draws_exactly_white_plus_offset():
    """Runs trained before pyramid noise existed resume with the same noise stream."""
    z0 = torch.zeros(8, 4, 16, 16)
    torch.manual_seed(3)
    old = torch.randn_like(z0) + 0.15 * torch.randn(8, 4, 1, 1)
    torch.manual_seed(3)
    assert torch.equal(objective.training_noise(z0, offset=0.15), old)
    torch.manual_seed(3)
    plain = objective.training_noise(z0)
    torch.manual_seed(3)
    assert torch.equal(plain, torch.randn_like(z0))


def test_pyramid_noise_adds_energy_where_an_object_position_lives():
    """Half- and quarter-image block means (where left/right/top/bottom differ) get noisier; the mean hardly does."""
    z0 = torch.zeros(256, 4, 16, 16)
    torch.manual_seed(0)
    white = objective.training_noise(z0)
    torch.manual_seed(0)
    pyr = objective.training_noise(z0, pyramid=0.3)
    assert pyr.shape == z0.shape
    assert _block_std(pyr, 8) > 2 * _block_std(white, 8)  # 2x2 blocks: white 0.125, pyramid about 0.33
    assert _block_std(pyr, 4) > 1.3 * _block_std(white, 4)  # 4x4 blocks: white 0.25
    assert abs(pyr.std().item() - 1.0) < 0.15  # the pixel-level noise stays close to what samplers start from


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("t", [100, 600, 999])
def test_layout_loss_weighs_a_coarse_clean_image_error_by_the_layout_weight(prediction_type, t):
    """A prediction whose clean image (as the samplers read it) is off by a left/right shift costs weight·δ²."""
    sched = _scheduler(prediction_type)
    g = torch.Generator().manual_seed(t)
    z0, noise = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    a = sched.alphas_cumprod[t].float().view(1, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    delta = torch.zeros(1, 4, 16, 16)
    delta[..., :8] = 0.5  # the left half brighter, the right half darker
    delta[..., 8:] = -0.5
    tgt = objective.target(z0, noise, a, prediction_type)
    # the prediction whose x0 reading is z0 + delta
    pred = tgt - delta * (a / (1 - a)).sqrt() if prediction_type == "epsilon" else tgt - delta / (1 - a).sqrt()
    x0 = sched.step(pred, t, zt, generator=g).pred_original_sample
    torch.testing.assert_close(x0, z0 + delta, rtol=1e-3, atol=1e-3)
    loss = objective.layout_loss(pred, tgt, a, prediction_type, weight=0.25)
    torch.testing.assert_close(loss, torch.tensor([0.25 * 0.25]), rtol=1e-3, atol=1e-5)


def test_layout_loss_ignores_fine_errors_and_is_off_at_zero_weight():
    """Errors that average out within each block (a star's missing point, this seed's jitter) cost nothing."""
    a = torch.full((2, 1, 1, 1), 0.01)
    fine = torch.ones(2, 4, 16, 16)
    fine[..., ::2, :] = -1  # alternating rows: every 4x4 block mean is 0
    zero = torch.zeros_like(fine)
    assert objective.layout_loss(fine, zero, a, "epsilon", 0.25).abs().max() < 1e-6
    assert torch.equal(objective.layout_loss(fine, zero, a, "epsilon", 0.0), torch.zeros(2))
    coarse = torch.ones(2, 4, 16, 16)
    assert objective.layout_loss(coarse, zero, a, "epsilon", 0.25).min() > 10  # 0.25 / SNR(≈0.0101)
