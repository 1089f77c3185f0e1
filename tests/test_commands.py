"""Table tests for the dream-line language: what each typed line means, and what each mistake says."""

from __future__ import annotations

import pytest

from invoke_repl import commands
from invoke_repl.commands import (
    BANG_COMMANDS,
    DIALECTS,
    SWITCHES,
    BangCommand,
    ParseError,
    canonical,
    help_text,
    image_switches,
    legacy_line,
    model_switches,
    parse,
    sampler_switches,
    switch_names,
)
from invoke_repl.request import PREVIOUS, PREVIOUS_IMAGE, SAMPLERS, Request

FIRE = Request(prompt="fire", steps=10, seed=1592514025, strength=0.7, init_img="fire.png", sampler="k_lms")


def test_guide_and_legacy_seed_lines_give_equal_requests() -> None:
    guide = parse('"fire" -S10 -s0.7 -I fire.png -A k_lms --seed 1592514025')
    legacy = parse('"fire" -s10 -S1592514025 -f0.7 -I fire.png -Ak_lms', "legacy")
    assert guide == legacy == FIRE


def test_the_seed_line_from_the_guide() -> None:
    r = parse('"fire" -S10 -s0.7 -I fire-drawing.png -A k_lms')
    assert r == Request(prompt="fire", steps=10, strength=0.7, init_img="fire-drawing.png", sampler="k_lms")
    assert isinstance(r, Request) and r.steps_taken == 7


# line, dialect, expected fields (anything not named is at its default)
CASES: list[tuple[str, str, dict[str, object]]] = [
    ('invoke> "fire" -S10', "guide", {"prompt": "fire", "steps": 10}),
    ("invoke>   a cat -S10", "guide", {"prompt": "a cat", "steps": 10}),
    ("a dog's life -S10", "guide", {"prompt": "a dog's life", "steps": 10}),
    ("'a dog's life' -S10", "guide", {"prompt": "a dog's life", "steps": 10}),
    ('"a dog\'s life"', "guide", {"prompt": "a dog's life"}),
    ("rock 'n' roll -s 0.5 -I x.png", "guide", {"prompt": "rock 'n' roll", "strength": 0.5, "init_img": "x.png"}),
    ('"say \\"hi\\"" -S5', "guide", {"prompt": 'say "hi"', "steps": 5}),
    ("a cat [blurry] on a mat", "guide", {"prompt": "a cat on a mat", "negative": "blurry"}),
    ("[ugly] a cat [blurry]", "guide", {"prompt": "a cat", "negative": "ugly, blurry"}),
    ('"a cat [blurry]" --negative dark', "guide", {"prompt": "a cat", "negative": "blurry, dark"}),
    ('"a \\[literal\\] bracket"', "guide", {"prompt": "a [literal] bracket"}),
    ('"x" --negative "low quality, jpeg"', "guide", {"prompt": "x", "negative": "low quality, jpeg"}),
    ('"x" --negative="low quality"', "guide", {"prompt": "x", "negative": "low quality"}),
    ("x -S 10", "guide", {"prompt": "x", "steps": 10}),
    ("x -Ak_lms", "guide", {"prompt": "x", "sampler": "k_lms"}),
    ("x -m K_EULER_A", "guide", {"prompt": "x", "sampler": "k_euler_a"}),
    ("x --sampler=ddim", "guide", {"prompt": "x", "sampler": "ddim"}),
    ("x --init_img a.png --cfg_scale 9", "guide", {"prompt": "x", "init_img": "a.png", "cfg_scale": 9.0}),
    ("x --init-img=a.png --cfg-scale=9", "guide", {"prompt": "x", "init_img": "a.png", "cfg_scale": 9.0}),
    ("x --Steps 12", "guide", {"prompt": "x", "steps": 12}),
    ('x -I "my pictures/a b.png"', "guide", {"prompt": "x", "init_img": "my pictures/a b.png"}),
    ("x -I fire's.png", "guide", {"prompt": "x", "init_img": "fire's.png"}),
    ("x --seed -1 -I -1", "guide", {"prompt": "x", "seed": PREVIOUS, "init_img": PREVIOUS_IMAGE}),
    ("x -S-1", "legacy", {"prompt": "x", "seed": PREVIOUS}),
    ("x -S 42 -s 30", "legacy", {"prompt": "x", "seed": 42, "steps": 30}),
    ("x -S 30 -s 0.25", "guide", {"prompt": "x", "steps": 30, "strength": 0.25}),
    ("x -s 1", "guide", {"prompt": "x", "strength": 1.0}),
    ("x -f 0", "legacy", {"prompt": "x", "strength": 0.0}),
    ("x --steps 20 --seed 7 --strength 0.3", "legacy", {"prompt": "x", "steps": 20, "seed": 7, "strength": 0.3}),
    ("x -W 384 -H 512 -C 7 -n 3 -g", "guide", {"prompt": "x", "width": 384, "height": 512, "cfg_scale": 7.0}),
    ("x -n 3 -gT", "guide", {"prompt": "x", "iterations": 3, "grid": True, "fit": True}),
    ("x --fit --grid --save-steps", "guide", {"prompt": "x", "fit": True, "grid": True, "save_steps": True}),
    ("x --save_steps", "guide", {"prompt": "x", "save_steps": True}),
    (
        "x -v 0.2 -V 12:0.1,34:0.5",
        "guide",
        {"prompt": "x", "variation_amount": 0.2, "with_variations": ((12, 0.1), (34, 0.5))},
    ),
    ('x -o "out dir" --model sd-1.5', "guide", {"prompt": "x", "outdir": "out dir", "model": "sd-1.5"}),
    ("x -S10 -S20", "guide", {"prompt": "x", "steps": 20}),
    ("x\t-S10", "guide", {"prompt": "x", "steps": 10}),
    ("-S10", "guide", {"prompt": "", "steps": 10}),
    ("x -C 1e1", "guide", {"prompt": "x", "cfg_scale": 10.0}),
    ("red - blue -5 degrees -S10", "guide", {"prompt": "red - blue -5 degrees", "steps": 10}),
    ("well-known cat", "guide", {"prompt": "well-known cat"}),
]


