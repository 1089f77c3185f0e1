"""PNG text metadata: what each image records about the request that made it, and reading it back for `!fetch`.

Every image carries three text chunks, so that each family of tools finds what it already understands:

* ``Dream`` — the command in the ``legacy`` dialect (`commands.legacy_line`), the line InvokeAI 2.x's ``!fetch``
  and its web UI read.
* ``sd-metadata`` — JSON in InvokeAI 2.x's shape (``metadata_dumps`` in 2.x's ``ldm/invoke/args.py``: the "RFC 266"
  layout). Where 2.x itself was lossy we add keys beside its own, never instead of them:

  - ``image.prompt`` is ``[{"prompt": text, "weight": 1.0}]`` as 2.x wrote it, with the negative prompt folded in
    as ``"positive [negative]"`` (2.x's own negative syntax, so a 2.x reader sees it). ``image.negative_prompt``
    holds it separately so our reader splits the text exactly, whatever brackets the positive prompt contains.
  - img2img: ``strength`` and ``init_image_path`` (DESIGN.md), plus ``init_img`` (the key 2.x's reader turns back
    into ``-I``; 2.x's writer lost it to a missing comma). 2.x's own ``strength_steps`` is read, not written.
  - ours: ``steps_taken`` (steps actually run: ⌊steps × strength⌋ for img2img), ``fit``, and ``variation_amount``
    when it is not folded into ``variations``; at the top level ``device`` (``cuda``, ``cpu``, ``mps``) and
    ``precision`` (``float16``…), which the line cannot carry but a bit-exact rerun needs (`made_on`).
  - the JSON is ASCII (``ensure_ascii``), as 2.x wrote it, so the chunk is always tEXt.

* ``parameters`` — AUTOMATIC1111's text form: the prompt, a ``Negative prompt:`` line that is always present (even
  when empty, so a reader never has to guess where the prompt ends), then
  ``Steps: 10, Sampler: LMS, CFG scale: 7.5, Seed: 1592514025, Size: 384x384, Model hash: <10 hex>, Model: <name>``
  and ``, Denoising strength: 0.7`` for img2img. Sampler names are written in A1111's spelling (``LMS``,
  ``Euler a``, ``DPM++ 2M Karras``) because that is what A1111, civitai and friends index; `SAMPLER_TO_A1111`
  maps both ways, and the reader also accepts our own names and A1111's newer ``Schedule type: Karras``. One
  variation is A1111's ``Variation seed``/``Variation seed strength``; several add ``Variations: "s:w,s:w"``.
  A1111 records no init-image path, so a ``parameters``-only img2img reads back with its strength and no ``-I``
  (an editable line: the user adds the init image), as does a 2.x ``sd-metadata`` whose writer lost the path.

Reading prefers ``sd-metadata`` (the most complete), then ``Dream``, then ``parameters``; if the preferred one is
malformed the next is tried, and the first failure is what the user sees. Paths found in metadata are only text:
nothing here opens, checks or runs them. Text is written as tEXt when it is ASCII and as UTF-8 iTXt otherwise
(tEXt is Latin-1 by the PNG spec and many readers mis-decode it). This module imports no torch and does no file
I/O beyond reading the PNG it is asked about.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoke_repl.request import DEFAULT_SAMPLER, SAMPLERS, Request, RequestError, control_character

if TYPE_CHECKING:
    from PIL.PngImagePlugin import PngInfo

    from invoke_repl.results import GeneratedImage

APP_ID = "invoke-repl"
MODEL_FAMILY = "stable diffusion"  # 2.x's constant top-level "model"

DREAM_KEY = "Dream"
SD_METADATA_KEY = "sd-metadata"
PARAMETERS_KEY = "parameters"
INVOKEAI3_KEY = "invokeai_metadata"  # InvokeAI 3.x and later (read, never written)
KEYS: tuple[str, ...] = (SD_METADATA_KEY, DREAM_KEY, PARAMETERS_KEY, INVOKEAI3_KEY)  # reading preference

# InvokeAI 3.x+ scheduler names (its SCHEDULER_MAP) that have an exact counterpart here. Its others (dpmpp_2s,
# the SDE and UniPC ones, deis, ddpm, lcm, tcd) have none and become the default, with a notice.
INVOKEAI3_SCHEDULERS = {
    "ddim": "ddim",
    "pndm": "plms",
    "lms": "k_lms",
    "lms_k": "k_lms_karras",
    "euler": "k_euler",
    "euler_k": "k_euler_karras",
    "euler_a": "k_euler_a",
    "heun": "k_heun",
    "heun_k": "k_heun_karras",
    "kdpm_2": "k_dpm_2",
    "kdpm_2_a": "k_dpm_2_a",
    "dpmpp_2m": "k_dpmpp_2",
    "dpmpp_2m_k": "k_dpmpp_2_karras",
}

NEGATIVE_LABEL = "Negative prompt:"
MODEL_HASH_CHARS = 10  # A1111's short hash: the first 10 hex digits of the file's sha256

# Our sampler names ↔ AUTOMATIC1111's. k_dpmpp_2 is DPM++ 2M and k_dpmpp_2_a is DPM++ 2S a, as in InvokeAI 2.3.
SAMPLER_TO_A1111: dict[str, str] = {
    "ddim": "DDIM",
    "plms": "PLMS",
    "k_lms": "LMS",
    "k_lms_karras": "LMS Karras",
    "k_dpm_2": "DPM2",
    "k_dpm_2_karras": "DPM2 Karras",
    "k_dpm_2_a": "DPM2 a",
    "k_dpm_2_a_karras": "DPM2 a Karras",
    "k_dpmpp_2": "DPM++ 2M",
    "k_dpmpp_2_karras": "DPM++ 2M Karras",
    "k_dpmpp_2_a": "DPM++ 2S a",
    "k_dpmpp_2_a_karras": "DPM++ 2S a Karras",
    "k_euler": "Euler",
    "k_euler_karras": "Euler Karras",
    "k_euler_a": "Euler a",
    "k_heun": "Heun",
    "k_heun_karras": "Heun Karras",
}
A1111_TO_SAMPLER: dict[str, str] = {v.lower(): k for k, v in SAMPLER_TO_A1111.items()}

# A1111's own pattern for the last line (modules/infotext_utils.py): `Key: value` or `Key: "json string"`.
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_BRACKETS_RE = re.compile(r"\[([^\[\]]*)\]")


class OutputError(Exception):
    """An image or file could not be saved or read; one line (read-only folder, full disk, not a directory…).

    Defined here rather than in `outputs` only so that `MetadataError` can derive from it without an import cycle;
    `outputs.OutputError` is the name callers use.
    """


class MetadataError(OutputError, ValueError):
    """A PNG whose generation metadata is missing or unusable; one line. Both an output problem and a bad value,
    so callers catching either see it."""


# ------------------------------------------------------------------------------------------------ writing
def _fold_negative(prompt: str, negative: str) -> str:
    return f"{prompt} [{negative}]" if negative else prompt


def sd_metadata(generated: GeneratedImage, *, model_hash: str, app_version: str) -> dict[str, Any]:
    """The ``sd-metadata`` dict (InvokeAI 2.x's shape plus our additions; see the module docstring)."""
    r = generated.request
    image: dict[str, Any] = {
        "type": "img2img" if r.is_img2img else "txt2img",
        "prompt": [{"prompt": _fold_negative(r.prompt, r.negative), "weight": 1.0}],
        "negative_prompt": r.negative,
        "seed": r.seed,
        "variations": [{"seed": s, "weight": float(w)} for s, w in r.with_variations],
        "steps": r.steps,
        # None only for a request that never ran (the generator fills in the model's default): "the model's".
        "cfg_scale": None if r.cfg_scale is None else float(r.cfg_scale),
        "width": r.width,
        "height": r.height,
        "sampler": r.sampler,
        "steps_taken": generated.steps_taken,
        "fit": r.fit,
    }
    if r.variation_amount:
        image["variation_amount"] = float(r.variation_amount)
    if r.is_img2img:
        image["strength"] = float(r.effective_strength or 0.0)
        image["init_image_path"] = r.init_img
        image["init_img"] = r.init_img
    meta: dict[str, Any] = {
        "model": MODEL_FAMILY,
        "model_id": r.model,
        "model_hash": model_hash,
        "app_id": APP_ID,
        "app_version": app_version,
        "image": image,
    }
    if generated.device:
        meta["device"] = generated.device
    if generated.precision:
        meta["precision"] = generated.precision
    return meta


def _a1111_quote(value: str) -> str:
    """A1111's `quote()`: values with a comma, colon or newline become a JSON string so the line still splits."""
    if any(c in value for c in ',:\n"'):
        return json.dumps(value, ensure_ascii=False)
    return value


def a1111_parameters(generated: GeneratedImage, *, model_hash: str) -> str:
    """The ``parameters`` text, in AUTOMATIC1111's layout (see the module docstring)."""
    r = generated.request
    cfg = [] if r.cfg_scale is None else [("CFG scale", repr(float(r.cfg_scale)))]  # None: never ran
    fields: list[tuple[str, str]] = [
        ("Steps", str(r.steps)),
        ("Sampler", SAMPLER_TO_A1111.get(r.sampler, r.sampler)),
        *cfg,
        ("Seed", str(r.seed)),
        ("Size", f"{r.width}x{r.height}"),
    ]
    if model_hash:
        fields.append(("Model hash", model_hash[:MODEL_HASH_CHARS]))
    if r.model:
        fields.append(("Model", _a1111_quote(r.model)))
    if r.is_img2img:
        fields.append(("Denoising strength", repr(float(r.effective_strength or 0.0))))
    if len(r.with_variations) == 1:
        seed, weight = r.with_variations[0]
        fields += [("Variation seed", str(seed)), ("Variation seed strength", repr(float(weight)))]
    elif r.with_variations:
        fields.append(("Variations", _a1111_quote(_variations_text(r.with_variations))))
    settings = ", ".join(f"{k}: {v}" for k, v in fields)
    return f"{r.prompt}\n{NEGATIVE_LABEL} {r.negative}\n{settings}"


def _variations_text(pairs: tuple[tuple[int, float], ...]) -> str:
    return ",".join(f"{s}:{w!r}" for s, w in pairs)


def text_chunks(generated: GeneratedImage, *, model_hash: str, app_version: str) -> dict[str, str]:
    """All three chunks for one image, keyed by chunk keyword."""
    from invoke_repl.commands import legacy_line  # lazily: commands is a sibling, not a dependency at import

    meta = sd_metadata(generated, model_hash=model_hash, app_version=app_version)
    return {
        DREAM_KEY: legacy_line(generated.request),
        SD_METADATA_KEY: json.dumps(meta),
        PARAMETERS_KEY: a1111_parameters(generated, model_hash=model_hash),
    }


def png_info(chunks: Mapping[str, str]) -> PngInfo:
    """PngInfo with each chunk as tEXt when ASCII, else UTF-8 iTXt (never Latin-1 tEXt, which readers mis-decode)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in chunks.items():
        if value.isascii():
            info.add_text(key, value)
        else:
            info.add_itxt(key, value)
    return info


# ------------------------------------------------------------------------------------------------ reading
def read_chunks(path: Path) -> dict[str, str]:
    """The PNG's metadata chunks (`KEYS`). Raises MetadataError (one line) when the file is not a readable PNG or
    one of those chunks is damaged. Read by `pngtext`, not Pillow: see there for what Pillow refused."""
    from invoke_repl.pngtext import PngTextError, read_text_chunks

    try:
        return read_text_chunks(path, KEYS)
    except PngTextError as exc:
        if str(exc) == "not a PNG":
            raise MetadataError(f"{path}: not a PNG image ({_image_format(path)})") from None
        raise MetadataError(f"{path}: {exc}") from None
    except OSError as exc:
        raise MetadataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _image_format(path: Path) -> str:
    """What Pillow calls a file that is not a PNG ("JPEG", "WEBP"), without decoding it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.format or "unknown format"
    except Exception:  # noqa: BLE001 - naming the format is a courtesy; any failure means "unknown"
        return "unknown format"


def read_request(path: Path, notices: list[str] | None = None) -> Request:
    """The request recorded in a PNG by us, InvokeAI 2.x or AUTOMATIC1111 (see `request_from_chunks`); `notices`
    collects what could not be carried over exactly (a sampler or schedule invoke-repl does not have)."""
    path = Path(path)
    try:
        return request_from_chunks(read_chunks(path), notices)
    except MetadataError as exc:
        message = str(exc)
        raise MetadataError(message if message.startswith(str(path)) else f"{path}: {message}") from exc


def made_on(chunks: Mapping[str, str]) -> tuple[str, str] | None:
    """(device type, precision) that an invoke-repl image records in its sd-metadata, or None when it records
    none (other tools' images, ours before 2026-11-28, anything malformed)."""
    try:
        meta = json.loads(chunks.get(SD_METADATA_KEY, ""))
    except ValueError:
        return None
    if not isinstance(meta, dict):
        return None
    device, precision = meta.get("device"), meta.get("precision")
    if not (isinstance(device, str) and isinstance(precision, str) and device and precision):
        return None
    if control_character(device + precision) is not None or len(device + precision) > 40:
        return None  # only ever shown in a notice: keep it one short line
    return device, precision


def request_from_chunks(chunks: Mapping[str, str], notices: list[str] | None = None) -> Request:
    """Prefer sd-metadata, then Dream, then parameters; the first failure is reported if none works."""
    readers: dict[str, Callable[[str, list[str]], Request]] = {
        SD_METADATA_KEY: lambda text, said: request_from_sd_metadata(json.loads(text), said),
        DREAM_KEY: request_from_dream,
        PARAMETERS_KEY: request_from_parameters,
        INVOKEAI3_KEY: lambda text, said: request_from_invokeai_metadata(json.loads(text), said),
    }
    first_error: str | None = None
    for key in KEYS:
        text = chunks.get(key)
        if text is None:
            continue
        said: list[str] = []  # only the notices of the reader whose request is used
        try:
            request = readers[key](text, said)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            if first_error is None:
                first_error = f"unusable {key} metadata: {_one_line(exc)}"
            continue
        if key == SD_METADATA_KEY and request.strength is not None and request.init_img is None:
            request = _init_img_from_dream(request, chunks.get(DREAM_KEY))
        if request.strength is not None and request.init_img is None:  # A1111's parameters never name it
            said.append(
                f"the PNG is an img2img image (strength {request.strength:g}) whose metadata does not name its init "
                "image; add --init-img FILE to remake it"
            )
        if notices is not None:
            notices.extend(said)
        return request
    if first_error is not None:
        raise MetadataError(first_error)
    raise MetadataError("no generation metadata (Dream, sd-metadata, parameters or invokeai_metadata) in this PNG")


def _init_img_from_dream(request: Request, dream: str | None) -> Request:
    """InvokeAI 2.x's sd-metadata writer lost the init image's path (a missing comma in its source) while its Dream
    line kept `-I PATH`: take the path from there when that line describes the same image (same seed)."""
    if not dream:
        return request
    try:
        other = request_from_dream(dream)
    except (ValueError, TypeError, KeyError, AttributeError):
        return request
    if other.init_img and other.seed == request.seed:
        return request.replace(init_img=other.init_img)
    return request


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]


