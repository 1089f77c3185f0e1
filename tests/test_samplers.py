"""The sampler table and the cached k_lms scheduler."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import scipy.integrate
import torch
from diffusers import DDIMScheduler, LMSDiscreteScheduler, PNDMScheduler

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


def test_a_models_karras_config_does_not_leak_into_the_plain_samplers():
    """A folder saved from a "DPM++ 2M Karras" pipeline says use_karras_sigmas: true; k_euler must stay k_euler."""
    karras_config = {**SD1_SCHEDULER_CONFIG, "use_karras_sigmas": True}
    for name in SAMPLERS:
        ours = make_scheduler(name, karras_config)
        plain = make_scheduler(name, SD1_SCHEDULER_CONFIG)
        if "use_karras_sigmas" in inspect.signature(type(ours).__init__).parameters:  # DDIM and PLMS ignore it
            assert ours.config.use_karras_sigmas == name.endswith("_karras"), name
        ours.set_timesteps(12)
        plain.set_timesteps(12)
        assert torch.equal(ours.timesteps, plain.timesteps), name


LEADING = {**SD1_SCHEDULER_CONFIG, "timestep_spacing": "leading"}  # what the embedded model's config says

# runwayml/stable-diffusion-v1-5's scheduler/scheduler_config.json as diffusers 0.6 wrote it: no timestep_spacing.
SD15_HUB_SCHEDULER = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False,
}  # fmt: skip


@pytest.mark.parametrize("family", ["sd-1", "sd-1-v", "sd-2", "sd-2-v"])
def test_a_single_file_gets_the_schedules_its_hub_folder_and_stock_diffusers_get(family):
    """The family config a .safetensors file loads with once said "leading" where SD's own folder says nothing,
    so the k_ samplers ran other timesteps (k_lms at 10 steps: 901…1 against 999…0) and one model made two images.
    Stock: the folder's scheduler loaded by the pipeline, then `Cls.from_config(pipe.scheduler.config)`."""
    from invoke_repl.loading import family_config_dir, scheduler_config

    ours = scheduler_config(family_config_dir(family), family)
    if family == "sd-2-v":  # stabilityai/stable-diffusion-2-1 ships a v-prediction DDIM config
        pipeline_scheduler = DDIMScheduler.from_config({**SD15_HUB_SCHEDULER, "prediction_type": "v_prediction"})
    else:
        v = {"prediction_type": "v_prediction"} if family == "sd-1-v" else {}
        pipeline_scheduler = PNDMScheduler.from_config({**SD15_HUB_SCHEDULER, **v})
    for name in SAMPLERS:
        spec = SAMPLER_TABLE[name]
        stock = spec.cls.from_config(pipeline_scheduler.config, **spec.overrides)
        mine = make_scheduler(name, ours)
        stock.set_timesteps(10)
        mine.set_timesteps(10)
        assert torch.equal(mine.timesteps, stock.timesteps), (family, name)
        assert mine.config.prediction_type == stock.config.prediction_type, (family, name)


@pytest.mark.parametrize("steps", [1, 2, 101, 150, 400, 600, 1000])
def test_step_counts_where_leading_spacing_breaks_start_near_pure_noise(steps):
    """Leading spacing at these counts starts far below T (N=1: at t=1) or past it (N=1000: t=1000)."""
    from invoke_repl.generator.core import plan_schedule

    for name in SAMPLERS:
        if steps == 1000 and name in ("k_dpmpp_2", "k_dpmpp_2_a"):
            continue  # refused instead (next tests)
        timesteps = plan_schedule(name, LEADING, steps, steps).timesteps
        assert max(0.95 * 1000 * (1 - 1 / steps), 600) <= float(timesteps.max()) <= 999, (name, steps)


@pytest.mark.parametrize("steps", [3, 10, 25, 30, 50, 70, 99, 100, 200, 250, 500])
def test_step_counts_where_leading_spacing_works_keep_stock_timesteps(steps):
    from invoke_repl.generator.core import plan_schedule

    for name in SAMPLERS:
        if name.startswith("k_dpmpp_2") and steps >= 100:
            continue  # DPM-Solver's own leading rule (T // (N + 1)) breaks from 100 steps on
        stock = SAMPLER_TABLE[name].cls.from_config(LEADING, **SAMPLER_TABLE[name].overrides)
        stock.set_timesteps(steps)
        assert torch.equal(plan_schedule(name, LEADING, steps, steps).timesteps, stock.timesteps), name


def test_the_step_counts_up_to_100_that_leave_stock_spacing_are_the_ones_the_docs_list():
    """README and core._broken_spacing list them; "3-100 steps give stock's schedules" was wrong at 14 counts."""
    from invoke_repl.generator.core import _broken_spacing

    def replaced(name: str) -> list[int]:
        scheduler = make_scheduler(name, LEADING)
        found = []
        for steps in range(1, 101):
            scheduler.set_timesteps(steps, device="cpu")
            if _broken_spacing(scheduler, steps):
                found.append(steps)
        return found

    assert replaced("k_euler") == replaced("ddim") == replaced("plms") == [1, 2, 59, 63, 67, 72, 77, 78, 79, 84, 85,
                                                                           86, 91, 92, 93, 94]  # fmt: skip
    assert replaced("k_dpmpp_2") == [1, 58, 62, 66, 71, 76, 77, 78, 83, 84, 85, 90, 91, 92, 93, 100]


