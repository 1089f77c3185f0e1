"""The dream-line language: one typed, pasted or scripted line → a `Request`, a `!command`, or nothing.

InvokeAI's classic CLI ran lines through shlex and argparse, so an apostrophe in a prompt broke the line and a typo
killed the program. This parser is hand-written for the cases people actually type: a prompt first (quoted or bare,
apostrophes welcome), `[...]` negative prompts, then switches with attached or separate values. Everything it
cannot use becomes a one-line `ParseError` that says what was wrong and what to type instead.

The two dialects (`guide`: -S steps, -s strength; `legacy`: InvokeAI 2.x's -S seed, -s steps) differ only in the
`SWITCHES` table below, which is data: parsing, help, completion, `canonical` and `legacy_line` all read it, so a
switch is described in exactly one place. This module does no I/O and never imports torch.
"""

from __future__ import annotations

import difflib
import math
import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from invoke_repl.request import (
    DEFAULT_CFG,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    FIELD_NAMES,
    MAX_SEED,
    MAX_SIZE,
    MAX_STEPS,
    MIN_SIZE,
    MIN_STEPS,
    SAMPLERS,
    Request,
    RequestError,
    control_character,
    field_error,
)

DIALECTS: tuple[str, ...] = ("guide", "legacy")


class ParseError(ValueError):
    """A line the parser cannot use; the message is one line, shown to the user as is."""


@dataclass(frozen=True)
class BangCommand:
    """A `!command` line: `name` without the `!` (`!12` → name "recall", args "12"), `args` the rest, stripped."""

    name: str
    args: str


# --------------------------------------------------------------------------------------------- the switch table
@dataclass(frozen=True, eq=False)
class Switch:
    """One request field as the user can type it.

    `shorts` maps each dialect to the short letters that mean this field there; only -S and -s differ. `kind` says
    how a value is read (and what the completer offers): int, float, size, text, path, image, sampler, model, flag,
    variations. `expects` finishes "-S expects …" in type errors; `what` and `noun` name the field in the messages
    that point at the other dialect.
    """

    field: str
    longs: tuple[str, ...]
    shorts: Mapping[str, tuple[str, ...]]
    kind: str
    metavar: str
    expects: str
    what: str
    noun: str
    help: str

    @property
    def long(self) -> str:
        return self.longs[0]


def _both(*letters: str) -> dict[str, tuple[str, ...]]:
    return {dialect: letters for dialect in DIALECTS}


# Table order is the canonical line's field order.
SWITCHES: tuple[Switch, ...] = (
    Switch(
        "steps",
        ("--steps",),
        {"guide": ("-S",), "legacy": ("-s",)},
        "int",
        "N",
        "a whole number of steps",
        f"a step count ({MIN_STEPS}–{MAX_STEPS})",
        "steps",
        f"denoising steps (default {DEFAULT_STEPS})",
    ),
    Switch(
        "seed",
        ("--seed",),
        {"guide": (), "legacy": ("-S",)},
        "int",
        "SEED",
        f"a whole-number seed (0–{MAX_SEED}, or -1 for the previous image's)",
        f"a seed (0–{MAX_SEED}, or -1)",
        "seed",
        "random seed; -1 = the previous image's seed (default: random, and recorded)",
    ),
    Switch(
        "strength",
        ("--strength",),
        {"guide": ("-s", "-f"), "legacy": ("-f",)},
        "float",
        "X",
        "a strength between 0 and 1",
        "a strength (0–1)",
        "strength",
        "img2img: how much to change the init image, 0–1 (default 0.75 with -I)",
    ),
    Switch(
        "init_img",
        ("--init-img",),
        _both("-I"),
        "image",
        "FILE",
        "an image file (or -1 for the previous output)",
        "an image file",
        "init image",
        "img2img: start from this image; -1 = the previous output",
    ),
    Switch(
        "sampler",
        ("--sampler",),
        _both("-A", "-m"),
        "sampler",
        "NAME",
        "a sampler name",
        "a sampler",
        "sampler",
        f"sampler (default {DEFAULT_SAMPLER}; the list is below)",
    ),
    Switch(
        "width",
        ("--width",),
        _both("-W"),
        "size",
        "PX",
        "a width in pixels",
        f"a width ({MIN_SIZE}–{MAX_SIZE})",
        "width",
        "image width, a multiple of 8 (default: the model's native size; img2img: the init image's)",
    ),
    Switch(
        "height",
        ("--height",),
        _both("-H"),
        "size",
        "PX",
        "a height in pixels",
        f"a height ({MIN_SIZE}–{MAX_SIZE})",
        "height",
        "image height, a multiple of 8 (default: the model's native size; img2img: the init image's)",
    ),
    Switch(
        "cfg_scale",
        ("--cfg-scale",),
        _both("-C"),
        "float",
        "X",
        "a number (classifier-free guidance scale)",
        "a cfg scale",
        "cfg scale",
        f"how closely to follow the prompt (default: the model's, else {DEFAULT_CFG:g})",
    ),
    Switch(
        "negative",
        ("--negative",),
        _both(),
        "text",
        "TEXT",
        "the negative prompt text",
        "a negative prompt",
        "negative prompt",
        "what the image should not show (also: [words] inside the prompt)",
    ),
    Switch(
        "iterations",
        ("--iterations",),
        _both("-n"),
        "int",
        "N",
        "a whole number of images",
        "a number of images",
        "iterations",
        "images to make, seeds S, S+1, … (default 1)",
    ),
    Switch("grid", ("--grid",), _both("-g"), "flag", "", "", "", "grid", "also save the images as one grid"),
    Switch(
        "variation_amount",
        ("--variation-amount",),
        _both("-v"),
        "float",
        "X",
        "a variation amount between 0 and 1",
        "a variation amount (0–1)",
        "variation amount",
        "make variations of the seed's image, 0–1",
    ),
    Switch(
        "with_variations",
        ("--with-variations",),
        _both("-V"),
        "variations",
        "SEED:W,…",
        "seed:weight pairs like 1234:0.1,5678:0.2",
        "seed:weight pairs",
        "with-variations",
        "blend in the noise of these seeds with these weights",
    ),
    Switch("fit", ("--fit",), _both("-T"), "flag", "", "", "", "fit", "img2img: resize the init image to fit W×H"),
    Switch(
        "save_steps",
        ("--save-steps",),
        _both(),
        "flag",
        "",
        "",
        "",
        "save steps",
        "also save a strip with a preview of every step actually taken",
    ),
    Switch(
        "outdir",
        ("--outdir",),
        _both("-o"),
        "path",
        "DIR",
        "a directory",
        "a directory",
        "output directory",
        "write this line's images here",
    ),
    Switch(
        "model",
        ("--model",),
        _both(),
        "model",
        "NAME",
        "a model name (see !models)",
        "a model name",
        "model",
        "use this model for this line only",
    ),
)

