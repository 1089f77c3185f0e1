"""Output files: names, atomic publishing, step strips, grids and the output log.

A REPL session runs for hours and several may share one folder, so every file here is published the same way:
the PNG is encoded in memory, written to a temporary file in the destination folder (``.invoke-XXXX.tmp``: a dot
name, so listings, globs and `reserve_prefix` ignore it), fsync'd, and then given its final name with
``os.link(tmp, final)``. A hard link is atomic and fails when the name exists, so a final name only ever holds a
complete PNG and is never overwritten — not by another process, not by our own next image, not when a process is
SIGKILLed mid-write (at worst a stale ``.tmp`` remains; those older than an hour are swept by `reserve_prefix`).

Names are ``{prefix:06d}.{seed}.png``; ``.steps.png`` and ``.grid.png`` for strips and grids. The prefix is one
more than the highest present, taken once per command by the caller, so the images of ``-n 3 --seed 5`` are
``000007.5.png``, ``000007.6.png``, ``000007.7.png``. When a name is already taken (another process reserved the
same prefix, or two images of one command share a seed through variations), the prefix is bumped by one until
the link succeeds: ``000007.5.png`` → ``000008.5.png`` → …. That keeps every name in the documented pattern, is
deterministic for a given folder, and cannot loop forever (`MAX_BUMPS`). A step strip follows its image's
final prefix (remembered per process), so a bumped image keeps its strip beside it.

On a filesystem without hard links (FAT, some network mounts) the name is claimed with ``O_EXCL`` and the
finished temp renamed over the claim: still never an overwrite, but a crash in that instant can leave an empty
file under the final name. Every failure — read-only folder, full disk, a file where the folder should be — is an
`OutputError` with one line the session prints before going on; the temp is removed on the way out.
"""

from __future__ import annotations

import errno
import io
import math
import os
import re
import tempfile
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from invoke_repl.metadata import MetadataError, OutputError, png_info, read_request, text_chunks

if TYPE_CHECKING:
    from PIL import Image

    from invoke_repl.results import GeneratedImage

__all__ = [
    "LOG_NAME",
    "MetadataError",
    "OutputError",
    "append_log",
    "image_name",
    "prefix_of",
    "read_request",
    "reserve_prefix",
    "save_grid",
    "save_image",
    "save_steps_strip",
]

LOG_NAME = "invoke_log.txt"
TEMP_PREFIX = ".invoke-"
TEMP_SUFFIX = ".tmp"
STALE_TEMP_SECONDS = 3600.0
MAX_BUMPS = 10_000  # a folder with 10,000 taken names in a row is broken, not busy
_NUMBERED = re.compile(r"^(\d+)\.")
_LINK_UNSUPPORTED = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}


# (folder, reserved prefix, seed) → the prefix the image really got, so its step strip lands beside it.
_published: OrderedDict[tuple[str, int, int], int] = OrderedDict()
_PUBLISHED_MAX = 256


def image_name(prefix: int, seed: int, suffix: str = "") -> str:
    """``{prefix:06d}.{seed}{suffix}.png`` — the one place the pattern is spelled."""
    return f"{prefix:06d}.{seed}{suffix}.png"


def prefix_of(path: Path) -> int:
    """The numeric prefix of one of our file names (``000007.5.png`` → 7)."""
    match = _NUMBERED.match(Path(path).name)
    if not match:
        raise ValueError(f"{path} is not named NNNNNN.SEED.png")
    return int(match.group(1))


def _reason(exc: OSError) -> str:
    known = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "the folder is on a read-only file system",
        errno.EACCES: "permission denied (the folder is not writable)",
        errno.EPERM: "operation not permitted",
        errno.ENOTDIR: "not a directory",
        errno.EISDIR: "is a directory",
    }
    return known.get(exc.errno or 0, exc.strerror or str(exc) or type(exc).__name__)


def _error(outdir: Path, exc: OSError) -> OutputError:
    return OutputError(f"cannot save in {outdir}: {_reason(exc)}")


