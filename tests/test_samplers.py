"""The sampler table and the cached k_lms scheduler."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.integrate
import torch
from diffusers import LMSDiscreteScheduler

from invoke_repl.builtin import SD1_SCHEDULER_CONFIG, build_tiny_random
from invoke_repl.generator import generate, sampler_substitution, samplers
from invoke_repl.generator.samplers import SAMPLER_TABLE, CachedLMSDiscreteScheduler, make_scheduler
from invoke_repl.request import SAMPLERS, Request

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_every_sampler_name_maps_to_a_scheduler_on_the_models_betas():
    assert set(SAMPLER_TABLE) == set(SAMPLERS)
    for name in SAMPLERS:
        scheduler = make_scheduler(name, SD1_SCHEDULER_CONFIG)
        assert isinstance(scheduler, SAMPLER_TABLE[name].cls)
        assert scheduler.config.beta_schedule == "scaled_linear"
        assert scheduler.config.beta_start == 0.00085 and scheduler.config.beta_end == 0.012
        assert scheduler.config.num_train_timesteps == 1000
        assert bool(getattr(scheduler.config, "use_karras_sigmas", False)) == name.endswith("_karras")


def test_only_dpmpp_2_a_is_a_substitute_and_says_so():
    notes = {name: sampler_substitution(name) for name in SAMPLERS}
    assert {name for name, note in notes.items() if note} == {"k_dpmpp_2_a", "k_dpmpp_2_a_karras"}
    assert "DPMSolverSinglestepScheduler" in notes["k_dpmpp_2_a"]
    assert "k_dpmpp_2_a_karras" in notes["k_dpmpp_2_a_karras"]
    dpmpp_2 = make_scheduler("k_dpmpp_2", SD1_SCHEDULER_CONFIG).config
    assert dpmpp_2.algorithm_type == "dpmsolver++" and dpmpp_2.solver_order == 2


@pytest.mark.parametrize("karras", [False, True])
def test_cached_lms_steps_are_bit_identical_to_stock(karras):
    stock = LMSDiscreteScheduler.from_config(SD1_SCHEDULER_CONFIG, use_karras_sigmas=karras)
    cached = CachedLMSDiscreteScheduler.from_config(SD1_SCHEDULER_CONFIG, use_karras_sigmas=karras)
    gen = torch.Generator().manual_seed(0)
    for run in range(2):  # second run: every coefficient comes from the cache
        stock.set_timesteps(20)
        cached.set_timesteps(20)
        a = b = torch.randn(1, 4, 8, 8, generator=gen) * stock.init_noise_sigma
        for t in stock.timesteps:
            eps = torch.randn(1, 4, 8, 8, generator=gen)
            stock.scale_model_input(a, t)
            cached.scale_model_input(b, t)
            a = stock.step(eps, t, a, return_dict=False)[0]
            b = cached.step(eps, t, b, return_dict=False)[0]
            assert torch.equal(a, b), (run, t)


def _reference_lms(sigmas: np.ndarray, x: np.ndarray, eps_of) -> np.ndarray:
    """Linear multistep as k-diffusion's sample_lms runs it: the order grows with the steps this run has taken."""

    def coeff(order: int, i: int, j: int) -> float:
        def basis(tau: float) -> float:
            prod = 1.0
            for k in range(order):
                if k != j:
                    prod *= (tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k])
            return prod

        return scipy.integrate.quad(basis, sigmas[i], sigmas[i + 1], epsrel=1e-4)[0]

    derivatives: list[np.ndarray] = []
    for i in range(len(sigmas) - 1):
        derivatives = ([*derivatives, eps_of(x, sigmas[i])])[-4:]  # d = (x − denoised)/σ = ε
        order = min(i + 1, 4)
        x = x + sum(coeff(order, i, j) * d for j, d in enumerate(reversed(derivatives)))
    return x


def test_cached_lms_img2img_starts_at_first_order_like_k_diffusion():
    """Stock LMS started mid-schedule takes order 4 at its first step, with one derivative (diffusers #5630)."""
    from invoke_repl.generator.core import plan_schedule

    def eps_of(x, sigma):  # a smooth stand-in denoiser
        return np.tanh(0.5 * x / np.sqrt(sigma**2 + 1)) + 0.1

    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 4, 4, 4, generator=gen)
    results = {}
    for name, cls in (("ours", CachedLMSDiscreteScheduler), ("stock", LMSDiscreteScheduler)):
        schedule = plan_schedule("k_lms", SD1_SCHEDULER_CONFIG, 25, 5)
        scheduler = cls.from_config(schedule.scheduler.config)
        scheduler.set_timesteps(25)
        scheduler.set_begin_index(20)
        sigmas = scheduler.sigmas[20:].double().numpy()
        x = x0.clone()
        for t, sigma in zip(schedule.timesteps, sigmas, strict=False):
            scheduler.scale_model_input(x, t)
            eps = torch.from_numpy(eps_of(x.double().numpy(), sigma)).float()
            x = scheduler.step(eps, t, x, return_dict=False)[0]
        results[name] = x.double().numpy()
    expected = _reference_lms(sigmas, x0.double().numpy(), eps_of)
    np.testing.assert_allclose(results["ours"], expected, rtol=1e-4, atol=1e-4)
    assert np.abs(results["stock"] - expected).max() > 1e-2  # what the override is for


def test_cached_lms_integrates_once_per_schedule(monkeypatch):
    samplers._LMS_CACHE.clear()
    quad_calls = []
    quad = scipy.integrate.quad
    monkeypatch.setattr(scipy.integrate, "quad", lambda *a, **k: quad_calls.append(1) or quad(*a, **k))

    def run_schedule() -> None:
        scheduler = make_scheduler("k_lms", SD1_SCHEDULER_CONFIG)  # a fresh instance each time
        scheduler.set_timesteps(12)
        x = torch.zeros(1, 4, 2, 2)
        for t in scheduler.timesteps:
            scheduler.scale_model_input(x, t)
            x = scheduler.step(torch.ones_like(x), t, x, return_dict=False)[0]

    run_schedule()
    first = len(quad_calls)
    assert first > 0
    run_schedule()
    assert len(quad_calls) == first  # the second run integrated nothing


def test_cached_lms_generates_the_same_image_as_stock(monkeypatch):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads spin against the other jobs on this shared 2-core machine
    try:
        components = build_tiny_random()
        request = Request("a lighthouse", steps=5, seed=11, width=32, height=32, sampler="k_lms")
        (cached,) = generate(components, request, progress=False)
        monkeypatch.setitem(SAMPLER_TABLE, "k_lms", samplers.SamplerSpec(LMSDiscreteScheduler))
        (stock,) = generate(components, request, progress=False)
    finally:
        torch.set_num_threads(previous)
    assert np.array_equal(np.asarray(cached.image), np.asarray(stock.image))


def test_step_overhead_is_measurable_for_every_sampler():
    for name in ("k_lms", "k_euler", "k_heun"):
        assert samplers.step_overhead_ms(name, SD1_SCHEDULER_CONFIG, steps=4, shape=(1, 4, 8, 8)) > 0
