"""Offline loading: the CLIP tokenizer files, the family config folders, single-file checkpoints, unsafe pickles."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from invoke_repl.catalogue import ModelError, parse_entry
from invoke_repl.loading import (
    HashCache,
    checkpoint_plan,
    detect_checkpoint_family,
    detect_folder_family,
    family_config_dir,
    load_entry,
    load_tokenizer,
    read_checkpoint,
)

pytest_plugins = ["tests.test_models_fixtures"]  # tiny models in each real format, user-folder isolation

# ------------------------------------------------------------------------------------------ tokenizer


def test_clip_tokenizer_ids_match_openai_clip():
    from invoke_repl.builtin import load_clip_tokenizer

    tokenizer = load_clip_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.parametrize(("family", "pad", "pad_id"), [("sd-1", "<|endoftext|>", 49407), ("sd-2", "!", 0)])
def test_family_tokenizers_pad_like_the_originals(family, pad, pad_id):
    """SD 2.x's OpenCLIP pads with "!" (id 0), SD 1.x with <|endoftext|>: padding changes the conditioning."""
    tokenizer = load_tokenizer(family_config_dir(family) / "tokenizer", family)
    assert tokenizer.pad_token == pad and tokenizer.pad_token_id == pad_id
    ids = tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407] and ids[7:] == [pad_id] * 70


def test_tokenizer_falls_back_to_shipped_files_with_the_family_pad(tmp_path):
    tokenizer = load_tokenizer(tmp_path / "nothing-here", "sd-2-v")
    assert tokenizer.pad_token == "!"
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


# ------------------------------------------------------------------------------------------ family configs


@pytest.mark.parametrize(
    ("family", "cross", "sample", "prediction", "layers"),
    [
        ("sd-1", 768, 64, "epsilon", 12),
        ("sd-1-v", 768, 64, "v_prediction", 12),
        ("sd-2", 1024, 64, "epsilon", 23),
        ("sd-2-v", 1024, 96, "v_prediction", 23),
    ],
)
def test_family_config_folders_are_complete_diffusers_configs(family, cross, sample, prediction, layers):
    folder = family_config_dir(family)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    unet = json.loads((folder / "unet" / "config.json").read_text())
    assert (unet["cross_attention_dim"], unet["sample_size"]) == (cross, sample)
    assert unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"] == 0.18215
    assert json.loads((folder / "text_encoder" / "config.json").read_text())["num_hidden_layers"] == layers
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == prediction


def test_sd1_config_builds_the_real_sizes_offline(no_network):
    """The sd-1 folder describes SD 1.5 exactly: 859.5M UNet, 83.7M VAE, 123.1M text parameters (meta tensors)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = str(family_config_dir("sd-1"))
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder", local_files_only=True))
    sizes = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, text)]
    assert sizes == [859_520_964, 83_653_863, 123_060_480]


# ------------------------------------------------------------------------------------------ family detection


def _shapes(width: int) -> dict[str, tuple[int, ...]]:
    return {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, width)}


def test_family_detection_from_cross_attention_width(tmp_path):
    assert detect_checkpoint_family(_shapes(768)) == "sd-1"
    assert detect_checkpoint_family(_shapes(1024), tmp_path / "v2-1_512-ema-pruned.safetensors") == "sd-2"
    assert detect_checkpoint_family(_shapes(1024), tmp_path / "v2-1_768-ema-pruned.safetensors") == "sd-2-v"
    assert detect_checkpoint_family(_shapes(32)) is None
    # A sidecar LDM yaml (AUTOMATIC1111's convention) outranks the file name.
    (tmp_path / "mine.yaml").write_text("model:\n  params:\n    parameterization: v\n")
    assert detect_checkpoint_family(_shapes(1024), tmp_path / "mine.safetensors") == "sd-2-v"


@pytest.mark.parametrize(
    ("cross", "prediction", "family"),
    [
        (768, "epsilon", "sd-1"),
        (1024, "epsilon", "sd-2"),
        (1024, "v_prediction", "sd-2-v"),
        (128, "v_prediction", "sd-1"),
    ],
)
def test_folder_family_from_cross_attention_width_and_prediction(tmp_path, cross, prediction, family):
    """v-prediction alone is not SD 2: the embedded model's run 3 predicted v through 128-wide cross-attention."""
    files = {
        "unet/config.json": {"cross_attention_dim": cross},
        "scheduler/scheduler_config.json": {"prediction_type": prediction},
    }
    for name, config in files.items():
        (tmp_path / name).parent.mkdir()
        (tmp_path / name).write_text(json.dumps(config))
    assert detect_folder_family(tmp_path) == family


