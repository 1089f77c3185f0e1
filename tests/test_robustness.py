"""Issue 6 through the session, in process: init images, out of memory, cancellation during a model load, full or
read-only output folders, `!fetch` of hostile metadata, unwritable history and log files.

One real model manager (tiny-random, loaded once) serves every test; each failure must be one line, leave no
partial file behind, and the same session must make an image right after it.
"""

from __future__ import annotations

import builtins
import errno
import gc
import io
import json
import os
import signal
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from invoke_repl import outputs
from invoke_repl import session as session_module
from invoke_repl.commands import parse
from invoke_repl.repl import CommandHistory, run_with_cancel
from invoke_repl.session import OOM_HINT, Outcome, Session
from tests.clirun import tiny_catalogue
from tests.test_session_fuzz import bomb_png

GOOD = '"after" --steps 2 --seed 9'


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from invoke_repl.models import ModelManager, open_catalogue

    manager = ModelManager(open_catalogue(tiny_catalogue(tmp_path_factory.mktemp("catalogue"))), device="cpu")
    manager.get()
    return manager


def make_session(manager: Any, outdir: Path, **kwargs: Any) -> Session:
    return Session(lambda: manager, outdir=outdir, out=io.StringIO(), err=io.StringIO(), progress=False, **kwargs)


def one_line_error(outcome: Any, *needles: str) -> str:
    assert not outcome.ok, "the line should have failed"
    error = outcome.error
    assert error and "\n" not in error and "\r" not in error, error
    for needle in needles:
        assert needle in error, (needle, error)
    return error


def goes_on(session: Session, outdir: Path | None = None) -> Path:
    outcome = session.run_line(GOOD + (f' -o "{outdir}"' if outdir else ""))
    assert outcome.ok and outcome.images == 1, outcome.error
    assert session.last_path is not None and session.last_path.is_file()
    return session.last_path


def no_debris(folder: Path) -> None:
    """No temp file, and every PNG under a final name is complete."""
    assert not list(folder.rglob(".invoke-*.tmp"))
    for png in folder.rglob("*.png"):
        with Image.open(png) as image:
            image.load()