@pytest.mark.parametrize(("line", "dialect", "expected"), CASES, ids=[c[0] for c in CASES])
def test_line_means(line: str, dialect: str, expected: dict[str, object]) -> None:
    expected = dict(expected)
    if "-n 3 -g" in line and "grid" not in expected:
        expected.update(iterations=3, grid=True)
    assert parse(line, dialect) == Request(**expected)  # type: ignore[arg-type]


@pytest.mark.parametrize("line", ["", "   ", "# a comment", "  # indented comment", "invoke> ", "invoke> # note"])
def test_blank_and_comment_lines_are_nothing(line: str) -> None:
    assert parse(line) is None


def test_sizes_are_floored_to_multiples_of_8_with_a_notice() -> None:
    notices: list[str] = []
    r = parse("x -W 500 -H 385", notices=notices)
    assert isinstance(r, Request) and (r.width, r.height) == (496, 384)
    assert notices == ["width 500 is not a multiple of 8; using 496", "height 385 is not a multiple of 8; using 384"]
    quiet: list[str] = []
    parse("x -W 512", notices=quiet)
    assert quiet == []


# line, dialect, words the one-line message must contain
ERRORS: list[tuple[str, str, list[str]]] = [
    ("x -Q 3", "guide", ["unknown switch -Q", "-C"]),
    ("x -a k_lms", "guide", ["unknown switch -a", "did you mean -A"]),
    ("x --stpes 3", "guide", ["unknown switch --stpes", "did you mean --steps"]),
    ("x --cfg 3", "guide", ["did you mean --cfg-scale"]),
    ("x --steps10", "guide", ["unknown switch", "--steps 10"]),
    ("x -G 0.8", "legacy", ["-G", "face restoration", "does not support"]),
    ("x -S ten", "guide", ["-S expects a whole number of steps", "'ten'"]),
    ("x --seed abc", "guide", ["--seed expects a whole-number seed", "'abc'"]),
    ("x -S", "guide", ["-S needs a value"]),
    ("x -S -A k_lms", "guide", ["-S needs a value", "-A follows"]),
    ("x -A k_lmz", "guide", ["unknown sampler 'k_lmz'", "did you mean k_lms", "choose one of:", "k_euler_a"]),
    ('"fire -S10', "guide", ["unclosed quote in prompt"]),
    ("'fire -S10", "guide", ["unclosed quote in prompt"]),
    ('x -I "a.png', "guide", ["unclosed quote"]),
    ('"fire" more words -S10', "guide", ["after the quoted prompt", "more words"]),
    ("a cat [blurry -S10", "guide", ["unclosed [", "\\["]),
    ("a cat] -S10", "guide", ["unmatched ]"]),
    ("x -S10 stray", "guide", ["unexpected 'stray'", "prompt goes first"]),
    ("x -S 0", "guide", ["-S0 is not a step count", "legacy dialect", "--seed 0"]),
    ("x -S 5000", "guide", ["-S5000 is not a step count", "legacy dialect (-S seed)", "--seed 5000"]),
    ("x -S -1", "guide", ["legacy dialect"]),
    (
        "x -s50",
        "guide",
        ["-s50 is not a strength (0–1)", "guide dialect -s is strength", "legacy dialect", "--steps 50"],
    ),
    ("x -s0.7", "legacy", ["-s0.7 is not a step count", "guide dialect (-s strength)", "--strength 0.7"]),
    ("x -s 0", "legacy", ["guide dialect", "--strength 0"]),
    ("x -s 1.5", "guide", ["strength must be between 0 and 1"]),
    ("x -S 0.7", "legacy", ["-S expects a whole-number seed", "'0.7'"]),
    ("x -s 5000", "legacy", ["steps must be between 1 and 1000"]),
    ("x --steps 0", "guide", ["steps must be between 1 and 1000, got 0"]),
    ("x --steps 1001", "legacy", ["steps must be between 1 and 1000"]),
    ("x --strength 2", "guide", ["strength must be between 0 and 1"]),
    ("x -f -0.5", "guide", ["strength must be between 0 and 1"]),
    ("x -W 4", "guide", ["width must be between 8 and 4096, got 4"]),
    ("x -H 99999", "guide", ["height must be between 8 and 4096"]),
    ("x -W wide", "guide", ["-W expects a width in pixels", "'wide'"]),
    ("x -C nan", "guide", ["-C expects", "not a finite number"]),
    ("x -C inf", "guide", ["not a finite number"]),
    ("x -C 1e999", "guide", ["'1e999'", "not a finite number"]),
    ("x -C 101", "guide", ["cfg scale must be between 0 and 100"]),
    ("x -S 1" + "0" * 5000, "guide", ["far too large", "5001 digits"]),
    ("x --seed 4294967296", "guide", ["seed must be between 0 and 4294967295"]),
    ("x -n 0", "guide", ["iterations must be between 1 and 1000"]),
    ("x -v 2", "guide", ["variation amount must be between 0 and 1"]),
    ("x -V 12", "guide", ["-V expects seed:weight pairs", "needs a weight"]),
    ("x -V 12:abc", "guide", ["-V expects seed:weight pairs"]),
    ("x -V 12:1.5", "guide", ["variation weight must be between 0 and 1"]),
    ("x -g5", "guide", ["-g takes no value"]),
    ("x --fit=yes", "guide", ["--fit takes no value"]),
    ('x --model " "', "guide", ["model name must not be empty"]),
    ('x -I ""', "guide", ["init image must be a file path"]),
    ("x\x1b[31m -S10", "guide", ["control character (U+001B)", "column 2"]),
    ("x -S10\x00", "guide", ["control character (U+0000)"]),
    ("!", "guide", ["! needs a command name"]),
    ("!hlep", "guide", ["unknown command !hlep", "did you mean !help"]),
    ("!hist", "guide", ["did you mean !history"]),
    ("!history many", "guide", ["!history takes a number of lines", "'many'"]),
    ("!search", "guide", ["!search needs TEXT"]),
    ("!switch", "guide", ["!switch needs NAME"]),
    ("!quit now", "guide", ["!quit takes nothing"]),
    ("!dialect legcy", "guide", ["unknown dialect 'legcy'", "did you mean legacy"]),
    ("!12 more", "guide", ["!12 recalls history line 12"]),
    ("!1x", "guide", ["unknown command '!1x'"]),
]


