"""The shipped embedded model draws what it is told, through the same CLI a user runs on a fresh machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from invoke_repl.embedded import evaluate, world
from invoke_repl.request import DEFAULT_STEPS

from .clirun import run_cli

MODEL = Path(__file__).resolve().parents[1] / "invoke_repl" / "embedded" / "model"
pytestmark = pytest.mark.skipif(not (MODEL / "model_index.json").exists(), reason="embedded model not exported")


def palette_shares(img: Image.Image) -> list[tuple[str, float]]:
    names, _, frac = evaluate.colour_stats(img)
    return sorted(((n, float(f)) for n, f in zip(names, frac, strict=True)), key=lambda kv: -kv[1])


def test_fresh_machine_red_circle_on_blue_background(tmp_path):
    """The issue's acceptance line: no catalogue of one's own, no download, the shipped default model."""
    result = run_cli(["--outdir", "D"], tmp_path, stdin="a red circle on a blue background --seed 1\n")
    assert result.returncode == 0, result.stderr
    (png,) = (tmp_path / "D").glob("*.png")
    with Image.open(png) as img:
        assert img.size == (world.NATIVE_SIZE, world.NATIVE_SIZE)
        shares = palette_shares(img)
        obj_ok, bg_ok = evaluate.check_colours(img, "red", "blue")
    assert bg_ok and obj_ok, shares
    assert "embedded" in result.stdout or "embedded" in png.read_bytes().decode("latin-1")


@pytest.mark.parametrize(
    ("prompt", "colour", "background"),
    [
        ("a yellow square on a black background", "yellow", "black"),
        ("a large white triangle on a red background", "white", "red"),
        ("a blue star on a orange background", "blue", "orange"),
    ],
)
def test_prompt_steers_object_and_background_colour(prompt, colour, background):
    """Same seed, different words, different picture: the text, not the noise, decides the colours."""
    img = evaluate.render(evaluate.DEFAULT_MODEL, prompt, seed=0, steps=DEFAULT_STEPS)
    obj_ok, bg_ok = evaluate.check_colours(img, colour, background)
    assert obj_ok and bg_ok, palette_shares(img)


def test_model_card_shows_the_committed_evaluation():
    """The card's table is generated from evaluation.json (``evaluate --card``); hand edits would make them differ."""
    import json

    summary = json.loads((evaluate.CARD.parent / "evaluation.json").read_text())
    card = evaluate.CARD.read_text()
    table = card.split(evaluate.CARD_BEGIN, 1)[1].split(evaluate.CARD_END, 1)[0]
    assert table.strip().splitlines() == evaluate.table_lines(summary)


def test_remade_examples_go_to_the_readme_in_a_checkout_and_to_the_working_folder_when_installed(tmp_path):
    from invoke_repl.embedded import examples

    assert examples.default_out() == examples.OUT  # this checkout
    installed = tmp_path / "site-packages" / "invoke_repl" / "embedded"
    installed.mkdir(parents=True)
    assert examples.default_out(installed) == Path("invoke-repl-examples")


def test_readme_examples_are_what_the_lines_make(tmp_path):
    """The README's pictures are remade from their lines through the CLI (up to CPU rounding), strips included."""
    from invoke_repl.embedded import examples

    made = {p.name: p for p in examples.make(tmp_path / "again")}
    shipped = sorted(examples.OUT.glob("*.png"))
    assert sorted(made) == [p.name for p in shipped]
    for path in shipped:
        with Image.open(path) as a, Image.open(made[path.name]) as b:
            assert a.size == b.size, path.name
            diff = np.abs(np.asarray(a.convert("RGB"), np.int16) - np.asarray(b.convert("RGB"), np.int16))
        assert diff.mean() < 0.5 and diff.max() <= 16, (path.name, diff.mean(), diff.max())


def test_one_step_x0_reads_the_image_back_the_models_way():
    """The shape probe's x0 step must undo the noise as the model's prediction type says (v here): read as epsilon,
    the same output gives 19.8 dB at t = 300 and 11.7 dB at t = 500, against 25.0 and 23.2 read as v."""
    import torch

    cap = "a red circle on a white background"
    img = world.render(world.parse_caption(cap), 900)
    for t, floor in ((50, 24), (300, 22.5), (500, 21)):
        g = torch.Generator().manual_seed(0)
        got = evaluate.psnr(img, evaluate.one_step_x0(MODEL, img, cap, t, g))
        assert got > floor, (t, got)


def test_shape_classifier_training_is_the_same_in_every_process(tmp_path, monkeypatch):
    """Its weights decide the shape score; they once depended on the process's random start (75.0 vs 73.2 %)."""
    import torch

    real = evaluate._classifier_data
    monkeypatch.setattr(evaluate, "_classifier_data", lambda n, seed: real(24, seed))  # the recipe, in miniature
    weights = []
    before = torch.get_num_threads()
    try:
        for start, threads in ((1, 1), (2, 2)):  # another random start and thread count, as another process has
            torch.manual_seed(start)
            torch.set_num_threads(threads)
            net = evaluate.shape_classifier(tmp_path / str(start))
            weights.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
            assert torch.get_num_threads() == threads  # the caller's setting is given back
    finally:
        torch.set_num_threads(before)
    assert torch.equal(weights[0], weights[1])