def _one_line_text(text: str) -> str:
    """Foreign prompts may span lines (A1111 allows it); a Request is one line, so line breaks become spaces and
    other control characters are dropped. Text that is already one clean line is returned exactly."""
    if control_character(text) is None:
        return text
    text = text.replace("\t", " ")  # a tab separates words like a space (dropping it glued them together)
    joined = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return "".join(c for c in joined if unicodedata.category(c) not in ("Cc", "Cs", "Zl", "Zp"))


def _opt_text(value: Any) -> str | None:
    """A path or name from metadata: one line of text or None. Never opened or checked — it is only text."""
    if value is None:
        return None
    return _one_line_text(str(value)) or None


def split_negative(prompt: str) -> tuple[str, str]:
    """InvokeAI 2.x's negative syntax: every ``[...]`` in the prompt is negative text, the rest is positive."""
    negatives = [m.strip() for m in _BRACKETS_RE.findall(prompt)]
    if not negatives:
        return prompt, ""
    positive = " ".join(_BRACKETS_RE.sub(" ", prompt).split())
    return positive, " ".join(n for n in negatives if n)


def _repack_prompt(value: Any) -> str:
    """2.x's prompt list back to text; several weighted parts become a compel ``.blend()``."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise MetadataError("prompt is neither text nor a list of {prompt, weight}")
    parts = [(str(p.get("prompt", "")), float(p.get("weight", 1.0))) for p in value]
    if len(parts) == 1 and parts[0][1] == 1.0:
        return parts[0][0]
    texts = ", ".join(json.dumps(text, ensure_ascii=False) for text, _ in parts)
    weights = ", ".join(f"{weight:g}" for _, weight in parts)
    return f"({texts}).blend({weights})"


def _sampler(name: Any, notices: list[str] | None = None) -> str | None:
    """Our sampler for a name in our spelling or A1111's (any case). An unknown one falls back to the default, and
    a notice says so: the fetched line is editable, but a silent swap would make a different image. None: the
    metadata names no sampler."""
    text = str(name or "").strip()
    if not text:
        return None
    if text.lower() in SAMPLERS:
        return text.lower()
    known = A1111_TO_SAMPLER.get(text.lower())
    if known is not None:
        return known
    if notices is not None:
        notices.append(
            f"the PNG's sampler {text!r} is not one invoke-repl has; the line uses {DEFAULT_SAMPLER} (edit --sampler)"
        )
    return None


def _variations(value: Any) -> tuple[tuple[int, float], ...]:
    if not value:
        return ()
    if isinstance(value, str):
        pairs = [item.split(":") for item in value.split(",") if item.strip()]
        return tuple((int(s), float(w)) for s, w in pairs)
    return tuple((int(v["seed"]), float(v["weight"])) for v in value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _build(source: str, **fields: Any) -> Request:
    try:
        return Request(**fields)
    except RequestError as exc:
        raise MetadataError(f"{source}: {exc}") from exc


def _invokeai2_extras(image: Mapping[str, Any], notices: list[str] | None) -> None:
    """Say which 2.x settings recorded in sd-metadata this tool will not apply, as the Dream reader does."""
    if notices is None:
        return
    steps = image.get("postprocessing")
    post = [
        _one_line_text(str(step["type"]))
        for step in (steps if isinstance(steps, list) else [])
        if isinstance(step, Mapping) and step.get("type")
    ]
    if _positive(image.get("facetool_strength")) and not any(p in ("gfpgan", "codeformer") for p in post):
        post.append(_one_line_text(str(image.get("facetool") or "face restoration")))
    if image.get("upscale") and "esrgan" not in post:
        post.append("esrgan")
    render = [name for name in ("perlin", "threshold") if _positive(image.get(name))]
    render += [name for name in ("seamless", "hires_fix") if image.get(name) is True]
    if isinstance(image.get("init_mask"), str) and image["init_mask"]:
        render.append("init_mask (inpainting)")
    if post:
        notices.append(
            f"dropped InvokeAI 2.x post-processing that invoke-repl does not have: {', '.join(dict.fromkeys(post))}"
            " (the line makes the image as it was before that)"
        )
    if render:
        notices.append(
            f"dropped InvokeAI 2.x settings that invoke-repl does not have: {', '.join(render)}"
            " (the image will differ from this one)"
        )


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def request_from_sd_metadata(meta: Mapping[str, Any], notices: list[str] | None = None) -> Request:
    """InvokeAI 2.x ``sd-metadata`` (``image``, a grid's ``images`` list, or the older flat layout), or ours."""
    if not isinstance(meta, Mapping):
        raise MetadataError("sd-metadata is not a JSON object")
    if isinstance(meta.get("image"), Mapping):
        image = meta["image"]
    elif isinstance(meta.get("images"), list) and meta["images"]:
        image = meta["images"][0]
    elif "prompt" in meta:
        image = meta
    else:
        raise MetadataError("sd-metadata has no image entry")
    text = _one_line_text(_repack_prompt(image.get("prompt", "")))
    if "negative_prompt" in image:  # ours: the negative is explicit, so unfold it exactly
        negative = _one_line_text(str(image["negative_prompt"] or ""))
        suffix = f" [{negative}]"
        if not negative:
            prompt = text
        elif text.endswith(suffix):
            prompt = text[: -len(suffix)]
        else:
            prompt = split_negative(text)[0]
    else:
        prompt, negative = split_negative(text)
    init_img = image.get("init_image_path") or image.get("init_img") or None
    strength = image.get("strength", image.get("strength_steps"))
    is_img2img = image.get("type") == "img2img" or init_img is not None
    model = meta.get("model_id") or None
    fields: dict[str, Any] = {
        "prompt": prompt,
        "negative": negative,
        "seed": _opt_int(image.get("seed")),
        "with_variations": _variations(image.get("variations")),
        "variation_amount": float(image.get("variation_amount", 0.0) or 0.0),
        "sampler": _sampler(image.get("sampler", image.get("sampler_name")), notices) or DEFAULT_SAMPLER,
        "width": _opt_int(image.get("width")),
        "height": _opt_int(image.get("height")),
        "fit": bool(image.get("fit", False)),
        "init_img": _opt_text(init_img),
        # 2.x lost the init path (a missing comma in its writer) but kept the strength: keep it for the user to
        # add -I to; a strength without -I is a valid, editable line
        "strength": float(strength) if is_img2img and strength is not None else None,
        "model": _opt_text(model),
    }
    if image.get("steps") is not None:
        fields["steps"] = int(image["steps"])
    if image.get("cfg_scale") is not None:
        fields["cfg_scale"] = float(image["cfg_scale"])
    request = _build("sd-metadata", **fields)
    _invokeai2_extras(image, notices)
    return request


# InvokeAI 2.x switches this tool does not have, as 2.x's `dream_prompt_str` writes them into Dream lines (its
# `ldm/invoke/args.py`, v2.2–2.3) and as its own parser takes them: name → how many values follow (0, 1, or "+" for
# one or more, up to the next switch). Post-processing acts on the finished image, so dropping it still makes the
# image 2.x made before it; the rest change the image itself.
_INVOKEAI2_POSTPROCESSING: Mapping[str, int | str] = {
    "-G": 1, "--facetool_strength": 1, "--gfpgan_strength": 1, "-ft": 1, "--facetool": 1,
    "-cf": 1, "--codeformer_fidelity": 1, "-U": "+", "--upscale": "+", "--save_original": 0, "-save_orig": 0,
    "--embiggen": "+", "-embiggen": "+", "--embiggen_tiles": "+", "-embiggen_tiles": "+",
    "--embiggen_strength": 1, "-embiggen_strength": 1, "-c": "+", "--outcrop": "+", "-D": "+",
    "--out_direction": "+", "--new_prompt": 1, "--force_outpaint": 0, "--seam_size": 1, "--seam_blur": 1,
    "--seam_strength": 1, "--seam_steps": 1, "--tile_size": 1,
}  # fmt: skip
_INVOKEAI2_RENDERING: Mapping[str, int | str] = {
    "--perlin": 1, "--threshold": 1, "--karras_max": 1, "--seamless": 0, "--seamless_axes": 1, "--hires_fix": 0,
    "-M": 1, "--init_mask": 1, "--init_color": 1, "--invert_mask": 0, "-r": 1, "--inpaint_replace": "?",
    "-tm": "+", "--text_mask": "+", "-x": 0, "--skip_normalize": 0,
}  # fmt: skip
_INVOKEAI2_QUIET: Mapping[str, int | str] = {
    "-t": 0, "--log_tokenization": 0, "-i": 0, "--individual": 0, "--fnformat": 1, "--save_intermediates": 1,
    "-z": 1, "--png_compression": 1, "--use_mps_noise": 0, "-F": 0, "--full_precision": 0,
}  # fmt: skip


_INVOKEAI2_SWITCHES: Mapping[str, tuple[str, int | str]] = {
    **{name: ("post", arity) for name, arity in _INVOKEAI2_POSTPROCESSING.items()},
    **{name: ("render", arity) for name, arity in _INVOKEAI2_RENDERING.items()},
    **{name: ("quiet", arity) for name, arity in _INVOKEAI2_QUIET.items()},
}
_SWITCH_WORD = re.compile(r"--?[A-Za-z]")
# Short switches that take a value may carry it attached, as argparse allows and InvokeAI 1.x wrote them
# (`-G0.8`, `-U2 0.75`, `-ftgfpgan`, `-cf0.5`); longest first, so `-cf0.5` is not read as `-c` + `f0.5`. None of
# them is a prefix of this tool's own legacy letters (`-f0.7` is strength, `-ft…` is not).
_ATTACHABLE = sorted(
    (name for name, (_, arity) in _INVOKEAI2_SWITCHES.items() if not name.startswith("--") and arity != 0),
    key=len,
    reverse=True,
)


def _invokeai2_switch(word: str) -> tuple[str, bool] | None:
    """(the 2.x switch `word` is, whether its value is attached to it), or None for a word of ours."""
    if word in _INVOKEAI2_SWITCHES:
        return word, False
    for name in _ATTACHABLE:
        if word.startswith(name) and len(word) > len(name):
            return name, True
    return None
_NUMBER_WORD = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def _without_invokeai2_switches(line: str, notices: list[str] | None) -> str:
    """A 2.x Dream line with the switches this tool lacks taken out, each kind said in one notice."""
    from invoke_repl.commands import words_after_prompt

    text, spans = words_after_prompt(line)
    words = [text[a:b] for a, b in spans]
    dropped: dict[str, list[str]] = {"post": [], "render": [], "quiet": []}
    cuts: list[tuple[int, int]] = []
    index = 0
    while index < len(words):
        found = _invokeai2_switch(words[index])
        if found is None:
            index += 1
            continue
        kind, arity = _INVOKEAI2_SWITCHES[found[0]]
        last = index
        if found[1] and arity != "+":
            pass  # the value is attached: nothing follows
        elif arity == 1:
            last = min(index + 1, len(words) - 1)
        elif arity == "?":  # 2.x writes --inpaint_replace bare, though its parser wants a number
            if last + 1 < len(words) and _NUMBER_WORD.fullmatch(words[last + 1]):
                last += 1
        elif arity == "+":
            while last + 1 < len(words) and not _SWITCH_WORD.match(words[last + 1]):
                last += 1
        dropped[kind].append(" ".join(words[index : last + 1]))
        cuts.append((spans[index][0], spans[last][1]))
        index = last + 1
    for start, end in reversed(cuts):
        text = text[:start].rstrip() + " " + text[end:].lstrip()
    if notices is not None and dropped["post"]:
        notices.append(
            f"dropped InvokeAI 2.x post-processing that invoke-repl does not have: {' '.join(dropped['post'])}"
            " (the line makes the image as it was before that)"
        )
    if notices is not None and dropped["render"]:
        notices.append(
            f"dropped InvokeAI 2.x settings that invoke-repl does not have: {' '.join(dropped['render'])}"
            " (the image will differ from this one)"
        )
    return text.strip()


def request_from_dream(line: str, notices: list[str] | None = None) -> Request:
    """A ``Dream`` line: the command in the legacy dialect (ours or InvokeAI 2.x's; the parser takes ``[negative]``
    out of the prompt itself). InvokeAI 2.x-only switches (face restoration, upscaling, perlin noise…) are taken
    out with a notice, so a 2.x PNG whose only metadata is its Dream line still fetches."""
    from invoke_repl.commands import parse

    parsed = parse(_without_invokeai2_switches(_one_line_text(line), notices), "legacy")
    if not isinstance(parsed, Request):
        raise MetadataError("Dream is not a generation command")
    # Where the image was written is not how it was made (sd-metadata does not record it either); a fetched
    # `-o /home/someone/…` from a shared PNG would write there.
    return parsed.replace(outdir=None) if parsed.outdir else parsed


def parse_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """Split A1111 ``parameters`` into (prompt, negative prompt, settings), the way A1111's own parser does.

    The last line holds the settings when it has at least three ``Key: value`` pairs; earlier lines are the prompt
    until a line starting with ``Negative prompt:``, after which they are the negative prompt. Quoted values are
    JSON strings.
    """
    lines = text.strip("\n").split("\n")
    settings_line = lines[-1] if lines else ""
    if len(_PARAM_RE.findall(settings_line)) >= 3:
        lines = lines[:-1]
    else:
        settings_line = ""
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        if not in_negative and line.startswith(NEGATIVE_LABEL):
            in_negative = True
            line = line[len(NEGATIVE_LABEL) :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    settings: dict[str, str] = {}
    for key, value in _PARAM_RE.findall(settings_line):
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = json.loads(value)
        settings[key.strip()] = value
    return "\n".join(prompt_lines), "\n".join(negative_lines), settings


# AUTOMATIC1111's own weights, `(word:1.3)`: compel reads them as the text "word:1.3" at weight 1.1, so the
# weight is lost. (A1111's `[word]` de-emphasis is not flagged: brackets are also this tool's own negative-prompt
# syntax, which its own parameters chunks carry.)
_A1111_WEIGHTS = re.compile(r"\([^()]*:\s*[-+]?[0-9.]+\s*\)")


def request_from_parameters(text: str, notices: list[str] | None = None) -> Request:
    """An AUTOMATIC1111 ``parameters`` chunk (ours or A1111's) as a Request."""
    prompt, negative, s = parse_parameters(text)
    if "Steps" not in s and "Seed" not in s:
        raise MetadataError("parameters has no Steps/Seed settings line")
    said: list[str] = []
    if re.search(r"<(?:lora|lyco|hypernet):", prompt, re.IGNORECASE) or "Lora hashes" in s:
        said.append("the PNG's prompt uses LoRAs (<lora:…>), which invoke-repl does not load; remove them to run it")
    if _A1111_WEIGHTS.search(prompt) or _A1111_WEIGHTS.search(negative):
        said.append(
            "the PNG's prompt uses AUTOMATIC1111's weights ((word:1.3)), which invoke-repl reads as plain text; "
            "write them as compel does ((word)1.3) to keep them"
        )
    sampler = _sampler(s.get("Sampler"), said)
    schedule = str(s.get("Schedule type", "")).strip()
    if sampler is not None and schedule.lower() not in ("", "automatic", "uniform"):
        if schedule.lower() == "karras" and f"{sampler}_karras" in SAMPLERS:
            sampler = f"{sampler}_karras"
        elif not sampler.endswith("_karras") or schedule.lower() != "karras":
            said.append(f"the PNG's schedule type {schedule!r} is not available for {sampler}; the line uses its own")
    sampler = sampler or DEFAULT_SAMPLER
    width = height = None
    if "Size" in s:
        w, _, h = s["Size"].lower().partition("x")
        width, height = _floor8(int(w), "width", said), _floor8(int(h), "height", said)
    variations: tuple[tuple[int, float], ...] = ()
    if "Variations" in s:
        variations = _variations(s["Variations"])
    elif "Variation seed" in s:
        variations = ((int(s["Variation seed"]), float(s.get("Variation seed strength", "0"))),)
    strength = s.get("Denoising strength")
    if any(key.startswith("Hires") for key in s):
        strength = None  # A1111's hires fix also writes a denoising strength, for its second pass: not img2img
    _a1111_extras(s, said)
    fields: dict[str, Any] = {
        "prompt": _one_line_text(prompt),
        "negative": _one_line_text(negative),
        "sampler": sampler,
        "strength": float(strength) if strength is not None else None,
        "width": width,
        "height": height,
        "with_variations": variations,
        "model": _one_line_text(s.get("Model", "")) or None,
    }
    if "Steps" in s:
        fields["steps"] = int(s["Steps"])
    if "Seed" in s:
        fields["seed"] = int(s["Seed"])
    if "CFG scale" in s:
        cfg = float(s["CFG scale"])
        if not math.isfinite(cfg):
            raise MetadataError(f"CFG scale is not a number: {s['CFG scale']}")
        fields["cfg_scale"] = cfg
    request = _build("parameters", **fields)
    if notices is not None:
        notices.extend(said)
    return request


def _a1111_extras(s: Mapping[str, str], said: list[str]) -> None:
    """Say which AUTOMATIC1111 settings that change the image are left out (key names as A1111 1.x writes them
    in `parameters`), as `_invokeai2_extras` does for 2.x: a hires-fixed 1024×1536 image otherwise came back as a
    silent 512×768 line."""
    dropped: list[str] = []
    shown = {key: _one_line_text(value)[:40] for key, value in s.items()}  # a foreign PNG's text, on our terminal
    hires = [f"{key} {shown[key]}" for key in ("Hires upscale", "Hires resize", "Hires steps") if key in s]
    if any(key.startswith("Hires") for key in s):
        dropped.append(f"hires fix ({', '.join(hires)})" if hires else "hires fix")
    if s.get("Clip skip", "1").strip() not in ("", "1"):
        dropped.append(f"Clip skip {shown['Clip skip'].strip()}")
    if s.get("Tiling", "").strip().lower() == "true":
        dropped.append("Tiling")
    dropped += [key for key in ("Refiner", "Face restoration") if key in s]
    if any(key in s for key in ("Mask blur", "Inpaint area", "Masked content")):
        dropped.append("inpainting (Mask blur, Inpaint area)")
    dropped += [name for name in ("ADetailer", "ControlNet") if any(key.startswith(name) for key in s)]
    if dropped:
        said.append(
            f"dropped AUTOMATIC1111 settings that invoke-repl does not have: {', '.join(dropped)}"
            " (the image will differ from this one)"
        )


def _invokeai3_extras(meta: Mapping[str, Any], said: list[str]) -> None:
    """The same for InvokeAI 3.x/4.x's metadata fields (names from its core metadata invocation)."""
    model = meta.get("model")
    base = str((model.get("base_model") or model.get("base") or "") if isinstance(model, Mapping) else "")
    mode = str(meta.get("generation_mode") or "")
    if mode.startswith("sdxl") or base.lower() not in ("", "sd-1", "sd-2", "any"):
        said.append(
            f"the PNG was made by a {base or 'sdxl'!r} model, which invoke-repl does not run; "
            "the line needs an SD 1.x/2.x one"
        )
    dropped: list[str] = []
    if "inpaint" in mode or "outpaint" in mode:
        dropped.append(f"generation_mode {mode!r} (its mask)")
    dropped += [f"{key} {meta[key]}" for key in ("clip_skip", "cfg_rescale_multiplier") if _positive(meta.get(key))]
    dropped += [key for key in ("seamless_x", "seamless_y") if meta.get(key) is True]
    if meta.get("hrf_enabled") is True:
        strength = meta.get("hrf_strength")
        dropped.append(f"hires fix (hrf_strength {strength})" if _positive(strength) else "hires fix")
    if dropped:
        said.append(
            f"dropped InvokeAI settings that invoke-repl does not have: {', '.join(dropped)}"
            " (the image will differ from this one)"
        )


def _floor8(value: int, name: str, said: list[str]) -> int:
    """Other tools allow sizes that are not multiples of 8 (A1111's sliders step by 8 but its fields do not);
    a typed line floors those with a notice, and so does a fetched one."""
    if value <= 0 or value % 8 == 0:
        return value
    floored = max(8, value // 8 * 8)
    said.append(f"the PNG's {name} {value} becomes {floored} (a multiple of 8)")
    return floored


def request_from_invokeai_metadata(meta: Mapping[str, Any], notices: list[str] | None = None) -> Request:
    """InvokeAI 3.x+'s ``invokeai_metadata`` JSON (``positive_prompt``, ``negative_prompt``, ``scheduler``,
    ``model.model_name`` in 3.x or ``model.name`` later, ``strength`` and ``init_image`` for img2img). The init
    image is a name in InvokeAI's own gallery, kept as text for the user to point at the file. LoRAs, ControlNets
    and SDXL's style prompts have no counterpart here, and are said to be dropped."""
    if not isinstance(meta, Mapping) or "positive_prompt" not in meta:
        raise MetadataError("invokeai_metadata has no positive_prompt")
    said: list[str] = []
    scheduler = str(meta.get("scheduler") or "").strip()
    sampler = INVOKEAI3_SCHEDULERS.get(scheduler.lower())
    if scheduler and sampler is None:
        said.append(f"the PNG's scheduler {scheduler!r} is not one invoke-repl has; the line uses {DEFAULT_SAMPLER}")
    dropped = [key for key in ("loras", "controlnets", "ipAdapters", "t2iAdapters") if meta.get(key)]
    if meta.get("positive_style_prompt"):
        dropped.append("positive_style_prompt")
    if dropped:
        said.append(f"the PNG's {', '.join(dropped)} have no counterpart in invoke-repl and are left out")
    _invokeai3_extras(meta, said)
    model = meta.get("model")
    model_name = (model.get("model_name") or model.get("name")) if isinstance(model, Mapping) else model
    img2img = str(meta.get("generation_mode", "")).endswith("img2img") or meta.get("init_image") is not None
    init = meta.get("init_image")
    if isinstance(init, Mapping):
        init = init.get("image_name")
    fields: dict[str, Any] = {
        "prompt": _one_line_text(str(meta.get("positive_prompt") or "")),
        "negative": _one_line_text(str(meta.get("negative_prompt") or "")),
        "seed": _opt_int(meta.get("seed")),
        "sampler": sampler or DEFAULT_SAMPLER,
        "width": None if meta.get("width") is None else _floor8(int(meta["width"]), "width", said),
        "height": None if meta.get("height") is None else _floor8(int(meta["height"]), "height", said),
        "init_img": _opt_text(init) if img2img else None,
        "strength": float(meta["strength"]) if img2img and meta.get("strength") is not None else None,
        "model": _opt_text(model_name),
    }
    if meta.get("steps") is not None:
        fields["steps"] = int(meta["steps"])
    if meta.get("cfg_scale") is not None:
        fields["cfg_scale"] = float(meta["cfg_scale"])
    request = _build(INVOKEAI3_KEY, **fields)
    if notices is not None:
        notices.extend(said)
    return request
