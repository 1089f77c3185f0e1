"""PNG metadata: every field written and read back through each of the three chunks, foreign files read.

Images are tiny PIL images made here; nothing imports torch.
"""

from __future__ import annotations

import builtins
import json
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from invoke_repl import metadata, outputs
from invoke_repl.metadata import (
    A1111_TO_SAMPLER,
    SAMPLER_TO_A1111,
    SD_METADATA_KEY,
    MetadataError,
    made_on,
    parse_parameters,
    request_from_chunks,
    request_from_dream,
    request_from_parameters,
    request_from_sd_metadata,
    sd_metadata,
    text_chunks,
)
from invoke_repl.outputs import OutputError, read_request, save_image
from invoke_repl.request import SAMPLERS, Request
from invoke_repl.results import GeneratedImage

MODEL_HASH = "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"


def generated(request: Request, size: int = 8) -> GeneratedImage:
    image = Image.new("RGB", (size, size), (200, 30, 10))
    return GeneratedImage(image=image, request=request, steps_taken=request.steps_taken)


TXT2IMG = Request(
    prompt="fire",
    steps=10,
    seed=1592514025,
    sampler="k_lms",
    width=384,
    height=384,
    cfg_scale=7.5,
    model="tiny-random",
)
IMG2IMG = Request(
    prompt="a dragon's lair, (glowing)++ embers",
    negative="blurry, [text]",
    steps=10,
    seed=1592514025,
    strength=0.7,
    init_img="inputs/fire image.png",
    sampler="k_dpmpp_2_karras",
    width=64,
    height=48,
    cfg_scale=9.0,
    with_variations=((12345, 0.25), (678, 0.5)),
    fit=True,
    model="tiny-random",
)
UNICODE = Request(
    prompt="富士山の夕焼け, café — «ünïcödé» 🐉",
    negative="ぼやけた",
    steps=12,
    seed=7,
    sampler="k_euler_a",
    width=16,
    height=16,
    cfg_scale=7.5,
    with_variations=((99, 0.1),),
    model="модель",
)
CASES = [TXT2IMG, IMG2IMG, UNICODE]


def save(tmp_path: Path, request: Request) -> Path:
    return save_image(tmp_path, 1, generated(request), model_hash=MODEL_HASH, app_version="9.9.9")