@pytest.mark.parametrize(("line", "dialect", "words"), ERRORS, ids=[e[0][:40] for e in ERRORS])
def test_error_messages_are_specific(line: str, dialect: str, words: list[str]) -> None:
    with pytest.raises(ParseError) as info:
        parse(line, dialect)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_errors_name_the_other_dialect_both_ways() -> None:
    for line, dialect, other in [("x -s50", "guide", "legacy"), ("x -s0.7", "legacy", "guide")]:
        with pytest.raises(ParseError, match=f"did you mean the {other} dialect"):
            parse(line, dialect)
        assert isinstance(parse(line, other), Request)


def test_unknown_dialect_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="unknown dialect"):
        parse("x", "klingon")


BANGS: list[tuple[str, BangCommand]] = [
    ("!help", BangCommand("help", "")),
    ("invoke> !help", BangCommand("help", "")),
    ("!HELP", BangCommand("help", "")),
    ("!history", BangCommand("history", "")),
    ("!history 20", BangCommand("history", "20")),
    ("!search a dog's life", BangCommand("search", "a dog's life")),
    ("!12", BangCommand("recall", "12")),
    ("!007", BangCommand("recall", "7")),
    ("!fetch out/000001.42.png", BangCommand("fetch", "out/000001.42.png")),
    ('!fetch "my file.png"', BangCommand("fetch", '"my file.png"')),
    ("!replay script.txt", BangCommand("replay", "script.txt")),
    ("!dialect", BangCommand("dialect", "")),
    ("!dialect legacy", BangCommand("dialect", "legacy")),
    ("!quit", BangCommand("quit", "")),
    ("!exit", BangCommand("quit", "")),
    ("!models", BangCommand("models", "")),
    ("!switch sd-1.5", BangCommand("switch", "sd-1.5")),
    ("!import_model /models/x.safetensors --name x", BangCommand("import_model", "/models/x.safetensors --name x")),
    ("!edit-model x description=nice", BangCommand("edit_model", "x description=nice")),
    ("!del_model x", BangCommand("del_model", "x")),
]