# The field order of InvokeAI 2.x's `Dream` strings, which legacy_line reproduces.
LEGACY_ORDER: tuple[str, ...] = (
    "steps",
    "seed",
    "width",
    "height",
    "cfg_scale",
    "sampler",
    "strength",
    "init_img",
    "iterations",
    "grid",
    "variation_amount",
    "with_variations",
    "fit",
    "outdir",
    "save_steps",
    "model",
)

# Always printed in a canonical line, so it reads complete even at the defaults.
_ALWAYS = frozenset({"steps", "sampler", "cfg_scale"})

# InvokeAI 2.x switches that a pasted `Dream` line may carry but invoke-repl does not implement.
UNSUPPORTED: Mapping[str, str] = {
    "-G": "face restoration",
    "--gfpgan-strength": "face restoration",
    "--facetool": "face restoration",
    "--facetool-strength": "face restoration",
    "-U": "upscaling",
    "--upscale": "upscaling",
    "--embiggen": "upscaling",
    "-M": "inpainting masks",
    "--init-mask": "inpainting masks",
    "--text-mask": "inpainting masks",
    "--init-color": "colour matching",
    "--seamless": "seamless tiling",
    "--hires-fix": "high-resolution fix",
    "--perlin": "perlin noise",
    "--threshold": "thresholding",
    "-t": "token logging",
    "--log-tokenization": "token logging",
}

_BY_FIELD: Mapping[str, Switch] = {s.field: s for s in SWITCHES}
assert set(_BY_FIELD) == set(FIELD_NAMES) - {"prompt"}, "every Request field but the prompt needs a switch"


def _short_table(dialect: str) -> dict[str, Switch]:
    return {letter: s for s in SWITCHES for letter in s.shorts[dialect]}


_SHORT: Mapping[str, Mapping[str, Switch]] = {d: _short_table(d) for d in DIALECTS}
_LONG: Mapping[str, Switch] = {name: s for s in SWITCHES for name in s.longs}


def _check_dialect(dialect: str) -> None:
    if dialect not in DIALECTS:
        raise ParseError(f"unknown dialect {dialect!r}; choose {' or '.join(DIALECTS)}")


def switch_names(dialect: str = "guide") -> list[str]:
    """Every switch spelling the dialect accepts (short letters first), for completion."""
    _check_dialect(dialect)
    return sorted(_SHORT[dialect], key=lambda s: (s.lower(), s)) + sorted(_LONG)


def switches_for(kind: str, dialect: str = "guide") -> tuple[str, ...]:
    """Switch spellings whose value has this kind (`sampler`, `image`, `model`, `path`, …), with `_` variants."""
    _check_dialect(dialect)
    found: list[str] = []
    for s in SWITCHES:
        if s.kind == kind:
            found += s.shorts[dialect]
            for name in s.longs:
                found += [name] if "-" not in name[2:] else [name, "--" + name[2:].replace("-", "_")]
    return tuple(found)


def sampler_switches(dialect: str = "guide") -> tuple[str, ...]:
    return switches_for("sampler", dialect)