def chunk_types(path: Path) -> dict[str, str]:
    """keyword → PNG chunk type (tEXt / iTXt / zTXt), read from the raw file."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found: dict[str, str] = {}
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8].decode("ascii")
        body = data[pos + 8 : pos + 8 + length]
        if ctype in ("tEXt", "iTXt", "zTXt"):
            found[body.split(b"\0", 1)[0].decode("latin-1")] = ctype
        pos += 12 + length
    return found


def png_with(tmp_path: Path, name: str, chunks: dict[str, str]) -> Path:
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    path = tmp_path / name
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


# ------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("request_", CASES, ids=["txt2img", "img2img", "unicode"])
def test_file_round_trip_every_field(tmp_path: Path, request_: Request) -> None:
    path = save(tmp_path, request_)
    assert read_request(path) == request_


@pytest.mark.parametrize("request_", CASES, ids=["txt2img", "img2img", "unicode"])
def test_each_chunk_alone_reads_back(request_: Request) -> None:
    chunks = text_chunks(generated(request_), model_hash=MODEL_HASH, app_version="1.0")
    assert request_from_chunks({"sd-metadata": chunks["sd-metadata"]}) == request_
    assert request_from_chunks({"Dream": chunks["Dream"]}) == request_
    # A1111 has no place for the init path or --fit; everything else comes back
    from_parameters = request_from_chunks({"parameters": chunks["parameters"]})
    assert from_parameters == request_.replace(init_img=None, fit=False)


def test_chunk_types_ascii_text_unicode_itxt(tmp_path: Path) -> None:
    ascii_path = save(tmp_path, TXT2IMG)
    assert chunk_types(ascii_path) == {"Dream": "tEXt", "sd-metadata": "tEXt", "parameters": "tEXt"}
    uni = save(tmp_path, UNICODE)
    # the JSON is ASCII-escaped as InvokeAI 2.x wrote it; the other two carry the text itself, as UTF-8
    assert chunk_types(uni) == {"Dream": "iTXt", "sd-metadata": "tEXt", "parameters": "iTXt"}
    with Image.open(uni) as im:
        assert im.info["parameters"].startswith(UNICODE.prompt + "\n")


def test_sd_metadata_shape_txt2img() -> None:
    meta = json.loads(text_chunks(generated(TXT2IMG), model_hash=MODEL_HASH, app_version="1.2.3")["sd-metadata"])
    assert {k: meta[k] for k in ("model", "model_id", "model_hash", "app_id", "app_version")} == {
        "model": "stable diffusion",
        "model_id": "tiny-random",
        "model_hash": MODEL_HASH,
        "app_id": "invoke-repl",
        "app_version": "1.2.3",
    }
    image = meta["image"]
    assert image["type"] == "txt2img"
    assert image["prompt"] == [{"prompt": "fire", "weight": 1.0}]
    assert (image["seed"], image["steps"], image["cfg_scale"], image["width"], image["height"]) == (
        1592514025,
        10,
        7.5,
        384,
        384,
    )
    assert image["sampler"] == "k_lms"
    assert image["variations"] == []
    assert image["steps_taken"] == 10
    assert "strength" not in image and "init_image_path" not in image


def test_sd_metadata_shape_img2img() -> None:
    g = generated(IMG2IMG)
    image = json.loads(text_chunks(g, model_hash=MODEL_HASH, app_version="1")["sd-metadata"])["image"]
    assert image["type"] == "img2img"
    assert image["strength"] == 0.7
    assert image["init_image_path"] == image["init_img"] == "inputs/fire image.png"
    assert image["steps_taken"] == 7  # ⌊10 × 0.7⌋
    assert image["variations"] == [{"seed": 12345, "weight": 0.25}, {"seed": 678, "weight": 0.5}]
    # 2.x readers see the negative in their own bracket syntax; ours reads the explicit key
    assert image["prompt"] == [{"prompt": "a dragon's lair, (glowing)++ embers [blurry, [text]]", "weight": 1.0}]
    assert image["negative_prompt"] == "blurry, [text]"
    assert image["fit"] is True


def test_dream_is_the_legacy_line() -> None:
    from invoke_repl.commands import legacy_line, parse

    dream = text_chunks(generated(IMG2IMG), model_hash="", app_version="1")["Dream"]
    assert dream == legacy_line(IMG2IMG)
    assert parse(dream, "legacy") == IMG2IMG


# ---------------------------------------------------------------------------------- A1111 `parameters`
A1111_SETTINGS = re.compile(
    r"^Steps: (\d+), Sampler: ([^,]+), CFG scale: ([0-9.]+), Seed: (\d+), Size: (\d+)x(\d+), "
    r"Model hash: ([0-9a-f]{10}), Model: ([^,]+)(?:, Denoising strength: ([0-9.]+))?"
)


def test_parameters_txt2img_format() -> None:
    text = text_chunks(generated(TXT2IMG), model_hash=MODEL_HASH, app_version="1")["parameters"]
    lines = text.split("\n")
    assert lines[0] == "fire"
    assert lines[1] == "Negative prompt: "  # present even when empty
    assert lines[2] == (
        "Steps: 10, Sampler: LMS, CFG scale: 7.5, Seed: 1592514025, Size: 384x384, "
        "Model hash: 6ce0161689, Model: tiny-random"
    )
    assert A1111_SETTINGS.match(lines[2])


def test_parameters_img2img_format() -> None:
    text = text_chunks(generated(IMG2IMG), model_hash=MODEL_HASH, app_version="1")["parameters"]
    prompt_line, negative_line, settings_line = text.split("\n")
    assert prompt_line == IMG2IMG.prompt
    assert negative_line == "Negative prompt: blurry, [text]"
    match = A1111_SETTINGS.match(settings_line)
    assert match is not None
    assert match.groups() == (
        "10",
        "DPM++ 2M Karras",
        "9.0",
        "1592514025",
        "64",
        "48",
        "6ce0161689",
        "tiny-random",
        "0.7",
    )
    prompt, negative, settings = parse_parameters(text)
    assert (prompt, negative) == (IMG2IMG.prompt, IMG2IMG.negative)
    assert settings["Variations"] == "12345:0.25,678:0.5"


def test_parameters_single_variation_uses_a1111_keys() -> None:
    text = text_chunks(generated(UNICODE), model_hash=MODEL_HASH, app_version="1")["parameters"]
    settings = parse_parameters(text)[2]
    assert (settings["Variation seed"], settings["Variation seed strength"]) == ("99", "0.1")
    assert settings["Model"] == "модель"


def test_parameters_without_hash_or_model() -> None:
    request = TXT2IMG.replace(model=None)
    text = text_chunks(generated(request), model_hash="", app_version="1")["parameters"]
    assert "Model hash" not in text and "Model:" not in text
    assert request_from_parameters(text) == request


def test_sampler_names_map_both_ways() -> None:
    assert set(SAMPLER_TO_A1111) == set(SAMPLERS)
    assert len(set(SAMPLER_TO_A1111.values())) == len(SAMPLERS)
    for ours, theirs in SAMPLER_TO_A1111.items():
        assert A1111_TO_SAMPLER[theirs.lower()] == ours
        request = TXT2IMG.replace(sampler=ours)
        text = text_chunks(generated(request), model_hash="", app_version="1")["parameters"]
        assert f"Sampler: {theirs}," in text
        assert request_from_parameters(text).sampler == ours


def test_model_name_with_comma_is_quoted() -> None:
    request = TXT2IMG.replace(model="sd, v1: pruned")
    text = text_chunks(generated(request), model_hash="", app_version="1")["parameters"]
    assert 'Model: "sd, v1: pruned"' in text
    assert request_from_parameters(text).model == "sd, v1: pruned"


# ------------------------------------------------------------------------------------ foreign PNGs
def test_reads_invokeai_2x_png(tmp_path: Path) -> None:
    """Dream + sd-metadata exactly as InvokeAI 2.3's metadata_dumps / normalized prompt wrote them."""
    sd_meta = {
        "model": "stable diffusion",
        "model_id": "stable-diffusion-1.5",
        "model_hash": "cc6cb27103417325ff94f52b7a5d2dde45a7515b25c255d8e396c90014281516",
        "app_id": "invoke-ai/InvokeAI",
        "app_version": "2.3.5",
        "image": {
            "prompt": [{"prompt": "a castle on a hill [fog, blurry]", "weight": 1.0}],
            "steps": 30,
            "cfg_scale": 8.0,
            "threshold": 0,
            "perlin": 0,
            "height": 384,
            "width": 512,
            "seed": 42,
            "seamless": False,
            "hires_fix": False,
            "type": "img2img",
            "postprocessing": None,
            "sampler": "k_euler_a",
            "variations": [{"seed": 1001, "weight": 0.1}],
            "strength_steps": 0.6,
            "orig_hash": "5d41402abc4b2a76b9719d911017c592",
            "inpaint_replace": 0,
        },
    }
    dream = '"a castle on a hill [fog, blurry]" -s 30 -S 42 -W 512 -H 384 -C 8.0 -A k_euler_a -V 1001:0.1 -f 0.6'
    path = png_with(tmp_path, "000012.42.png", {"Dream": dream, "sd-metadata": json.dumps(sd_meta)})
    expected = Request(
        prompt="a castle on a hill",
        negative="fog, blurry",
        steps=30,
        seed=42,
        strength=0.6,  # 2.x's writer dropped the init path; the strength stays for the user to add -I
        sampler="k_euler_a",
        width=512,
        height=384,
        cfg_scale=8.0,
        with_variations=((1001, 0.1),),
        model="stable-diffusion-1.5",
    )
    assert read_request(path) == expected
    # the Dream line alone, as 2.x's !fetch would use it
    assert request_from_dream(dream) == expected.replace(model=None)