# ------------------------------------------------------------------------------------- 2. init images
def _init_images(d: Path) -> dict[str, tuple[Path, str | None]]:
    """name → (path, None if it must work, else a word the one-line error must contain)."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8))
    cases: dict[str, tuple[Path, str | None]] = {}
    cases["missing"] = (d / "missing.png", "not found")
    (d / "folder.png").mkdir()
    cases["directory"] = (d / "folder.png", "directory")
    (d / "text.png").write_text("not an image at all")
    cases["not an image"] = (d / "text.png", "not an image")
    rgb.save(d / "full.png")
    (d / "truncated.png").write_bytes((d / "full.png").read_bytes()[:300])
    cases["truncated"] = (d / "truncated.png", "truncated")
    (d / "bomb.png").write_bytes(bomb_png(30_000, 30_000))
    cases["bomb"] = (d / "bomb.png", "too large")
    Image.new("RGB", (1, 1), (255, 0, 0)).save(d / "one.png")
    cases["1x1"] = (d / "one.png", None)
    rgb.convert("CMYK").save(d / "cmyk.jpg")
    cases["cmyk"] = (d / "cmyk.jpg", None)
    Image.fromarray((rng.random((32, 32)) * 65535).astype(np.uint16)).save(d / "sixteen.png")
    cases["16-bit"] = (d / "sixteen.png", None)
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(d / "palette.png")
    cases["palette"] = (d / "palette.png", None)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.new("L", rgb.size, 0))
    rgba.save(d / "alpha.png")
    cases["alpha"] = (d / "alpha.png", None)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    rgb.save(d / "rotated.jpg", exif=exif)
    cases["exif-rotated"] = (d / "rotated.jpg", None)
    return cases


def test_init_images_through_the_session(manager: Any, tmp_path: Path) -> None:
    session = make_session(manager, tmp_path / "out")
    for name, (path, problem) in _init_images(tmp_path).items():
        outcome = session.run_line(f'"from {name}" -I "{path}" -S4 -s0.5 --seed 5 --fit')
        if problem is None:
            assert outcome.ok and outcome.images == 1, (name, outcome.error)
            with Image.open(session.last_path) as made:  # type: ignore[arg-type]
                assert made.mode == "RGB", name
                if name == "exif-rotated":  # 48 wide × 40 high on disk, upright it is portrait
                    assert made.height >= made.width, made.size
        else:
            one_line_error(outcome, problem, str(path))
        goes_on(session)
    no_debris(tmp_path / "out")


# ------------------------------------------------------------------------------------- 3. out of memory
@pytest.mark.parametrize(
    "error",
    [
        lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\n(more details)"),
        lambda: RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
        lambda: MemoryError(),
    ],
    ids=["torch.cuda.OutOfMemoryError", "RuntimeError", "MemoryError"],
)
def test_out_of_memory_in_the_unet(manager: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Any) -> None:
    unet = manager.get().unet
    held: list[weakref.ref[torch.Tensor]] = []
    freed: list[str] = []
    calls = {"n": 0}
    real_forward = unet.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # mid-generation, after one step went through
            hog = torch.ones(256, 1024)  # what the failed step was holding
            held.append(weakref.ref(hog))
            raise error()
        return real_forward(*args, **kwargs)

    real_collect = gc.collect

    def collect(*args: Any) -> int:
        freed.append("gc")
        return real_collect(*args)

    def empty_cache() -> None:  # by then the failed step's tensors must be unreachable
        freed.append("empty_cache:" + ("freed" if all(ref() is None for ref in held) else "still held"))

    monkeypatch.setattr(unet, "forward", forward)
    monkeypatch.setattr(session_module.gc, "collect", collect)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    session = make_session(manager, tmp_path / "out")
    outcome = session.run_line('"big" --steps 5 -n 2 --seed 3')
    message = one_line_error(outcome, "out of memory")
    assert message == OOM_HINT
    assert "-W/-H" in message and "-n" in message and "precision" in message
    assert freed == ["gc", "empty_cache:freed"]
    assert held and held[0]() is None
    monkeypatch.setattr(unet, "forward", real_forward)
    goes_on(session)
    no_debris(tmp_path / "out")


# ------------------------------------------------------------------------------------- 4. cancellation
class BlockingManager:
    """A manager whose model load never ends by itself (a huge checkpoint on a slow disk)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.release = threading.Event()
        self.started = threading.Event()
        self.finished = threading.Event()

    def get(self, name: str | None = None) -> Any:
        self.started.set()
        self.release.wait(60)
        self.finished.set()
        return self.real.get()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_cancel_during_a_model_load_ends_the_line_at_once(manager: Any, tmp_path: Path) -> None:
    blocking = BlockingManager(manager)
    session = make_session(blocking, tmp_path / "out")
    timer = threading.Thread(target=lambda: (blocking.started.wait(30), time.sleep(0.2), session.cancel.set()))
    timer.start()
    began = time.monotonic()
    outcome = session.run_line(GOOD)
    waited = time.monotonic() - began
    timer.join()
    assert outcome.cancelled and outcome.error == "cancelled"
    assert waited < 0.2 + 1.0, waited  # a fraction of a second after Ctrl-C, not when the load ends
    assert not blocking.finished.is_set()
    session.cancel.clear()
    # the next line waits for the load the cancelled one left running, then works
    threading.Timer(0.3, blocking.release.set).start()
    goes_on(session)
    assert blocking.finished.is_set()
    assert not list((tmp_path / "out").glob("*.9.png"))[1:]  # only the image of the line that ran


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_at_the_interactive_prompt_during_a_load(manager: Any, tmp_path: Path) -> None:
    """A real SIGINT through the REPL's handler (run_with_cancel, main thread) while the model is loading."""
    assert threading.current_thread() is threading.main_thread()
    blocking = BlockingManager(manager)
    session = make_session(blocking, tmp_path / "out")

    def interrupt() -> None:
        blocking.started.wait(30)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    began = time.monotonic()
    outcome, signum = run_with_cancel(session, GOOD)
    assert outcome.cancelled and time.monotonic() - began < 1.5
    assert signum == signal.SIGINT  # Ctrl-C: back to the prompt, the session goes on
    assert not session.cancel.is_set()  # cleared for the next line
    blocking.release.set()
    assert run_with_cancel(session, GOOD) == (Outcome(images=1), None)