def _ensure_dir(outdir: Path) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"cannot save in {outdir}: it is a file, not a folder")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        # A link that leads nowhere, on the path or at its end: mkdir says only "File exists".
        for part in (outdir, *outdir.parents):
            if part.is_symlink() and not part.exists():
                target = os.readlink(part)
                raise OutputError(
                    f"cannot save in {outdir}: {part} is a link to {target}, which does not exist (or loops)"
                ) from exc
        raise _error(outdir, exc) from exc
    except OSError as exc:
        raise _error(outdir, exc) from exc


def _write_all(fd: int, data: bytes) -> None:
    """os.write until done (a regular file may take less than all of it). Tests slow this down or make it fail."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _append_whole_line(fd: int, data: bytes) -> None:
    """A whole line or none. A full disk (or `ulimit -f`) left half a line without its newline, the next session's
    line was glued onto it, and `!replay` of the log then failed on `--heigh[1]`, losing both images' lines. So a
    line that could not be written whole is cut back off, and a file that does not end in a newline (an older
    leftover, or a write the process died in) gets one first."""
    start = os.fstat(fd).st_size
    try:
        if start and os.pread(fd, 1, start - 1) != b"\n":
            data = b"\n" + data
    except OSError:  # not readable (a write-only log): append as before
        pass
    try:
        _write_all(fd, data)
    except OSError:
        try:
            if os.fstat(fd).st_size - start <= len(data):  # only our part: another process's line stays
                os.ftruncate(fd, start)
        except OSError:
            pass
        raise


def _fsync_dir(outdir: Path) -> None:
    """Make the new name durable too; not every filesystem allows fsync on a folder, and that is fine."""
    try:
        fd = os.open(outdir, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sweep_stale_temps(outdir: Path, entries: Sequence[os.DirEntry[str]]) -> None:
    """Remove our temps left by killed processes; an hour is far longer than any live write takes."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for entry in entries:
        if entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX):
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
            except OSError:
                pass


def reserve_prefix(outdir: Path) -> int:
    """One more than the highest ``NNNNNN.`` prefix in `outdir` (created if missing); call once per command.

    Also checks now that the folder takes a file, so a read-only folder is reported before a long generation
    rather than after it. Dot files (our temps included) are ignored.
    """
    outdir = Path(outdir)
    _ensure_dir(outdir)
    try:
        with os.scandir(outdir) as it:
            entries = list(it)
        fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=outdir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _error(outdir, exc) from exc
    _sweep_stale_temps(outdir, entries)
    highest = 0
    for entry in entries:
        if entry.name.startswith("."):
            continue
        match = _NUMBERED.match(entry.name)
        if match and len(match.group(1)) <= MAX_PREFIX_DIGITS:
            highest = max(highest, int(match.group(1)))
    return highest + 1


# Longer numbers are some other file's name, not a count of images (a timestamp such as 20240101123456.png, or
# one file of 250 nines, after which every save failed with "File name too long"): they do not set the prefix.
MAX_PREFIX_DIGITS = 9


def _link_no_replace(tmp: str, final: Path) -> None:
    """Give the finished temp the name `final`, failing with FileExistsError if it is taken."""
    try:
        os.link(tmp, final)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _LINK_UNSUPPORTED:
            raise
    # no hard links here: claim the name exclusively, then move the complete file onto the claim
    fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)
    try:
        os.replace(tmp, final)
    except OSError:
        os.unlink(final)
        raise


def _publish(outdir: Path, prefix: int, seed: int, suffix: str, data: bytes) -> Path:
    """Write `data` under the first free ``{prefix+k:06d}.{seed}{suffix}.png``, k = 0, 1, … (see module doc)."""
    outdir = Path(outdir)
    _ensure_dir(outdir)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=outdir)
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes 0600; outputs are ordinary shareable files
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        for bump in range(MAX_BUMPS):
            final = outdir / image_name(prefix + bump, seed, suffix)
            try:
                _link_no_replace(tmp, final)
            except FileExistsError:
                continue
            _fsync_dir(outdir)
            return final
        raise OutputError(f"cannot save in {outdir}: {MAX_BUMPS} names in a row after prefix {prefix} are taken")
    except OSError as exc:
        raise _error(outdir, exc) from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _encode_png(image: Image.Image, chunks: Mapping[str, str] | None = None) -> bytes:
    if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=png_info(chunks) if chunks else None)
    return buf.getvalue()