def test_reads_invokeai_2x_grid_and_old_flat_layouts() -> None:
    image = {"prompt": [{"prompt": "a cat", "weight": 1.0}], "seed": 5, "steps": 20, "cfg_scale": 7.5,
             "width": 512, "height": 512, "sampler": "ddim", "variations": [], "type": "txt2img"}  # fmt: skip
    grid = {"model": "stable diffusion", "model_id": "sd", "images": [image, {**image, "seed": 6}]}
    assert request_from_sd_metadata(grid) == Request(
        prompt="a cat", seed=5, steps=20, width=512, height=512, sampler="ddim", cfg_scale=7.5, model="sd"
    )
    flat = {**image, "prompt": "a cat", "sampler_name": "k_heun", "variations": "3:0.5"}
    del flat["sampler"]
    assert request_from_sd_metadata(flat) == Request(
        prompt="a cat",
        seed=5,
        steps=20,
        width=512,
        height=512,
        sampler="k_heun",
        cfg_scale=7.5,
        with_variations=((3, 0.5),),
    )


def test_2x_weighted_subprompts_become_a_blend() -> None:
    meta = {"image": {"prompt": [{"prompt": "a cat", "weight": 0.5}, {"prompt": "a dog", "weight": 1.5}], "seed": 1}}
    assert request_from_sd_metadata(meta).prompt == '("a cat", "a dog").blend(0.5, 1.5)'


def test_reads_a1111_png(tmp_path: Path) -> None:
    parameters = (
        "masterpiece, a cat sitting on a (red:1.2) chair\n"
        "wearing a hat\n"
        "Negative prompt: lowres, blurry\n"
        "bad hands\n"
        "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 3141592653, Size: 512x768, Model hash: 6ce0161689, "
        'Model: v1-5-pruned-emaonly, Denoising strength: 0.55, Lora hashes: "add_detail: 7c6bad76eb54", '
        "Version: v1.6.0"
    )
    path = png_with(tmp_path, "00001-3141592653.png", {"parameters": parameters})
    assert read_request(path) == Request(
        prompt="masterpiece, a cat sitting on a (red:1.2) chair wearing a hat",
        negative="lowres, blurry bad hands",
        steps=28,
        seed=3141592653,
        strength=0.55,
        sampler="k_dpmpp_2_karras",
        width=512,
        height=768,
        cfg_scale=7.0,
        model="v1-5-pruned-emaonly",
    )


def test_a1111_schedule_type_hires_and_unknown_sampler() -> None:
    newer = "a cat\nSteps: 20, Sampler: Euler, Schedule type: Karras, CFG scale: 5, Seed: 1, Size: 512x512"
    request = request_from_parameters(newer)
    assert (request.sampler, request.negative, request.strength) == ("k_euler_karras", "", None)
    hires = "a cat\nSteps: 20, Sampler: UniPC, CFG scale: 5, Seed: 1, Size: 512x512, Denoising strength: 0.4, " + (
        "Hires upscale: 2, Hires upscaler: Latent"
    )
    notices: list[str] = []
    request = request_from_parameters(hires, notices)
    assert request.strength is None  # hires fix's second-pass strength is not img2img
    assert request.sampler == "k_lms"  # unknown sampler: the default, left for the user to edit, and said
    assert notices == [
        "the PNG's sampler 'UniPC' is not one invoke-repl has; the line uses k_lms (edit --sampler)",
        "dropped AUTOMATIC1111 settings that invoke-repl does not have: hires fix (Hires upscale 2) "
        "(the image will differ from this one)",
    ]