def test_scripted_run_stops_at_a_cancelled_load(manager: Any, tmp_path: Path) -> None:
    blocking = BlockingManager(manager)
    session = make_session(blocking, tmp_path / "out")
    threading.Thread(target=lambda: (blocking.started.wait(30), session.cancel.set()), daemon=True).start()
    began = time.monotonic()
    failures, cancelled = session.run_lines(["!dialect", GOOD, '"never" --steps 2'])
    assert cancelled and failures == 1 and time.monotonic() - began < 5
    assert "line 2: cancelled" in session.err.getvalue()  # type: ignore[attr-defined]
    assert session.history == ["!dialect", GOOD]
    blocking.release.set()


def test_a_model_command_cancelled_while_it_loads_or_reads_changes_nothing(tmp_path: Path, monkeypatch: Any) -> None:
    """`!switch` cancelled mid-load said "cancelled", then made the model active when the load ended; a cancelled
    `!import_model` still wrote its entry. The work goes on (it cannot be interrupted) but changes nothing."""
    from invoke_repl import loading
    from invoke_repl.catalogue import Catalogue
    from invoke_repl.models import ModelManager, open_catalogue

    catalogue = tmp_path / "models.yaml"
    catalogue.write_text("a:\n  format: builtin\n  path: tiny-random\n  default: true\n"
                         "b:\n  format: builtin\n  path: tiny-random\n")  # fmt: skip
    manager = ModelManager(open_catalogue(catalogue), device="cpu")
    session = make_session(manager, tmp_path / "out")
    assert session.run_line("!switch a").ok
    reading = threading.Event()
    release = threading.Event()
    real_load = loading.load_entry

    def held(real: Any) -> Any:
        def slow(*args: Any, **kwargs: Any) -> Any:
            reading.set()
            release.wait(30)
            return real(*args, **kwargs)

        return slow

    monkeypatch.setattr(loading, "load_entry", held(real_load))
    monkeypatch.setattr(loading, "check_folder", held(lambda folder: None))  # reading a big folder's weights
    folder = tmp_path / "folder"
    for part in ("unet", "vae", "text_encoder"):
        (folder / part).mkdir(parents=True)
    (folder / "unet" / "config.json").write_text('{"in_channels": 4, "cross_attention_dim": 768}')
    for line in ("!switch b", f"!import_model {folder} --name late"):
        reading.clear()
        release.clear()
        threading.Thread(target=lambda: (reading.wait(30), session.cancel.set()), daemon=True).start()
        outcome = session.run_line(line)
        assert outcome.cancelled and outcome.error == "cancelled", line
        session.cancel.clear()
        release.set()
        assert session.run_line("!models").ok  # waits for the leftover work, which must not commit
    assert manager.active_name == "a"
    assert "late" not in Catalogue.load(catalogue).names()
    assert session.run_line("!switch b").ok and manager.active_name == "b"  # not cancelled: done


