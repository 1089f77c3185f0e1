"""The one noun that flows through invoke-repl: a frozen, validated generation request.

A `Request` is built by the parser (`commands.parse`), resolved by the session (`-1` references, the model's
native size) and by the generator (the random seed, per-image seeds and variation seeds), and recorded in every
image's metadata. Validation lives here so every producer — a typed line, `!fetch`ed metadata, a test — gets
the same rules and the same one-line messages. This module does no I/O and imports nothing heavy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction

# Sampler names the user may type. The table that maps them to diffusers schedulers lives in
# generator/core.py (it imports torch); this list is the contract the parser and completion use.
SAMPLERS: tuple[str, ...] = (
    "ddim",
    "plms",
    "k_lms",
    "k_lms_karras",
    "k_dpm_2",
    "k_dpm_2_karras",
    "k_dpm_2_a",
    "k_dpm_2_a_karras",
    "k_dpmpp_2",
    "k_dpmpp_2_karras",
    "k_dpmpp_2_a",
    "k_dpmpp_2_a_karras",
    "k_euler",
    "k_euler_karras",
    "k_euler_a",
    "k_heun",
    "k_heun_karras",
)

DEFAULT_STEPS = 50
DEFAULT_CFG = 7.5
DEFAULT_SAMPLER = "k_lms"
# InvokeAI 2.x's default when -I is given without -f; 0 stays 0 (2.3 silently turned 0 into 0.75).
DEFAULT_STRENGTH = 0.75
MAX_SEED = 2**32 - 1
PREVIOUS = -1  # `--seed -1` / `-I -1`: the previous image's seed / file, resolved by the session
PREVIOUS_IMAGE = "-1"

MIN_STEPS, MAX_STEPS = 1, 1000
MIN_SIZE, MAX_SIZE = 8, 4096
MAX_ITERATIONS = 1000
MAX_CFG = 100.0
MAX_PROMPT_CHARS = 4000
MAX_PROMPT_NESTING = 16


class RequestError(ValueError):
    """A request that cannot run; the message is one line, shown to the user as is."""


@dataclass(frozen=True)
class Request:
    prompt: str
    negative: str = ""
    steps: int = DEFAULT_STEPS
    seed: int | None = None  # None: drawn at random; -1: the previous image's seed
    strength: float | None = None  # None: DEFAULT_STRENGTH when there is an init image
    init_img: str | None = None  # a path as typed, or "-1" for the previous output
    sampler: str = DEFAULT_SAMPLER
    width: int | None = None  # None: the model's native size
    height: int | None = None
    cfg_scale: float | None = None  # None: the model's default (its catalogue cfg_scale, else DEFAULT_CFG)
    iterations: int = 1
    grid: bool = False
    variation_amount: float = 0.0
    with_variations: tuple[tuple[int, float], ...] = field(default=())
    fit: bool = False
    outdir: str | None = None
    save_steps: bool = False
    model: str | None = None

    def __post_init__(self) -> None:
        validate(self)

    @property
    def is_img2img(self) -> bool:
        return self.init_img is not None

    @property
    def effective_strength(self) -> float | None:
        """Strength the generator uses: None for txt2img, the default when -I came without one."""
        if not self.is_img2img:
            return None
        return DEFAULT_STRENGTH if self.strength is None else self.strength

    @property
    def steps_taken(self) -> int:
        strength = self.effective_strength
        return self.steps if strength is None else img2img_steps(self.steps, strength)

    def replace(self, **changes: object) -> Request:
        return replace(self, **changes)


def img2img_steps(steps: int, strength: float) -> int:
    """⌊steps × strength⌋ computed on the decimal the user typed: 0.29 × 100 is 29, not 28.999…→28."""
    return math.floor(Fraction(repr(float(strength))) * steps)


def _finite(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {value!r}")


def _integer(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {low} and {high}, got {value}")


def _fraction(name: str, value: float) -> None:
    _finite(name, value)
    if not 0.0 <= value <= 1.0:
        raise RequestError(f"{name} must be between 0 and 1, got {_exactly(value)}")


def _exactly(value: float) -> str:
    """A refused number as it was: `{:g}` showed 1.0000001 as "got 1", a value inside the range."""
    return repr(float(value)).removesuffix(".0")


def control_character(text: str) -> str | None:
    """The first character that cannot live inside one command line, or None.

    Every request must print as one pasteable line (`commands.canonical`), and the REPL splits input on the same
    characters `str.splitlines` does, so control characters, line/paragraph separators and lone surrogates (which
    cannot even be printed to a UTF-8 terminal) are refused up front rather than breaking a log line later.
    """
    found = _UNLINEABLE.search(text)
    return found.group() if found else None


# The Unicode categories Cc, Cs, Zl and Zp as one character class: Cc and Cs are fixed ranges by the standard's
# stability policy, Zl and Zp one character each (a test compares it with unicodedata over every code point). A
# regex scan is ~50× faster than asking unicodedata.category character by character, which was a third of the
# time spent numbering a history file.
_UNLINEABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")


def _one_line(name: str, value: str) -> None:
    bad = control_character(value)
    if bad is not None:
        raise RequestError(f"{name} contains a control character (U+{ord(bad):04X}); a command is one line of text")


def _prompt_text(name: str, value: str) -> None:
    """Bounds that keep prompt weighting (compel) fast and finite.

    compel's parser is roughly quadratic in bracket count (1,200 `[` took 4.5 s here) and recursive in nesting
    depth (a few hundred `(` raised RecursionError, per the robustness fuzzing of 2026-11-27; 32 did inside
    pytest's deeper stack, 2026-12-03), so nesting stops at 16, which parses in 0.02 s (conditioning's packrat
    note). Real prompts are far inside both limits: 77-token chunks of CLIP hold ~300 characters each, so 4,000
    characters is ~13 chunks. An escaped bracket (`\\(`) is text, not nesting.
    """
    _one_line(name, value)
    if len(value) > MAX_PROMPT_CHARS:
        raise RequestError(f"{name} is {len(value):,} characters long; the limit is {MAX_PROMPT_CHARS:,}")
    depth = deepest = 0
    escaped = False
    for char in value:
        if escaped:
            escaped = False
            continue
        if char == "\\":
            escaped = True
        elif char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}" and depth:
            depth -= 1
    if deepest > MAX_PROMPT_NESTING:
        raise RequestError(f"{name} nests brackets {deepest} deep; the limit is {MAX_PROMPT_NESTING}")


def _text(name: str) -> Callable[[object], None]:
    def check(value: object) -> None:
        if not isinstance(value, str):
            raise RequestError("prompt and negative prompt must be text")
        _prompt_text(name, value)

    return check


def _seed(value: object) -> None:
    if value is not None and value != PREVIOUS:
        _integer("seed", value, 0, MAX_SEED)


def _strength(value: object) -> None:
    if value is not None:
        _fraction("strength", value)  # type: ignore[arg-type]


def _init_img(value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise RequestError("init image must be a file path (or -1 for the previous image)")
    if value is not None:
        _one_line("init image path", value)  # type: ignore[arg-type]


def _sampler(value: object) -> None:
    if value not in SAMPLERS:
        raise RequestError(f"unknown sampler {value!r}; choose one of: {', '.join(SAMPLERS)}")


def _size(name: str) -> Callable[[object], None]:
    def check(value: object) -> None:
        if value is not None:
            _integer(name, value, MIN_SIZE, MAX_SIZE)
            if value % 8:  # type: ignore[operator]
                raise RequestError(f"{name} must be a multiple of 8, got {value}")

    return check


def _cfg_scale(value: object) -> None:
    if value is not None:
        _finite("cfg scale", value)  # type: ignore[arg-type]
        if not 0.0 <= value <= MAX_CFG:  # type: ignore[operator]
            raise RequestError(f"cfg scale must be between 0 and {MAX_CFG:g}, got {_exactly(value)}")  # type: ignore[arg-type]


def _with_variations(value: object) -> None:
    if not isinstance(value, tuple):
        raise RequestError("with-variations must be a tuple of (seed, weight) pairs")
    for pair in value:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise RequestError("with-variations must be seed:weight pairs")
        _integer("variation seed", pair[0], 0, MAX_SEED)
        _fraction("variation weight", pair[1])


def _flag(name: str) -> Callable[[object], None]:
    def check(value: object) -> None:
        if not isinstance(value, bool):
            raise RequestError(f"{name} must be true or false")

    return check


def _model(value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise RequestError("model name must not be empty")
    if value is not None:
        _one_line("model name", value)  # type: ignore[arg-type]


def _outdir(value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):  # `-o " "` made a folder named " "
        raise RequestError("output directory must not be empty")
    if value is not None:
        _one_line("output directory", value)  # type: ignore[arg-type]


# One rule per field, each independent of the others, in the order their errors are reported. Kept per field so
# the parser can check the one value it just read (`field_error`) without building and checking a whole Request:
# that was 5 full validations per typical line, 60% of the time spent numbering a history file.
FIELD_CHECKS: dict[str, Callable[[object], None]] = {
    "prompt": _text("prompt"),
    "negative": _text("negative prompt"),
    "steps": lambda value: _integer("steps", value, MIN_STEPS, MAX_STEPS),
    "seed": _seed,
    "strength": _strength,
    "init_img": _init_img,
    "sampler": _sampler,
    "width": _size("width"),
    "height": _size("height"),
    "cfg_scale": _cfg_scale,
    "iterations": lambda value: _integer("iterations", value, 1, MAX_ITERATIONS),
    "variation_amount": lambda value: _fraction("variation amount", value),  # type: ignore[arg-type]
    "with_variations": _with_variations,
    "grid": _flag("grid"),
    "fit": _flag("fit"),
    "save_steps": _flag("save_steps"),
    "model": _model,
    "outdir": _outdir,
}


def validate(r: Request) -> None:
    """Raise RequestError with a specific one-line message for the first thing wrong with `r`."""
    for name, check in FIELD_CHECKS.items():
        check(getattr(r, name))


def field_error(name: str, value: object) -> str | None:
    """The message `validate` gives for `value` in field `name`, or None when it fits."""
    try:
        FIELD_CHECKS[name](value)
    except RequestError as exc:
        return str(exc)
    return None


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Request))