def image_switches(dialect: str = "guide") -> tuple[str, ...]:
    return switches_for("image", dialect)


def model_switches(dialect: str = "guide") -> tuple[str, ...]:
    return switches_for("model", dialect)


# ---------------------------------------------------------------------------------------------- !commands
# name → (argument form, argument rule, one-line help). Rules: none, any, int?, text, dialect?.
_BANGS: Mapping[str, tuple[str, str, str]] = {
    "help": ("", "any", "commands and switches of the active dialect"),
    "history": ("[N]", "int?", "the last N command lines (all without N)"),
    "search": ("TEXT", "text", "history lines containing TEXT"),
    "fetch": ("FILE", "text", "a PNG's generation command into the input line, for editing"),
    "replay": ("FILE", "text", "run every line of FILE as a command"),
    "dialect": ("[NAME]", "dialect?", "show or set the switch dialect: guide (-S steps) or legacy (-S seed)"),
    "models": ("", "none", "list the models in models.yaml and which are loaded"),
    "switch": ("NAME", "text", "make NAME the active model"),
    "import_model": ("PATH [...]", "text", "add a model folder or checkpoint to models.yaml"),
    "edit_model": ("NAME k=v…", "text", "change a model's entry in models.yaml"),
    "del_model": ("NAME", "text", "remove a model from models.yaml"),
    "quit": ("", "none", "leave (Ctrl-D too)"),
    "exit": ("", "none", "same as !quit"),
}
_ALIASES: Mapping[str, str] = {"exit": "quit"}

BANG_COMMANDS: Mapping[str, str] = {name: help for name, (_, _, help) in _BANGS.items()}


def _parse_bang(text: str) -> BangCommand:
    match = re.match(r"!([A-Za-z_-]+|[0-9]+)(?=\s|$)", text)
    if match is None:
        word = text.split()[0]
        if word == "!":
            raise ParseError("! needs a command name; type !help for the list")
        raise ParseError(f"unknown command {_show(word)}; type !help for the list")
    word = match.group(1)
    args = text[match.end() :].strip()
    if word.isdigit():
        if args:
            raise ParseError(f"!{word} recalls history line {int(word)} and takes nothing after it")
        return BangCommand("recall", str(int(word)))
    name = word.lower().replace("-", "_")
    if name not in _BANGS:
        raise ParseError(f"unknown command !{word}{_did_you_mean(name, list(_BANGS), '!')}; type !help for the list")
    form, rule, _ = _BANGS[name]
    if rule == "none" and args:
        raise ParseError(f"!{name} takes nothing after it, got {_show(args)}")
    if rule == "text" and not args:
        raise ParseError(f"!{name} needs {form}")
    if rule == "int?" and args and not re.fullmatch(r"[0-9]{1,9}", args):
        raise ParseError(f"!{name} takes a number of lines, got {_show(args)}")
    if rule == "dialect?" and args and args not in DIALECTS:
        hint = _did_you_mean(args, list(DIALECTS), "")
        raise ParseError(f"unknown dialect {_show(args)}{hint}; choose {' or '.join(DIALECTS)}")
    return BangCommand(_ALIASES.get(name, name), args)


# --------------------------------------------------------------------------------------------------- lexing
# Opening quote → the quotes that may close it. Phones, word processors and chat apps turn typed quotes into
# typographic ones (“…”, ‘…’, „…“, «…»); a pasted “fire” -I “my drawing.png” means what "fire" -I "my drawing.png"
# means, where it was once a prompt with quote marks in it and a file name cut at its space.
QUOTE_PAIRS: Mapping[str, str] = {
    '"': '"',
    "'": "'",
    "\u201c": "\u201d\u201c",
    "\u201e": "\u201c\u201d",
    "\u2018": "\u2019\u2018",
    "\u00ab": "\u00bb",
}
_QUOTES = "".join(QUOTE_PAIRS)
TYPOGRAPHIC_QUOTES = _QUOTES[2:]
_TYPOGRAPHIC_CLOSERS = frozenset("".join(QUOTE_PAIRS[q] for q in TYPOGRAPHIC_QUOTES))
_ESCAPABLE = "\\\"'[]"
_INVOKE_PREFIX = re.compile(r"^(?:\(?[^\s\"'()]+\)?\s+)?invoke>\s*")
# What the REPL prints after an image and writes to invoke_log.txt: `[N] PATH: LINE`. Replaying the log, or
# pasting a transcript, runs LINE (before, "[1]" became a negative prompt and the path part of the prompt).
_RESULT_PREFIX = re.compile(r"^\[\d+\]\s+\S.*?\.png:\s+(?=\")", re.IGNORECASE)  # LINE starts with its quoted prompt
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NOT_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_MAX_DIGITS = 30


