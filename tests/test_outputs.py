"""Output files: names and prefixes, never overwriting, atomic publish under concurrency and SIGKILL, failures.

Tiny 8×8 PIL images only; child processes import invoke_repl.outputs (no torch) and are started with the
current interpreter.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from invoke_repl import outputs
from invoke_repl.outputs import (
    LOG_NAME,
    OutputError,
    append_log,
    grid_shape,
    prefix_of,
    read_request,
    reserve_prefix,
    save_grid,
    save_image,
    save_steps_strip,
)
from invoke_repl.request import Request
from invoke_repl.results import GeneratedImage

REPO = Path(__file__).resolve().parents[1]
HASH = "ab" * 32


def make(seed: int, prompt: str = "fire", previews: int = 0, **changes: object) -> GeneratedImage:
    request = Request(prompt=prompt, seed=seed, steps=10, width=8, height=8, model="tiny-random").replace(**changes)
    frames = [Image.new("RGB", (8, 8), (i * 20 % 256, 0, 0)) for i in range(previews)]
    return GeneratedImage(
        image=Image.new("RGB", (8, 8), (seed % 256, 0, 0)),
        request=request,
        steps_taken=request.steps_taken,
        previews=frames,
    )


def save(outdir: Path, prefix: int, g: GeneratedImage) -> Path:
    return save_image(outdir, prefix, g, model_hash=HASH, app_version="test")


def names(outdir: Path) -> list[str]:
    return sorted(os.listdir(outdir))


# ------------------------------------------------------------------------------------------ prefixes
def test_reserve_prefix_empty_and_missing(tmp_path: Path) -> None:
    assert reserve_prefix(tmp_path) == 1
    deep = tmp_path / "a" / "b"
    assert reserve_prefix(deep) == 1 and deep.is_dir()
    assert names(deep) == []  # the writability probe leaves nothing behind


def test_reserve_prefix_ignores_temps_and_other_files(tmp_path: Path) -> None:
    for name in ("000007.5.png", "000003.1.steps.png", "notes.txt", "invoke_log.txt", ".000099.9.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".invoke-abc.tmp").write_bytes(b"partial")
    assert reserve_prefix(tmp_path) == 8


def test_n3_seed5_shares_one_prefix(tmp_path: Path) -> None:
    (tmp_path / "000006.99.png").write_bytes(b"older")
    prefix = reserve_prefix(tmp_path)  # once per command
    paths = [save(tmp_path, prefix, make(seed)) for seed in (5, 6, 7)]
    assert [p.name for p in paths] == ["000007.5.png", "000007.6.png", "000007.7.png"]
    assert [read_request(p).seed for p in paths] == [5, 6, 7]
    assert names(tmp_path) == ["000006.99.png", *[p.name for p in paths]]  # no temp left
    assert reserve_prefix(tmp_path) == 8


def test_existing_file_never_overwritten(tmp_path: Path) -> None:
    taken = tmp_path / "000001.5.png"
    taken.write_bytes(b"someone else's picture")
    (tmp_path / "000002.5.png").write_bytes(b"and another")
    path = save(tmp_path, 1, make(5))
    assert path.name == "000003.5.png"  # bumped past both taken names
    assert taken.read_bytes() == b"someone else's picture"
    assert (tmp_path / "000002.5.png").read_bytes() == b"and another"


@pytest.mark.parametrize("where", ["end", "middle", "loop"])
def test_an_output_folder_behind_a_link_that_leads_nowhere_says_so(tmp_path: Path, where: str) -> None:
    """mkdir said only "File exists" for `-o dangling`, `-o dangling/sub` and a link loop."""
    link = tmp_path / "pictures"
    link.symlink_to(link if where == "loop" else tmp_path / "unplugged-drive" / "pictures")
    outdir = link / "sub" if where == "middle" else link
    with pytest.raises(OutputError) as caught:
        save(outdir, 1, make(5))
    target = link if where == "loop" else tmp_path / "unplugged-drive" / "pictures"
    says = f"{link} is a link to {target}, which does not exist (or loops)"
    assert str(caught.value) == f"cannot save in {outdir}: {says}"


def test_same_seed_twice_in_one_command(tmp_path: Path) -> None:
    """-n 2 with variations keeps the base seed: the second image takes the next prefix, deterministically."""
    first = save(tmp_path, 4, make(5, with_variations=((11, 0.2),)))
    second = save(tmp_path, 4, make(5, with_variations=((12, 0.2),)))
    assert (first.name, second.name) == ("000004.5.png", "000005.5.png")
    assert read_request(second).with_variations == ((12, 0.2),)
    assert prefix_of(second) == 5


def test_files_are_complete_pngs_with_ordinary_permissions(tmp_path: Path) -> None:
    path = save(tmp_path, 1, make(9))
    with Image.open(path) as im:
        im.load()
        assert im.size == (8, 8)
    assert path.stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------------------- strips, grids
def test_steps_strip_one_frame_per_preview(tmp_path: Path) -> None:
    g = make(5, previews=7, init_img="fire.png", strength=0.7)
    assert g.steps_taken == 7
    save(tmp_path, 3, g)
    strip = save_steps_strip(tmp_path, 3, g)
    assert strip.name == "000003.5.steps.png"
    with Image.open(strip) as im:
        assert im.size == (7 * 8, 8)
        assert im.info["Frames"] == "7"
        assert im.getpixel((8 * 6, 0)) == (120, 0, 0)  # the last frame sits last


def test_steps_strip_follows_a_bumped_image(tmp_path: Path) -> None:
    (tmp_path / "000003.5.png").write_bytes(b"another process")
    g = make(5, previews=4)
    image = save(tmp_path, 3, g)
    strip = save_steps_strip(tmp_path, 3, g)
    assert (image.name, strip.name) == ("000004.5.png", "000004.5.steps.png")


def test_steps_strip_needs_previews(tmp_path: Path) -> None:
    with pytest.raises(OutputError):
        save_steps_strip(tmp_path, 1, make(5))


@pytest.mark.parametrize(("count", "shape"), [(1, (1, 1)), (2, (1, 2)), (3, (2, 2)), (5, (2, 3)), (9, (3, 3))])
def test_grid_shape(count: int, shape: tuple[int, int]) -> None:
    assert grid_shape(count) == shape


def test_save_grid(tmp_path: Path) -> None:
    images = [make(s).image for s in (5, 6, 7)]
    path = save_grid(tmp_path, 2, images, 5)
    assert path.name == "000002.5.grid.png"
    with Image.open(path) as im:
        assert im.size == (16, 16)
        assert im.getpixel((0, 8)) == (7, 0, 0)  # third image: second row, first column
    assert save_grid(tmp_path, 2, images, 5).name == "000003.5.grid.png"


# ------------------------------------------------------------------------------------------- failures
def test_outdir_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "outputs"
    target.write_text("not a folder")
    for call in (lambda: reserve_prefix(target), lambda: save(target, 1, make(5))):
        with pytest.raises(OutputError, match="not a folder") as info:
            call()
        assert "\n" not in str(info.value)


def test_read_only_folder_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EROFS from the filesystem (as root, chmod alone would not stop us)."""

    def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(outputs.tempfile, "mkstemp", refuse)
    for call in (lambda: reserve_prefix(tmp_path), lambda: save(tmp_path, 1, make(5))):
        with pytest.raises(OutputError, match="read-only") as info:
            call()
        assert "\n" not in str(info.value)
    assert names(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_real(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            reserve_prefix(folder)
        with pytest.raises(OutputError):
            save(folder, 1, make(5))
        assert names(folder) == []
    finally:
        folder.chmod(0o755)


def test_full_disk_mid_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "_write_all", full)
    with pytest.raises(OutputError, match="no space left") as info:
        save(tmp_path, 1, make(5))
    assert "\n" not in str(info.value)
    assert names(tmp_path) == []


def test_a_log_line_is_appended_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / outputs.LOG_NAME
    log.write_text('[1] a.png: "a" --steps 2\n')
    real = outputs._write_all

    def full(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "_write_all", full)
    assert "no space left" in (outputs.append_log(tmp_path, '[2] b.png: "b" --steps 2 --height 64') or "").lower()
    assert log.read_text() == '[1] a.png: "a" --steps 2\n'  # the half line is gone
    monkeypatch.setattr(outputs, "_write_all", real)
    log.write_text('[1] a.png: "a" --steps 2 --heigh')  # a process that died mid-line, before this fix
    assert outputs.append_log(tmp_path, '[2] b.png: "b" --steps 2') is None
    assert log.read_text().splitlines() == ['[1] a.png: "a" --steps 2 --heigh', '[2] b.png: "b" --steps 2']


def test_filesystem_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(outputs.os, "link", no_links)
    taken = tmp_path / "000001.5.png"
    taken.write_bytes(b"keep me")
    path = save(tmp_path, 1, make(5))
    assert path.name == "000002.5.png"
    assert taken.read_bytes() == b"keep me"
    assert read_request(path).seed == 5
    assert names(tmp_path) == ["000001.5.png", "000002.5.png"]


def test_stale_temps_swept_fresh_ones_kept(tmp_path: Path) -> None:
    stale = tmp_path / ".invoke-old.tmp"
    fresh = tmp_path / ".invoke-new.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    old = time.time() - 2 * outputs.STALE_TEMP_SECONDS
    os.utime(stale, (old, old))
    assert reserve_prefix(tmp_path) == 1
    assert not stale.exists() and fresh.exists()


# ------------------------------------------------------------------------------------------------ log
def test_append_log(tmp_path: Path) -> None:
    assert append_log(tmp_path, '[1] outputs/000001.5.png: "fire" --steps 10') is None
    assert append_log(tmp_path, "[2] x.png: two\nlines") is None
    assert (tmp_path / LOG_NAME).read_text() == '[1] outputs/000001.5.png: "fire" --steps 10\n[2] x.png: two lines\n'


def test_append_log_unwritable_warns(tmp_path: Path) -> None:
    (tmp_path / LOG_NAME).mkdir()  # the log name is taken by a folder
    warning = append_log(tmp_path, "[1] a.png: x")
    assert warning is not None and warning.startswith("warning:") and "\n" not in warning
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert append_log(blocked, "[1] a.png: x") is not None


def test_append_log_corrupt_log_is_appended_to(tmp_path: Path) -> None:
    (tmp_path / LOG_NAME).write_bytes(b"\xff\xfe\x00garbage without newline")
    assert append_log(tmp_path, "[1] a.png: ok") is None
    assert (tmp_path / LOG_NAME).read_bytes().endswith(b"[1] a.png: ok\n")


# -------------------------------------------------------------------------------------- processes
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from PIL import Image
    from invoke_repl.outputs import reserve_prefix, save_image
    from invoke_repl.request import Request
    from invoke_repl.results import GeneratedImage

    outdir, proc, count, go = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    (outdir.parent / f"ready-{proc}").touch()
    while not go.exists():
        time.sleep(0.002)
    for i in range(count):
        prefix = reserve_prefix(outdir)  # every process reserves and uses the same seeds: names collide
        request = Request(prompt=f"proc {proc} image {i}", seed=i, steps=10, width=8, height=8)
        image = Image.new("RGB", (8, 8), (proc * 60, i * 10, 0))
        save_image(outdir, prefix, GeneratedImage(image, request, 10), model_hash="", app_version="t")
    """
)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def test_four_processes_share_one_folder(tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    outdir.mkdir()
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(outdir), str(p), "25", str(go)], env=_env())
        for p in range(4)
    ]
    deadline = time.time() + 60
    while not all((tmp_path / f"ready-{p}").exists() for p in range(4)):
        assert time.time() < deadline and all(pr.poll() is None for pr in procs)
        time.sleep(0.01)
    go.touch()  # all four start writing at once
    assert [pr.wait(timeout=120) for pr in procs] == [0, 0, 0, 0]

    files = names(outdir)
    assert len(files) == 100 and all(not f.startswith(".") for f in files)
    made = set()
    for name in files:
        request = read_request(outdir / name)
        assert name.endswith(f".{request.seed}.png")
        made.add(request.prompt)
        with Image.open(outdir / name) as im:
            im.load()
    assert made == {f"proc {p} image {i}" for p in range(4) for i in range(25)}  # nothing overwritten


KILLED_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from PIL import Image
    from invoke_repl import outputs
    from invoke_repl.request import Request
    from invoke_repl.results import GeneratedImage

    outdir, ready = Path(sys.argv[1]), Path(sys.argv[2])

    def slow_write(fd, data):
        os.write(fd, data[: len(data) // 2])
        ready.touch()
        time.sleep(60)  # killed here, half a PNG written
        os.write(fd, data[len(data) // 2 :])

    outputs._write_all = slow_write
    request = Request(prompt="killed", seed=5, steps=10, width=8, height=8)
    image = Image.new("RGB", (8, 8))
    outputs.save_image(outdir, 1, GeneratedImage(image, request, 10), model_hash="", app_version="t")
    """
)


def test_sigkill_mid_save_leaves_no_partial_png(tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    outdir.mkdir()
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(outdir), str(ready)], env=_env())
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert time.time() < deadline and child.poll() is None
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    leftovers = names(outdir)
    assert [n for n in leftovers if not n.startswith(".")] == []  # no final name at all
    assert len(leftovers) == 1 and leftovers[0].startswith(".invoke-") and leftovers[0].endswith(".tmp")
    # the session after the crash carries on: the stale temp does not count, the next save is whole
    assert reserve_prefix(outdir) == 1
    path = save(outdir, 1, make(5))
    assert path.name == "000001.5.png" and read_request(path).seed == 5


def test_numbers_too_long_for_an_image_count_do_not_set_the_prefix(tmp_path) -> None:
    (tmp_path / "000041.7.png").write_bytes(b"")
    (tmp_path / "20240101123456.png").write_bytes(b"")  # a camera's or another tool's timestamp name
    (tmp_path / ("9" * 250 + ".png")).write_bytes(b"")
    assert reserve_prefix(tmp_path) == 42