@pytest.mark.parametrize(("line", "expected"), BANGS, ids=[b[0] for b in BANGS])
def test_bang_commands(line: str, expected: BangCommand) -> None:
    assert parse(line) == expected
    assert parse(line, "legacy") == expected


def test_bang_command_table_covers_the_documented_commands() -> None:
    for name in ("help", "history", "search", "fetch", "replay", "dialect", "quit", "exit", "models", "switch"):
        assert name in BANG_COMMANDS and BANG_COMMANDS[name]
    for name in ("import_model", "edit_model", "del_model"):
        assert name in BANG_COMMANDS


def test_canonical_line_of_the_seed_request() -> None:
    r = FIRE.replace(width=384, height=384, cfg_scale=7.5)  # as run: the model's default CFG filled in
    assert canonical(r) == (
        '"fire" --steps 10 --seed 1592514025 --strength 0.7 --init-img fire.png --sampler k_lms'
        " --width 384 --height 384 --cfg-scale 7.5"
    )
    assert legacy_line(r) == '"fire" -s10 -S1592514025 -W384 -H384 -C7.5 -Ak_lms -f0.7 -I fire.png'


CANONICAL: list[tuple[Request, str]] = [
    (Request(prompt="x"), '"x" --steps 50 --sampler k_lms'),  # no -C yet: the model decides when it runs
    (Request(prompt="x", cfg_scale=7.5), '"x" --steps 50 --sampler k_lms --cfg-scale 7.5'),
    (Request(prompt="x", cfg_scale=4.0), '"x" --steps 50 --sampler k_lms --cfg-scale 4.0'),
    (Request(prompt='say "hi" \\ [no]'), '"say \\"hi\\" \\\\ \\[no\\]" --steps 50 --sampler k_lms'),
    (
        Request(prompt="x", negative="blurry", seed=-1, init_img="-1"),
        '"x" --steps 50 --seed -1 --init-img -1 --sampler k_lms --negative "blurry"',
    ),
    (
        Request(prompt="x", iterations=2, grid=True, fit=True, save_steps=True, outdir="a b", model="m"),
        '"x" --steps 50 --sampler k_lms --iterations 2 --grid --fit --save-steps --outdir "a b" --model m',
    ),
    (
        Request(prompt="x", variation_amount=0.1, with_variations=((3, 0.5),), init_img="-x.png"),
        '"x" --steps 50 --init-img "-x.png" --sampler k_lms --variation-amount 0.1 --with-variations 3:0.5',
    ),
]


