"""Whole-session fuzzing (issue 6, item 1): hostile lines through `Session.run_line`, the line runner of the REPL.

Random lines — binary junk, huge numbers, NaN/inf, unicode, 10,000-character prompts, unbalanced quotes and
brackets, every switch with every kind of wrong value, `!commands` with junk arguments — go through one session
backed by the real model manager (tiny-random, loaded once). For volume the generator is a stub that makes 8×8
images (the real parsing, init-image loading, output naming, saving, metadata and log all run); a smaller sample
runs the real generator with steps, sizes and counts clamped. Every line must return an Outcome (never raise),
every failure must be one line, and after each example the same session must still make an image.

The default run is CI-sized; set INVOKE_FUZZ_EXAMPLES=20000 (say) for a long run (the parser fuzz uses it too).
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from invoke_repl import generator, outputs
from invoke_repl.commands import BANG_COMMANDS, UNSUPPORTED, switch_names
from invoke_repl.request import Request
from invoke_repl.results import GeneratedImage
from invoke_repl.session import Outcome, Session
from tests.clirun import tiny_catalogue

EXAMPLES = int(os.environ.get("INVOKE_FUZZ_EXAMPLES", "0")) or None
STUB_EXAMPLES = EXAMPLES or 250
REAL_EXAMPLES = max(1, EXAMPLES // 20) if EXAMPLES else 12
MAX_ERROR = 1000
COUNTS = {"stub lines": 0, "real lines": 0, "failed": 0, "ok": 0, "images": 0}


# ------------------------------------------------------------------------------------------------ the line soup
def _weird_png(tmp: Path) -> dict[str, Path]:
    """Files for -I / !fetch / !replay: PNGs with hostile metadata, broken PNGs, a folder, a PNG claiming 10⁹ px."""
    files: dict[str, Path] = {}
    good = tmp / "good.png"
    Image.new("RGB", (16, 16), (10, 200, 30)).save(good)
    files["good"] = good
    for name, chunks in {
        "json-junk": {"sd-metadata": "{not json"},
        "json-wrong": {"sd-metadata": json.dumps({"image": {"steps": "nan", "seed": -5, "prompt": ["x"]}})},
        "json-huge": {"sd-metadata": json.dumps({"image": {"steps": 10**40, "width": 1e308, "cfg_scale": "inf"}})},
        "dream-junk": {"Dream": '"unclosed -S ten -W nan \x00'},
        "params-junk": {"parameters": "a\nSteps: 99999999999, Seed: -1, Size: 0x0, Sampler: ???"},
        "newline-path": {"sd-metadata": json.dumps({"image": {"prompt": "p", "init_image_path": "a\nb.png"}})},
    }.items():
        info = PngImagePlugin.PngInfo()
        for key, value in chunks.items():
            info.add_text(key, value)
        path = tmp / f"{name}.png"
        Image.new("RGB", (8, 8)).save(path, pnginfo=info)
        files[name] = path
    files["truncated"] = tmp / "truncated.png"
    files["truncated"].write_bytes(good.read_bytes()[:40])
    files["text"] = tmp / "notes.txt"
    files["text"].write_text('"a" -S2\n!replay notes.txt\n')
    files["folder"] = tmp / "a folder"
    files["folder"].mkdir()
    files["bomb"] = tmp / "bomb.png"
    files["bomb"].write_bytes(bomb_png(40_000, 40_000))
    return files


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width×height pixels (Pillow's bomb check looks at the header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


FILE_KEYS = [
    "good",
    "json-junk",
    "json-wrong",
    "json-huge",
    "dream-junk",
    "params-junk",
    "newline-path",
    "truncated",
    "text",
    "folder",
    "bomb",
]

LINE_TEXT = st.characters(blacklist_categories=("Cs",))  # any code point, control characters and separators too
TRICKY = st.sampled_from(list("\"'[]()\\ -=!#:,{}") + ["invoke> ", " -S", " --steps", "é", "🔥", "\u3000", "\u202e"])
junk_text = st.lists(st.one_of(LINE_TEXT, TRICKY), max_size=25).map("".join)
binary_junk = st.binary(max_size=160).flatmap(
    lambda b: st.sampled_from([b.decode("utf-8", "replace"), b.decode("utf-8", "surrogateescape"), b.hex()])
)
numbers = st.one_of(
    st.integers(-(10**60), 10**60).map(str),
    st.floats().map(repr),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "+inf", "1e999", "-0", "0x10", "1_000", "٣", "½", "1e-320"]),
)
paths = st.one_of(
    st.sampled_from(FILE_KEYS).map(lambda key: f"@{key}"),  # replaced with a prepared file's path
    st.sampled_from(["missing.png", "a folder", "/", ".", "..", "~", "~nobody/x.png", "-1", "''", '""', "a b.png"]),
    junk_text,
)
values = st.one_of(
    numbers,
    paths,
    st.sampled_from(["k_lms", "K_LMS", "k_euler_a", "ddim", "", "1:0.5,2:x", "5:", ":", ",,", "-1", "0", "1", "0.7"]),
    st.sampled_from(['"a b"', "'dog's'", '"unclosed', "[neg]", "]", "[[", "=", "'", '"', "\\", "((x)", "[a [b] c"]),
    junk_text,
)
SWITCHES = sorted(
    set(switch_names("guide")) | set(switch_names("legacy")) | {"--init_img", "--cfg_scale", "-Q", "--nope", "-"}
) + list(UNSUPPORTED)
prompts = st.one_of(
    st.sampled_from(["", '"fire"', "a dog's life", "'quoted", "[neg] cat", "(a:1.5) b", "invoke> x", "#", '"a" "b"']),
    junk_text,
    st.integers(9_000, 11_000).flatmap(lambda n: st.sampled_from([f'"{"x" * n}"', "y" * n, f'"{"z" * n}', "[" * n])),
)


@st.composite
def switch_lines(draw: st.DrawFn, prompt: st.SearchStrategy[str] = prompts) -> str:
    parts = [draw(prompt)]
    for _ in range(draw(st.integers(0, 7))):
        name = draw(st.sampled_from(SWITCHES))
        if draw(st.integers(0, 4)) == 0:
            parts.append(name)
            continue
        joiner = draw(st.sampled_from([" ", "", "="]))
        value = draw(values)
        parts.append(name + joiner + (value if " " not in value or value[:1] in "\"'" else f'"{value}"'))
    return " ".join(parts)


BANG_WORDS = [f"!{name}" for name in BANG_COMMANDS] + ["!", "!!", "!0", "!999999999", "!12abc", "!HELP", "!del-model"]
bang_args = st.one_of(
    st.just(""),
    paths,
    numbers,
    junk_text,
    st.sampled_from(
        [
            "tiny-random",
            "tiny-random width=abc",
            "tiny-random width=13",
            "tiny-random format=nope",
            "tiny-random bogus=1",
            "tiny-random path=nope",
            "tiny-random default=maybe",
            "tiny-random config=sd-9",
            "nobody width=64",
            "nobody",
            "x --name",
            "x --bogus 1",
            "'unclosed --name",
            "legacy",
            "guide",
        ]
    ),
)


@st.composite
def bang_lines(draw: st.DrawFn) -> str:
    word = draw(st.sampled_from(BANG_WORDS))
    args = draw(bang_args)
    if word == "!del_model" and args.strip("'\" ") == "tiny-random":
        pass  # refused: it is the active model
    return f"{word} {args}" if args else word


lines = st.one_of(
    binary_junk,
    st.text(max_size=200),
    switch_lines(),
    switch_lines(),
    switch_lines(),
    bang_lines(),
    bang_lines(),
    st.sampled_from(list("\"'[]()\\")).flatmap(lambda c: st.integers(1, 12_000).map(lambda n: c * n)),
)


def materialise(line: str, files: dict[str, Path]) -> str:
    for key in FILE_KEYS:
        line = line.replace(f"@{key}", str(files[key]))
    return line


# ------------------------------------------------------------------------------------------------ the session
def stub_generate(components: Any, request: Request, **options: Any) -> Iterator[GeneratedImage]:
    """The generator's contract without the model: one small image per resolved request (at most 2)."""
    if request.seed is not None and request.seed < 0:
        raise ValueError("seed -1 must be resolved by the session first")
    size = (request.width or 64, request.height or 64)
    for resolved in generator.resolve_requests(request.replace(iterations=min(request.iterations, 2)), "tiny", size):
        image = Image.new("RGB", (8, 8), (resolved.seed % 256, 40, 90))
        previews = [image] * min(resolved.steps_taken, 3) if options.get("previews") else []
        yield GeneratedImage(image, resolved, resolved.steps_taken, previews)


