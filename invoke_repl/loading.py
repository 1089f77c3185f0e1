"""Reading one catalogue entry into `Components`, fully offline and without running code from model files.

- diffusers folders: each part through its class's `from_pretrained(folder, subfolder=…, local_files_only=True)`,
  with fixed classes (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer): nothing a folder names
  is imported or executed, whatever its model_index.json says.
- single files (.safetensors, .ckpt): read once into a state dict (`.ckpt` only through
  `torch.load(weights_only=True)`, so a pickle that would run code is refused), then each part built through
  diffusers' `from_single_file` with `config=` a local diffusers config folder: `configs/sd-1`, `sd-1-v`, `sd-2`,
  `sd-2-v`, or a folder the catalogue names. diffusers would otherwise fetch configs from the hub.
- the family (sd-1 / sd-1-v / sd-2 / sd-2-v) comes from the weights (cross-attention width 768 vs 1024;
  v-prediction from a sidecar LDM yaml, or for SD 2.x a "768" in the file name) unless the catalogue names it.

Hashes are sha256 of the weight files, remembered in `$XDG_CACHE_HOME/invoke-repl/hashes.json` by (path, size,
mtime) so a 2 GB checkpoint is read for hashing once, not at every start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoke_repl.builtin import SD1_SCHEDULER_CONFIG, build_tiny_random, load_clip_tokenizer, modules_sha256
from invoke_repl.catalogue import FAMILIES, ModelEntry, ModelError, user_cache_dir, write_atomic
from invoke_repl.components import Components
from invoke_repl.paths import configs_dir

if TYPE_CHECKING:
    import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network; respect a caller's own setting
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
NATIVE_SIZE = {"sd-1": 512, "sd-1-v": 512, "sd-2": 512, "sd-2-v": 768}
UNET_PREFIX = "model.diffusion_model."
_CROSS_ATTN_KEY = re.compile(r"^model\.diffusion_model\..*\.attn2\.to_k\.weight$")
# Training-state classes that plain SD .ckpt files carry beside their weights (sd-v1-4.ckpt has a Lightning
# ModelCheckpoint callback). torch's weights-only unpickler may rebuild them as inert stand-ins: no code of theirs
# runs, and their contents are thrown away. Anything else outside torch's allowlist is refused.
# Its score may be a numpy float64, pickled through numpy's scalar constructor and its dtype (ComfyUI allow-lists
# the same names "for safe loading of old sd files", its PR #10333); those become stand-ins too, so numpy is never
# called. (`_codecs.encode`, for the raw bytes, is on torch's own allowlist already.)
_INERT_GLOBALS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "numpy.dtypes.Float64DType",
)

BUILTIN_RECIPES: dict[str, Callable[[], Components]] = {"tiny-random": build_tiny_random}


# ------------------------------------------------------------------------------------------ device and dtype
def resolve_device(device: str = "auto") -> torch.device:
    """`auto` takes CUDA, then Apple's MPS, then the CPU; naming a device that is not there is an error."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is available (try --device auto or cpu)")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError("--device mps: Apple's MPS is not available here (try --device auto or cpu)")
    if device != "cpu" and not device.startswith(("cuda", "mps")):
        raise ModelError(f"unknown device {device!r} (expected auto, cuda, mps or cpu)")
    return torch.device(device)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """`auto` = float16 on CUDA (half the memory, same pictures), float32 elsewhere (CPU half is slow and lossy)."""
    import torch

    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return table[precision]
    except KeyError:
        raise ModelError(f"unknown precision {precision!r} (expected auto, float32, float16 or bfloat16)") from None


# ------------------------------------------------------------------------------------------ reading weights
def read_checkpoint(path: Path) -> dict[str, Any]:
    """A single-file checkpoint as a flat state dict (plus `global_step` when the file has one).

    `.safetensors` holds only tensors by construction. Anything else goes through torch's weights-only unpickler:
    a file whose pickle would import or call anything outside plain tensors and containers is refused before any
    of it runs.
    """
    path = Path(path)
    _require_regular_file(path)
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # SafetensorError, OSError: a truncated or foreign file
            raise ModelError(f"cannot read {path.name}: not a valid .safetensors file ({_short(exc)})") from exc
    data = _torch_load_weights_only(path)
    if not isinstance(data, dict):
        raise ModelError(f"cannot read {path.name}: expected a state dict, found {type(data).__name__}")
    step = data.get("global_step")
    while isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    tensors = {k: v for k, v in data.items() if _is_tensor(v)}
    if not tensors:
        if isinstance(data.get("string_to_param"), dict):  # A1111's embedding .pt keeps its tensors one level down
            raise ModelError(f"{path.name} {_NOT_A_MODEL['a textual-inversion embedding']}")
        raise ModelError(f"cannot read {path.name}: it holds no tensors")
    if isinstance(step, int):
        tensors["global_step"] = step
    return tensors


def _require_regular_file(path: Path) -> None:
    """A FIFO, a device or a socket named as a checkpoint would block the read forever, in C code that signals
    cannot interrupt (`!import_model p.safetensors` on a FIFO ignored Ctrl-C and SIGTERM)."""
    if not path.exists():
        raise ModelError(f"no such checkpoint file: {path}")
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "not a regular file (a pipe, a device or a socket)"
        raise ModelError(f"cannot read {path.name}: it is {what}")