def _show(text: str, limit: int = 40) -> str:
    """A value quoted for a message, cut short so a 10,000-character value still gives a one-line error."""
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _did_you_mean(word: str, options: list[str], prefix: str) -> str:
    close = [o for o in options if o.startswith(word) and word] or difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _is_switch_at(s: str, i: int) -> bool:
    """`-X` or `--x` with an ASCII letter; `-1`, `-0.5`, `-` and `--` alone are values or prompt words."""
    if i >= len(s) or s[i] != "-":
        return False
    nxt = s[i + 1 : i + 2]
    if nxt == "-":
        nxt = s[i + 2 : i + 3]
    return nxt.isascii() and nxt.isalpha()


@dataclass
class _Token:
    text: str
    switch: bool = False
    value: str | None = None  # a value attached to a switch: -S10, --steps=10


def _scan_quoted(s: str, start: int, closes: Callable[[int], bool], where: str) -> tuple[list[tuple[str, bool]], int]:
    """Read a quoted string starting at s[start]; return its characters (char, escaped) and the index after it.

    The closing quote is the first unescaped matching quote for which `closes(index_after)` holds, so an
    apostrophe inside a single-quoted prompt (`'a dog's life' -S10`) does not end it early.
    """
    quote = s[start]
    closers = QUOTE_PAIRS[quote]
    chars: list[tuple[str, bool]] = []
    i = start + 1
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n and s[i + 1] in _ESCAPABLE:
            chars.append((s[i + 1], True))
            i += 2
            continue
        if c in closers and closes(i + 1):
            return chars, i + 1
        chars.append((c, False))
        i += 1
    raise ParseError(f"unclosed quote in {where} (the {quote} at column {start + 1})")


def _unescape(chars: list[tuple[str, bool]]) -> str:
    return "".join(c for c, _ in chars)


def _bare_chars(s: str) -> list[tuple[str, bool]]:
    chars: list[tuple[str, bool]] = []
    i = 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in _ESCAPABLE:
            chars.append((s[i + 1], True))
            i += 2
        else:
            chars.append((s[i], False))
            i += 1
    return chars


def _split_negative(chars: list[tuple[str, bool]]) -> tuple[str, str]:
    """Take `[...]` groups out of a prompt: (prompt, negative). Escaped brackets (`\\[`) stay in the prompt.

    Removing a group also removes one space beside it, so `a cat [blurry] on a mat` reads `a cat on a mat` and
    `"p [n]"` gives back exactly `p`; a group between two words leaves one space (`red[blurry]star`: `red star`).
    """
    out: list[str] = []
    groups: list[str] = []
    depth = 0
    group: list[str] = []
    drop_next_space = False
    for index, (c, escaped) in enumerate(chars):
        if not escaped and c == "[":
            if depth:
                group.append(c)
            depth += 1
            continue
        if not escaped and c == "]":
            if not depth:
                raise ParseError("unmatched ] in prompt; negative prompts go in [brackets], a literal ] is written \\]")
            depth -= 1
            if depth:
                group.append(c)
                continue
            groups.append("".join(group).strip())
            group = []
            after = chars[index + 1][0] if index + 1 < len(chars) else ""
            if out and out[-1].isspace() and (after == "" or after.isspace()):
                out.pop()
            elif not out:
                drop_next_space = True
            elif not out[-1].isspace() and after and not after.isspace():
                out.append(" ")  # `red[blurry]star` is "red star", not "redstar"
            continue
        if depth:
            group.append(c)
            continue
        if drop_next_space and c.isspace():
            drop_next_space = False
            continue
        drop_next_space = False
        out.append(c)
    if depth:
        raise ParseError("unclosed [ in prompt; close the negative prompt with ], or write a literal [ as \\[")
    return "".join(out), ", ".join(g for g in groups if g)


def _last_closers(s: str) -> dict[str, int]:
    """Typographic opener → the index of the last quote that can close it before a space or the end (-1 if none;
    a backslash never escapes a typographic quote). A value opening at or after it cannot close and is a bare
    word: finding that out by scanning from each opener took 54 s for a line of 10,000 `-I «a` (measured here),
    where this one pass is linear."""
    last = dict.fromkeys(TYPOGRAPHIC_QUOTES, -1)
    for j, c in enumerate(s):
        if c in _TYPOGRAPHIC_CLOSERS and (j + 1 == len(s) or s[j + 1].isspace()):
            for opener in TYPOGRAPHIC_QUOTES:
                if c in QUOTE_PAIRS[opener]:
                    last[opener] = j
    return last


def _read_value_word(s: str, i: int, last_closers: Mapping[str, int]) -> tuple[str, bool, int]:
    """A value right after `-X` or `--name=`: quoted or up to the next space. Returns (text, quoted, end).
    A typographic quote that nothing closes is part of a bare word (`-I “a` names the file `“a`)."""
    if i < len(s) and s[i] in _QUOTES and last_closers.get(s[i], len(s)) > i:
        chars, end = _scan_quoted(s, i, lambda j: j >= len(s) or s[j].isspace(), "a switch value")
        return _unescape(chars), True, end
    end = i
    while end < len(s) and not s[end].isspace():
        end += 1
    return s[i:end], False, end