@pytest.mark.parametrize(
    ("settings", "dropped"),
    [
        ("Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Denoising strength: 0.5",
         "hires fix (Hires upscale 2, Hires steps 10)"),
        ("Clip skip: 2, RNG: NV, ENSD: 31337, Tiling: True, Refiner: sd_xl_refiner [7440042bbd]",
         "Clip skip 2, Tiling, Refiner"),
        ("Face restoration: CodeFormer, ADetailer model: face_yolov8n.pt, ControlNet 0: \"Module: canny\"",
         "Face restoration, ADetailer, ControlNet"),
        ("Mask blur: 4, Inpaint area: Only masked, Denoising strength: 0.75", "inpainting (Mask blur, Inpaint area)"),
    ],
)  # fmt: skip
def test_fetched_a1111_settings_that_change_the_image_are_said_to_be_dropped(settings: str, dropped: str) -> None:
    """Hires fix, clip skip, tiling, a refiner and the rest were left out without a word, as InvokeAI 2.x's are
    not: the line silently made a different image (512×768 for a hires-fixed 1024×1536)."""
    notices: list[str] = []
    text = f"a cat\nSteps: 20, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 512x768, {settings}"
    request_from_parameters(text, notices)
    lead = "dropped AUTOMATIC1111 settings that invoke-repl does not have"
    assert notices == [f"{lead}: {dropped} (the image will differ from this one)"]
    notices.clear()
    request_from_parameters("a cat\nSteps: 20, Sampler: Euler, CFG scale: 5, Seed: 1, Clip skip: 1", notices)
    assert notices == []  # clip skip 1 is A1111's default: nothing dropped


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"clip_skip": 2, "cfg_rescale_multiplier": 0.7, "seamless_x": True, "hrf_enabled": True, "hrf_strength": 0.45},
         ["dropped InvokeAI settings that invoke-repl does not have: clip_skip 2, cfg_rescale_multiplier 0.7, "
          "seamless_x, hires fix (hrf_strength 0.45) (the image will differ from this one)"]),
        ({"generation_mode": "inpaint", "strength": 0.75},
         ["dropped InvokeAI settings that invoke-repl does not have: generation_mode 'inpaint' (its mask) "
          "(the image will differ from this one)"]),
        ({"generation_mode": "sdxl_txt2img", "model": {"name": "juggernaut", "base": "sdxl"}},
         ["the PNG was made by a 'sdxl' model, which invoke-repl does not run; the line needs an SD 1.x/2.x one"]),
        ({"clip_skip": 0, "cfg_rescale_multiplier": 0, "seamless_x": False, "hrf_enabled": False, "hrf_strength": 0.45},
         []),
    ],
)  # fmt: skip
def test_fetched_invokeai_3_settings_that_change_the_image_are_said(fields: dict[str, Any], said: list[str]) -> None:
    meta = {"positive_prompt": "a cat", "seed": 1, "steps": 20, "generation_mode": "txt2img",
            "model": {"name": "dreamshaper", "base": "sd-1"}, **fields}  # fmt: skip
    notices: list[str] = []
    request_from_chunks({"invokeai_metadata": json.dumps(meta)}, notices)
    assert notices == said


@pytest.mark.parametrize(
    ("sampler", "schedule", "expected", "said"),
    [
        ("DPM++ SDE", "Karras", "k_lms", ["sampler 'DPM++ SDE' is not one"]),  # Karras not put on the fallback
        ("Euler a", "Karras", "k_euler_a", ["schedule type 'Karras' is not available for k_euler_a"]),
        ("DPM++ 2M", "Exponential", "k_dpmpp_2", ["schedule type 'Exponential' is not available for k_dpmpp_2"]),
        ("DPM++ 2M Karras", "Karras", "k_dpmpp_2_karras", []),
        ("K_EULER", "", "k_euler", []),  # our own names, in any case
        ("Euler", "Automatic", "k_euler", []),
    ],
)
def test_fetched_samplers_and_schedules_we_lack_are_said(sampler, schedule, expected, said) -> None:
    extra = f", Schedule type: {schedule}" if schedule else ""
    notices: list[str] = []
    text = f"a cat\nSteps: 20, Sampler: {sampler}{extra}, CFG scale: 5, Seed: 1, Size: 512x512"
    assert request_from_parameters(text, notices).sampler == expected
    assert len(notices) == len(said) and all(part in notice for part, notice in zip(said, notices, strict=True))


def test_invokeai_2_img2img_gets_its_init_image_from_the_dream_line() -> None:
    """2.x's sd-metadata lost init_img (a missing comma in its writer); its Dream line kept `-I`."""
    meta = {
        "model": "stable diffusion",
        "model_id": "stable-diffusion-1.5",
        "image": {
            "type": "img2img",
            "prompt": [{"prompt": "fire", "weight": 1.0}],
            "seed": 1592514025,
            "steps": 10,
            "cfg_scale": 7.5,
            "sampler": "k_lms",
            "width": 64,
            "height": 64,
            "strength_steps": 0.7,
        },
    }
    dream = "fire -s 10 -S 1592514025 -W 64 -H 64 -C 7.5 -I init.png -A k_lms -f 0.7"
    request = request_from_chunks({"sd-metadata": json.dumps(meta), "Dream": dream})
    assert (request.init_img, request.strength, request.seed) == ("init.png", 0.7, 1592514025)
    other_seed = dream.replace("-S 1592514025", "-S 7")  # a Dream line of another image is not used
    assert request_from_chunks({"sd-metadata": json.dumps(meta), "Dream": other_seed}).init_img is None