def _is_safetensors(path: Path) -> bool:
    """By content, not by name: a .safetensors file renamed .ckpt went to the unpickler, which called it
    malicious. The format starts with its JSON header's length (8 bytes, little-endian), then the header's "{"."""
    if path.suffix.lower() == ".safetensors":
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def _torch_load_weights_only(path: Path) -> Any:
    import torch

    stand_ins = [(type(name.rsplit(".", 1)[1], (_Inert,), {}), name) for name in _INERT_GLOBALS]
    with torch.serialization.safe_globals(stand_ins), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "pickle protocol 4" notes on old files are noise here
        try:
            try:
                return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc) and "zip" not in str(exc).lower():
                    raise
                return torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL [\w.]+|Unsupported operand \d+", str(exc))
            detail = f" ({found.group(0).strip()})" if found else ""
            raise ModelError(
                f"refusing {path.name}: its pickle would run code to load{detail}; only plain tensors are read "
                "from .ckpt files - convert it to .safetensors with a tool you trust"
            ) from None
        except Exception as exc:
            raise ModelError(f"cannot read {path.name}: not a readable checkpoint ({_short(exc)})") from exc


class _Inert:
    """Stand-in for a training-state object in a checkpoint (or for the function that would build it): accepts its
    arguments and state, keeps nothing, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def own_host_weights(*modules: Any) -> int:
    """Copy into the process's own memory every host tensor of `modules` that still reads a checkpoint file.

    safetensors and `torch.load(mmap=True)` map the file instead of reading it, and on the CPU (weights already in
    the dtype they run in) nothing copies them after that: the model keeps reading the user's file. Overwriting
    that file in place (`cp -f new.ckpt model.ckpt` while the session runs) then crashed the whole process with
    SIGBUS (exit 135) at the next image, or quietly changed the weights under the loaded model's hash. Models
    moved to a GPU, or cast, are copies already and are left alone. Returns the bytes copied.
    """
    import torch

    mapped = _file_mappings()
    copies: dict[int, Any] = {}  # storage address → its copy, so views of one storage stay views of one copy
    copied = 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.device.type != "cpu" or tensor.numel() == 0:
                continue
            storage = tensor.untyped_storage()
            address = storage.data_ptr()
            if address not in copies:
                if mapped is not None and not _inside(mapped, address):
                    continue
                copies[address] = storage.clone()
                copied += storage.nbytes()
            owned = torch.empty(0, dtype=tensor.dtype)
            tensor.data = owned.set_(copies[address], tensor.storage_offset(), tensor.size(), tensor.stride())
    return copied


def _file_mappings() -> list[tuple[int, int]] | None:
    """Address ranges of the files this process has mapped (Linux' /proc/self/maps), sorted; None where the
    process cannot list them, and every host tensor then counts as mapped (a copy costs seconds, a crash more)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
        if len(fields) == 6 and fields[4] != "0" and not fields[5].startswith("["):
            start, end = fields[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return sorted(ranges)


def _inside(ranges: list[tuple[int, int]], address: int) -> bool:
    import bisect

    index = bisect.bisect_right(ranges, (address, float("inf"))) - 1
    return index >= 0 and ranges[index][0] <= address < ranges[index][1]


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a checkpoint: from the header alone for .safetensors (no weights read)."""
    path = Path(path)
    _require_regular_file(path)
    if _is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        except Exception as exc:
            raise ModelError(f"cannot read {path.name}: not a valid .safetensors file ({_short(exc)})") from exc
    return {k: tuple(v.shape) for k, v in read_checkpoint(path).items() if hasattr(v, "shape")}


# ------------------------------------------------------------------------------------------ families
def detect_checkpoint_family(shapes: dict[str, tuple[int, ...]], path: Path | None = None) -> str | None:
    """sd-1 / sd-2 (-v) from an LDM checkpoint's cross-attention width; None when it is neither 768 nor 1024.

    v-prediction is invisible in the weights. Evidence used, in order: an LDM yaml beside the file (A1111's
    convention: `model.params.parameterization: v`; SD 1.x fine-tunes trained for v ship one too), then, for
    SD 2.x only, a "768" in the file name (v2-1_768-ema-pruned, 768-v-ema). Anything else counts as epsilon; the
    catalogue's `config:` overrides all of it.
    """
    width = None
    for key, shape in shapes.items():
        if _CROSS_ATTN_KEY.match(key) and len(shape) == 2:
            width = shape[1]
            break
    if width is None:  # no UNet attention keys: fall back on which text encoder is inside
        if any(k.startswith("cond_stage_model.transformer.") for k in shapes):
            width = 768
        elif any(k.startswith("cond_stage_model.model.") for k in shapes):
            width = 1024
    if width not in (768, 1024):
        return None
    parameterization = _sidecar_parameterization(Path(path)) if path is not None else None
    if width == 768:  # SD 1.x; its v-prediction fine-tunes ship the same yaml (A1111 reads it for them too)
        return "sd-1-v" if parameterization == "v" else "sd-1"
    if path is not None:
        if parameterization is not None:
            return "sd-2-v" if parameterization == "v" else "sd-2"
        if re.search(r"(?<!\d)768(?!\d)", Path(path).stem):  # a size, not part of a step count (step7680)
            return "sd-2-v"
    return "sd-2"


def _sidecar_parameterization(path: Path) -> str | None:
    import yaml

    for sidecar in (path.with_suffix(".yaml"), path.with_suffix(".yml")):
        if sidecar.is_file():
            try:
                data = yaml.safe_load(sidecar.read_text(encoding="utf-8"))
                return str(data["model"]["params"].get("parameterization", "eps"))
            except Exception:
                continue  # unreadable: the other spelling may still say it
    return None


def detect_folder_family(folder: Path) -> str:
    """The conventions a diffusers folder follows: 1024-wide cross-attention means SD 2.x (v-prediction: 2.x-v).

    v-prediction alone does not make a folder SD 2: the embedded model's run 3 predicted v with 128-wide
    cross-attention.
    A folder brings its own scheduler config, so the family only picks fallbacks (tokenizer padding).
    """
    unet = _read_json(folder / "unet" / "config.json") or {}
    scheduler = _read_json(folder / "scheduler" / "scheduler_config.json") or {}
    v = scheduler.get("prediction_type") == "v_prediction"
    if unet.get("cross_attention_dim") == 1024:
        return "sd-2-v" if v else "sd-2"
    return "sd-1-v" if v and unet.get("cross_attention_dim") == 768 else "sd-1"


def family_config_dir(family: str) -> Path:
    if family not in FAMILIES:
        raise ModelError(f"unknown model family {family!r} (expected {', '.join(FAMILIES)})")
    return configs_dir() / family


def folder_native_size(folder: Path) -> tuple[int, int] | None:
    """(width, height) from a diffusers (config) folder: UNet sample size × the VAE's downsampling factor."""
    unet = _read_json(folder / "unet" / "config.json")
    vae = _read_json(folder / "vae" / "config.json")
    if not unet or not vae or "sample_size" not in unet:
        return None
    factor = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    sample = unet["sample_size"]
    h, w = (sample, sample) if isinstance(sample, int) else sample
    return int(w) * factor, int(h) * factor


_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"


def unsupported_checkpoint(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """What a single file is when it is a model invoke-repl cannot run, in words; None for SD 1.x/2.x txt2img.

    Such files used to fail at load with a shape mismatch and the advice to set `config:`, which cannot help."""
    if any(k.startswith(("conditioner.embedders.", "model.diffusion_model.label_emb.")) for k in shapes):
        return "an SDXL checkpoint"
    if any(
        k.startswith(("model.diffusion_model.joint_blocks.", "double_blocks.", "model.diffusion_model.double_blocks."))
        for k in shapes
    ):
        return "an SD3/Flux-style transformer checkpoint"
    conv_in = shapes.get(_CONV_IN)
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        names = {9: "an inpainting model", 8: "an instruct-pix2pix model"}
        return f"{names.get(conv_in[1], 'a model')} ({conv_in[1]} UNet input channels, not 4)"
    return None


def unsupported_folder(folder: Path) -> str | None:
    """As `unsupported_checkpoint`, for a diffusers folder (read from its UNet config).

    An `in_channels` that is no number is a broken config, refused as such: `"4"` was named "a model (4 UNet input
    channels, not 4)"."""
    unet = _read_json(folder / "unet" / "config.json") or {}
    if unet.get("addition_embed_type") == "text_time":
        return "an SDXL model"
    channels = unet.get("in_channels", 4)
    if isinstance(channels, bool) or not isinstance(channels, int | float):
        raise ModelError(f"{folder.name}: unet/config.json: in_channels must be a number, not {channels!r}")
    if channels != 4:
        names = {9: "an inpainting model", 8: "an instruct-pix2pix model"}
        return f"{names.get(channels, 'a model')} ({channels} UNet input channels, not 4)"
    return None


_NOT_A_MODEL = {
    "a LoRA": "is a LoRA, which invoke-repl does not apply; import a whole SD 1.x/2.x checkpoint",
    "a ControlNet": "is a ControlNet, which invoke-repl does not run; import a whole SD 1.x/2.x checkpoint",
    "a textual-inversion embedding": "is a textual-inversion embedding, which invoke-repl does not load",
    "a VAE": "is a VAE on its own; give it to a model as its vae: (!edit_model NAME vae=PATH) instead of importing it",
    "a diffusers UNet": "is one part (a diffusers UNet) of a model folder; import the whole folder",
}


# "lora" as a word of a key name, in every layout seen: kohya's lora_unet_…lora_down, PEFT's ….lora_A., diffusers'
# old attention-processor files (….to_q_lora.down.weight, which contain no "lora_") and LyCORIS's lora_…hada_w1_a.
_LORA_KEY = re.compile(r"(?:^|[._])lora(?:[._]|$)", re.IGNORECASE)


def _weights_kind(keys: list[str]) -> str | None:
    """What a weights file without LDM UNet weights holds, from its key names: one of `_NOT_A_MODEL`'s kinds, or None
    when the names say nothing known. Shared by import (not a model) and `vae:` (not a VAE)."""
    if any(_LORA_KEY.search(k) for k in keys):
        return "a LoRA"
    if any(k.startswith("control_model.") or "input_hint_block" in k or "controlnet_cond_embedding" in k for k in keys):
        return "a ControlNet"
    if any(k in ("string_to_param", "emb_params") or k.startswith("string_to_param.") for k in keys):
        return "a textual-inversion embedding"
    vae_like = ("encoder.down.", "decoder.up.", "first_stage_model.", "encoder.down_blocks.", "decoder.up_blocks.")
    if keys and all(k.startswith(vae_like) or k.startswith(("encoder.", "decoder.", "quant_conv", "post_quant_conv",
                                                           "loss.", "model_ema.")) for k in keys) and any(
        k.startswith(vae_like) for k in keys
    ):  # fmt: skip
        return "a VAE"
    if any(k.startswith(("down_blocks.", "conv_in.")) for k in keys) and any("attn2" in k for k in keys):
        return "a diffusers UNet"
    return None


def not_a_model(shapes: dict[str, tuple[int, ...]], name: str) -> str | None:
    """Why a single file with no UNet weights is not a model to import, in one line that says what it is and what
    to do with it; None when it has UNet weights. The family question ("set config:") cannot help such a file."""
    keys = list(shapes)
    if any(k.startswith(UNET_PREFIX) for k in keys):
        return None
    kind = _weights_kind(keys)
    if kind is not None:
        return f"{name} {_NOT_A_MODEL[kind]}"
    return f"{name} is not a Stable Diffusion checkpoint (no {UNET_PREFIX}* weights)"


def not_a_vae(shapes: dict[str, tuple[int, ...]], name: str) -> str | None:
    """Why a file given as `vae:` cannot be one, said of that file; None when it may be. A whole checkpoint may:
    its first_stage_model.* is read. Without this, a LoRA as `vae:` was reported as the model lacking VAE weights."""
    keys = list(shapes)
    if any(k.startswith(UNET_PREFIX) for k in keys):
        return None
    kind = _weights_kind(keys)
    return f"vae {name}: not a VAE (it is {kind})" if kind not in (None, "a VAE") else None


def _refuse_unsupported(shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    """Models of other kinds first: a Flux file in its original layout (`double_blocks.*`) has no
    model.diffusion_model.* keys, and was called "not a Stable Diffusion checkpoint"."""
    kind = unsupported_checkpoint(shapes)
    if kind is not None:  # no config: can make these load, so none is suggested
        raise ModelError(f"{path.name} is {kind}; invoke-repl runs SD 1.x and 2.x text-to-image models only")
    problem = not_a_model(shapes, path.name)
    if problem is not None:
        raise ModelError(problem)


def checkpoint_plan(entry_config: str | Path | None, path: Path) -> tuple[str, Path]:
    """(family, config folder) for a single-file checkpoint: the catalogue's word first, else the weights'.

    A model of a kind invoke-repl cannot run is refused here when that is cheap to see (a .safetensors header, or
    shapes read anyway to detect the family); a .ckpt with its family set is checked once read, at load."""
    shapes = checkpoint_shapes(path) if entry_config is None or path.suffix.lower() == ".safetensors" else None
    if shapes is not None:
        _refuse_unsupported(shapes, path)
    if isinstance(entry_config, Path):
        if not (entry_config / "unet" / "config.json").is_file():
            raise ModelError(f"config folder {entry_config} has no unet/config.json (is it a diffusers config folder?)")
        return detect_folder_family(entry_config), entry_config
    if entry_config is not None:
        return entry_config, family_config_dir(entry_config)
    assert shapes is not None
    family = detect_checkpoint_family(shapes, path)
    if family is None:
        raise ModelError(
            f"cannot tell which model family {path.name} is (its cross-attention is neither 768 nor 1024 wide); "
            f"set config: to {', '.join(FAMILIES)} or a diffusers config folder"
        )
    return family, family_config_dir(family)


# ------------------------------------------------------------------------------------------ loading
def load_entry(entry: ModelEntry, hashes: HashCache | None = None, dtype: torch.dtype | None = None) -> Components:
    """Build the entry's Components on the CPU, read straight into `dtype` (the manager moves them).

    Reading into the target precision matters: a 2 GB half-precision checkpoint would take 4 GB of RAM as float32
    on its way to a GPU.
    """
    if entry.format == "builtin":
        recipe = str(entry.raw.get("path") or entry.name)
        components = BUILTIN_RECIPES[recipe]()
        components.name = entry.name
        apply_entry_defaults(entry, components)
        return components
    assert entry.path is not None
    if not entry.path.exists():
        raise ModelError(f"model {entry.name!r}: {entry.path} does not exist")
    hashes = hashes or HashCache()
    if entry.format == "diffusers":
        if not entry.path.is_dir():
            raise ModelError(f"model {entry.name!r}: {entry.path} is not a folder (use format: checkpoint for files)")
        components = _load_folder(entry, dtype)
        components.sha256 = hashes.combined(folder_weight_files(entry.path), entry.path)
    else:
        if not entry.path.is_file():
            raise ModelError(f"model {entry.name!r}: {entry.path} is not a file (use format: diffusers for folders)")
        components = _load_single_file(entry, dtype)
        components.sha256 = hashes.file(entry.path)  # the file's own hash: matches AUTOMATIC1111's "Model hash"
    components.extras.setdefault("source", str(entry.path))
    apply_entry_defaults(entry, components)
    return components


def apply_entry_defaults(entry: ModelEntry, components: Components) -> None:
    """Generation defaults the catalogue entry sets for its model: the CFG scale and the size of a line without
    -C, -W and -H. Applied again after `!edit_model`, so a field the edit removed stops applying."""
    for key in ("cfg_scale", "width", "height"):
        value = getattr(entry, key)
        if value is None:
            components.extras.pop(key, None)
        else:
            components.extras[key] = value


def _load_folder(entry: ModelEntry, dtype: torch.dtype | None) -> Components:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = entry.path
    assert folder is not None
    check_folder(folder)
    for part in ("text_encoder",) if entry.vae is not None else ("vae", "text_encoder"):
        if not (folder / part).is_dir():
            hint = " (or set vae: in its entry)" if part == "vae" else ""
            raise ModelError(f"{folder} has no {part}/ folder{hint}")
    family = entry.family or detect_folder_family(folder)
    label = f"cannot load model {entry.name!r}"  # each part's error goes on to name the file that is wrong
    with quiet_libraries():
        with _part_errors(label, folder, folder / "unet"):
            unet = UNet2DConditionModel.from_pretrained(
                str(folder), subfolder="unet", local_files_only=True, torch_dtype=dtype, **_read_as(folder / "unet")
            )
        if entry.vae is not None:  # a folder without vae/ reads a VAE file through its family's VAE config
            own = (folder / "vae" / "config.json").is_file()
            vae = _load_vae_override(entry.vae, folder if own else family_config_dir(family), dtype)
        else:
            with _part_errors(label, folder, folder / "vae"):
                vae = AutoencoderKL.from_pretrained(
                    str(folder), subfolder="vae", local_files_only=True, torch_dtype=dtype, **_read_as(folder / "vae")
                )
        with _part_errors(label, folder, folder / "text_encoder"):
            text_encoder = CLIPTextModel.from_pretrained(
                str(folder),
                subfolder="text_encoder",
                local_files_only=True,
                trust_remote_code=False,
                dtype=dtype,
                **_read_as(folder / "text_encoder"),
            )
    tokenizer = load_tokenizer(folder / "tokenizer", family, label=label)
    return Components(
        name=entry.name,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=scheduler_config(folder, family),
        family=family,
    )


_KNOWN_PARTS = {
    "unet": {"UNet2DConditionModel"},
    "vae": {"AutoencoderKL"},
    "text_encoder": {"CLIPTextModel"},
    "tokenizer": {"CLIPTokenizer", "CLIPTokenizerFast"},
}


_ONLY_SD = "invoke-repl runs SD 1.x and 2.x text-to-image models only"


def check_folder(folder: Path) -> None:
    """Refuse folders whose parts are custom classes: we would load them wrongly, and never run their code."""
    if not (folder / "unet").is_dir():
        if (folder / "transformer").is_dir():  # SD3, Flux, PixArt: a transformer where SD has its UNet
            raise ModelError(f"{folder.name} is an SD3/Flux-style transformer model; {_ONLY_SD}")
        raise ModelError(f"{folder} is not a diffusers model folder (no unet/ inside)")
    kind = unsupported_folder(folder)
    if kind is not None:
        raise ModelError(f"{folder.name} is {kind}; {_ONLY_SD}")
    for part in ("unet", "vae", "text_encoder"):
        if (folder / part).is_dir() and not part_weight_files(folder / part)[0]:
            raise ModelError(f"{folder}: its {part}/ folder holds no weights (.safetensors or .bin)")
    index = _read_json(folder / "model_index.json")
    if not index:
        return
    for part, classes in _KNOWN_PARTS.items():
        spec = index.get(part)
        if isinstance(spec, list) and len(spec) == 2 and spec[1] is not None:
            library, cls = spec
            if library not in ("diffusers", "transformers") or cls not in classes:
                raise ModelError(
                    f"{folder.name}: its {part} is {library}.{cls}; invoke-repl loads only "
                    f"{' / '.join(sorted(classes))} and never runs code shipped in a model folder"
                )


def _load_single_file(entry: ModelEntry, dtype: torch.dtype | None) -> Components:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel

    path = entry.path
    assert path is not None
    family, config = checkpoint_plan(entry.config, path)
    state = read_checkpoint(path)
    state.pop("global_step", None)
    _refuse_unsupported({k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}, path)
    state = with_text_model_prefix(state)
    missing = _missing_parts(state, entry.name, vae_given=entry.vae is not None)
    if missing:
        raise ModelError(f"{path.name} {missing}")
    part = "UNet"
    with quiet_libraries():
        try:
            unet = UNet2DConditionModel.from_single_file(
                state, config=str(config), subfolder="unet", local_files_only=True, torch_dtype=dtype
            )
            _require_complete(unet, "UNet", path)
            part = "VAE"
            if entry.vae is not None:
                vae = _load_vae_override(entry.vae, config, dtype)
            else:
                vae = AutoencoderKL.from_single_file(
                    state, config=str(config), subfolder="vae", local_files_only=True, torch_dtype=dtype
                )
                _require_complete(vae, "VAE", path)
            part = "text encoder"
            text_encoder = create_diffusers_clip_model_from_ldm(
                CLIPTextModel,
                state,
                subfolder="text_encoder",
                config=str(config),
                local_files_only=True,
                torch_dtype=dtype,
            )
            _require_complete(text_encoder, "text encoder", path)
        except ModelError:
            raise
        except Exception as exc:  # shape mismatches: the wrong family for these weights
            if "meta tensor" in str(exc) or type(exc).__name__ == "SingleFileComponentError":
                raise ModelError(f"{path.name} lacks {part} weights: truncated, or not Stable Diffusion") from exc
            raise ModelError(
                f"{path.name} does not fit the {family} config ({_short(exc)}); set config: to the right family"
            ) from exc
    del state
    return Components(
        name=entry.name,
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=load_tokenizer(config / "tokenizer", family),
        scheduler_config=scheduler_config(config, family),
        family=family,
    )


_CLIP_LDM = "cond_stage_model.transformer."


def with_text_model_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """SD 1.x CLIP weights saved as `cond_stage_model.transformer.embeddings.*` (no `text_model.`), as recent
    transformers versions write CLIPTextModel and as some merges came out: the same weights one level up.
    AUTOMATIC1111 renames them on load (its `checkpoint_dict_replacements_sd1`); diffusers refuses the file."""
    inner = ("embeddings.", "encoder.", "final_layer_norm.")
    if any(k.startswith(_CLIP_LDM + "text_model.") for k in state):
        return state
    if not any(k.startswith(tuple(_CLIP_LDM + p for p in inner)) for k in state):
        return state
    return {
        (_CLIP_LDM + "text_model." + k[len(_CLIP_LDM) :] if k.startswith(tuple(_CLIP_LDM + p for p in inner)) else k): v
        for k, v in state.items()
    }


def _missing_parts(state: dict[str, Any], name: str, *, vae_given: bool) -> str | None:
    """What a single file lacks that an image needs, said before diffusers fails on it with less helpful words."""
    if not any(k.startswith("cond_stage_model.") for k in state):
        return (
            "has no text encoder weights (cond_stage_model.*): a pruned UNet-only file; invoke-repl needs a whole "
            "SD 1.x/2.x checkpoint"
        )
    if not vae_given and not any(k.startswith("first_stage_model.") for k in state):
        return f"has no VAE weights (first_stage_model.*); give it one: !edit_model {name} vae=PATH"
    return None


def _read_as(sub: Path) -> dict[str, Any]:
    """from_pretrained's file choice for one part folder: the variant its weights need, and safetensors or not
    (told outright, since diffusers logs a missing .safetensors as an error before falling back to .bin)."""
    files, variant = part_weight_files(sub)
    if not files:
        return {}  # from_pretrained says what is missing
    return {"variant": variant, "use_safetensors": files[0].suffix == ".safetensors"}


def _load_vae_override(vae_path: Path, config: Path, dtype: torch.dtype | None) -> Any:
    """The entry's `vae:` (a VAE file, a whole checkpoint, or a diffusers VAE or model folder).

    Every failure here is said of the VAE file, in one line: a LoRA or a partial VAE given as `vae:` was reported
    as the main checkpoint lacking VAE weights, or for a folder model as diffusers' "Cannot copy out of meta
    tensor"."""
    from diffusers import AutoencoderKL

    if vae_path.is_dir():
        sub = vae_path / "vae" if (vae_path / "vae" / "config.json").is_file() else vae_path
        with _part_errors(f"vae {vae_path.name}", vae_path, sub):
            return AutoencoderKL.from_pretrained(
                str(vae_path),
                subfolder="vae" if sub != vae_path else None,
                local_files_only=True,
                torch_dtype=dtype,
                **_read_as(sub),
            )
    state = read_checkpoint(vae_path)  # its errors name the file already
    state.pop("global_step", None)
    problem = not_a_vae({k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}, vae_path.name)
    if problem is not None:
        raise ModelError(problem)
    lacks = f"vae {vae_path.name} lacks weights (truncated, or not an SD VAE)"
    try:
        vae = AutoencoderKL.from_single_file(
            state, config=str(config), subfolder="vae", local_files_only=True, torch_dtype=dtype
        )
    except Exception as exc:
        if _out_of_memory(exc):
            raise
        if "meta tensor" in str(exc) or type(exc).__name__ == "SingleFileComponentError":
            raise ModelError(lacks) from exc
        raise ModelError(f"vae {vae_path.name} does not fit the model's VAE config ({_short(exc)})") from exc
    if _meta_names(vae):
        raise ModelError(lacks)
    return vae


def _require_complete(module: Any, part: str, path: Path) -> None:
    """from_single_file leaves weights it found no key for on the meta device; that is a broken file, say so."""
    missing = _meta_names(module)
    if missing:
        raise ModelError(f"{path.name} lacks {len(missing)} {part} weights (e.g. {missing[0]}): truncated or not SD")


def _meta_names(module: Any) -> list[str]:
    return [name for name, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]


@contextlib.contextmanager
def _part_errors(label: str, root: Path, sub: Path, *, has_config: bool = True) -> Iterator[None]:
    """Loading one part folder of a diffusers model (`sub`, inside `root`): a failure becomes one line that names
    the file that is wrong. diffusers and transformers name the model folder, or nothing at all ("Error while
    deserializing header: incomplete metadata …", a bare JSON decode error). Running out of memory stays itself."""
    try:
        yield
    except ModelError:
        raise
    except Exception as exc:
        if _out_of_memory(exc):
            raise
        raise ModelError(f"{label}: {_part_problem(root, sub, exc, has_config)}") from exc


def _part_problem(root: Path, sub: Path, exc: BaseException, has_config: bool) -> str:
    """Why a part folder failed to load, found by looking at its files (only after a failure: a load that works
    reads nothing twice). The config and JSON files first, then the weight files that part reads."""
    prefix = "" if sub == root else f"{sub.name}/"
    if has_config and not (sub / "config.json").is_file():
        return f"{prefix or 'its folder'} has no config.json"
    for file in sorted(sub.glob("*.json")):
        problem = _json_problem(file)
        if problem is not None:
            return f"{prefix}{file.name} {problem}"
    from safetensors import safe_open

    for file in part_weight_files(sub)[0]:
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), framework="pt", device="cpu"):
                    pass
            except Exception as bad:
                return f"{prefix}{file.name} is not a valid .safetensors file ({_short(bad)})"
    return f"{prefix or 'its folder'}: {_short(exc)}"  # e.g. weights that do not fit the part's config.json


def _json_problem(file: Path) -> str | None:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    except json.JSONDecodeError as exc:
        return f"is not valid JSON (line {exc.lineno})"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or _short(exc)})"
    return None if isinstance(data, dict) else "is not a JSON object"