def _tokens(s: str, i: int) -> list[_Token]:
    tokens: list[_Token] = []
    n = len(s)
    closers = _last_closers(s)
    while True:
        while i < n and s[i].isspace():
            i += 1
        if i >= n:
            return tokens
        if s[i] in _QUOTES and s[i] not in TYPOGRAPHIC_QUOTES:
            chars, i = _scan_quoted(s, i, lambda j: j >= n or s[j].isspace(), "a switch value")
            tokens.append(_Token(_unescape(chars)))
        elif _is_switch_at(s, i):
            if s[i + 1] == "-":
                match = re.compile(r"--[A-Za-z0-9_-]+").match(s, i)
                assert match is not None
                name, i = match.group(), match.end()
                if i < n and s[i] == "=":
                    value, _, i = _read_value_word(s, i + 1, closers)
                    tokens.append(_Token(name, switch=True, value=value))
                elif i < n and not s[i].isspace():
                    word, _, _ = _read_value_word(s, match.start(), closers)
                    raise ParseError(f"unknown switch {_show(word)}; long switches look like --steps 10 or --steps=10")
                else:
                    tokens.append(_Token(name, switch=True))
            else:
                name, i = s[i : i + 2], i + 2
                if i < n and not s[i].isspace():
                    value, _, i = _read_value_word(s, i, closers)
                    tokens.append(_Token(name, switch=True, value=value))
                else:
                    tokens.append(_Token(name, switch=True))
        else:
            value, _, i = _read_value_word(s, i, closers)
            tokens.append(_Token(value))


_DASHED = re.compile(r"(?<!\S)[\u2013\u2014]{1,2}([A-Za-z][\w-]*)")


def _typographic_dashes(text: str, notices: list[str] | None) -> str:
    """`–seed 5` → `--seed 5`: editors and chat apps turn a typed "--" into an en or em dash, and the line would
    otherwise run with that switch as part of a bare prompt (here: a random seed). Only a dash directly before a
    long switch's name counts, and never inside quotes (a quoted prompt, a quoted file name)."""
    if "\u2013" not in text and "\u2014" not in text:
        return text
    quoted = _quoted_spans(text)

    def fix(match: re.Match[str]) -> str:
        name = "--" + match.group(1).lower().replace("_", "-")
        if name not in _LONG or any(a <= match.start() < b for a, b in quoted):
            return match.group(0)
        if notices is not None:
            notices.append(f"read {match.group(0)} as {name} (a typographic dash)")
        return "--" + match.group(1)

    return _DASHED.sub(fix, text)


def _quoted_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each quoted stretch: a quote opens at the start of a word and closes at the next unescaped
    same quote (an unclosed one runs to the end)."""
    spans, i, n = [], 0, len(text)
    while i < n:
        if text[i] in _QUOTES and (i == 0 or text[i - 1].isspace()):
            j = i + 1
            while j < n and text[j] not in QUOTE_PAIRS[text[i]]:
                j += 2 if text[j] == "\\" else 1
            spans.append((i, j + 1))
            i = j + 1
        else:
            i += 1
    return spans


def _quoted_prompt(s: str) -> tuple[list[tuple[str, bool]], int]:
    """The characters of a prompt quoted from s[0], and the index after its closing quote."""
    n = len(s)

    def closes(j: int) -> bool:
        while j < n and s[j].isspace():
            j += 1
        return j >= n or _is_switch_at(s, j)

    try:
        return _scan_quoted(s, 0, closes, "prompt")
    except ParseError:
        # Is there a closing quote at all? Then the trouble is text between it and the first switch;
        # if not, this re-raises "unclosed quote in prompt".
        _, close = _scan_quoted(s, 0, lambda j: True, "prompt")
        stop = close
        while stop < n and not (_is_switch_at(s, stop) and s[stop - 1].isspace()):
            stop += 1
        extra = s[close:stop].strip()
        raise ParseError(
            f"unexpected text after the quoted prompt: {_show(extra)}; put the whole prompt inside the quotes"
        ) from None


def _split_prompt(s: str) -> tuple[str, str, int]:
    """The prompt part of a request line: (prompt, negative from brackets, index where the switches start)."""
    n = len(s)
    if s[0] in _QUOTES:
        try:
            chars, end = _quoted_prompt(s)
        except ParseError:
            # `“Fire” by night -S10`: typographic quotes that do not wrap the whole prompt stay part of a bare
            # prompt, as they always were; straight quotes keep their one-line error.
            if s[0] not in TYPOGRAPHIC_QUOTES:
                raise
        else:
            prompt, negative = _split_negative(chars)
            return prompt, negative, end
    end = 0
    while end < n and not (_is_switch_at(s, end) and (end == 0 or s[end - 1].isspace())):
        end += 1
    prompt, negative = _split_negative(_bare_chars(s[:end].strip()))
    return prompt, negative, end


def words_after_prompt(line: str) -> tuple[str, list[tuple[int, int]]]:
    """(the stripped line, the (start, end) of each word after its prompt), a quoted word being one word: for a
    reader that must take another tool's switches out of a line before `parse` sees it (InvokeAI 2.x's Dream
    lines carry face restoration and upscaling settings this tool does not have). Raises ParseError as `parse`."""
    text = line.strip()
    if not text:
        return text, []
    _, _, i = _split_prompt(text)
    closers = _last_closers(text)
    spans: list[tuple[int, int]] = []
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return text, spans
        _, _, end = _read_value_word(text, i, closers)
        spans.append((i, end))
        i = end


# -------------------------------------------------------------------------------------------------- values
class _BadValue(Exception):
    """A value of the wrong type; the caller phrases the message with the switch as typed."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


