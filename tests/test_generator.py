"""Generator semantics on the tiny-random model: reproducibility, seeds, -n, variations, batching, cancellation,
previews, request resolution and prompt conditioning."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from invoke_repl.generator import Cancelled, StepInfo, generate, resolve_requests
from invoke_repl.generator import previews as previews_module
from invoke_repl.generator.conditioning import encode_prompts
from invoke_repl.generator.core import mixed_noise, seeded_noise, slerp
from invoke_repl.request import Request

SIZE = 32
STEPS = 6


# diffusers 0.42's k-schedulers call numpy on tensors every step, which numpy 2 flags with DeprecationWarnings;
# recording thousands of them per test costs seconds on this machine.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _request(**changes) -> Request:
    fields = {"prompt": "a red fox", "steps": STEPS, "seed": 42, "width": SIZE, "height": SIZE, "sampler": "k_euler"}
    fields.update(changes)
    return Request(**fields)


def _pixels(components, request: Request, **kwargs) -> list[np.ndarray]:
    return [np.asarray(r.image, dtype=np.int16) for r in generate(components, request, progress=False, **kwargs)]


def test_same_request_twice_gives_identical_pixels_and_seed_plus_one_differs(components):
    first, second = _pixels(components, _request()), _pixels(components, _request())
    assert np.array_equal(first[0], second[0])
    other = _pixels(components, _request(seed=43))
    assert not np.array_equal(first[0], other[0])


def test_iterations_use_consecutive_seeds_and_each_remakes_alone(components):
    results = list(generate(components, _request(iterations=3, sampler="k_euler_a"), progress=False))
    assert [r.seed for r in results] == [42, 43, 44]
    for k, result in enumerate(results):
        assert result.request.iterations == 1 and result.request.width == SIZE and result.request.model == "tiny-random"
        assert result.steps_taken == STEPS
        (alone,) = _pixels(components, _request(seed=42 + k, sampler="k_euler_a"))
        assert np.array_equal(np.asarray(result.image, dtype=np.int16), alone)
        # The recorded request alone regenerates the same pixels.
        (again,) = _pixels(components, result.request)
        assert np.array_equal(again, alone)


def test_batched_iterations_match_single_runs_within_rounding(components):
    """-n through the UNet together: each image keeps its own noise and ancestral RNG; only kernel rounding of
    the batched matmuls differs from a single run."""
    request = _request(iterations=3, sampler="k_euler_a", seed=7)
    batched = _pixels(components, request, batch_size=3)
    for k, image in enumerate(batched):
        (alone,) = _pixels(components, _request(seed=7 + k, sampler="k_euler_a"))
        assert np.abs(image - alone).max() <= 2


def test_random_seed_is_drawn_and_recorded(components):
    (result,) = generate(components, _request(seed=None), progress=False)
    assert result.request.seed is not None and 0 <= result.request.seed < 2**32
    (again,) = _pixels(components, result.request)
    assert np.array_equal(np.asarray(result.image, dtype=np.int16), again)


def test_resolve_requests_folds_variations_and_wraps_seeds():
    request = _request(iterations=2, seed=2**32 - 1, variation_amount=0.25, with_variations=((9, 0.5),))
    resolved = resolve_requests(request, "m", (SIZE, SIZE))
    assert [r.seed for r in resolved] == [2**32 - 1, 2**32 - 1]
    assert [r.with_variations for r in resolved] == [((9, 0.5), (0, 0.25)), ((9, 0.5), (1, 0.25))]
    assert all(r.variation_amount == 0 and r.iterations == 1 and r.model == "m" for r in resolved)
    plain = resolve_requests(_request(iterations=2, seed=2**32 - 1), "m", (SIZE, SIZE))
    assert [r.seed for r in plain] == [2**32 - 1, 0]


def test_variation_zero_is_base_and_a_variation_changes_the_image(components):
    base = _pixels(components, _request())[0]
    assert np.array_equal(_pixels(components, _request(with_variations=((5, 0.0),)))[0], base)
    (varied,) = generate(components, _request(variation_amount=0.3), progress=False)
    assert varied.request.with_variations == ((43, 0.3),) and varied.seed == 42
    assert not np.array_equal(np.asarray(varied.image, dtype=np.int16), base)
    (again,) = _pixels(components, varied.request)
    assert np.array_equal(again, np.asarray(varied.image, dtype=np.int16))


def test_slerp_rules():
    a, b = seeded_noise(1, (1, 4, 8, 8)), seeded_noise(2, (1, 4, 8, 8))
    assert torch.equal(slerp(0.0, a, b), a) and torch.equal(slerp(1.0, a, b), b)
    mid = slerp(0.5, a, b)
    # Slerp keeps the norm of (near-orthogonal) Gaussian noise; a lerp would shrink it to ~0.71.
    assert abs(mid.norm() / a.norm() - 1) < 0.1
    assert torch.equal(mixed_noise(1, [], (1, 4, 8, 8)), a)
    assert torch.equal(
        seeded_noise(1, (1, 4, 8, 8)), torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    )


def test_cancel_stops_within_one_step(components, monkeypatch):
    calls = []
    forward = components.unet.forward
    monkeypatch.setattr(components.unet, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    cancel = threading.Event()
    steps: list[StepInfo] = []

    def on_step(info: StepInfo) -> None:
        steps.append(info)
        if info.step == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        list(generate(components, _request(iterations=2), cancel=cancel, on_step=on_step, progress=False))
    assert len(steps) == 2 and len(calls) == 2
    assert steps[0].total == STEPS and steps[0].images == (0,) and steps[0].iterations == 2
    cancel.set()
    with pytest.raises(Cancelled):
        next(generate(components, _request(), cancel=cancel, progress=False))


def test_previews_one_per_step_at_image_size(components, monkeypatch):
    (result,) = generate(components, _request(), previews=True, progress=False)
    assert len(result.previews) == STEPS
    assert all(p.size == (SIZE, SIZE) and p.mode == "RGB" for p in result.previews)
    # tiny-random's VAE is cheap, so previews are real decodes: the last one is the image itself.
    assert np.array_equal(np.asarray(result.previews[-1]), np.asarray(result.image))
    monkeypatch.setattr(previews_module, "CHEAP_VAE_PARAMETERS", 0)  # force the SD 1.5 linear latent→RGB map
    (linear,) = generate(components, _request(), previews=True, progress=False)
    assert len(linear.previews) == STEPS and all(p.size == (SIZE, SIZE) for p in linear.previews)
    assert np.array_equal(np.asarray(linear.image), np.asarray(result.image))


def test_conditioning_equals_diffusers_encode_prompt(components):
    pipe = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=None,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    cond, uncond = encode_prompts(components, "a red fox in the snow", "blurry")
    stock_cond, stock_uncond = pipe.encode_prompt("a red fox in the snow", "cpu", 1, True, "blurry")
    assert torch.allclose(cond, stock_cond, atol=1e-5) and torch.allclose(uncond, stock_uncond, atol=1e-5)


@pytest.mark.parametrize(
    ("prompt", "negative"),
    [
        ("a red fox in the snow", ""),
        ("a red fox, snow, 4k", "blurry, low quality"),
        ("", ""),
        ("Ein Fuchs im Schnee über 日本", "  spaces   around  "),
        (" ".join(["fox"] * 75), "blurry"),  # exactly one full chunk
    ],
)
def test_plain_prompts_skip_compel_with_identical_conditioning(components, monkeypatch, prompt, negative):
    from invoke_repl.generator import conditioning

    assert conditioning._plain_encode(components, prompt) is not None
    fast = encode_prompts(components, prompt, negative)
    monkeypatch.setattr(conditioning, "_plain_encode", lambda *_args: None)
    through_compel = encode_prompts(components, prompt, negative)
    for ours, theirs in zip(fast, through_compel, strict=True):
        assert ours.shape == theirs.shape and torch.equal(ours, theirs)


@pytest.mark.parametrize(
    "text",
    [
        "a (red)++ fox",
        "a red fox-",
        "(fox)1.3",
        '("a", "b").blend(1, 1)',
        "a fox.and()",
        "a \\(fox\\)",
        "fox_tail",
        " ".join(["fox"] * 76),
        "blurry,, dark",  # CLIP reads ",," as one token, compel as ", ,"
    ],
)
def test_syntax_or_long_prompts_go_through_compel(components, text):
    from invoke_repl.generator import conditioning

    assert conditioning._plain_encode(components, text) is None


def test_a_negatives_conditioning_does_not_depend_on_the_positives_syntax(components):
    """With a plain positive, "blurry,, dark" was CLIP-encoded (",," one token); with "(red)1.0" in the positive
    compel encoded it (", ,"): the same negative, up to 5 levels apart in the image."""
    _, plain = encode_prompts(components, "a red star", "blurry,, dark")
    _, weighted = encode_prompts(components, "a (red)1.3 star", "blurry,, dark")
    assert torch.equal(plain, weighted)


def test_deeply_nested_emphasis_parses_at_once(components):
    """compel's grammar without packrat memoization: 65 s at depth 7, about 4× more per level, where Ctrl-C
    cannot reach (audit 2026-12-03). The bound is 300× the time it takes now; the old code took 65 s."""
    import time

    began = time.monotonic()
    cond, _ = encode_prompts(components, "(" * 7 + "masterpiece" + ")" * 7 + ", a red star")
    deep, _ = encode_prompts(components, "(" * 16 + "a" + ")" * 16)  # request.MAX_PROMPT_NESTING
    assert time.monotonic() - began < 15 and torch.isfinite(cond).all() and torch.isfinite(deep).all()


@pytest.mark.parametrize(
    ("prompt", "says"),
    [
        ("a red star.swap(circle)", ".swap(...) (cross-attention control) is not supported"),
        ('("a", "b").blend(0, 0)', "the prompt's weights give no usable conditioning"),
        ("a () star", "the prompt has empty parentheses ()"),
        ("(()) star", "the prompt has empty parentheses ()"),
    ],
)
def test_prompt_syntax_that_would_be_ignored_or_fail_later_is_a_one_line_error(components, prompt, says):
    """.swap() was dropped without a word; .blend(0, 0) became "the sampler produced NaN … try --precision";
    "()" was "IndexError: list index out of range"."""
    from invoke_repl.generator.conditioning import PromptError

    with pytest.raises(PromptError) as caught:
        encode_prompts(components, prompt)
    assert str(caught.value).startswith(says) and "\n" not in str(caught.value)
    assert torch.isfinite(encode_prompts(components, '("a", "b").and()')[0]).all()  # .and() is no empty group


def test_weighting_blend_and_long_prompts(components):
    plain, _ = encode_prompts(components, "a red fox")
    weighted, _ = encode_prompts(components, "a (red)++ fox-")
    blended, _ = encode_prompts(components, '("a red fox", "a blue bird").blend(0.7, 0.3)')
    assert plain.shape == weighted.shape == blended.shape
    assert not torch.allclose(plain, weighted) and not torch.allclose(plain, blended)
    long_prompt = " ".join(["fox"] * 100)
    cond, uncond = encode_prompts(components, long_prompt, "")
    assert cond.shape[1] > 77 and cond.shape == uncond.shape  # not cut at 77; both padded for one UNet call
    (result,) = generate(components, _request(prompt=long_prompt), progress=False)
    assert result.request.prompt == long_prompt


def test_cfg_one_runs_conditional_only(components, monkeypatch):
    batches = []
    forward = components.unet.forward
    monkeypatch.setattr(
        components.unet, "forward", lambda x, *a, **k: batches.append(x.shape[0]) or forward(x, *a, **k)
    )
    list(generate(components, _request(cfg_scale=1.0), progress=False))
    list(generate(components, _request(cfg_scale=7.5, iterations=2), batch_size=2, progress=False))
    assert batches == [1] * STEPS + [4] * STEPS


def test_a_long_tag_list_prompt_is_classified_at_once():
    """The plain-prompt check backtracked through every split of ", " on a tag list ending in syntax: 24 tags took
    30 s inside the regex engine. Run in a child process so a regression fails by timeout instead of hanging."""
    import subprocess
    import sys

    code = (
        "from invoke_repl.generator.conditioning import _PLAIN\n"
        "tags = ', '.join(f'tag{i}' for i in range(60))\n"
        "assert _PLAIN.fullmatch(tags) and not _PLAIN.fullmatch(tags + ', (red)++.')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