def _out_of_memory(exc: BaseException) -> bool:
    """torch's device OOM or host RAM: the session reports those with its own hint, so they are not reworded."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def load_tokenizer(folder: Path, family: str, *, label: str | None = None) -> Any:
    """The folder's own CLIP tokenizer files when it has them, else the shipped ones with the family's pad token.

    A broken file among them is named in one line led by `label` (default: the model folder's name)."""
    from transformers import CLIPTokenizer

    pad = "!" if family in ("sd-2", "sd-2-v") else "<|endoftext|>"
    settings = _read_json(folder / "tokenizer_config.json") or {}
    if isinstance(settings.get("pad_token"), str):
        pad = settings["pad_token"]
    has_files = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if has_files or (folder / "tokenizer.json").is_file():
        stamp = tuple(f.stat().st_mtime_ns for f in sorted(folder.iterdir()) if f.is_file())
        key = (str(folder.resolve()), stamp, pad)
    else:
        key = ("<shipped>", (), pad)
    # Building a 49,408-entry BPE tokenizer takes about a second; switching models should not pay it again.
    with _TOKENIZER_LOCK:
        cached = _TOKENIZERS.get(key)
    if cached is not None:
        return cached
    if key[0] == "<shipped>":
        tokenizer = load_clip_tokenizer(pad)
    else:
        with quiet_libraries(), _part_errors(label or folder.parent.name, folder.parent, folder, has_config=False):
            tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    with _TOKENIZER_LOCK:
        _TOKENIZERS[key] = tokenizer
    return tokenizer


_TOKENIZERS: dict[tuple[Any, ...], Any] = {}
_TOKENIZER_LOCK = threading.Lock()


def scheduler_config(folder: Path, family: str) -> dict[str, Any]:
    found = _read_json(folder / "scheduler" / "scheduler_config.json")
    if found:
        return found
    if family != "sd-1":
        return _read_json(family_config_dir(family) / "scheduler" / "scheduler_config.json") or {}
    return dict(SD1_SCHEDULER_CONFIG)


# ------------------------------------------------------------------------------------------ files and sizes
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")


def part_weight_files(sub: Path) -> tuple[list[Path], str | None]:
    """The weight files `from_pretrained` reads from one part folder (unet/, vae/, text_encoder/), and the variant
    it must be asked for to read them (None: the plain files).

    Folders copied from the Hub often hold several copies of each part (`.bin` beside `.safetensors`,
    `*.fp16.*`, `*.non_ema.*`) of which one is read: counting them all made the memory estimate refuse models
    that fit (4× here on a folder with four copies) and changed the model's hash with every unused file. The
    order is from_pretrained's own: plain before a variant, safetensors before bin; a folder of fp16 files only
    is read as the fp16 variant.
    """
    if not sub.is_dir():
        return [], None
    files = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    for variant in (None, "fp16"):
        for suffix in (".safetensors", ".bin"):
            chosen = [f for f in files if f.suffix == suffix and _variant_of(f) == variant]
            if chosen:
                return chosen, variant
    return files, None


def _variant_of(file: Path) -> str | None:
    stem = _SHARD.sub("", file.name[: -len(file.suffix)])
    return stem.rsplit(".", 1)[1] if "." in stem else None


def folder_weight_files(folder: Path) -> list[Path]:
    """The weight files loading reads from a diffusers folder's unet/vae/text_encoder (what hashing and sizes count)."""
    files: list[Path] = []
    for part in ("unet", "vae", "text_encoder"):
        files.extend(part_weight_files(folder / part)[0])
    return files


def entry_files(entry: ModelEntry) -> list[Path]:
    if entry.format == "builtin" or entry.path is None or not entry.path.exists():
        return []
    files = folder_weight_files(entry.path) if entry.path.is_dir() else [entry.path]
    if entry.vae is not None and entry.vae.exists():
        if entry.vae.is_dir():  # a whole model's folder (its vae/ is read) or a VAE's own folder
            sub = entry.vae / "vae" if (entry.vae / "vae" / "config.json").is_file() else entry.vae
            files += part_weight_files(sub)[0]
        else:
            files.append(entry.vae)
    return files


def size_on_disk(entry: ModelEntry) -> int | None:
    files = entry_files(entry)
    if not files:
        return None
    return sum(f.stat().st_size for f in files)


def estimate_bytes(entry: ModelEntry, dtype: torch.dtype) -> int:
    """Peak host memory for loading the entry at `dtype`: the weights the model keeps, plus, for a single file read
    into memory, the whole state dict held while it is converted.

    Kept weights are exact from safetensors headers and from a zip `.ckpt`'s memory-mapped tensors (EMA copies,
    which are not loaded, left out); other files count at their size, which is within a factor of two of the truth
    whatever precision they were saved in. A zip `.ckpt` is memory-mapped (`read_checkpoint`), so its state dict
    lives in the page cache, not in memory that must be free: runwayml's v1-5-pruned.ckpt (7.7 GB, fp32 with an
    EMA copy of the UNet) was estimated at 14.3 GiB and refused on 16 GB machines, where loading it took 0.2 GiB
    at fp32 and 2.2 GiB at fp16 (audit 2026-11-28, a random-weight file of the same layout).
    """
    import zipfile

    import torch

    item = torch.tensor([], dtype=dtype).element_size()
    total = 0
    for f in entry_files(entry):
        size = f.stat().st_size
        kept, held = size, size if entry.format == "checkpoint" else 0
        mapped = entry.format == "checkpoint" and f.suffix.lower() != ".safetensors" and zipfile.is_zipfile(f)
        if f.suffix == ".safetensors" or mapped:
            try:
                shapes = checkpoint_shapes(f)
                kept = sum(_numel(s) for k, s in shapes.items() if not k.startswith("model_ema.")) * item
                held = 0 if mapped else held
            except ModelError:
                pass
        total += kept + held
    return total


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def components_bytes(components: Components) -> int:
    total = 0
    for module in (components.unet, components.vae, components.text_encoder):
        for t in list(module.parameters()) + list(module.buffers()):
            total += t.numel() * t.element_size()
    return total


def builtin_sha256(components: Components) -> str:
    return components.sha256 or modules_sha256(components.text_encoder, components.unet, components.vae)


# ------------------------------------------------------------------------------------------ hashes
class HashCache:
    """sha256 of weight files, remembered by (resolved path, size, mtime_ns) in a small JSON file."""

    _lock = threading.Lock()

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or user_cache_dir() / "hashes.json"

    def file(self, path: Path) -> str:
        path = Path(path).resolve()
        stat = path.stat()
        key = str(path)
        with self._lock:
            known = self._read().get(key)
        if isinstance(known, dict) and known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
            return str(known["sha256"])
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        value = digest.hexdigest()
        with self._lock:
            data = self._read()
            data[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": value}
            with contextlib.suppress(OSError):  # an unwritable cache only costs time next start
                write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True))
        return value

    def combined(self, files: list[Path], root: Path) -> str:
        """One hash for a folder: its files' hashes, each with its path relative to the folder, in order."""
        if len(files) == 1:
            return self.file(files[0])
        digest = hashlib.sha256()
        for f in sorted(files):
            digest.update(f"{f.relative_to(root).as_posix()} {self.file(f)}\n".encode())
        return digest.hexdigest()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