def test_unknown_family_needs_a_config(tiny_store):
    with pytest.raises(ModelError, match="cannot tell which model family.*set config"):
        checkpoint_plan(None, tiny_store["safetensors"])
    family, folder = checkpoint_plan(tiny_store["config"], tiny_store["safetensors"])
    assert (family, folder) == ("sd-1", tiny_store["config"])
    assert checkpoint_plan("sd-2-v", tiny_store["safetensors"]) == ("sd-2-v", family_config_dir("sd-2-v"))


# ------------------------------------------------------------------------------------------ single files


def _entry(path: Path, config, tmp_path: Path, name: str = "m", fmt: str = "checkpoint"):
    fields = {"format": fmt, "path": str(path)}
    if config is not None:
        fields["config"] = str(config)
    return parse_entry(name, fields, tmp_path, "test")


@pytest.mark.parametrize("kind", ["safetensors", "ckpt"])
def test_single_file_loads_offline_and_equals_its_diffusers_folder(kind, tiny_store, tmp_path, no_network):
    hashes = HashCache(tmp_path / "hashes.json")
    folder = load_entry(_entry(tiny_store["folder"], None, tmp_path, fmt="diffusers"), hashes)
    single = load_entry(_entry(tiny_store[kind], tiny_store["config"], tmp_path), hashes)
    for part in ("unet", "vae", "text_encoder"):
        a, b = getattr(folder, part).state_dict(), getattr(single, part).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    # Same modules, same picture: one denoiser call, a decode and the prompt encoding agree bit for bit.
    ids = single.tokenizer("a red fox", padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.equal(
        ids, folder.tokenizer("a red fox", padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    )
    with torch.no_grad():
        text_a = folder.text_encoder(ids)[0]
        text_b = single.text_encoder(ids)[0]
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(7))
        eps_a = folder.unet(latents, 10, encoder_hidden_states=text_a).sample
        eps_b = single.unet(latents, 10, encoder_hidden_states=text_b).sample
        img_a = folder.vae.decode(latents).sample
        img_b = single.vae.decode(latents).sample
    # Weights are bit-identical (above); outputs may differ in the last float bit because CPU kernels pick code
    # paths by memory alignment (a memory-mapped file vs a copied state dict), far below one 8-bit image level.
    for x, y in ((text_a, text_b), (eps_a, eps_b), (img_a, img_b)):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
    assert single.scheduler_config["beta_schedule"] == "scaled_linear" and single.family == "sd-1"
    assert single.native_size == folder.native_size == (64, 64)
    # A single file's hash is the file's own sha256 (what AUTOMATIC1111 shows as "Model hash", first 10 digits).
    import hashlib

    assert single.sha256 == hashlib.sha256(tiny_store[kind].read_bytes()).hexdigest()


def test_hashes_are_cached_by_path_size_and_mtime(tiny_store, tmp_path, monkeypatch):
    cache = HashCache(tmp_path / "hashes.json")
    first = cache.file(tiny_store["safetensors"])
    assert (
        json.loads((tmp_path / "hashes.json").read_text())[str(tiny_store["safetensors"].resolve())]["sha256"] == first
    )
    import hashlib

    monkeypatch.setattr(hashlib, "sha256", lambda *a: pytest.fail("hashed again"))
    assert HashCache(tmp_path / "hashes.json").file(tiny_store["safetensors"]) == first


def test_malicious_ckpt_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "extra": Payload()}, evil)
    legacy = tmp_path / "legacy.ckpt"
    with open(legacy, "wb") as handle:  # an old-style plain pickle, not torch's zip format
        pickle.dump({"state_dict": Payload()}, handle)
    for path in (evil, legacy):
        with pytest.raises(ModelError, match="refusing .*would run code"):
            read_checkpoint(path)
        with pytest.raises(ModelError, match="refusing"):
            load_entry(_entry(path, "sd-1", tmp_path), HashCache(tmp_path / "h.json"))
    assert not marker.exists()