@pytest.mark.parametrize(("request_", "line"), CANONICAL, ids=[c[1][:40] for c in CANONICAL])
def test_canonical_lines(request_: Request, line: str) -> None:
    assert canonical(request_) == line
    for dialect in DIALECTS:
        assert parse(line, dialect) == request_
    assert parse(legacy_line(request_), "legacy") == request_


def test_legacy_line_puts_the_negative_prompt_in_brackets() -> None:
    r = Request(prompt="a cat", negative="blurry, dark", cfg_scale=7.5)
    assert legacy_line(r) == '"a cat [blurry, dark]" -s50 -C7.5 -Ak_lms'
    padded = Request(prompt="a cat", negative=" blurry ")
    assert "--negative" in legacy_line(padded) and parse(legacy_line(padded), "legacy") == padded


def test_help_text_follows_the_dialect() -> None:
    guide, legacy = help_text("guide"), help_text("legacy")
    assert "-S, --steps" in guide and "-s, -f, --strength" in guide
    assert "-s, --steps" in legacy and "-S, --seed" in legacy
    for text in (guide, legacy):
        assert "!history" in text and "!NN" in text and "k_lms" in text and "--negative" in text


def test_switch_table_is_the_only_place_the_dialects_differ() -> None:
    differing = {letter for s in SWITCHES for letter in set(s.shorts["guide"]) ^ set(s.shorts["legacy"])}
    assert differing == {"-S", "-s"}
    assert {s.field for s in SWITCHES} == set(Request.__dataclass_fields__) - {"prompt"}


def test_completion_helpers() -> None:
    assert "-A" in switch_names("guide") and "--init-img" in switch_names("legacy")
    assert "-S" in switch_names("guide") and "-s" in switch_names("legacy")
    assert sampler_switches() == ("-A", "-m", "--sampler")
    assert "-I" in image_switches() and "--init_img" in image_switches()
    assert model_switches() == ("--model",)
    assert set(SAMPLERS) >= {"k_lms", "ddim"}


def test_the_module_never_imports_torch() -> None:
    source = open(commands.__file__, encoding="utf-8").read()
    for heavy in ("torch", "diffusers", "PIL"):
        assert f"import {heavy}" not in source and f"from {heavy}" not in source


def test_result_lines_and_byte_order_marks_parse_as_the_line_they_carry() -> None:
    line = '"a red circle" --steps 5 --seed 3 --sampler k_lms'
    assert parse(f"[12] outputs/000012.3.png: {line}") == parse(line)
    assert parse(f"[1] my dir/x.PNG: {line}") == parse(line)
    assert parse(f"[3] out.png: v2/000003.3.png: {line}") == parse(line)  # a folder named like an image
    assert parse(f"\ufeff{line}") == parse(line)
    assert parse("\ufeff# a comment") is None
    assert parse("\ufeff!dialect legacy").name == "dialect"
    assert parse("[1] a red circle").negative == "1"  # no path: an ordinary prompt with a negative part


def test_typographic_dashes_before_a_switch_name_are_read_as_two_hyphens() -> None:
    notices: list[str] = []
    request = parse("a cat \u2013seed 5 \u2014steps=12", notices=notices)
    assert (request.prompt, request.seed, request.steps) == ("a cat", 5, 12)
    assert notices == [
        "read \u2013seed as --seed (a typographic dash)",
        "read \u2014steps as --steps (a typographic dash)",
    ]
    notices.clear()
    # A dash in the prompt's own text, a dash before a word that is no switch, and quoted prompts stay as typed.
    assert parse("a bird \u2013 flying \u2013high", notices=notices).prompt == "a bird \u2013 flying \u2013high"
    assert parse('"a cat \u2013seed 5" --steps 3', notices=notices).prompt == "a cat \u2013seed 5"
    assert parse('"x" -S3 -I "old \u2014seed.png"', notices=notices).init_img == "old \u2014seed.png"
    assert notices == []


