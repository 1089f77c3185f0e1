"""img2img semantics: steps actually taken for every sampler, strength 0 and 1, init-image sizing, entry noise by
schedule index."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from invoke_repl.generator import generate
from invoke_repl.generator.core import decode_latents, encode_image, plan_schedule
from invoke_repl.generator.img2img import fit_init_image, init_size
from invoke_repl.generator.samplers import make_scheduler
from invoke_repl.request import SAMPLERS, Request, img2img_steps

SIZE = 32
# The seed guide's table and its "compensating" runs, plus the float trap 0.29 × 100 (→ 29, not 28).
CASES = [(10, 0.7, 7), (10, 0.4, 4), (50, 0.4, 20), (30, 0.7, 21), (100, 0.29, 29)]


# diffusers 0.42's k-schedulers call numpy on tensors every step, which numpy 2 flags with DeprecationWarnings;
# recording thousands of them per test costs seconds on this machine.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def init_image() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray((rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8), "RGB")


@pytest.fixture
def unet_calls(components, monkeypatch):
    """Count UNet calls; the stand-in output is cheap (the counts, not the pixels, are under test)."""
    calls: list[int] = []

    def forward(sample, timestep, encoder_hidden_states=None, return_dict=True, **_):
        calls.append(sample.shape[0])
        return (0.1 * torch.tanh(sample),)

    monkeypatch.setattr(components.unet, "forward", forward)
    return calls


def expected_unet_calls(sampler: str, steps: int) -> int:
    """Heun and DPM2 evaluate the model twice per step except the last (its σ_next is 0, an Euler step); PLMS
    evaluates twice on its first step only (pseudo-improved-Euler start). Everything else once per step."""
    if steps == 0:
        return 0
    if sampler.startswith(("k_heun", "k_dpm_2")):
        return 2 * steps - 1
    if sampler == "plms":
        return steps + 1 if steps > 1 else 1
    return steps


def _run(components, init_image, sampler: str, steps: int, strength: float):
    callbacks: list[int] = []
    request = Request("fire", steps=steps, seed=1592514025, sampler=sampler, init_img="fire.png", strength=strength)
    (result,) = generate(
        components, request, init_image=init_image, on_step=lambda info: callbacks.append(info.step), progress=False
    )
    return result, callbacks


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_steps_actually_taken_for_every_sampler(components, init_image, unet_calls, sampler):
    for steps, strength, taken in [*CASES, (10, 1.0, 10)]:
        assert img2img_steps(steps, strength) == taken
        unet_calls.clear()
        result, callbacks = _run(components, init_image, sampler, steps, strength)
        assert result.steps_taken == taken == result.request.steps_taken
        assert callbacks == list(range(1, taken + 1)), (steps, strength)
        assert len(unet_calls) == expected_unet_calls(sampler, taken), (steps, strength)
        assert set(unet_calls) == {2}  # uncond + cond in one call


@pytest.mark.parametrize("sampler", ["k_lms", "k_heun", "ddim"])
def test_strength_zero_is_the_init_image_as_the_model_sees_it(components, init_image, unet_calls, sampler):
    result, callbacks = _run(components, init_image, sampler, 10, 0.0)
    assert result.steps_taken == 0 and callbacks == [] and unet_calls == [] and result.previews == []
    assert result.request.strength == 0.0
    (expected,) = decode_latents(components, encode_image(components, init_image))
    assert np.array_equal(np.asarray(result.image), np.asarray(expected))


def test_strength_one_runs_all_steps_from_pure_noise(components, init_image):
    """Strength 1 ignores the init image except for its size: it equals txt2img at that size and seed."""
    other = Image.fromarray(255 - np.asarray(init_image))
    a, _ = _run(components, init_image, "k_lms", 6, 1.0)
    b, _ = _run(components, other, "k_lms", 6, 1.0)
    (txt,) = generate(components, Request("fire", steps=6, seed=1592514025, width=SIZE, height=SIZE), progress=False)
    assert a.steps_taken == 6
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert np.array_equal(np.asarray(a.image), np.asarray(txt.image))


def test_same_line_twice_identical_and_variation_changes_img2img(components, init_image):
    a, _ = _run(components, init_image, "k_euler_a", 10, 0.7)
    b, _ = _run(components, init_image, "k_euler_a", 10, 0.7)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    request = Request("fire", steps=10, seed=1592514025, init_img="fire.png", strength=0.7, variation_amount=0.5)
    (varied,) = generate(components, request, init_image=init_image, progress=False)
    assert varied.request.with_variations == ((1592514026, 0.5),)
    assert not np.array_equal(np.asarray(varied.image), np.asarray(a.image))


def test_previews_one_per_step_actually_taken(components, init_image):
    request = Request("fire", steps=10, seed=1, init_img="fire.png", strength=0.4, sampler="k_heun")
    (result,) = generate(components, request, init_image=init_image, previews=True, progress=False)
    assert result.steps_taken == 4 and len(result.previews) == 4


def test_entry_noise_is_added_by_schedule_index_where_karras_repeats_timesteps():
    """DPM++ 2M Karras at 100 steps rounds its last timesteps to 1, 1, 1: entering 4 steps before the end must
    use entry 96's own sigma, not that of the first entry whose timestep value is 1 (entry 95)."""
    from invoke_repl.builtin import SD1_SCHEDULER_CONFIG

    schedule = plan_schedule("k_dpmpp_2_karras", SD1_SCHEDULER_CONFIG, 100, 4)
    scheduler = schedule.scheduler
    full = make_scheduler("k_dpmpp_2_karras", SD1_SCHEDULER_CONFIG)
    full.set_timesteps(100)
    assert full.timesteps[95] == full.timesteps[96] == schedule.timesteps[0]
    noised = scheduler.add_noise(torch.zeros(1), torch.ones(1), schedule.timesteps[:1])
    _, sigma_96 = scheduler._sigma_to_alpha_sigma_t(scheduler.sigmas[96])
    _, sigma_95 = scheduler._sigma_to_alpha_sigma_t(scheduler.sigmas[95])
    assert torch.allclose(noised, sigma_96.reshape(1)) and not torch.allclose(noised, sigma_95.reshape(1))


