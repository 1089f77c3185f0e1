"""Fast tests of the embedded model's picture world, tokenizer and (when trained) exported folder."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from invoke_repl.embedded import arch, world

MODEL = Path(world.__file__).with_name("model")


def test_world_is_deterministic_per_seed():
    for seed in (0, 1, 17, 12345):
        c1, i1 = world.make_pair(seed)
        c2, i2 = world.make_pair(seed)
        assert c1 == c2
        assert i1.mode == "RGB" and i1.size == (world.NATIVE_SIZE, world.NATIVE_SIZE)
        assert np.array_equal(np.asarray(i1), np.asarray(i2))
    assert {world.make_pair(s)[0] for s in range(50)} != {world.make_pair(0)[0]}


def test_captions_parse_back_to_their_attributes():
    kinds = set()
    for seed in range(3000):
        scene = world.sample_scene(random.Random(seed))
        parsed = world.parse_caption(scene.caption)
        kinds.add(scene.kind)
        if scene.kind == "fire":
            assert parsed.kind == "fire"
            if scene.caption == "fire in a fireplace":
                assert parsed.fireplace
            continue
        assert parsed.objects == scene.objects
        assert parsed.background == scene.background
        for o in scene.objects:
            assert o.colour != scene.background
    assert kinds == {"object", "two", "fire"}


def test_caption_grammar_examples():
    s = world.parse_caption("a small red circle on the left on a blue background")
    assert s.objects == (world.Obj("red", "circle", "small", "on the left"),) and s.background == "blue"
    s = world.parse_caption("a red circle and a blue square on a green background")
    assert [(o.colour, o.shape) for o in s.objects] == [("red", "circle"), ("blue", "square")]
    assert world.parse_caption("fire in a fireplace").fireplace
    with pytest.raises(ValueError):
        world.parse_caption("a red dragon on a blue background")


def test_held_out_combinations_never_in_training_stream():
    assert {("purple", "star"), ("green", "triangle")} <= set(world.HELD_OUT)
    for seed in range(20000):
        scene = world.sample_scene(random.Random(seed))
        for o in scene.objects:
            assert (o.colour, o.shape) not in world.HELD_OUT
    # the stream make_pair/training_pairs yields is the same sampler
    stream = world.training_pairs()
    for _ in range(200):
        caption, _img = next(stream)
        if caption.startswith("fire"):
            continue
        assert not set(world.scene_objects(caption)) & world.HELD_OUT


def test_held_out_prompts_use_held_out_combinations():
    prompts = world.held_out_prompts()
    assert len(prompts) >= 8
    for p in prompts:
        objs = world.scene_objects(p)
        assert objs and all(o in world.HELD_OUT for o in objs)


def test_palette_classification_of_renders():
    scene = world.parse_caption("a large red square on a blue background")
    img = world.render(scene, 3)
    names, cls = world.classify_pixels(img)
    frac = np.bincount(cls.ravel(), minlength=len(names)) / cls.size
    assert names[int(frac.argmax())] == "blue"
    assert frac[names.index("red")] > 0.1


def test_fire_drawing_is_deterministic_and_shipped():
    a, b = world.fire_drawing(), world.fire_drawing()
    assert a.size == (world.NATIVE_SIZE, world.NATIVE_SIZE)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    shipped = Path(world.__file__).with_name("fire-drawing.png")
    assert shipped.exists()
    assert np.array_equal(np.asarray(Image.open(shipped).convert("RGB")), np.asarray(a))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    arch.write_tokenizer(folder)
    return arch.load_tokenizer(folder)


def test_tokenizer_every_world_word_is_one_token(tokenizer):
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    for w in world.WORDS:
        ids = tokenizer(w).input_ids
        assert ids[0] == bos and ids[-1] == eos and len(ids) == 3, (w, tokenizer.convert_ids_to_tokens(ids))
        assert tokenizer.convert_ids_to_tokens(ids[1]) == w + "</w>"
    caption = "a small red circle on the left on a blue background"
    assert len(tokenizer(caption).input_ids) == len(caption.split()) + 2


def test_tokenizer_unknown_words_and_padding(tokenizer):
    ids = tokenizer("A Purple DRAGON, über 日本!").input_ids
    toks = tokenizer.convert_ids_to_tokens(ids)
    assert toks[1:3] == ["a</w>", "purple</w>"]  # lower-cased
    assert len(ids) > 8 and tokenizer.unk_token_id not in ids[1:-1]  # characters, not <unk>
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == "apurpledragon,über日本!"
    n = arch.MAX_LEN
    longest = max((world.make_pair(seed)[0] for seed in range(2000)), key=lambda c: len(tokenizer(c).input_ids))
    assert len(tokenizer(longest).input_ids) <= n  # every world caption fits the shortened context
    enc = tokenizer(["fire"], padding="max_length", max_length=n, truncation=True)
    assert tokenizer.model_max_length == n
    assert len(enc.input_ids[0]) == n and enc.input_ids[0][-1] == tokenizer.eos_token_id
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    long = tokenizer(" ".join(["fire"] * 200), padding="max_length", max_length=n, truncation=True).input_ids
    assert len(long) == n


@pytest.mark.skipif(not (MODEL / "model_index.json").exists(), reason="embedded model not trained/exported")
def test_trained_folder_sizes_and_loading():
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    total = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    assert total <= 25 * 1024 * 1024
    index = json.loads((MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    sched = json.loads((MODEL / "scheduler" / "scheduler_config.json").read_text())
    assert sched["num_train_timesteps"] == 1000 and sched["beta_schedule"] == "scaled_linear"
    assert sched["beta_start"] == 0.00085 and sched["beta_end"] == 0.012 and sched["prediction_type"] == "epsilon"
    vae = AutoencoderKL.from_pretrained(MODEL / "vae", torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(MODEL / "unet", torch_dtype=torch.float32)
    te = CLIPTextModel.from_pretrained(MODEL / "text_encoder", torch_dtype=torch.float32)
    tok = CLIPTokenizer.from_pretrained(MODEL / "tokenizer")
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    assert factor == 4
    assert unet.config.sample_size * factor == world.NATIVE_SIZE
    assert unet.config.cross_attention_dim == te.config.hidden_size
    assert 0.05 < vae.config.scaling_factor < 20 and vae.config.scaling_factor != 1.0
    assert tok.model_max_length == te.config.max_position_embeddings == arch.MAX_LEN
    assert len(tok.get_vocab()) == te.config.vocab_size
    for f in MODEL.rglob("*.safetensors"):
        from safetensors import safe_open

        with safe_open(str(f), "pt") as st:
            for k in list(st.keys())[:5]:
                assert st.get_tensor(k).dtype == torch.float16