def test_invokeai_2_dream_line_with_postprocessing_fetches_without_it(tmp_path: Path) -> None:
    """A 2.x PNG whose only metadata is its Dream line, face-restored and upscaled: the switches 2.x's
    dream_prompt_str wrote for that (-G/-ft/-cf, -U with its two numbers) are dropped with one notice."""
    dream = "fire -s 10 -S 1592514025 -W 64 -H 64 -C 7.5 -I init.png -A k_lms -f 0.7 -G 0.8 -ft gfpgan -U 2.0 0.75"
    said: list[str] = []
    request = read_request(png_with(tmp_path, "000003.1592514025.png", {"Dream": dream}), said)
    assert (request.prompt, request.steps, request.seed, request.init_img, request.strength) == (
        "fire", 10, 1592514025, "init.png", 0.7,
    )  # fmt: skip
    assert said == [
        "dropped InvokeAI 2.x post-processing that invoke-repl does not have: -G 0.8 -ft gfpgan -U 2.0 0.75"
        " (the line makes the image as it was before that)"
    ]


def test_invokeai_dream_switches_with_attached_values_are_dropped_too() -> None:
    """`-G0.8`, `-U2 0.75`, `-ftgfpgan`, `-cf0.5` (argparse takes them; 1.x wrote them so) and 1.x's `-F` failed the
    whole fetch ("-G (face restoration) is an InvokeAI switch invoke-repl does not support"); a fetched `-o`
    wrote into the folder of whoever made the PNG."""
    dream = '"a cat" -s50 -S42 -G0.8 -ftcodeformer -cf0.5 -U2 0.75 -F -f0.6 -I cat.png -o /home/someone/out'
    said: list[str] = []
    request = request_from_dream(dream, said)
    got = (request.prompt, request.steps, request.seed, request.strength, request.outdir)
    assert got == ("a cat", 50, 42, 0.6, None)
    assert said == [
        "dropped InvokeAI 2.x post-processing that invoke-repl does not have: -G0.8 -ftcodeformer -cf0.5 -U2 0.75"
        " (the line makes the image as it was before that)"
    ]


def test_invokeai_2_dream_line_settings_that_change_the_image_are_dropped_and_said() -> None:
    dream = (
        "a castle -s 30 -S 42 -W 512 -H 512 -C 7.5 --perlin 0.1 --threshold 2.0 --seamless --hires_fix"
        " -I a.png -A k_euler_a -M mask.png --inpaint_replace -f 0.5 -c top 64 bottom 128 -V 1:0.1"
    )
    said: list[str] = []
    request = request_from_dream(dream, said)
    assert (request.prompt, request.sampler, request.init_img, request.strength, request.with_variations) == (
        "a castle", "k_euler_a", "a.png", 0.5, ((1, 0.1),),
    )  # fmt: skip
    assert said == [
        "dropped InvokeAI 2.x post-processing that invoke-repl does not have: -c top 64 bottom 128"
        " (the line makes the image as it was before that)",
        "dropped InvokeAI 2.x settings that invoke-repl does not have: --perlin 0.1 --threshold 2.0 --seamless"
        " --hires_fix -M mask.png --inpaint_replace (the image will differ from this one)",
    ]
    # A 2.x switch inside a quoted prompt is prompt text, and our own Dream lines have nothing to drop.
    assert request_from_dream('"a -G b" -s 5 -S 1', said := []).prompt == "a -G b" and said == []
    assert request_from_dream(text_chunks(generated(IMG2IMG), model_hash="", app_version="1")["Dream"]) == IMG2IMG


def test_invokeai_2_sd_metadata_postprocessing_and_effects_are_said() -> None:
    meta = {
        "model_id": "stable-diffusion-1.5",
        "image": {
            "type": "txt2img", "prompt": [{"prompt": "fire", "weight": 1.0}], "seed": 5, "steps": 10,
            "cfg_scale": 7.5, "sampler": "k_lms", "width": 64, "height": 64, "perlin": 0.2, "threshold": 0,
            "postprocessing": [{"type": "gfpgan", "strength": 0.8}, {"type": "esrgan", "scale": 2}],
        },
    }  # fmt: skip
    said: list[str] = []
    assert request_from_sd_metadata(meta, said).seed == 5
    assert said == [
        "dropped InvokeAI 2.x post-processing that invoke-repl does not have: gfpgan, esrgan"
        " (the line makes the image as it was before that)",
        "dropped InvokeAI 2.x settings that invoke-repl does not have: perlin (the image will differ from this one)",
    ]
    meta["image"]["postprocessing"] = 7  # malformed: nothing to say, and still read
    assert request_from_sd_metadata(meta, said := []).seed == 5 and len(said) == 1


def test_tabs_in_a_foreign_prompt_separate_words() -> None:
    text = "a red\tcircle,\ton blue\nNegative prompt: ugly\tbad\nSteps: 20, Sampler: Euler, CFG scale: 5, Seed: 1"
    request = request_from_parameters(text)
    assert (request.prompt, request.negative) == ("a red circle, on blue", "ugly bad")