def _exact_noise_residual(sampler: str, steps: int, taken: int) -> float:
    """Mean |x − x0| after running `sampler`'s plan with a model that predicts the true noise of its input: an
    exact sampler ends at the final alpha's mix of x0 and that noise, whatever the step count."""
    from invoke_repl.generator.core import plan_schedule

    schedule = plan_schedule(sampler, LEADING, steps, taken)
    scheduler, alphas = schedule.scheduler, schedule.scheduler.alphas_cumprod
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 1, 4, 8, 8, generator=generator)
    first = alphas[int(schedule.timesteps[0])]
    x = first.sqrt() * x0 + (1 - first).sqrt() * noise
    for t in schedule.timesteps:
        alpha = alphas[int(t)]
        x = scheduler.step((x - alpha.sqrt() * x0) / (1 - alpha).sqrt(), t, x, return_dict=False)[0]
    return float((x - x0).abs().mean())


@pytest.mark.parametrize("sampler", ["ddim", "plms"])
def test_ddim_and_plms_step_to_their_schedules_next_timestep_on_uneven_schedules(sampler):
    """diffusers' DDIM/PLMS step from t to t − ⌊T/N⌋; on the trailing schedule that stands in at 600 steps the gaps
    are 1 and 2, so each step landed on the wrong noise level: the image kept visible noise (residual 0.098 against
    0.025 here; 18 levels off k_euler's 600-step image on the embedded model)."""
    exact = _exact_noise_residual(sampler, 50, 50)
    for steps, taken in [(59, 59), (150, 150), (600, 600), (750, 750), (600, 210), (94, 3)]:
        assert _exact_noise_residual(sampler, steps, taken) == pytest.approx(exact, abs=2e-6), (steps, taken)


@pytest.mark.parametrize(("stock_cls", "sampler"), [(DDIMScheduler, "ddim"), (PNDMScheduler, "plms")])
@pytest.mark.parametrize("steps", [1, 3, 10, 50, 200])
def test_ddim_and_plms_steps_stay_bit_identical_to_stock_on_evenly_spaced_schedules(stock_cls, sampler, steps):
    overrides = SAMPLER_TABLE[sampler].overrides
    stock, mine = stock_cls.from_config(LEADING, **overrides), make_scheduler(sampler, LEADING)
    assert type(mine) is not stock_cls and isinstance(mine, stock_cls)
    stock.set_timesteps(steps)
    mine.set_timesteps(steps)
    generator = torch.Generator().manual_seed(steps)
    a = b = torch.randn(1, 4, 8, 8, generator=generator)
    for t in stock.timesteps:
        output = torch.randn(1, 4, 8, 8, generator=generator)
        a = stock.step(output, t, a, return_dict=False)[0]
        b = mine.step(output, t, b, return_dict=False)[0]
        assert torch.equal(a, b), int(t)


def test_a_schedule_whose_steps_no_stride_reaches_is_refused_in_one_line(monkeypatch):
    from invoke_repl.generator.core import plan_schedule
    from invoke_repl.request import RequestError

    monkeypatch.setattr(samplers, "_stride_for", lambda train, gap: None if gap == 2 else train // gap)
    with pytest.raises(RequestError, match=r"^ddim cannot take 600 steps on this model's 1000-timestep schedule"):
        plan_schedule("ddim", LEADING, 600, 600)


@pytest.mark.parametrize(("sampler", "steps"), [("ddim", 1000), ("plms", 1000), ("k_lms", 1000), ("k_dpmpp_2", 999)])
def test_the_largest_step_counts_make_a_finite_image(sampler, steps):
    """1000 steps crashed DDIM/PLMS (timestep 1000 of 0..999) and made NaN, saved black, with k_lms/k_dpmpp_2."""
    components = build_tiny_random()
    components.scheduler_config = {**components.scheduler_config, "timestep_spacing": "leading"}  # as SD's own
    request = Request(prompt="a", steps=steps, seed=1, width=16, height=16, sampler=sampler)
    (result,) = list(generate(components, request, progress=False))
    assert np.asarray(result.image).std() > 0


def test_a_step_count_with_a_zero_width_step_is_refused_in_one_line():
    from invoke_repl.request import RequestError

    request = Request(prompt="a", steps=1000, seed=1, width=16, height=16, sampler="k_dpmpp_2")
    with pytest.raises(RequestError, match="k_dpmpp_2 cannot take 1000 steps .*use fewer steps"):
        list(generate(build_tiny_random(), request, progress=False))


def test_nan_latents_are_an_error_not_a_black_image(monkeypatch):
    from invoke_repl.generator.core import NumericalError

    components = build_tiny_random()
    real = components.unet.forward
    monkeypatch.setattr(components.unet, "forward", lambda *a, **k: (real(*a, **k)[0] * float("nan"),))
    request = Request(prompt="a", steps=3, seed=1, width=16, height=16, sampler="k_euler")
    with pytest.raises(NumericalError, match="the sampler produced NaN"):
        list(generate(components, request, progress=False))
