"""Standard streams that fail or are missing must not cost an image, a line or the run (see `streams`)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from invoke_repl.streams import ForgivingStream, terminal_stream
from tests.clirun import isolated_env, tiny_catalogue


def _run(tmp: Path, stdin: str, **streams: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke_repl", "--models", str(tiny_catalogue(tmp)), "-o", str(tmp / "out")],
        input=stdin,
        text=True,
        env=isolated_env(tmp),
        cwd=tmp,
        timeout=300,
        **streams,  # type: ignore[arg-type]
    )


def _made(tmp: Path) -> list[str]:
    return sorted(p.name for p in (tmp / "out").glob("*.png")) if (tmp / "out").exists() else []


def test_a_reader_that_went_away_loses_no_image_of_the_command(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.close(read)  # `| head -1` that has already exited: every write to stdout fails with EPIPE
    try:
        done = _run(tmp_path, "a --seed 1 -S2 -n 3 -g\n", stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)
    assert _made(tmp_path) == ["000001.1.grid.png", "000001.1.png", "000001.2.png", "000001.3.png"]
    assert done.returncode == 0, done.stderr
    assert "cannot write to standard output (Broken pipe)" in done.stderr and "Traceback" not in done.stderr
    assert "Exception ignored" not in done.stderr  # the interpreter's own flush at exit found /dev/null


def test_a_full_stdout_is_not_blamed_for_a_full_disk_and_the_run_goes_on(tmp_path: Path) -> None:
    with open("/dev/full", "w") as full:
        done = _run(tmp_path, "a --seed 1 -S2\na --seed 2 -S2\n", stdout=full, stderr=subprocess.PIPE)
    assert _made(tmp_path) == ["000001.1.png", "000002.2.png"] and done.returncode == 0
    assert done.stderr.count("cannot write to standard output (No space left on device)") == 1
    assert "line " not in done.stderr  # no line failed: only the report of it could not be written


def test_an_unwritable_stderr_still_runs_every_line_and_fails_the_run(tmp_path: Path) -> None:
    with open("/dev/full", "w") as full:
        done = _run(tmp_path, "a -Z\na --seed 5 -S2\n", stdout=subprocess.PIPE, stderr=full)
    assert _made(tmp_path) == ["000001.5.png"]
    assert done.returncode == 1  # line 1 failed, though nothing could say so
    assert "000001.5.png" in done.stdout


def test_closed_standard_streams_at_start_are_no_crash(tmp_path: Path) -> None:
    def close(fd: int):
        return lambda: os.close(fd)

    done = _run(tmp_path, "a --seed 1 -S2\n", stdout=subprocess.PIPE, preexec_fn=close(2))  # `2>&-`
    assert done.returncode == 0 and _made(tmp_path) == ["000001.1.png"], done.stdout
    no_stdin = subprocess.run(  # `<&-`: nothing to read, so nothing to run
        [sys.executable, "-m", "invoke_repl", "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=isolated_env(tmp_path),
        timeout=120,
        preexec_fn=close(0),
    )
    assert no_stdin.returncode == 0 and no_stdin.stderr == "", no_stdin.stderr


class _Failing(io.StringIO):
    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc
        self.calls = 0

    def write(self, text: str) -> int:
        self.calls += 1
        raise self.exc


def test_a_forgiving_stream_says_once_why_its_output_stopped_then_drops_it() -> None:
    told = io.StringIO()
    failing = _Failing(BrokenPipeError(32, "Broken pipe"))
    stream = ForgivingStream(failing, "standard output", tell=told)
    assert stream.write("[1] a.png\n") == len("[1] a.png\n")
    stream.write("[2] b.png\n")
    stream.flush()
    assert failing.calls == 1 and stream.lost == "Broken pipe"
    assert told.getvalue().count("cannot write to standard output (Broken pipe)") == 1


def test_a_forgiving_stream_escapes_what_an_ascii_locale_cannot_encode() -> None:
    raw = io.BytesIO()
    ascii_out = io.TextIOWrapper(raw, encoding="ascii")
    stream = ForgivingStream(ascii_out, "standard output")
    stream.write("[1] \u00fc \u2605\n")
    stream.flush()
    assert raw.getvalue() == b"[1] \\xfc \\u2605\n" and stream.lost is None


def test_the_prompt_is_drawn_on_stderr_when_stdout_is_redirected(monkeypatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    log, terminal = io.StringIO(), Tty()
    monkeypatch.setattr(sys, "stdout", ForgivingStream(log, "standard output"))
    monkeypatch.setattr(sys, "stderr", ForgivingStream(terminal, "standard error"))
    assert terminal_stream() is terminal  # the real stream, not the forgiving one: a lost terminal must show
    monkeypatch.setattr(sys, "stdout", Tty())
    assert terminal_stream() is sys.stdout


def test_a_working_folder_that_was_deleted_is_one_line_at_start(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()

    def into_deleted() -> None:
        os.chdir(gone)
        os.rmdir(gone)

    done = subprocess.run(
        [sys.executable, "-m", "invoke_repl", "-o", str(tmp_path / "out")],
        input='"x" --steps 1 --seed 1\n',
        capture_output=True,
        text=True,
        env=isolated_env(tmp_path),
        timeout=120,
        preexec_fn=into_deleted,
    )
    assert done.returncode == 2 and done.stderr == (
        "invoke-repl: the working folder no longer exists; cd to another one and start again\n"
    )


def test_writelines_is_forgiving_too() -> None:
    stream = ForgivingStream(_Failing(BrokenPipeError(32, "Broken pipe")), "standard output")
    stream.writelines(["a\n", "b\n"])
    assert stream.lost == "Broken pipe"