def _to_int(raw: str) -> int:
    text = raw.strip()
    if not _INT.fullmatch(text):
        raise _BadValue()
    if len(text.lstrip("+-")) > _MAX_DIGITS:
        raise _BadValue(f"far too large: {len(text)} digits")
    return int(text)


def _to_float(raw: str) -> float:
    text = raw.strip()
    if _NOT_FINITE.fullmatch(text):
        raise _BadValue("not a finite number")
    if not _FLOAT.fullmatch(text):
        raise _BadValue()
    value = float(text)
    if not math.isfinite(value):
        raise _BadValue("not a finite number")
    return value + 0.0  # -0 typed is 0: it was recorded as -0.0 in the line and the PNG's three metadata chunks


def _to_variations(raw: str) -> tuple[tuple[int, float], ...]:
    pairs = []
    for part in raw.split(","):
        seed, sep, weight = part.partition(":")
        if not sep:
            raise _BadValue("each variation needs a weight, seed:weight")
        pairs.append((_to_int(seed), _to_float(weight)))
    return tuple(pairs)


def _convert(switch: Switch, raw: str) -> object:
    if switch.kind in ("int", "size"):
        return _to_int(raw)
    if switch.kind == "float":
        return _to_float(raw)
    if switch.kind == "variations":
        return _to_variations(raw)
    if switch.kind == "sampler":
        return raw.strip().lower()
    return raw


def _read_value(switch: Switch, typed: str, raw: str, dialect: str, notices: list[str] | None) -> object:
    """Convert and range-check one value; a value that only fits the other dialect's meaning says so."""
    try:
        value = _convert(switch, raw)
    except _BadValue as bad:
        reason = f" ({bad.reason})" if bad.reason else ""
        problem = f"{typed} expects {switch.expects}, got {_show(raw)}{reason}"
    else:
        if switch.kind == "size" and isinstance(value, int) and MIN_SIZE <= value <= MAX_SIZE and value % 8:
            floored = value - value % 8
            if notices is not None:
                notices.append(f"{switch.noun} {value} is not a multiple of 8; using {floored}")
            value = floored
        found = field_error(switch.field, value)
        if found is None:
            return value
        problem = found
    if switch.kind == "sampler":
        hint = _did_you_mean(raw.strip().lower(), list(SAMPLERS), "")
        raise ParseError(f"unknown sampler {_show(raw)}{hint}; choose one of: {', '.join(SAMPLERS)}")
    other = _other_meaning(typed, dialect)
    if other is not None and _fits(other[1], raw):
        other_dialect, theirs = other
        raise ParseError(
            f"{typed}{raw} is not {switch.what}; in the {dialect} dialect {typed} is {switch.noun} — did you"
            f" mean the {other_dialect} dialect ({typed} {theirs.noun}), or {theirs.long} {raw}?"
        )
    raise ParseError(problem)


def _fits(switch: Switch, raw: str) -> bool:
    try:
        return field_error(switch.field, _convert(switch, raw)) is None
    except _BadValue:
        return False


def _other_meaning(typed: str, dialect: str) -> tuple[str, Switch] | None:
    if typed.startswith("--"):
        return None
    mine = _SHORT[dialect].get(typed)
    for other in DIALECTS:
        theirs = _SHORT[other].get(typed)
        if other != dialect and theirs is not None and theirs is not mine:
            return other, theirs
    return None


def _lookup(typed: str, dialect: str) -> Switch:
    if typed.startswith("--"):
        name = "--" + typed[2:].lower().replace("_", "-")
        if name in _LONG:
            return _LONG[name]
        if name in UNSUPPORTED:
            raise ParseError(f"{typed} ({UNSUPPORTED[name]}) is an InvokeAI switch invoke-repl does not support")
        glued = re.fullmatch(r"(--[a-z-]*[a-z])(-?[0-9][0-9.]*)", name)
        if glued and glued.group(1) in _LONG:
            switch, value = glued.groups()
            raise ParseError(
                f"unknown switch {typed}; a long switch takes its value after a space or =: {switch} {value}"
            )
        hint = _did_you_mean(name, list(_LONG), "")
        raise ParseError(f"unknown switch {typed}{hint or '; see !help'}")
    table = _SHORT[dialect]
    if typed in table:
        return table[typed]
    if typed in UNSUPPORTED:
        raise ParseError(f"{typed} ({UNSUPPORTED[typed]}) is an InvokeAI switch invoke-repl does not support")
    swapped = typed[0] + typed[1].swapcase()
    if swapped in table:
        raise ParseError(f"unknown switch {typed} (did you mean {swapped}, {table[swapped].noun}?)")
    letters = " ".join(sorted(table, key=lambda s: (s.lower(), s)))
    raise ParseError(f"unknown switch {typed}; short switches in the {dialect} dialect: {letters}")