def test_broken_files_give_one_line_errors(tiny_store, tmp_path):
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(tiny_store["safetensors"].read_bytes()[:5000])
    with pytest.raises(ModelError, match="not a valid .safetensors"):
        load_entry(_entry(truncated, tiny_store["config"], tmp_path), HashCache(tmp_path / "h.json"))
    garbage = tmp_path / "junk.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError) as info:
        read_checkpoint(garbage)
    assert "\n" not in str(info.value)
    # Missing UNet weights: refused rather than left as uninitialised (meta) tensors.
    from safetensors.torch import load_file, save_file

    state = load_file(str(tiny_store["safetensors"]))
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in state.items() if "output_blocks.0." not in k}, str(partial))
    with pytest.raises(ModelError, match="lacks UNet weights"):
        load_entry(_entry(partial, tiny_store["config"], tmp_path), HashCache(tmp_path / "h.json"))


def test_wrong_family_is_a_clear_error(tiny_store, tmp_path):
    with pytest.raises(ModelError, match="does not fit the sd-1 config"):
        load_entry(_entry(tiny_store["safetensors"], "sd-1", tmp_path), HashCache(tmp_path / "h.json"))


def test_folder_with_custom_classes_is_refused(tiny_store, tmp_path):
    import shutil

    folder = tmp_path / "custom"
    shutil.copytree(tiny_store["folder"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["my_package", "MyUNet"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match="never runs code"):
        load_entry(_entry(folder, None, tmp_path, fmt="diffusers"), HashCache(tmp_path / "h.json"))


# ------------------------------------------------------------------------------------------ folders from the wild


def _hub_style_copy(tiny_store, tmp_path: Path) -> Path:
    """The tiny folder with the extra copies Hub downloads carry beside each part's weights."""
    import shutil

    folder = tmp_path / "hub"
    shutil.copytree(tiny_store["folder"], folder)
    for part, stem in (
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
    ):
        plain = folder / part / f"{stem}.safetensors"
        for extra in (f"{stem}.fp16.safetensors", f"{stem}.non_ema.safetensors"):
            shutil.copy(plain, folder / part / extra)
        bin_name = "pytorch_model.bin" if part == "text_encoder" else f"{stem}.bin"
        (folder / part / bin_name).write_bytes(b"\0" * plain.stat().st_size)  # never read: safetensors comes first
    return folder


def test_extra_weight_copies_in_a_folder_are_neither_counted_nor_hashed(tiny_store, tmp_path):
    from invoke_repl.loading import estimate_bytes, size_on_disk

    plain = _entry(tiny_store["folder"], None, tmp_path, fmt="diffusers")
    hub = _entry(_hub_style_copy(tiny_store, tmp_path), None, tmp_path, name="hub", fmt="diffusers")
    assert estimate_bytes(hub, torch.float32) == estimate_bytes(plain, torch.float32)
    assert size_on_disk(hub) == size_on_disk(plain)
    hashes = HashCache(tmp_path / "hashes.json")
    assert load_entry(hub, hashes).sha256 == load_entry(plain, hashes).sha256


def test_a_folder_of_fp16_variant_files_only_loads(tiny_store, tmp_path):
    import shutil

    folder = tmp_path / "fp16-only"
    shutil.copytree(tiny_store["folder"], folder)
    for part in ("unet", "vae", "text_encoder"):
        for f in (folder / part).glob("*.safetensors"):
            f.rename(f.with_name(f.name.replace(".safetensors", ".fp16.safetensors")))
    components = load_entry(_entry(folder, None, tmp_path, fmt="diffusers"), HashCache(tmp_path / "h.json"))
    reference = tiny_store["components"]
    for part in ("unet", "vae", "text_encoder"):
        a, b = getattr(components, part).state_dict(), getattr(reference, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b), part


def test_a_bin_only_folder_loads_without_error_lines(tiny_store, tmp_path):
    import logging
    import shutil

    folder = tmp_path / "bin-only"
    shutil.copytree(tiny_store["folder"], folder)
    for part, name in (("unet", "diffusion_pytorch_model.bin"), ("vae", "diffusion_pytorch_model.bin")):
        from safetensors.torch import load_file

        weights = folder / part / "diffusion_pytorch_model.safetensors"
        torch.save(load_file(str(weights)), folder / part / name)
        weights.unlink()
    logged: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)  # diffusers' own handler writes to the stderr of whenever it was imported
    try:
        load_entry(_entry(folder, None, tmp_path, fmt="diffusers"), HashCache(tmp_path / "h.json"))
    finally:
        logger.removeHandler(handler)
    assert logged == []


def test_a_part_folder_without_weights_is_named(tiny_store, tmp_path):
    import shutil

    folder = tmp_path / "no-vae-weights"
    shutil.copytree(tiny_store["folder"], folder)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"its vae/ folder holds no weights"):
        load_entry(_entry(folder, None, tmp_path, fmt="diffusers"), HashCache(tmp_path / "h.json"))
    shutil.rmtree(folder / "vae")
    with pytest.raises(ModelError, match=r"has no vae/ folder \(or set vae: in its entry\)"):
        load_entry(_entry(folder, None, tmp_path, fmt="diffusers"), HashCache(tmp_path / "h.json"))
    shutil.copytree(tiny_store["folder"] / "vae", folder / "vae")
    shutil.rmtree(folder / "text_encoder")
    with pytest.raises(ModelError, match=r"has no text_encoder/ folder"):
        load_entry(_entry(folder, None, tmp_path, fmt="diffusers"), HashCache(tmp_path / "h.json"))