# ------------------------------------------------------------------------------------- 5. output folders
def _fail_with(code: int) -> Any:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize(
    ("where", "code", "needle"),
    [
        ("mkstemp", errno.EROFS, "read-only"),
        ("mkstemp", errno.EACCES, "permission denied"),
        ("write", errno.ENOSPC, "no space left"),
        ("write", errno.EDQUOT, "quota"),
        ("link", errno.ENOSPC, "no space left"),
    ],
)
def test_unwritable_output_folder_through_the_session(
    manager: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, code: int, needle: str
) -> None:
    out = tmp_path / "shared"
    session = make_session(manager, out)
    goes_on(session)  # one image there already: it must survive
    before = sorted(p.name for p in out.iterdir())
    with monkeypatch.context() as patch:
        if where == "mkstemp":
            patch.setattr(outputs.tempfile, "mkstemp", _fail_with(code))
        elif where == "write":
            real_write = outputs._write_all

            def half(fd: int, data: bytes) -> None:
                real_write(fd, data[: len(data) // 2])
                raise OSError(code, os.strerror(code))

            patch.setattr(outputs, "_write_all", half)
        else:
            patch.setattr(outputs.os, "link", _fail_with(code))
        outcome = session.run_line('"lost" --steps 2 -n 2 --seed 40')
        one_line_error(outcome, needle, str(out))
    assert sorted(p.name for p in out.iterdir()) == before  # nothing partial, no temp, log untouched
    no_debris(out)
    goes_on(session)


def test_full_disk_on_the_second_image_keeps_the_first(manager: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "out"
    session = make_session(manager, out)
    real_write = outputs._write_all
    writes = {"n": 0}

    def second_fails(fd: int, data: bytes) -> None:
        writes["n"] += bytes(data[:4]) == b"\x89PNG"  # the log is appended with _write_all too
        if writes["n"] == 2 and bytes(data[:4]) == b"\x89PNG":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fd, data)

    monkeypatch.setattr(outputs, "_write_all", second_fails)
    one_line_error(session.run_line('"two" --steps 2 -n 2 --seed 50'), "no space left")
    assert sorted(p.name for p in out.glob("*.png")) == ["000001.50.png"]
    no_debris(out)
    monkeypatch.setattr(outputs, "_write_all", real_write)
    assert goes_on(session).name == "000002.9.png"


def test_output_folder_under_a_file(manager: Any, tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file")
    session = make_session(manager, tmp_path / "out")
    one_line_error(session.run_line(f'"x" --steps 2 -o "{tmp_path / "plain" / "sub"}"'), "cannot save")
    one_line_error(session.run_line(f'"x" --steps 2 -o "{tmp_path / "plain"}"'), "not a folder")
    assert (tmp_path / "plain").read_text() == "a file"
    goes_on(session)


# ------------------------------------------------------------------------------------- 6. !fetch paths are text
def test_fetch_treats_metadata_paths_as_text(manager: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "victim.png"
    Image.new("RGB", (8, 8)).save(target)
    canary = tmp_path / "pwned"
    hostile = [
        str(target),
        f"$(touch {canary}).png",
        f"`touch {canary}`; rm -rf /tmp/nothing.png",
        "../../../../etc/shadow",
        "/dev/zero",
        "a\nb.png",
    ]
    created: list[int] = []
    session = Session(
        lambda: created.append(1) or manager, outdir=tmp_path / "out", out=io.StringIO(), err=io.StringIO()
    )
    opened: list[str] = []
    real_open, real_image_open, real_os_open = builtins.open, Image.open, os.open

    def watch(real: Any) -> Any:
        def wrapper(file: Any, *args: Any, **kwargs: Any) -> Any:
            opened.append(str(getattr(file, "name", file)))
            return real(file, *args, **kwargs)

        return wrapper

    for index, path_text in enumerate(hostile):
        meta = {
            "model": "stable diffusion",
            "model_id": "../../evil-model",
            "image": {"prompt": "p", "steps": 5, "seed": 1, "type": "img2img", "strength": 0.5},
        }
        meta["image"]["init_image_path"] = path_text
        info = PngImagePlugin.PngInfo()
        info.add_text("sd-metadata", json.dumps(meta))
        png = tmp_path / f"fetched{index}.png"
        Image.new("RGB", (8, 8)).save(png, pnginfo=info)
        opened.clear()
        with monkeypatch.context() as patch:
            patch.setattr(builtins, "open", watch(real_open))
            patch.setattr(Image, "open", watch(real_image_open))
            patch.setattr(os, "open", watch(real_os_open))
            outcome = session.run_line(f'!fetch "{png}"')
        assert outcome.ok, outcome.error
        edit = outcome.edit
        assert edit is not None and "\n" not in edit
        assert all(Path(seen).name == png.name for seen in opened), opened  # only the PNG itself was read
        request = parse(edit)
        assert request.init_img is not None and request.init_img.replace(" ", "\n") == path_text.replace(" ", "\n")
    assert not canary.exists()
    # no model manager was even created (the metadata's model is not loaded), no image was made
    assert created == [] and session.image_count == 0
    # running the fetched line is what opens the path
    outcome = session.run_line(f'"p" -S2 -s0.5 -I "{target}" --seed 1')
    assert outcome.ok, outcome.error


# ------------------------------------------------------------------------------------- 7. history and logs
def test_unwritable_history_file_warns_once_and_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    (tmp_path / "a file").write_text("x")
    history = CommandHistory(tmp_path / "a file" / "history", warnings.append)  # parent is a file: ENOTDIR
    assert history.read_lines() == []
    for line in ("!dialect", "!help", "!models"):
        history.append_string(line)
    assert len(warnings) == 1 and "cannot write history file" in warnings[0] and "\n" not in warnings[0]
    assert list(history.get_strings()) == ["!dialect", "!help", "!models"]  # kept in memory

    warnings.clear()
    denied = CommandHistory(tmp_path / "history", warnings.append)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "history"))

    monkeypatch.setattr(builtins, "open", refuse)
    denied.append_string("!dialect")
    denied.append_string("!help")
    monkeypatch.undo()
    assert len(warnings) == 1 and "Permission denied" in warnings[0]
    assert list(denied.get_strings()) == ["!dialect", "!help"]


@pytest.mark.parametrize("owned", [False, True])
def test_history_path_is_a_directory_left_where_it_is(tmp_path: Path, owned: bool) -> None:
    warnings: list[str] = []
    (tmp_path / "history").mkdir()
    (tmp_path / "history" / "notes.txt").write_text("mine")
    history = CommandHistory(tmp_path / "history", warnings.append, owned=owned)
    assert history.read_lines() == []
    history.append_string("!dialect")
    assert len(warnings) == 1 and "is a directory" in warnings[0] and "\n" not in warnings[0]
    assert (tmp_path / "history" / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["history"]  # nothing renamed


def test_a_history_that_is_a_fifo_or_a_device_is_never_read(tmp_path: Path) -> None:
    """A FIFO blocked before the prompt appeared; /dev/zero read until memory ran out. /dev/null keeps working."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        warnings: list[str] = []
        history = CommandHistory(path, warnings.append)
        assert history.read_lines() == [] and len(warnings) == 1 and "is not a regular file" in warnings[0]
        history.append_string("!help")  # kept in memory only: nothing written to the FIFO or the device
        assert list(history.get_strings()) == ["!help"]
    quiet: list[str] = []
    assert CommandHistory(Path(os.devnull), quiet.append).read_lines() == [] and quiet == []
    (tmp_path / "dangling").symlink_to(tmp_path / "not-yet")
    said: list[str] = []
    assert CommandHistory(tmp_path / "dangling", said.append).read_lines() == []
    assert said == [
        f"warning: history file {tmp_path / 'dangling'} is a link that leads nowhere; history is kept in memory only"
    ]


def test_a_named_history_file_in_another_encoding_is_left_alone(tmp_path: Path) -> None:
    """--history-file pointing at the user's Latin-1 notes: not ours to move; the default file, or junk, is."""
    notes = tmp_path / "notes.txt"
    notes.write_bytes("café au lait\n".encode("latin-1"))
    warnings: list[str] = []
    history = CommandHistory(notes, warnings.append)
    assert history.read_lines() == []
    history.append_string("!dialect")
    assert notes.read_bytes() == "café au lait\n".encode("latin-1")
    assert len(warnings) == 1 and "left as it is" in warnings[0]
    owned = CommandHistory(notes, warnings.append, owned=True)
    assert owned.read_lines() == [] and not notes.exists() and list(tmp_path.glob("notes.txt.corrupt-*"))


def test_unwritable_log_is_a_warning_and_the_image_is_kept(manager: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / outputs.LOG_NAME).mkdir(parents=True)  # a folder where the log file should be
    session = make_session(manager, out)
    path = goes_on(session)
    warning = session.err.getvalue()  # type: ignore[attr-defined]
    assert "warning: could not append to the log" in warning and warning.count("\n") == 1
    assert path.parent == out
    goes_on(session)


def test_history_numbers_are_the_same_after_a_restart(manager: Any, tmp_path: Path) -> None:
    """`!NN` numbers the lines run_line remembers; the history file holds every line typed, so reading it back at
    start-up must drop the same ones (blank, #, !history, !NN), or !1 recalls another line after a restart."""
    typed = ["!dialect legacy", "# a note", "!history", "!dialect guide", "!1", "!help", "-s50 bad under guide"]
    first = make_session(manager, tmp_path / "out")
    for line in typed:
        first.run_line(line)
    restarted = make_session(manager, tmp_path / "out")
    assert restarted.numbered_history(typed) == first.history
    assert first.history == ["!dialect legacy", "!dialect guide", "!help"]
    # A line valid only in the dialect it was typed in keeps its number too.
    legacy = ["!dialect legacy", '"cat" -s 50 -S 7', "!dialect guide", '"cat" -S 50 -s 0.5 -I x.png']
    assert make_session(manager, tmp_path / "out").numbered_history(legacy) == legacy


def test_fetch_of_a_folder_says_it_is_not_a_file(manager: Any, tmp_path: Path) -> None:
    session = make_session(manager, tmp_path / "out")
    (tmp_path / "pictures").mkdir()
    one_line_error(session.run_line(f"!fetch {tmp_path / 'pictures'}"), "is not a file")


def test_a_lora_in_the_prompt_is_refused_not_silently_dropped(manager: Any, tmp_path: Path) -> None:
    session = make_session(manager, tmp_path / "out")
    for line in (
        '"withLora(foo)" -S2 --seed 1',
        '"withLora(foo, 0.5) a cat" -S2 --seed 1',
        '"a" --negative "withLora(x)" -S1',
        '"a cat <lora:add_detail:0.8>" -S2 --seed 1',
    ):
        one_line_error(session.run_line(line), "asks for a LoRA, and invoke-repl loads none")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.png"))


def test_an_image_whose_strip_fails_to_save_is_still_announced(
    manager: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from invoke_repl.metadata import OutputError

    def full_disk(*args: Any) -> Any:
        raise OutputError(f"cannot save in {tmp_path / 'out'}: no space left on the device")

    monkeypatch.setattr(outputs, "save_steps_strip", full_disk)
    session = make_session(manager, tmp_path / "out")
    outcome = session.run_line('"x" -S3 --seed 5 --save-steps')
    assert outcome.ok and session.image_count == 1 and session.last_seed == 5
    assert "[1] " in session.out.getvalue() and (tmp_path / "out" / "000001.5.png").is_file()
    assert "000001.5.png" in (tmp_path / "out" / outputs.LOG_NAME).read_text()
    assert "is saved, but its --save-steps strip is not: cannot save in" in session.err.getvalue()


def test_save_steps_with_no_steps_taken_says_why_there_is_no_strip(manager: Any, tmp_path: Path) -> None:
    Image.new("RGB", (32, 32), (200, 80, 20)).save(tmp_path / "init.png")
    session = make_session(manager, tmp_path / "out")
    assert session.run_line(f'"x" -S10 -s0.05 -I {tmp_path / "init.png"} --seed 5 --save-steps').ok
    assert "no --save-steps strip for 000001.5.png: it took 0 steps" in session.err.getvalue()


def test_a_commands_images_follow_a_bumped_prefix_together(
    manager: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process saved 000001.5.png between our prefix reservation and our save: our seed-5 image becomes
    000002.5, and the rest of the command (seed 6, the grid) goes to 000002 with it, not back to 000001."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "000001.5.png").write_bytes(b"theirs")
    monkeypatch.setattr(outputs, "reserve_prefix", lambda outdir: 1)
    session = make_session(manager, out)
    assert session.run_line('"x" -S2 --seed 5 -n 2 -g').ok
    assert sorted(p.name for p in out.glob("*.png")) == [
        "000001.5.png",
        "000002.5.grid.png",
        "000002.5.png",
        "000002.6.png",
    ]
    assert (out / "000001.5.png").read_bytes() == b"theirs"


def test_fetch_says_which_sampler_it_could_not_carry_over(manager: Any, tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: UniPC, CFG scale: 5, Seed: 1, Size: 64x64")
    Image.new("RGB", (8, 8)).save(tmp_path / "a1111.png", pnginfo=info)
    session = make_session(manager, tmp_path / "out")
    outcome = session.run_line(f"!fetch {tmp_path / 'a1111.png'}")
    assert outcome.ok and "--sampler k_lms" in outcome.edit
    assert "sampler 'UniPC' is not one invoke-repl has" in session.err.getvalue()


def test_fetch_takes_a_path_quoted_as_the_printed_lines_quote_it(manager: Any, tmp_path: Path) -> None:
    session = make_session(manager, tmp_path / "out")
    assert session.run_line('"x" -S2 --seed 5').ok
    odd = tmp_path / 'it\'s "fire".png'
    (tmp_path / "out" / "000001.5.png").rename(odd)
    quoted = '"' + str(odd).replace("\\", "\\\\").replace('"', '\\"') + '"'
    outcome = session.run_line(f"!fetch {quoted}")
    assert outcome.ok and outcome.edit is not None and "--seed 5" in outcome.edit
    typographic = tmp_path / "my fire.png"
    odd.rename(typographic)
    outcome = session.run_line(f"!fetch \u201c{typographic}\u201d")  # pasted from a chat app
    assert outcome.ok and outcome.edit is not None and "--seed 5" in outcome.edit


def test_fetch_says_when_the_image_was_made_on_another_device_or_precision(manager: Any, tmp_path: Path) -> None:
    """The line carries every setting but not the device and precision, which still change the pixels."""
    import json

    session = make_session(manager, tmp_path / "out")
    assert session.run_line('"x" -S2 --seed 5').ok
    made = tmp_path / "out" / "000001.5.png"
    with Image.open(made) as image:
        chunks = dict(image.text)
    meta = json.loads(chunks["sd-metadata"])
    assert (meta["device"], meta["precision"]) == ("cpu", "float32")
    assert session.run_line(f"!fetch {made}").ok
    assert "was made on" not in session.err.getvalue()  # same device, same precision: the same image

    meta.update(device="cuda", precision="float16")
    info = PngImagePlugin.PngInfo()
    for key, value in {**chunks, "sd-metadata": json.dumps(meta)}.items():
        info.add_text(key, value)
    Image.new("RGB", (8, 8)).save(tmp_path / "from-the-gpu.png", pnginfo=info)
    outcome = session.run_line(f"!fetch {tmp_path / 'from-the-gpu.png'}")
    assert outcome.ok and outcome.edit is not None and "--seed 5" in outcome.edit
    said = session.err.getvalue()
    assert "made on cuda in float16; this session runs on cpu in float32" in said and said.count("\n") == 1


class _GoneTerminal(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(5, "Input/output error")  # a closed terminal


def test_an_image_is_logged_even_when_its_printed_line_cannot_be_written(manager: Any, tmp_path: Path) -> None:
    session = Session(lambda: manager, outdir=tmp_path / "out", out=_GoneTerminal(), err=io.StringIO(), progress=False)
    outcome = session.run_line(GOOD)
    assert not outcome.ok and "Input/output error" in (outcome.error or "")
    assert (tmp_path / "out" / "000001.9.png").is_file()
    assert "000001.9.png" in (tmp_path / "out" / "invoke_log.txt").read_text()  # printed first, it was lost


def test_a_broken_history_file_is_read_and_reported_once(tmp_path: Path) -> None:
    """The session numbers the file's lines and prompt_toolkit loads them for recall: two reads, two warnings."""
    warnings: list[str] = []
    latin1 = tmp_path / "latin1"
    latin1.write_bytes("café\n".encode("latin-1"))
    history = CommandHistory(latin1, warnings.append)
    assert history.read_lines() == [] and list(history.load_history_strings()) == []
    assert len(warnings) == 1 and "not UTF-8" in warnings[0]
    assert latin1.read_bytes() == "café\n".encode("latin-1")  # named by the user: left as it is


def test_a_line_that_is_not_utf8_is_not_written_to_the_history_file(tmp_path: Path) -> None:
    """A surrogate-escaped byte (typed or pasted) failed the write inside prompt_toolkit: a traceback."""
    warnings: list[str] = []
    history = CommandHistory(tmp_path / "history", warnings.append)
    history.append_string("caf\udce9 -S10")
    history.append_string("!dialect")
    assert (tmp_path / "history").read_text() == "!dialect\n" and warnings == []


def test_replayed_lines_are_not_numbered_so_numbers_survive_a_restart(manager: Any, tmp_path: Path) -> None:
    """A replayed file's lines were numbered in the session but never reached the history file: after a restart
    every later `!NN` named another line."""
    script = tmp_path / "rep.txt"
    script.write_text('"r1" --steps 2 --seed 1\n"r2" --steps 2 --seed 2\n')
    session = make_session(manager, tmp_path / "out")
    for line in ("!dialect", f'!replay "{script}"', '"after" --steps 2 --seed 3'):
        assert session.run_line(line).ok
    assert session.history == ["!dialect", f'!replay "{script}"', '"after" --steps 2 --seed 3']
    assert session.last_path is not None and session.last_path.name.endswith(".3.png")


def test_a_read_only_log_file_is_not_blamed_on_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`chmod 444 invoke_log.txt` in a writable folder was reported as "the folder is not writable"."""
    import errno

    from invoke_repl import outputs

    log = tmp_path / outputs.LOG_NAME
    real_open = os.open

    def read_only_log(path: Any, flags: int, *args: Any) -> int:
        if Path(path) == log:  # as the kernel answers a non-root user (root may write read-only files)
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only_log)
    warning = outputs.append_log(tmp_path, "[1] x.png: x")
    assert warning is not None and "the log file is read-only" in warning and "folder" not in warning
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # and where the folder is the reason, it says so
    assert "the folder is not writable" in (outputs.append_log(tmp_path, "[1] x.png: x") or "")


def test_a_long_command_keeps_no_finished_image_in_memory(
    manager: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every image of a `-n` stayed referenced until the command ended, grid or not (16 MiB each at 2048²)."""
    import gc
    import weakref

    from invoke_repl import outputs

    alive: list[weakref.ref] = []
    real_save = outputs.save_image

    def save_and_count(outdir: Path, prefix: int, generated: Any, **kwargs: Any) -> Path:
        gc.collect()
        alive.append(sum(ref() is not None for ref in list(alive_refs)))
        alive_refs.append(weakref.ref(generated.image))
        return real_save(outdir, prefix, generated, **kwargs)

    alive_refs: list[weakref.ref] = []
    monkeypatch.setattr(outputs, "save_image", save_and_count)
    session = make_session(manager, tmp_path / "out")
    assert session.run_line('"many" --steps 1 --seed 1 -n 4').ok
    assert alive == [0, 0, 0, 0]  # while each image is saved, none before it is still held
    assert session.run_line('"many" --steps 1 --seed 1 -n 3 -g').ok  # the grid keeps what it needs
    assert alive[4:] == [0, 1, 2] and any(p.name.endswith(".grid.png") for p in (tmp_path / "out").iterdir())


def test_a_grid_that_cannot_be_saved_is_a_warning_not_a_failed_line(
    manager: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from invoke_repl import outputs
    from invoke_repl.metadata import OutputError

    def no_room(*args: Any, **kwargs: Any) -> Path:
        raise OutputError("cannot save in out: File too large")

    monkeypatch.setattr(outputs, "save_grid", no_room)
    session = make_session(manager, tmp_path / "out")
    outcome = session.run_line('"grid" --steps 1 --seed 1 -n 2 -g')
    assert outcome.ok and outcome.images == 2
    assert "the 2 images are saved, but their grid is not: cannot save in out: File too large" in session.err.getvalue()


def test_an_empty_outdir_variable_is_the_default_folder_not_the_working_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from invoke_repl.session import default_outdir

    monkeypatch.setenv("INVOKE_REPL_OUTDIR", "")
    assert default_outdir() == Path("outputs")
    monkeypatch.setenv("INVOKE_REPL_OUTDIR", "/tmp/pics")
    assert default_outdir() == Path("/tmp/pics")


def test_a_library_that_calls_sys_exit_at_import_fails_the_line_not_the_session(tmp_path: Path) -> None:
    def exits() -> Any:
        raise SystemExit("torch needs a newer glibc")

    session = Session(exits, outdir=tmp_path, out=io.StringIO(), err=io.StringIO(), progress=False)
    one_line_error(session.run_line('"x" --steps 1 --seed 1'), "torch needs a newer glibc")
    assert session.run_line("!help").ok

    def bare_exit() -> Any:
        raise SystemExit()

    quiet = Session(bare_exit, outdir=tmp_path, out=io.StringIO(), err=io.StringIO(), progress=False)
    one_line_error(quiet.run_line('"x" --steps 1 --seed 1'), "model code exited: SystemExit")