# ---------------------------------------------------------------------------------------------------- parse
def parse(line: str, dialect: str = "guide", notices: list[str] | None = None) -> Request | BangCommand | None:
    """One line → a validated `Request`, a `BangCommand`, or None for blank and `#` comment lines.

    Raises ParseError (only) with a one-line message. Sizes that are not multiples of 8 are floored and a
    one-line notice is appended to `notices`.
    """
    _check_dialect(dialect)
    if not isinstance(line, str):
        raise ParseError("a command line must be text")
    text = line.replace("\t", " ").strip().lstrip("\ufeff").strip()  # a BOM: files saved by Windows editors
    text = _INVOKE_PREFIX.sub("", text, count=1).strip()
    text = _RESULT_PREFIX.sub("", text, count=1)
    text = _typographic_dashes(text, notices)
    if not text or text.startswith("#"):
        return None
    bad = control_character(text)
    if bad is not None:
        column = text.index(bad) + 1
        if "\udc80" <= bad <= "\udcff":  # a byte that was not UTF-8, kept by surrogateescape (scripts, terminal)
            raise ParseError(
                f"the line is not UTF-8 text (byte 0x{ord(bad) - 0xDC00:02X} at column {column}); "
                "save the file, or set the terminal, as UTF-8"
            )
        raise ParseError(f"the line contains a control character (U+{ord(bad):04X}) at column {column}; remove it")
    if text.startswith("!"):
        return _parse_bang(text)
    prompt, negative, start = _split_prompt(text)
    tokens = _tokens(text, start)
    values: dict[str, object] = {}
    switch_negative: str | None = None
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.switch:
            raise ParseError(
                f"unexpected {_show(token.text)} among the switches; the prompt goes first, before any switch"
                " (quote values that contain spaces)"
            )
        switch = _lookup(token.text, dialect)
        if switch.kind == "flag":
            values[switch.field] = True
            if token.value is not None:
                _cluster(token, dialect, values)
            continue
        if token.value is not None:
            raw = token.value
        elif i < len(tokens) and not tokens[i].switch:
            raw = tokens[i].text
            i += 1
        else:
            following = f", but {tokens[i].text} follows" if i < len(tokens) else ""
            raise ParseError(f"{token.text} needs a value: {switch.expects}{following}")
        value = _read_value(switch, token.text, raw, dialect, notices)
        if switch.field == "negative":
            switch_negative = str(value)
        else:
            values[switch.field] = value
    values["negative"] = ", ".join(part for part in (negative, switch_negative or "") if part)
    given = (("--strength", "strength"), ("--fit", "fit"))
    # `is`, not `in (None, False)`: 0.0 == False, and a strength of 0 is a strength given.
    unused = [name for name, field in given if values.get(field) is not None and values.get(field) is not False]
    if unused and values.get("init_img") is None and notices is not None:
        verb = "acts" if len(unused) == 1 else "act"
        notices.append(f"{' and '.join(unused)} only {verb} on an init image (-I); this line is txt2img")
    if values["negative"] and values.get("cfg_scale") == 1.0 and notices is not None:
        # CFG 1 is the conditional prediction alone: the unconditional pass, where the negative goes, is skipped.
        notices.append("a negative prompt does nothing at -C 1 (no unconditional pass); use another CFG scale")
    try:
        request = Request(prompt=prompt, **values)  # type: ignore[arg-type]
    except RequestError as exc:
        raise ParseError(str(exc)) from exc
    if notices is not None:
        notices.extend(_img2img_notices(request))
    return request


def _img2img_notices(request: Request) -> list[str]:
    """An init image that the strength leaves without effect: both lines run as asked, but look like mistakes."""
    strength = request.effective_strength
    if strength is None:
        return []
    if strength == 1:
        return ["strength 1 starts from pure noise: the init image (-I) only sets the size"]
    if strength > 0 and request.steps_taken == 0:
        return [
            f"{request.steps} step{'s' if request.steps != 1 else ''} at strength {strength:g} is 0 steps: the result"
            " is the init image as the model sees it"
        ]
    return []


def _cluster(token: _Token, dialect: str, values: dict[str, object]) -> None:
    """`-gT`: short flags may be combined, as argparse allowed; anything else after a flag is an error."""
    assert token.value is not None
    if token.text.startswith("--"):
        raise ParseError(f"{token.text} takes no value, got {_show(token.value)}")
    for letter in token.value:
        other = _SHORT[dialect].get("-" + letter)
        if other is None or other.kind != "flag":
            raise ParseError(f"{token.text} takes no value, got {_show(token.value)}")
        values[other.field] = True