def test_an_old_lightning_ckpt_with_a_numpy_score_loads_and_runs_nothing(tiny_store, tmp_path, monkeypatch):
    """CompVis-era .ckpt files carry Lightning's callback state, whose score may be a numpy float64."""
    import sys
    import types

    import numpy as np

    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = module.__name__, "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    from safetensors.torch import load_file

    state = load_file(str(tiny_store["safetensors"]))
    path = tmp_path / "v1-5-style.ckpt"
    callbacks = {ModelCheckpoint: {"best_model_score": np.float64(0.123), "best_model_path": ""}}
    torch.save({"state_dict": state, "global_step": 470000, "callbacks": callbacks}, path)
    monkeypatch.delitem(sys.modules, module.__name__)  # the user's machine has no Lightning installed
    loaded = read_checkpoint(path)
    assert loaded.pop("global_step") == 470000 and loaded.keys() == state.keys()


def test_family_hints_from_the_file_name_and_sidecars(tmp_path):
    shapes = {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)}
    assert detect_checkpoint_family(shapes, tmp_path / "v2-1_768-ema-pruned.safetensors") == "sd-2-v"
    assert detect_checkpoint_family(shapes, tmp_path / "mymodel_step7680.safetensors") == "sd-2"
    broken = tmp_path / "finetune.yaml"
    broken.write_text("model: [unclosed\n")
    (tmp_path / "finetune.yml").write_text("model:\n  params:\n    parameterization: v\n")
    assert detect_checkpoint_family(shapes, tmp_path / "finetune.safetensors") == "sd-2-v"


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        ("inpainting", "an inpainting model (9 UNet input channels, not 4)"),
        ("sdxl", "an SDXL checkpoint"),
    ],
)
def test_models_of_other_kinds_are_named_not_misloaded(tiny_store, tmp_path, change, kind):
    """An inpainting or SDXL file used to fail with a shape mismatch and advice to set config:, which cannot help."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(tiny_store["safetensors"]))
    if change == "inpainting":
        w = state["model.diffusion_model.input_blocks.0.0.weight"]
        state["model.diffusion_model.input_blocks.0.0.weight"] = torch.cat(
            [w, torch.zeros(w.shape[0], 5, *w.shape[2:])], 1
        )
    else:
        state["conditioner.embedders.1.model.text_projection"] = torch.zeros(4, 4)
    path = tmp_path / f"{change}.safetensors"
    save_file(state, str(path))
    for config in (None, tiny_store["config"], "sd-1"):
        with pytest.raises(ModelError, match=f"{path.name} is {re.escape(kind)}; invoke-repl runs SD 1.x and 2.x"):
            load_entry(_entry(path, config, tmp_path), HashCache(tmp_path / "h.json"))
    ckpt = tmp_path / f"{change}.ckpt"
    torch.save({"state_dict": state}, ckpt)
    with pytest.raises(ModelError, match=re.escape(kind)):  # a .ckpt with its family set: checked once read
        load_entry(_entry(ckpt, "sd-1", tmp_path), HashCache(tmp_path / "h.json"))


def test_an_inpainting_diffusers_folder_is_named(tiny_store, tmp_path):
    import shutil

    folder = tmp_path / "inpaint"
    shutil.copytree(tiny_store["folder"], folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "in_channels": 9}))
    with pytest.raises(ModelError, match=r"inpaint is an inpainting model \(9 UNet input channels, not 4\)"):
        load_entry(_entry(folder, None, tmp_path, fmt="diffusers"), HashCache(tmp_path / "h.json"))


# ------------------------------------------------------------------------------------------ real-world layouts
def _tiny_state(tiny_store) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(tiny_store["safetensors"]))


def test_sd1_clip_weights_without_text_model_load_as_a1111_reads_them(tiny_store, tmp_path):
    """`cond_stage_model.transformer.embeddings.*` (recent transformers' CLIPTextModel, some merges): refused with
    advice to change the family, which could not help; the weights are whole, one level up."""
    from safetensors.torch import save_file

    prefix = "cond_stage_model.transformer.text_model."
    state = {k.replace(prefix, "cond_stage_model.transformer."): v for k, v in _tiny_state(tiny_store).items()}
    assert not any(k.startswith(prefix) for k in state)
    path = tmp_path / "merge.safetensors"
    save_file(state, str(path))
    hashes = HashCache(tmp_path / "h.json")
    renamed = load_entry(_entry(path, tiny_store["config"], tmp_path), hashes)
    original = load_entry(_entry(tiny_store["safetensors"], tiny_store["config"], tmp_path), hashes)
    a, b = renamed.text_encoder.state_dict(), original.text_encoder.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("first_stage_model.", "no-part.safetensors has no VAE weights (first_stage_model.*); give it one: "
         "!edit_model m vae=PATH"),
        ("cond_stage_model.", "no-part.safetensors has no text encoder weights (cond_stage_model.*): a pruned "
         "UNet-only file; invoke-repl needs a whole SD 1.x/2.x checkpoint"),
    ],
)  # fmt: skip
def test_a_file_missing_a_part_says_which_and_a_vae_entry_mends_a_missing_vae(tiny_store, tmp_path, drop, message):
    from safetensors.torch import save_file

    state = _tiny_state(tiny_store)
    path = tmp_path / "no-part.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith(drop)}, str(path))
    with pytest.raises(ModelError) as caught:
        load_entry(_entry(path, tiny_store["config"], tmp_path), HashCache(tmp_path / "h.json"))
    assert str(caught.value) == message
    if drop == "first_stage_model.":
        fields = {"format": "checkpoint", "path": str(path), "config": str(tiny_store["config"])}
        entry = parse_entry("m", {**fields, "vae": str(tiny_store["folder"])}, tmp_path, "test")
        assert load_entry(entry, HashCache(tmp_path / "h.json")).vae is not None


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ({"encoder.down.0.block.0.conv1.weight": (4, 4), "decoder.up.0.block.0.conv1.weight": (4, 4)},
         "vae.safetensors is a VAE on its own; give it to a model as its vae: (!edit_model NAME vae=PATH)"),
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 4)},
         "vae.safetensors is a LoRA, which invoke-repl does not apply"),
        ({"down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight": (4, 4),
          "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight": (4, 4)},
         "vae.safetensors is a LoRA, which invoke-repl does not apply"),
        ({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight": (4, 4)},
         "vae.safetensors is a LoRA, which invoke-repl does not apply"),
        ({"unet.down_blocks.0.attentions.0.proj_in.lora_linear_layer.down.weight": (4, 4)},
         "vae.safetensors is a LoRA, which invoke-repl does not apply"),
        ({"control_model.input_hint_block.0.weight": (4, 4)},
         "vae.safetensors is a ControlNet, which invoke-repl does not run"),
        ({"conv_in.weight": (4, 4), "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": (4, 4)},
         "vae.safetensors is one part (a diffusers UNet) of a model folder; import the whole folder"),
        ({"something.else": (4,)}, "vae.safetensors is not a Stable Diffusion checkpoint"),
    ],
)  # fmt: skip
def test_importing_a_file_that_is_no_whole_model_says_what_it_is(tmp_path, keys, says):
    """A VAE, LoRA, ControlNet or UNet part got "cannot tell which model family … set config:", which cannot help."""
    from safetensors.torch import save_file

    from invoke_repl.catalogue import Catalogue
    from invoke_repl.models import ModelManager

    path = tmp_path / "vae.safetensors"
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(path))
    (tmp_path / "models.yaml").write_text("tiny:\n  format: builtin\n  path: tiny-random\n")
    manager = ModelManager(Catalogue.load(tmp_path / "models.yaml"), device="cpu")
    with pytest.raises(ModelError) as caught:
        manager.import_model(path)
    assert str(caught.value).startswith(says) and "\n" not in str(caught.value)


def test_a_linked_file_imports_under_the_links_name_with_its_hints(tiny_store, tmp_path):
    """The Hugging Face cache: snapshots/<rev>/name.safetensors → ../../blobs/<sha256>. Resolving the link first
    lost the suffix ("neither a folder nor a checkpoint") and the name's hints."""
    from invoke_repl.catalogue import Catalogue
    from invoke_repl.models import ModelManager

    repo = tmp_path / "models--someone--fluffy"
    blob = repo / "blobs" / ("ab" * 32)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(tiny_store["safetensors"].read_bytes())
    snapshot = repo / "snapshots" / ("cd" * 20)
    snapshot.mkdir(parents=True)
    link = snapshot / "fluffy-v.safetensors"
    link.symlink_to(Path("..") / ".." / "blobs" / blob.name)
    (snapshot / "fluffy-v.yaml").write_text("model:\n  params:\n    parameterization: v\n")
    (tmp_path / "models.yaml").write_text("tiny:\n  format: builtin\n  path: tiny-random\n")
    manager = ModelManager(Catalogue.load(tmp_path / "models.yaml"), device="cpu")
    name = manager.import_model(link, config=str(tiny_store["config"]))
    entry = manager.catalogue.get(name)
    assert (name, entry.path) == ("fluffy-v", link)
    with pytest.raises(ModelError, match="cannot tell which model family fluffy-v.safetensors"):
        manager.import_model(link, name="again")  # the tiny file's width: the message names the link, not a hash


def test_a_hub_cache_repo_folder_imports_its_main_snapshot_under_the_repo_name(tiny_store, tmp_path):
    import shutil

    from invoke_repl.catalogue import Catalogue
    from invoke_repl.models import ModelManager

    repo = tmp_path / "models--someone--tiny-sd"
    revision = "ef" * 20
    shutil.copytree(tiny_store["folder"], repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    (tmp_path / "models.yaml").write_text("tiny:\n  format: builtin\n  path: tiny-random\n")
    manager = ModelManager(Catalogue.load(tmp_path / "models.yaml"), device="cpu")
    for path in (repo, repo / "snapshots" / revision):
        name = manager.import_model(path, name=None if path == repo else "second")
        assert manager.catalogue.get(name).path == repo / "snapshots" / revision
    assert "tiny-sd" in manager.catalogue.names()


def test_an_sd1_file_with_a_v_prediction_sidecar_gets_the_sd1_v_family(tmp_path):
    shapes = {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)}
    (tmp_path / "fluffy.yaml").write_text("model:\n  params:\n    parameterization: v\n")
    assert detect_checkpoint_family(shapes, tmp_path / "fluffy.safetensors") == "sd-1-v"
    assert detect_checkpoint_family(shapes, tmp_path / "plain_768.safetensors") == "sd-1"  # names hint SD 2 only
    config = json.loads((family_config_dir("sd-1-v") / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction"
    assert load_tokenizer(tmp_path / "nothing", "sd-1-v").pad_token == "<|endoftext|>"


def test_a_memory_mapped_ckpt_counts_its_kept_weights_not_twice_its_file(tiny_store, tmp_path):
    """runwayml's v1-5-pruned.ckpt (7.7 GB with an EMA copy of the UNet) was estimated at 14.3 GiB, refused on
    16 GB machines, though loading it memory-maps the file and keeps 2.2 GiB at fp16."""
    from invoke_repl.loading import estimate_bytes

    state = _tiny_state(tiny_store)
    unet = {k: v for k, v in state.items() if k.startswith("model.diffusion_model.")}
    with_ema = {**state, **{"model_ema." + k[len("model.") :].replace(".", ""): v for k, v in unet.items()}}
    path = tmp_path / "pruned.ckpt"
    torch.save({"state_dict": with_ema, "global_step": 1}, path)
    kept = sum(v.numel() for v in state.values()) * 2
    assert estimate_bytes(_entry(path, "sd-1", tmp_path), torch.float16) == kept
    legacy = tmp_path / "legacy.ckpt"  # not zip: read whole into memory, so counted as before
    torch.save({"state_dict": state}, legacy, _use_new_zipfile_serialization=False)
    assert estimate_bytes(_entry(legacy, "sd-1", tmp_path), torch.float16) == 2 * legacy.stat().st_size


def test_a_safetensors_file_named_ckpt_is_read_by_its_content(tiny_store, tmp_path):
    """Renamed .ckpt, it went to the unpickler, which called it malicious ("its pickle would run code")."""
    from invoke_repl.loading import checkpoint_shapes

    renamed = tmp_path / "really.ckpt"
    renamed.write_bytes(tiny_store["safetensors"].read_bytes())
    original = read_checkpoint(tiny_store["safetensors"])
    state = read_checkpoint(renamed)
    assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in state)
    assert checkpoint_shapes(renamed) == {k: tuple(v.shape) for k, v in original.items()}
    components = load_entry(_entry(renamed, tiny_store["config"], tmp_path), HashCache(tmp_path / "h.json"))
    assert components.family == "sd-1"
    pickled = tmp_path / "pickled.ckpt"  # and a real .ckpt still goes to the (weights-only) unpickler
    pickled.write_bytes(tiny_store["ckpt"].read_bytes())
    assert read_checkpoint(pickled).keys() == original.keys() | {"global_step"}


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_a_fifo_named_as_a_checkpoint_is_refused_without_blocking(tmp_path, suffix):
    """Reading a FIFO blocks in C until someone writes to it, holding the interpreter: the session ignored Ctrl-C
    and SIGTERM for good. In a child process, so that a regression fails this test instead of hanging the run."""
    import subprocess
    import sys

    fifo = tmp_path / f"p{suffix}"
    os.mkfifo(fifo)
    code = (
        "import sys\n"
        "from invoke_repl.catalogue import ModelError\n"
        "from invoke_repl.loading import checkpoint_shapes, read_checkpoint\n"
        "for read in (checkpoint_shapes, read_checkpoint):\n"
        "    try:\n"
        "        read(sys.argv[1])\n"
        "    except ModelError as exc:\n"
        "        print(exc)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60, cwd=Path.cwd()
        )
    except subprocess.TimeoutExpired:
        pytest.fail("reading a FIFO blocked")
    expected = f"cannot read p{suffix}: it is not a regular file (a pipe, a device or a socket)"
    assert done.stdout.splitlines() == [expected] * 2, done.stderr


# ------------------------------------------------------------------------------------------ errors that name the part
def _vae_state(tiny_store) -> dict[str, torch.Tensor]:
    """The tiny model's VAE on its own, as a standalone VAE file (vae-ft-mse style) holds it."""
    prefix = "first_stage_model."
    return {k[len(prefix) :]: v for k, v in _tiny_state(tiny_store).items() if k.startswith(prefix)}


@pytest.mark.parametrize("main", ["checkpoint", "diffusers"])
@pytest.mark.parametrize(
    ("vae", "message"),
    [
        ("lora.safetensors", "vae lora.safetensors: not a VAE (it is a LoRA)"),
        ("partial_vae.safetensors", "vae partial_vae.safetensors lacks weights (truncated, or not an SD VAE)"),
    ],
)
def test_a_bad_vae_override_names_the_vae_file(tiny_store, tmp_path, main, vae, message):
    """A LoRA or a partial VAE as `vae:` blamed the main checkpoint ("tiny-sd1.safetensors lacks VAE weights"), or,
    for a folder, came out as diffusers' "Cannot copy out of meta tensor" / "Failed to load AutoencoderKL"."""
    from safetensors.torch import save_file

    path = tmp_path / vae
    if vae == "lora.safetensors":
        save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(path))
    else:
        save_file({k: v for k, v in _vae_state(tiny_store).items() if "quant_conv" not in k}, str(path))
    if main == "checkpoint":
        fields = {"format": "checkpoint", "path": str(tiny_store["safetensors"]), "config": str(tiny_store["config"])}
    else:
        fields = {"format": "diffusers", "path": str(tiny_store["folder"])}
    entry = parse_entry("m", {**fields, "vae": str(path)}, tmp_path, "test")
    with pytest.raises(ModelError) as caught:
        load_entry(entry, HashCache(tmp_path / "h.json"))
    assert str(caught.value) == message


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _set_in_channels(folder: Path) -> None:
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "in_channels": "4"}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: _truncate(f / "text_encoder" / "model.safetensors"),
         r"cannot load model 'm': text_encoder/model\.safetensors is not a valid \.safetensors file \(.+\)"),
        (lambda f: _truncate(f / "unet" / "diffusion_pytorch_model.safetensors"),
         r"cannot load model 'm': unet/diffusion_pytorch_model\.safetensors is not a valid \.safetensors file \(.+\)"),
        (lambda f: (f / "tokenizer" / "tokenizer.json").write_text("{oops"),
         r"cannot load model 'm': tokenizer/tokenizer\.json is not valid JSON \(line 1\)"),
        (lambda f: (f / "unet" / "config.json").write_text("{\n oops"),
         r"cannot load model 'm': unet/config\.json is not valid JSON \(line 2\)"),
        (lambda f: (f / "vae" / "config.json").unlink(), r"cannot load model 'm': vae/ has no config\.json"),
        (_set_in_channels, r"broken: unet/config\.json: in_channels must be a number, not '4'"),
    ],
    ids=["text-encoder-truncated", "unet-truncated", "tokenizer-json", "unet-config-json", "vae-config-missing",
         "in-channels-string"],
)  # fmt: skip
def test_a_broken_part_of_a_diffusers_folder_is_named(tiny_store, tmp_path, change, message):
    """These said "Error while deserializing header …", a bare JSON decode error, or "is a model (4 UNet input
    channels, not 4)": nothing said which of the folder's files was wrong."""
    from tests.test_models_fixtures import model_dir_copy

    folder = model_dir_copy(tiny_store, tmp_path, "broken")
    change(folder)
    with pytest.raises(ModelError) as caught:
        load_entry(_entry(folder, None, tmp_path, fmt="diffusers"), HashCache(tmp_path / "h.json"))
    assert re.fullmatch(message, str(caught.value)), str(caught.value)