def clamped(real: Any) -> Any:
    """The real generator on a request shrunk to what two shared CPU cores do in a fraction of a second."""

    def run(components: Any, request: Request, **options: Any) -> Iterator[GeneratedImage]:
        small = request.replace(
            steps=min(request.steps, 2),
            iterations=min(request.iterations, 2),
            width=min(request.width, 64) if request.width else None,
            height=min(request.height, 64) if request.height else None,
            fit=True if request.init_img else request.fit,
        )
        return real(components, small, **options)

    return run


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from invoke_repl.models import ModelManager, open_catalogue

    folder = tmp_path_factory.mktemp("catalogue")
    manager = ModelManager(open_catalogue(tiny_catalogue(folder)), device="cpu", max_loaded=1)
    manager.get()  # tiny-random is active: `!del_model tiny-random` must be refused, not obeyed
    return manager


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    print(f"\nsession fuzz: {COUNTS}")


class Sandbox:
    """Everything a fuzzed line can write stays under one folder: other output folders are refused like a
    read-only one (a random `-o /` must not litter the machine)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.real_ensure = outputs._ensure_dir

    def ensure(self, outdir: Path) -> None:
        try:
            inside = Path(os.path.abspath(outdir)).resolve().is_relative_to(self.root)
        except (OSError, ValueError):
            inside = False
        if not inside:
            raise outputs.OutputError(f"cannot save in {outdir}: outside the test folder")
        self.real_ensure(outdir)


@pytest.fixture()
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "home").mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(work / "home"))
    monkeypatch.setattr(outputs, "_ensure_dir", Sandbox(work).ensure)
    return work


def make_session(manager: Any, outdir: Path) -> tuple[Session, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Session(lambda: manager, outdir=outdir, out=out, err=err, progress=False), out, err


def check(outcome: Any, line: str, counter: str) -> None:
    COUNTS[counter] += 1
    assert isinstance(outcome, Outcome), line[:200]
    if outcome.ok:
        COUNTS["ok"] += 1
        COUNTS["images"] += outcome.images
        return
    COUNTS["failed"] += 1
    error = outcome.error
    assert isinstance(error, str) and error.strip(), (line[:200], error)
    assert "\n" not in error and "\r" not in error, (line[:200], error)
    assert len(error) <= MAX_ERROR, (line[:200], len(error))
    assert "Traceback" not in error


def still_works(session: Session) -> None:
    """The same session, after whatever the example did, still runs a `!command` and makes a picture."""
    assert session.run_line("!dialect guide").ok
    made = session.run_line('"still alive" --steps 2 --seed 7 -W 64 -H 64')
    assert made.ok and made.images == 1, made.error
    session.history.clear()  # keep `!history` and `!search` output bounded over thousands of lines


def _run(session: Session, batch: list[str], files: dict[str, Path], counter: str) -> None:
    for raw in batch:
        line = materialise(raw, files)
        check(session.run_line(line), line, counter)
    out = session.out.getvalue() + session.err.getvalue()  # type: ignore[attr-defined]
    assert "Traceback" not in out
    for stream in (session.out, session.err):
        stream.seek(0)  # type: ignore[attr-defined]
        stream.truncate()  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------ the tests
def test_session_fuzz_with_stub_generator(manager: Any, sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generator, "generate", stub_generate)
    files = _weird_png(sandbox)
    session, _, _ = make_session(manager, sandbox / "out")

    @settings(max_examples=STUB_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.lists(lines, min_size=1, max_size=6))
    def run(batch: list[str]) -> None:
        _run(session, batch, files, "stub lines")
        still_works(session)

    run()
    assert COUNTS["stub lines"] >= STUB_EXAMPLES
    # nothing half-written anywhere: every PNG under the folder opens, no temp file is left behind
    for png in sandbox.rglob("0*.png"):
        with Image.open(png) as image:
            image.verify()
    assert not list(sandbox.rglob(".invoke-*.tmp"))


def test_session_fuzz_with_the_real_generator(manager: Any, sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generator, "generate", clamped(generator.generate))
    files = _weird_png(sandbox)
    session, _, _ = make_session(manager, sandbox / "out")
    # No 10,000-character prompts here: compel's prompt parser takes seconds to minutes on them (see the report);
    # the stub-generator fuzz covers them through everything but the text encoder.
    short_prompts = st.sampled_from(["", '"fire"', "a dog's life", "'quoted", "[neg] cat", "(a:1.5) b", "#"])
    generating = st.one_of(
        switch_lines(short_prompts),
        st.sampled_from(FILE_KEYS).map(lambda key: f'"from a file" -I @{key} -S3 -s0.5 --seed 3'),
        st.sampled_from(['"ok" -S2 -n2 -g', '"ok" -S2 --save-steps -V 1:0.5', '"ok" -S2 -A k_heun -W 32 -H 40']),
    )

    @settings(max_examples=REAL_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.lists(generating, min_size=1, max_size=3))
    def run(batch: list[str]) -> None:
        _run(session, batch, files, "real lines")
        still_works(session)

    run()
    assert COUNTS["real lines"] >= REAL_EXAMPLES


def test_a_quote_or_bracket_only_line_of_every_length_is_one_line(
    manager: Any, sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generator, "generate", stub_generate)
    session, _, _ = make_session(manager, sandbox / "out")
    for char in "\"'[]()\\":
        for n in (1, 2, 3, 9_999, 10_000, 10_001):
            check(session.run_line(char * n), char * 3, "stub lines")
            check(session.run_line(f'"prompt {char * n}" -S2'), char * 3, "stub lines")


def test_replay_of_itself_and_of_a_device_are_one_line_errors(manager: Any, sandbox: Path) -> None:
    session, _, _ = make_session(manager, sandbox / "out")
    (sandbox / "loop.txt").write_text("!dialect legacy\n!replay loop.txt\n")
    outcome = session.run_line("!replay loop.txt")
    assert not outcome.ok and "\n" not in (outcome.error or "")
    assert session.err.getvalue().count("already being replayed") == 1  # type: ignore[attr-defined]
    assert session.history.count("!replay loop.txt") == 1  # the typed line; replayed ones are not numbered
    if Path("/dev/zero").exists():
        outcome = session.run_line("!replay /dev/zero")  # would read forever
        assert not outcome.ok and "not a regular file" in (outcome.error or "")
    assert session.run_line("!dialect").ok