# ------------------------------------------------------------------------------------------- writing lines
def _number(value: object) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _quote(text: str, brackets: bool = True) -> str:
    """Double-quote with backslash escapes the parser undoes (`\\\\`, `\\"`, and `\\[` `\\]` in prompts)."""
    special = '\\"[]' if brackets else '\\"'
    return '"' + "".join("\\" + c if c in special else c for c in text) + '"'


def _value(text: str) -> str:
    """A string value bare when it would read back unchanged, else quoted."""
    safe = text and text[0] not in TYPOGRAPHIC_QUOTES and not any(c.isspace() or c in "\\\"'" for c in text)
    if safe and (text == "-1" or not text.startswith("-")):
        return text
    return _quote(text, brackets=False)


def _format(switch: Switch, value: object) -> str:
    if switch.kind == "variations":
        assert isinstance(value, tuple)
        return ",".join(f"{seed}:{_number(float(weight))}" for seed, weight in value)
    if switch.kind in ("int", "size", "float"):
        return _number(value)
    return _value(str(value))


def _defaults() -> dict[str, object]:
    blank = Request(prompt="")
    return {name: getattr(blank, name) for name in FIELD_NAMES}


_DEFAULTS = _defaults()


def _shown(r: Request, field: str) -> bool:
    value = getattr(r, field)
    if value is None:  # unresolved (a line not yet run): nothing to print, parsing it back gives None again
        return False
    return field in _ALWAYS or value != _DEFAULTS[field]


def canonical(r: Request) -> str:
    """The request with long switches only, in table order; it means the same under both dialects."""
    parts = [_quote(r.prompt)]
    for switch in SWITCHES:
        if not _shown(r, switch.field):
            continue
        value = getattr(r, switch.field)
        if switch.field == "negative":
            parts.append(f"{switch.long} {_quote(value)}")
        elif switch.kind == "flag":
            parts.append(switch.long)
        else:
            parts.append(f"{switch.long} {_format(switch, value)}")
    return " ".join(parts)


def legacy_line(r: Request) -> str:
    """The request as InvokeAI 2.x's `Dream` string (legacy letters, `[negative]` in the prompt).

    A negative prompt with leading or trailing spaces cannot survive brackets (they are trimmed), so it goes in
    `--negative` instead; parse(legacy_line(r), "legacy") == r always.
    """
    prompt = _quote(r.prompt)[:-1]
    extra = ""
    if r.negative and r.negative == r.negative.strip():
        prompt += " [" + _quote(r.negative)[1:-1] + "]"
    elif r.negative:
        extra = f" --negative {_quote(r.negative)}"
    parts = [prompt + '"']
    for field in LEGACY_ORDER:
        if not _shown(r, field):
            continue
        switch = _BY_FIELD[field]
        letters = switch.shorts["legacy"]
        if switch.kind == "flag":
            parts.append(letters[0] if letters else switch.long)
        elif not letters:
            parts.append(f"{switch.long} {_format(switch, getattr(r, field))}")
        elif switch.kind in ("int", "size", "float", "sampler"):
            parts.append(f"{letters[0]}{_format(switch, getattr(r, field))}")
        else:
            parts.append(f"{letters[0]} {_format(switch, getattr(r, field))}")
    return " ".join(parts) + extra


# ------------------------------------------------------------------------------------------------------ help
def help_text(dialect: str = "guide") -> str:
    """Commands and switches as they read under `dialect` (the -S/-s letters differ)."""
    _check_dialect(dialect)
    other = next(d for d in DIALECTS if d != dialect)
    lines = ["Commands:"]
    for name, (form, _, text) in _BANGS.items():
        lines.append(f"  {('!' + name + ' ' + form).strip():<24} {text}")
    lines.append(f"  {'!NN':<24} history line NN into the input line, for editing")
    lines.append("")
    lines.append(f'Request lines ({dialect} dialect): "prompt [negative words]" then switches, e.g.')
    examples = {"guide": '"fire" -S10 -s0.7 -I fire.png -A k_lms', "legacy": '"fire" -s10 -f0.7 -I fire.png -Ak_lms'}
    lines.append(f"  {examples[dialect]}")
    for switch in SWITCHES:
        names = ", ".join(list(switch.shorts[dialect]) + list(switch.longs))
        lines.append(f"  {(names + ' ' + switch.metavar).strip():<32} {switch.help}")
    lines.append("")
    lines += textwrap.wrap("Samplers: " + ", ".join(SAMPLERS), width=110, initial_indent="", subsequent_indent="  ")
    steps, seed = _SHORT[other].get("-S"), _SHORT[other].get("-s")
    lines.append(
        f"In the {other} dialect -S is {steps.noun if steps else '-'} and -s is {seed.noun if seed else '-'};"
        " --steps, --seed and --strength mean the same in both (!dialect to switch)."
    )
    return "\n".join(lines)