def test_an_embedding_pt_and_a_flux_file_are_named(tmp_path):
    """An A1111 embedding .pt (its tensors one level down) said "it holds no tensors"; a Flux file in its original
    layout said "not a Stable Diffusion checkpoint", the Flux check never reached."""
    from safetensors.torch import save_file

    embedding = tmp_path / "myemb.pt"
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": {"*": torch.zeros(2, 768)},
                "name": "myemb", "step": 3000}, embedding)  # fmt: skip
    with pytest.raises(ModelError, match=r"^myemb\.pt is a textual-inversion embedding, which invoke-repl does not"):
        load_entry(_entry(embedding, "sd-1", tmp_path), HashCache(tmp_path / "h.json"))
    flux = tmp_path / "flux.safetensors"
    save_file({"double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(4)}, str(flux))
    with pytest.raises(ModelError, match=r"^flux\.safetensors is an SD3/Flux-style transformer checkpoint; "):
        checkpoint_plan(None, flux)


def test_a_folder_without_vae_reads_its_vae_file_through_the_family_config(tmp_path):
    """With no vae/ folder to take the VAE's shape from, a `vae:` file failed on a missing vae/config.json."""
    import shutil

    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from invoke_repl.builtin import build_tiny_random
    from invoke_repl.loading import diffusers_to_ldm
    from invoke_repl.paths import configs_dir
    from tests.test_models_fixtures import write_tiny_folder

    tiny = build_tiny_random()
    folder = write_tiny_folder(tmp_path / "no-vae", tiny)
    shutil.rmtree(folder / "vae")
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs_dir() / "sd-1" / "vae")).half()
    state = diffusers_to_ldm(tiny.unet, vae, tiny.text_encoder)
    save_file({k: v for k, v in state.items() if k.startswith("first_stage_model.")}, str(tmp_path / "vae.safetensors"))
    fields = {"format": "diffusers", "path": str(folder), "vae": str(tmp_path / "vae.safetensors")}
    components = load_entry(parse_entry("m", fields, tmp_path, "test"), HashCache(tmp_path / "h.json"))
    assert list(components.vae.config.block_out_channels) == [128, 256, 512, 512]  # SD's VAE, not the tiny one
    assert torch.equal(components.vae.encoder.conv_in.weight.half(), vae.encoder.conv_in.weight)