def test_preference_sd_metadata_then_dream_then_parameters() -> None:
    chunks = text_chunks(generated(IMG2IMG), model_hash=MODEL_HASH, app_version="1")
    other = text_chunks(generated(TXT2IMG), model_hash=MODEL_HASH, app_version="1")
    assert request_from_chunks({**chunks, "Dream": other["Dream"], "parameters": other["parameters"]}) == IMG2IMG
    assert request_from_chunks({"Dream": chunks["Dream"], "parameters": other["parameters"]}) == IMG2IMG
    # a malformed preferred chunk falls through to the next one
    assert request_from_chunks({"sd-metadata": "{not json", "Dream": chunks["Dream"]}) == IMG2IMG


# ------------------------------------------------------------------------------------------ bad input
def test_not_a_png_is_one_line_error(tmp_path: Path) -> None:
    text_file = tmp_path / "notes.png"
    text_file.write_text("hello")
    jpeg = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(jpeg)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(save(tmp_path, TXT2IMG).read_bytes()[:40])
    for path in (text_file, jpeg, truncated, tmp_path / "missing.png"):
        with pytest.raises(MetadataError) as info:
            read_request(path)
        assert isinstance(info.value, OutputError) and isinstance(info.value, ValueError)
        assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_png_without_metadata(tmp_path: Path) -> None:
    bare = tmp_path / "bare.png"
    Image.new("RGB", (8, 8)).save(bare)
    with pytest.raises(MetadataError, match="no generation metadata"):
        read_request(bare)
    odd = png_with(tmp_path, "odd.png", {"sd-metadata": "[1, 2]", "parameters": "just a prompt"})
    with pytest.raises(MetadataError, match="unusable sd-metadata") as info:
        read_request(odd)
    assert "\n" not in str(info.value)


def test_invalid_values_are_reported_not_crashing() -> None:
    meta = {"image": {"prompt": "x", "seed": 1, "steps": 0}}
    with pytest.raises(MetadataError, match="steps"):
        request_from_chunks({"sd-metadata": json.dumps(meta)})