def test_plms_tail_is_a_fresh_plms_schedule():
    from invoke_repl.builtin import SD1_SCHEDULER_CONFIG

    full = plan_schedule("plms", SD1_SCHEDULER_CONFIG, 10, 10).timesteps.tolist()
    assert full[:3] == [901, 801, 801] and len(full) == 11
    assert plan_schedule("plms", SD1_SCHEDULER_CONFIG, 10, 4).timesteps.tolist() == [301, 201, 201, 101, 1]
    assert plan_schedule("plms", SD1_SCHEDULER_CONFIG, 10, 1).timesteps.tolist() == [1]


@pytest.mark.parametrize(
    ("image_size", "width", "height", "fit", "expected"),
    [
        ((100, 61), None, None, False, (96, 56)),  # own size floored to /8
        ((64, 64), None, None, False, (64, 64)),
        ((100, 50), 64, 64, False, (64, 64)),  # -W -H: exactly that
        ((1000, 600), 512, 512, True, (512, 304)),  # --fit: inside, aspect kept, floored
        ((600, 1000), 512, 512, True, (304, 512)),
        ((100, 50), 64, None, False, (64, 32)),  # one side given: the other from the aspect ratio
        ((3, 3), None, None, False, (8, 8)),
        ((107, 80), 64, 64, True, (64, 40)),  # 107 * (64 / 107) is 63.99999999999999 in floats
        ((49, 40), 64, 64, True, (64, 48)),
        ((107, 80), 512, 512, True, (512, 376)),
    ],
)
def test_init_size(image_size, width, height, fit, expected):
    assert init_size(image_size, width, height, fit) == expected


def test_fit_fills_the_binding_side_of_the_box_for_every_image_size():
    for iw in range(8, 300):
        for ih in (8, 40, 61, 80, 299):
            for box_w, box_h in ((64, 64), (512, 512), (512, 768)):
                w, h = init_size((iw, ih), box_w, box_h, fit=True)
                assert w <= box_w and h <= box_h and w % 8 == 0 and h % 8 == 0
                assert w == box_w or h == box_h, ((iw, ih), (box_w, box_h), (w, h))


def test_fitted_size_is_recorded_so_the_line_remakes_the_image(components, unet_calls):
    wide = Image.new("RGB", (80, 40), (200, 30, 30))
    request = Request("fire", steps=4, seed=3, init_img="w.png", strength=0.5, width=32, height=32, fit=True)
    (result,) = generate(components, request, init_image=wide, progress=False)
    assert result.image.size == (32, 16) and (result.request.width, result.request.height) == (32, 16)
    assert result.request.fit is False
    (again,) = generate(components, result.request, init_image=wide, progress=False)
    assert np.array_equal(np.asarray(again.image), np.asarray(result.image))
    assert fit_init_image(wide, (80, 40)).size == (80, 40)


def test_an_init_image_too_big_to_diffuse_is_refused_before_encoding(components, monkeypatch):
    from invoke_repl.generator import core
    from invoke_repl.request import RequestError

    encoded: list[object] = []
    monkeypatch.setattr(core, "encode_image", lambda *a: encoded.append(a))
    wide = Image.new("RGB", (4105, 16))
    request = Request(prompt="a", steps=2, strength=0.5, init_img="wide.png", seed=1, sampler="k_euler")
    with pytest.raises(RequestError, match=r"the init image is 4105×16 px; that is 4104×16 .*give -W and -H"):
        list(generate(components, request, init_image=wide, progress=False))
    with pytest.raises(RequestError, match=r"with -H 64 that makes 16416×64"):
        list(generate(components, request.replace(height=64), init_image=wide, progress=False))
    assert encoded == []
