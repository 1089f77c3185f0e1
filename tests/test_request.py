"""The Request object: defaults, validation messages, and the img2img step arithmetic."""

from __future__ import annotations

import pytest

from invoke_repl.request import (
    DEFAULT_STRENGTH,
    FIELD_CHECKS,
    FIELD_NAMES,
    PREVIOUS,
    Request,
    RequestError,
    control_character,
    field_error,
    img2img_steps,
)


def test_defaults() -> None:
    r = Request(prompt="fire")
    assert (r.steps, r.seed, r.sampler, r.cfg_scale, r.iterations) == (50, None, "k_lms", None, 1)
    assert not r.is_img2img and r.effective_strength is None and r.steps_taken == 50
    assert FIELD_NAMES[0] == "prompt" and "with_variations" in FIELD_NAMES


def test_img2img_strength_defaults_and_steps_taken() -> None:
    r = Request(prompt="fire", steps=10, init_img="fire.png")
    assert r.effective_strength == DEFAULT_STRENGTH and r.steps_taken == 7
    assert r.replace(strength=0.7).steps_taken == 7
    assert r.replace(strength=0.0).steps_taken == 0  # 0 stays 0
    assert r.replace(strength=1.0).steps_taken == 10


@pytest.mark.parametrize(("steps", "strength", "taken"), [(100, 0.29, 29), (10, 0.7, 7), (50, 0.3, 15), (3, 0.5, 1)])
def test_img2img_steps_has_no_float_artefacts(steps: int, strength: float, taken: int) -> None:
    assert img2img_steps(steps, strength) == taken


def test_requests_are_frozen_and_comparable() -> None:
    r = Request(prompt="x", seed=PREVIOUS)
    with pytest.raises(AttributeError):
        r.steps = 3  # type: ignore[misc]
    assert r == Request(prompt="x", seed=-1) and hash(r) == hash(Request(prompt="x", seed=-1))


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"steps": 0}, "steps must be between 1 and 1000, got 0"),
        ({"steps": 1001}, "steps must be between 1 and 1000"),
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"steps": True}, "steps must be a whole number"),
        ({"seed": -2}, "seed must be between 0 and 4294967295"),
        ({"seed": 2**32}, "seed must be between 0 and 4294967295"),
        ({"strength": 1.5}, "strength must be between 0 and 1"),
        ({"strength": float("nan")}, "strength must be a finite number"),
        ({"init_img": ""}, "init image must be a file path"),
        ({"sampler": "k_lmz"}, "unknown sampler 'k_lmz'; choose one of: ddim"),
        ({"width": 4}, "width must be between 8 and 4096"),
        ({"height": 500}, "height must be a multiple of 8, got 500"),
        ({"cfg_scale": float("inf")}, "cfg scale must be a finite number"),
        ({"cfg_scale": -1.0}, "cfg scale must be between 0 and 100"),
        ({"iterations": 0}, "iterations must be between 1 and 1000"),
        ({"variation_amount": 2.0}, "variation amount must be between 0 and 1"),
        ({"with_variations": ((1, 2.0),)}, "variation weight must be between 0 and 1"),
        ({"with_variations": ((-5, 0.5),)}, "variation seed must be between 0"),
        ({"with_variations": [(1, 0.5)]}, "with-variations must be a tuple"),
        ({"grid": 1}, "grid must be true or false"),
        ({"model": "  "}, "model name must not be empty"),
        ({"outdir": ""}, "output directory must not be empty"),
        ({"prompt": "two\nlines"}, "prompt contains a control character (U+000A)"),
        ({"negative": "tab\there"}, "negative prompt contains a control character (U+0009)"),
        ({"init_img": "a\u2028b.png"}, "init image path contains a control character (U+2028)"),
        ({"model": "m\x00"}, "model name contains a control character"),
        ({"outdir": "o\x1b"}, "output directory contains a control character"),
    ],
)
def test_validation_messages(changes: dict[str, object], words: str) -> None:
    with pytest.raises(RequestError) as info:
        Request(**{"prompt": "x", **changes})  # type: ignore[arg-type]
    assert words in str(info.value)
    assert "\n" not in str(info.value)
    # the parser checks one value at a time with the same rule, and gets the same message
    ((name, value),) = changes.items()
    assert field_error(name, value) == str(info.value)


def test_every_field_has_a_rule_and_good_values_pass_it() -> None:
    assert sorted(FIELD_CHECKS) == sorted(FIELD_NAMES)  # (in the order validate has always reported them)
    good = Request(
        prompt="fire",
        seed=3,
        strength=0.5,
        init_img="a.png",
        width=64,
        height=64,
        cfg_scale=7.0,
        with_variations=((1, 0.5),),
        model="m",
        outdir="o",
    )
    for name in FIELD_NAMES:
        assert field_error(name, getattr(good, name)) is None, name


def test_control_character_finder() -> None:
    assert control_character("a dog's life, ünïcödé 🔥") is None
    assert control_character("a\x85b") == "\x85"
    assert control_character("\ud800") == "\ud800"
    assert control_character("ok\u2029then\x00") == "\u2029"  # the first one


def test_control_characters_are_exactly_the_unicode_categories_cc_cs_zl_zp() -> None:
    """The finder is a character class for speed; unicodedata is the definition it must keep to."""
    import sys
    import unicodedata

    wrong = [
        hex(code)
        for code in range(sys.maxunicode + 1)
        if (unicodedata.category(chr(code)) in ("Cc", "Cs", "Zl", "Zp")) != (control_character(chr(code)) is not None)
    ]
    assert wrong == []


def test_prompt_length_and_bracket_depth_are_bounded_for_compel() -> None:
    from invoke_repl.request import MAX_PROMPT_CHARS, MAX_PROMPT_NESTING, Request, RequestError

    Request(prompt="x" * MAX_PROMPT_CHARS)
    Request(prompt="(" * MAX_PROMPT_NESTING + "cat" + ")" * MAX_PROMPT_NESTING)
    with pytest.raises(RequestError, match="10,000 characters long; the limit is 4,000"):
        Request(prompt="y" * 10_000)
    with pytest.raises(RequestError, match="nests brackets 17 deep; the limit is 16"):
        Request(prompt="(" * 17 + "cat" + ")" * 17)
    Request(prompt="\\(" * 40 + "cat" + "\\)" * 40)  # escaped brackets are text, not nesting
    with pytest.raises(RequestError, match="negative prompt is"):
        Request(prompt="ok", negative="z" * 4001)


def test_a_refused_number_is_shown_as_given_not_rounded_into_the_range() -> None:
    with pytest.raises(RequestError, match=r"got 100\.0000001$"):
        Request("x", cfg_scale=100.0000001)
    with pytest.raises(RequestError, match=r"got 1\.0000001$"):
        Request("x", init_img="a.png", strength=1.0000001)
    with pytest.raises(RequestError, match=r"got -2$"):
        Request("x", init_img="a.png", strength=-2.0)


def test_a_blank_output_folder_is_refused_like_an_empty_one() -> None:
    with pytest.raises(RequestError, match="output directory must not be empty"):
        Request("x", outdir=" ")