def test_paths_in_metadata_are_only_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An init path from a file is never opened, checked or run: it just comes back as text."""
    request = IMG2IMG.replace(init_img="../../etc/shadow; rm -rf ~ $(reboot).png")
    path = save(tmp_path, request)
    opened: list[str] = []

    def spying(real: Any) -> Any:
        def spy(fp: object, *args: object, **kwargs: object) -> Any:
            opened.append(str(fp))
            return real(fp, *args, **kwargs)

        return spy

    monkeypatch.setattr(Image, "open", spying(Image.open))
    monkeypatch.setattr(builtins, "open", spying(builtins.open))
    assert read_request(path).init_img == request.init_img
    assert opened == [str(path)]


def test_multiline_foreign_prompt_becomes_one_line() -> None:
    meta = {"image": {"prompt": [{"prompt": "a\ncat\x07 [ugly\r\nthing]", "weight": 1.0}], "seed": 3}}
    request = request_from_sd_metadata(meta)
    assert (request.prompt, request.negative) == ("a cat", "ugly thing")


# ----------------------------------------------------------------------------------------- property
_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(
    prompt=_text,
    negative=_text,
    seed=st.integers(0, 2**32 - 1),
    steps=st.integers(1, 1000),
    cfg=st.floats(0, 100, allow_nan=False),
    strength=st.none() | st.floats(0, 1),
    sampler=st.sampled_from(SAMPLERS),
    variations=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.floats(0, 1)), max_size=3).map(tuple),
)
def test_round_trip_property(
    prompt: str,
    negative: str,
    seed: int,
    steps: int,
    cfg: float,
    strength: float | None,
    sampler: str,
    variations: tuple[tuple[int, float], ...],
) -> None:
    request = Request(
        prompt=prompt,
        negative=negative,
        seed=seed,
        steps=steps,
        cfg_scale=cfg,
        strength=strength,
        init_img="in.png" if strength is not None else None,
        sampler=sampler,
        width=64,
        height=64,
        with_variations=variations,
        model="m",
    )
    chunks = text_chunks(generated(request), model_hash=MODEL_HASH, app_version="1")
    assert request_from_chunks({"sd-metadata": chunks["sd-metadata"]}) == request
    assert request_from_chunks({"Dream": chunks["Dream"]}) == request
    # A1111's layout splits on newlines and strips around the prompt lines; ours never contain newlines
    if prompt == prompt.strip() and negative == negative.strip() and not prompt.startswith("Negative prompt:"):
        back = request_from_chunks({"parameters": chunks["parameters"]})
        assert back == request.replace(init_img=None)


def test_crc_of_written_chunks_is_valid(tmp_path: Path) -> None:
    """A checksum-verifying reader (not just Pillow) accepts every chunk we write."""
    data = save(tmp_path, UNICODE).read_bytes()
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        body = data[pos + 4 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(body) == crc
        pos += 12 + length


def test_outputs_reexports() -> None:
    assert outputs.read_request is metadata.read_request
    assert outputs.OutputError is metadata.OutputError


def test_invokeai_3_metadata_is_read_with_notices_for_what_has_no_counterpart() -> None:
    meta = {
        "app_version": "3.3.0post3",
        "generation_mode": "txt2img",
        "positive_prompt": "landscape",
        "negative_prompt": "low quality",
        "width": 768,
        "height": 432,
        "seed": 356120443,
        "rand_device": "cpu",
        "cfg_scale": 7.5,
        "steps": 50,
        "scheduler": "dpmpp_2m_k",
        "clip_skip": 0,
        "model": {"model_name": "amixx_3Prunedfp16", "base_model": "sd-1", "model_type": "main"},
        "controlnets": [],
        "loras": [{"lora": {"model_name": "detail"}, "weight": 0.5}],
    }
    notices: list[str] = []
    request = request_from_chunks({"invokeai_metadata": json.dumps(meta)}, notices)
    assert (request.prompt, request.negative, request.seed, request.steps) == (
        "landscape",
        "low quality",
        356120443,
        50,
    )
    assert (request.sampler, request.width, request.height, request.cfg_scale) == ("k_dpmpp_2_karras", 768, 432, 7.5)
    assert request.model == "amixx_3Prunedfp16" and request.init_img is None and request.strength is None
    assert notices == ["the PNG's loras have no counterpart in invoke-repl and are left out"]
    later = {
        **meta,
        "generation_mode": "img2img",
        "strength": 0.6,
        "init_image": "abc.png",
        "scheduler": "unipc",
        "model": {"key": "k", "name": "dreamshaper", "base": "sd-1"},
        "loras": [],
    }
    notices.clear()
    request = request_from_chunks({"invokeai_metadata": json.dumps(later)}, notices)
    assert (request.init_img, request.strength, request.sampler, request.model) == (
        "abc.png",
        0.6,
        "k_lms",
        "dreamshaper",
    )
    assert notices == ["the PNG's scheduler 'unipc' is not one invoke-repl has; the line uses k_lms"]


def test_a_fetched_size_that_is_not_a_multiple_of_8_is_floored_with_a_notice() -> None:
    notices: list[str] = []
    request = request_from_parameters("a cat\nSteps: 20, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 500x300", notices)
    assert (request.width, request.height) == (496, 296)
    assert notices == [
        "the PNG's width 500 becomes 496 (a multiple of 8)",
        "the PNG's height 300 becomes 296 (a multiple of 8)",
    ]


def test_a_fetched_a1111_prompt_with_loras_says_they_are_not_loaded() -> None:
    notices: list[str] = []
    text = "a cat <lora:add_detail:0.8>\nSteps: 20, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 64x64"
    assert request_from_parameters(text, notices).prompt == "a cat <lora:add_detail:0.8>"
    assert notices == ["the PNG's prompt uses LoRAs (<lora:…>), which invoke-repl does not load; remove them to run it"]


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"device": "cuda", "precision": "bfloat16"}, ("cuda", "bfloat16")),
        ({"device": "cuda"}, None),  # half a record says nothing
        ({"device": 3, "precision": "float16"}, None),
        ({"device": "cuda\nrm -rf", "precision": "float16"}, None),  # only ever shown in a one-line notice
        ([], None),
    ],
)
def test_made_on_reads_device_and_precision_only_when_both_are_plain_text(meta: object, expected: object) -> None:
    assert made_on({"sd-metadata": json.dumps(meta)}) == expected
    assert made_on({"sd-metadata": "{not json"}) is None
    assert made_on({}) is None


# ------------------------------------------------------------------------------------------ reading the chunks
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def spliced(png: bytes, *chunks: bytes) -> bytes:
    """`png` with `chunks` inserted after its IHDR (8-byte signature + 25-byte IHDR chunk)."""
    return png[:33] + b"".join(chunks) + png[33:]


def workflow_chunk(megabytes: float) -> bytes:
    """A zTXt 'workflow' chunk as ComfyUI writes one, inflating to `megabytes` (Pillow's text limit is 1 MiB)."""
    text = ('{"nodes": [' + ",".join(f'{{"id": {i}}}' for i in range(int(megabytes * 2**20 / 11))) + "]}").encode()
    return _chunk(b"zTXt", b"workflow\0\0" + zlib.compress(text, 9))


def test_fetch_reads_an_image_whose_workflow_chunk_is_over_pillows_text_limit(tmp_path: Path) -> None:
    """Pillow refused the whole file ("Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK"), without
    naming it, though the chunks invoke-repl reads are a few kB."""
    path = save(tmp_path, IMG2IMG)
    path.write_bytes(spliced(path.read_bytes(), workflow_chunk(2.4)))
    with pytest.raises(ValueError, match="MAX_TEXT_CHUNK"):
        Image.open(path)  # the refusal this works around
    assert read_request(path) == IMG2IMG


def test_fetch_reads_the_text_of_an_image_over_pillows_pixel_limit(tmp_path: Path) -> None:
    """A 20000×20000 PNG was "too large to read safely", though its text needs no pixel decoded."""
    from tests.test_session_fuzz import bomb_png

    ours = text_chunks(generated(TXT2IMG), model_hash=MODEL_HASH, app_version="1")
    path = tmp_path / "huge.png"
    ours_chunks = [_chunk(b"tEXt", f"{key}\0{value}".encode()) for key, value in ours.items() if value.isascii()]
    path.write_bytes(spliced(bomb_png(20_000, 20_000), *ours_chunks))
    assert read_request(path) == TXT2IMG


def test_a_damaged_metadata_chunk_gives_way_to_the_next_one_or_is_named(tmp_path: Path) -> None:
    """A bad checksum in any chunk was "not a PNG image"; now the damaged chunk is skipped (Dream still serves)
    and, when no chunk is readable, the error says which one is damaged."""
    path = save(tmp_path, TXT2IMG)
    data = bytearray(path.read_bytes())
    at = data.index(b"sd-metadata\0") + 20
    data[at] ^= 0x01  # one flipped bit inside the sd-metadata chunk: its CRC no longer matches
    path.write_bytes(bytes(data))
    assert read_request(path).prompt == TXT2IMG.prompt and read_request(path).seed == TXT2IMG.seed
    only = tmp_path / "only.png"
    meta = sd_metadata(generated(TXT2IMG), model_hash=MODEL_HASH, app_version="1")
    damaged = bytearray(_chunk(b"tEXt", b"sd-metadata\0" + json.dumps(meta).encode()))
    damaged[-1] ^= 0xFF
    only.write_bytes(spliced(png_with(tmp_path, "bare.png", {}).read_bytes(), bytes(damaged)))
    with pytest.raises(MetadataError) as caught:
        read_request(only)
    assert str(caught.value) == f"{only}: damaged PNG: its sd-metadata chunk fails its checksum"


def test_a_metadata_chunk_that_inflates_without_bound_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "zbomb.png"
    bomb = _chunk(b"zTXt", b"sd-metadata\0\0" + zlib.compress(b"{" * (64 * 2**20), 9))  # 64 MiB from ~64 kB
    path.write_bytes(spliced(png_with(tmp_path, "bare.png", {}).read_bytes(), bomb))
    with pytest.raises(MetadataError) as caught:
        read_request(path)
    assert str(caught.value) == f"{path}: its sd-metadata chunk is over 16 MiB of text"


@pytest.mark.parametrize("zip_", [False, True])
def test_compressed_and_international_text_chunks_are_read(tmp_path: Path, zip_: bool) -> None:
    """zTXt and iTXt (compressed or not), as other tools write the same keys."""
    chunks = text_chunks(generated(IMG2IMG), model_hash=MODEL_HASH, app_version="1")
    info = PngInfo()
    info.add_itxt(SD_METADATA_KEY, chunks[SD_METADATA_KEY], zip=zip_)
    info.add_text("Dream", chunks["Dream"], zip=True)
    path = tmp_path / "itxt.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    assert read_request(path) == IMG2IMG
    assert metadata.read_chunks(path) == {SD_METADATA_KEY: chunks[SD_METADATA_KEY], "Dream": chunks["Dream"]}


def test_a_fetched_img2img_image_whose_metadata_names_no_init_image_says_so(tmp_path: Path) -> None:
    """AUTOMATIC1111's parameters record the denoising strength but never the init image: the fetched line had
    --strength and no --init-img, without a word, and ran as txt2img."""
    chunks = text_chunks(generated(IMG2IMG), model_hash=MODEL_HASH, app_version="1")
    path = png_with(tmp_path, "a1111.png", {"parameters": chunks["parameters"]})
    said: list[str] = []
    request = read_request(path, said)
    assert (request.strength, request.init_img) == (IMG2IMG.strength, None)
    assert said == [
        "the PNG is an img2img image (strength 0.7) whose metadata does not name its init image; add --init-img "
        "FILE to remake it"
    ]
    said.clear()
    assert read_request(save(tmp_path, IMG2IMG), said).init_img == IMG2IMG.init_img and said == []


def test_a_fetched_a1111_prompt_with_its_own_weighting_says_it_is_read_as_text() -> None:
    """`(masterpiece:1.3)` came back as compel text without a word: the weight was lost."""
    notices: list[str] = []
    text = "(masterpiece:1.3), a red star, [[blurry]]\nNegative prompt: (ugly:1.2)\nSteps: 20, Sampler: Euler, Seed: 1"
    request_from_parameters(text, notices)
    assert notices == [
        "the PNG's prompt uses AUTOMATIC1111's weights ((word:1.3)), which invoke-repl reads as plain text; write "
        "them as compel does ((word)1.3) to keep them"
    ]
    notices.clear()
    request_from_parameters("a (red) star: bright\nSteps: 20, Sampler: Euler, Seed: 1, Size: 64x64", notices)
    assert notices == []


def test_a_foreign_settings_value_in_a_notice_has_no_control_characters() -> None:
    """Notices go to the terminal: a PNG's `Clip skip: 2\\x1b[2J` must not clear the user's screen."""
    notices: list[str] = []
    text = "a cat\nSteps: 20, Sampler: Euler, Seed: 1, Clip skip: 2\x1b[2J, Hires steps: 9\x07"
    request_from_parameters(text, notices)
    assert len(notices) == 1 and "\x1b" not in notices[0] and "\x07" not in notices[0]
    assert "hires fix (Hires steps 9)" in notices[0] and "Clip skip 2[2J" in notices[0]