def test_typographic_quotes_quote_as_straight_ones_do() -> None:
    """A line pasted from a phone or chat app: “fire” -I “my drawing.png” meant a quoted prompt and a quoted path."""
    request = parse("\u201cfire\u201d -S10 -I \u201cmy drawing.png\u201d -s0.7")
    assert (request.prompt, request.init_img, request.steps) == ("fire", "my drawing.png", 10)
    assert parse("\u201ea b\u201c -S3").prompt == "a b"  # German „…“
    assert parse("\u00abfeu de camp\u00bb -S3").prompt == "feu de camp"
    assert parse("\u2018a dog\u2019s life\u2019 -S3").prompt == "a dog\u2019s life"  # the apostrophe opens nothing
    assert parse('\u201ca "quoted" word\u201d -S3').prompt == 'a "quoted" word'
    assert parse("\u201ca cat \u2013seed 5\u201d -S3", notices=(seen := [])).prompt == "a cat \u2013seed 5"
    assert seen == []
    # Typographic quotes that do not wrap the prompt stay in it, as before; straight ones keep their error.
    assert parse("\u201cFire\u201d by night -S3").prompt == "\u201cFire\u201d by night"
    assert parse("a dog\u2019s life -S3").prompt == "a dog\u2019s life"
    with pytest.raises(ParseError, match="unexpected text after the quoted prompt"):
        parse('"Fire" by night -S3')


def test_strength_or_fit_without_an_init_image_says_it_does_nothing() -> None:
    notices: list[str] = []
    parse('"x" -s0.7 -T', notices=notices)
    assert notices == ["--strength and --fit only act on an init image (-I); this line is txt2img"]
    parse('"x" -s0.7', notices=notices)
    assert notices[1] == "--strength only acts on an init image (-I); this line is txt2img"
    notices.clear()
    parse('"x" -s0.7 -I a.png', notices=notices)
    parse('"x" -S10', notices=notices)
    assert notices == []
    for zero in ("-s0", "--strength 0", "-f 0"):  # 0 is a strength given, not a strength left out
        parse(f'"x" {zero}', notices=notices)
        assert notices == ["--strength only acts on an init image (-I); this line is txt2img"], zero
        notices.clear()


def test_an_init_image_the_strength_leaves_without_effect_is_announced() -> None:
    notices: list[str] = []
    parse('"x" -S10 -s1 -I a.png', notices=notices)
    assert notices == ["strength 1 starts from pure noise: the init image (-I) only sets the size"]
    notices.clear()
    parse('"x" -S10 -s0.05 -I a.png', notices=notices)
    assert notices == ["10 steps at strength 0.05 is 0 steps: the result is the init image as the model sees it"]
    notices.clear()
    for line in ('"x" -S10 -s0 -I a.png', '"x" -S10 -s0.1 -I a.png', '"x" -S10 -I a.png'):
        parse(line, notices=notices)  # strength 0 asks for the init image itself; 0.1 of 10 is one step
    assert notices == []


def test_a_negative_group_between_two_words_leaves_them_apart() -> None:
    assert parse('"red[blurry]star" -S3').prompt == "red star"
    assert parse('"red [blurry]star" -S3').prompt == "red star"
    assert parse('"a cat [blurry] on a mat" -S3').prompt == "a cat on a mat"


def test_a_negative_prompt_at_cfg_1_says_it_does_nothing() -> None:
    """CFG 1 skips the unconditional pass: `[blue]` made the same image as no negative, without a word."""
    notices: list[str] = []
    parse('"a red star [blue]" -C 1', notices=notices)
    parse('"a red star" --negative blue -C1.0', notices=notices)
    assert notices == ["a negative prompt does nothing at -C 1 (no unconditional pass); use another CFG scale"] * 2
    notices.clear()
    parse('"a red star [blue]" -C 1.5', notices=notices)
    parse('"a red star" -C 1', notices=notices)
    assert notices == []


def test_a_typed_minus_zero_is_recorded_as_zero() -> None:
    request = parse('"x" -S2 -C -0 -s -0 -I a.png')
    assert str(request.cfg_scale) == "0.0" and str(request.strength) == "0.0"
    assert "-0.0" not in canonical(request)


def test_the_zero_steps_notice_counts_one_step_in_the_singular() -> None:
    notices: list[str] = []
    parse('"x" -S1 -s0.5 -I a.png', notices=notices)
    assert notices == ["1 step at strength 0.5 is 0 steps: the result is the init image as the model sees it"]