# ------------------------------------------------------------------------------------------ helpers
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """diffusers and transformers log warnings (unexpected keys, deprecations) that would clutter the REPL."""
    import logging

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    levels = [lg.level for lg in loggers]
    bars = [(m, m.is_progress_bar_enabled()) for m in (diffusers_logging, transformers_logging)]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    for module, _ in bars:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        for module, enabled in bars:
            if enabled:
                module.enable_progress_bar()


# ------------------------------------------------------------------------------------------ export (LDM names)
_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def diffusers_to_ldm(unet: Any, vae: Any, text_encoder: Any) -> dict[str, Any]:
    """The inverse of diffusers' single-file conversion for an SD 1.x layout: diffusers modules → one state dict
    with the original CompVis/LDM key names (`model.diffusion_model.*`, `first_stage_model.*`,
    `cond_stage_model.transformer.text_model.*`).

    diffusers ships no public inverse for all three parts; this one follows `convert_ldm_unet_checkpoint` /
    `convert_ldm_vae_checkpoint` backwards for any block count and `layers_per_block`, so the test-suite can write
    tiny checkpoints in the real single-file format and load them through the same path real ones take. Only
    CLIP (SD 1.x) text encoders are written; OpenCLIP's fused attention layout (SD 2.x) is not.
    """
    out: dict[str, Any] = {}
    per = int(unet.config.layers_per_block) + 1
    fixed_unet = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    up_has_attention = {
        int(k.split(".")[1]) for k in unet.state_dict() if k.startswith("up_blocks.") and ".attentions." in k
    }
    for key, tensor in unet.state_dict().items():
        parts = key.split(".")
        head = next((h for h in fixed_unet if key.startswith(h + ".")), None)
        if head is not None:
            new = fixed_unet[head] + key[len(head) :]
        elif parts[0] in ("down_blocks", "up_blocks"):
            block, kind = int(parts[1]), parts[2]
            first = "input_blocks" if parts[0] == "down_blocks" else "output_blocks"
            offset = 1 if parts[0] == "down_blocks" else 0
            if kind in ("resnets", "attentions"):
                index = offset + block * per + int(parts[3])
                rest = parts[4:]
                if kind == "resnets":
                    rest = [_RESNET_TO_LDM.get(rest[0], rest[0]), *rest[1:]]
                new = f"{first}.{index}.{0 if kind == 'resnets' else 1}.{'.'.join(rest)}"
            elif parts[0] == "down_blocks":  # downsamplers.0.conv.*
                new = f"input_blocks.{offset + block * per + per - 1}.0.op.{parts[-1]}"
            else:  # upsamplers.0.conv.*
                slot = 2 if block in up_has_attention else 1
                new = f"output_blocks.{block * per + per - 1}.{slot}.conv.{parts[-1]}"
        elif parts[0] == "mid_block":
            index = 2 * int(parts[2]) if parts[1] == "resnets" else 1
            rest = parts[3:]
            if parts[1] == "resnets":
                rest = [_RESNET_TO_LDM.get(rest[0], rest[0]), *rest[1:]]
            new = f"middle_block.{index}.{'.'.join(rest)}"
        else:
            raise ValueError(f"no LDM name for UNet weight {key}")
        out[UNET_PREFIX + new] = tensor

    blocks = len(vae.config.block_out_channels)
    for key, tensor in vae.state_dict().items():
        new = key.replace("conv_norm_out", "norm_out")
        parts = new.split(".")
        if len(parts) > 2 and parts[1] in ("down_blocks", "up_blocks"):
            block = int(parts[2]) if parts[1] == "down_blocks" else blocks - 1 - int(parts[2])
            side = "down" if parts[1] == "down_blocks" else "up"
            if parts[3] == "resnets":
                rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                new = f"{parts[0]}.{side}.{block}.block.{parts[4]}.{rest}"
            else:  # downsamplers.0.conv.* / upsamplers.0.conv.*
                new = f"{parts[0]}.{side}.{block}.{'downsample' if side == 'down' else 'upsample'}.conv.{parts[-1]}"
        elif len(parts) > 2 and parts[1] == "mid_block":
            if parts[2] == "resnets":
                rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
                new = f"{parts[0]}.mid.block_{int(parts[3]) + 1}.{rest}"
            else:
                inner = ".".join(parts[4:])
                for diffusers_name, ldm_name in _VAE_ATTN_TO_LDM.items():
                    if inner.startswith(diffusers_name + "."):
                        inner = ldm_name + inner[len(diffusers_name) :]
                        break
                new = f"{parts[0]}.mid.attn_1.{inner}"
                if tensor.dim() == 2:  # LDM keeps these as 1×1 convolutions
                    tensor = tensor[:, :, None, None]
        out["first_stage_model." + new] = tensor

    for key, tensor in text_encoder.state_dict().items():
        bare = key.removeprefix("text_model.")
        out["cond_stage_model.transformer.text_model." + bare] = tensor
    return {k: v.detach().clone().contiguous() for k, v in out.items()}