def _remember(outdir: Path, prefix: int, seed: int, actual: int) -> None:
    key = (str(Path(outdir).resolve()), prefix, seed)
    _published[key] = actual
    _published.move_to_end(key)
    while len(_published) > _PUBLISHED_MAX:
        _published.popitem(last=False)


def save_image(outdir: Path, prefix: int, generated: GeneratedImage, *, model_hash: str, app_version: str) -> Path:
    """Save one generated image with its Dream / sd-metadata / parameters chunks; returns the final path."""
    chunks = text_chunks(generated, model_hash=model_hash, app_version=app_version)
    path = _publish(Path(outdir), prefix, generated.seed, "", _encode_png(generated.image, chunks))
    _remember(Path(outdir), prefix, generated.seed, prefix_of(path))
    return path


def save_steps_strip(outdir: Path, prefix: int, generated: GeneratedImage) -> Path:
    """``{prefix}.{seed}.steps.png``: the step previews left to right, one frame per step actually taken.

    Frames keep their own sizes, top-aligned on black, so a strip of equal previews is exactly N frames wide.
    The frame count is also written as a ``Frames`` text chunk. If this process bumped the image's prefix, the
    strip uses the bumped one so the two stay side by side.
    """
    frames = list(generated.previews)
    if not frames:
        raise OutputError("no step previews to save (nothing was recorded, or no steps were taken)")
    from PIL import Image

    width = sum(f.width for f in frames)
    height = max(f.height for f in frames)
    strip = Image.new("RGB", (width, height))
    x = 0
    for frame in frames:
        strip.paste(frame.convert("RGB"), (x, 0))
        x += frame.width
    key = (str(Path(outdir).resolve()), prefix, generated.seed)
    actual = _published.get(key, prefix)
    data = _encode_png(strip, {"Frames": str(len(frames))})
    return _publish(Path(outdir), actual, generated.seed, ".steps", data)


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) as near square as possible, never more rows than columns: 3 → 2×2, 5 → 2×3, 9 → 3×3."""
    cols = max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / cols))
    return rows, cols


def save_grid(outdir: Path, prefix: int, images: Sequence[Image.Image], seed: int) -> Path:
    """``{prefix}.{seed}.grid.png`` for ``-g``: the command's images, row by row, on a near-square grid.

    `seed` is the first image's; the grid carries no generation metadata (each image has its own).
    """
    if not images:
        raise OutputError("no images to put in a grid")
    from PIL import Image

    rows, cols = grid_shape(len(images))
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    grid = Image.new("RGB", (cols * cell_w, rows * cell_h))
    for index, im in enumerate(images):
        row, col = divmod(index, cols)
        grid.paste(im.convert("RGB"), (col * cell_w, row * cell_h))
    return _publish(Path(outdir), prefix, seed, ".grid", _encode_png(grid))


def append_log(outdir: Path, line: str) -> str | None:
    """Append one ``[N] PATH: CANONICAL`` line to the folder's ``invoke_log.txt``.

    The log is a convenience, the images are the record: any failure returns a one-line warning instead of
    raising. One ``O_APPEND`` write per line keeps lines from several processes whole.
    """
    path = Path(outdir) / LOG_NAME
    text = " ".join(str(line).splitlines()) + "\n"
    try:
        Path(outdir).mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except PermissionError:  # a write-only log: appended to without the newline check
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _append_whole_line(fd, text.encode("utf-8", "replace"))
        finally:
            os.close(fd)
    except OSError as exc:
        # EACCES here may be the log file's own mode, not the folder's (a `chmod 444 invoke_log.txt`)
        folder_writable = os.access(outdir, os.W_OK)
        why = "permission denied (the log file is read-only)" if exc.errno == errno.EACCES and folder_writable else None
        return f"warning: could not append to the log {path}: {why or _reason(exc)}"
    return None
