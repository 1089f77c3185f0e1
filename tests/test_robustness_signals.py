"""Stop signals against a real scripted `python -m invoke_repl` process (issue 6, item 4).

SIGINT during a generation: the script stops with exit status 130, the finished image is kept, nothing
half-written or temporary is left and later lines do not run. During a model load (made slow by a test-only wrapper
around the loader): the run ends with 130 within a fraction of a second instead of waiting for the load. SIGTERM
(`kill`, `timeout`, a service manager) is honoured the same way with status 143, also in the middle of a save; a
signal the parent ignored (`nohup`) stays ignored.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.clirun import SLOW_LOADER, isolated_env, tiny_catalogue

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


# Each image's PNG write is slowed down and announced, so a signal lands inside a save for certain.
SLOW_SAVE = """
import sys, time
import invoke_repl.outputs as outputs
write = outputs._write_all
def slow(fd, data):
    print("SAVING-NOW", file=sys.stderr, flush=True)
    time.sleep(1.5)
    write(fd, data)
outputs._write_all = slow
from invoke_repl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _ignore_sighup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what `nohup` does before it starts the command


class Watched:
    """A scripted run whose stdout and stderr are read line by line as they come."""

    def __init__(self, argv: list[str], tmp: Path, script: str, preexec_fn: Any = None) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=isolated_env(tmp),
            cwd=tmp,
            preexec_fn=preexec_fn,
        )
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.seen: list[tuple[str, str]] = []
        for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            threading.Thread(target=self._pump, args=(name, stream), daemon=True).start()
        assert self.proc.stdin is not None
        self.proc.stdin.write(script)
        self.proc.stdin.close()

    def _pump(self, name: str, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put((name, line))

    def wait_for(self, needle: str, timeout: float = 120) -> str:
        """The first line (already read or still to come) containing `needle`."""
        for _, line in self.seen:
            if needle in line:
                return line
        deadline = time.monotonic() + timeout
        while True:
            try:
                name, line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                raise TimeoutError(f"{needle!r} not seen in {self.seen[-20:]}") from None
            self.seen.append((name, line))
            if needle in line:
                return line

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        code = self.proc.wait(timeout=timeout)
        time.sleep(0.1)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        out = "".join(line for name, line in self.seen if name == "out")
        err = "".join(line for name, line in self.seen if name == "err")
        return code, out, err


def test_sigint_during_a_scripted_generation_exits_130_keeping_finished_files(tmp_path: Path) -> None:
    tiny_catalogue(tmp_path)
    script = '"long" --steps 400 -n 3 --seed 5 -W 32 -H 32\n"never" --steps 2 --seed 6\n'
    run = Watched([sys.executable, "-m", "invoke_repl", "--outdir", "D", "--no-progress"], tmp_path, script)
    first = run.wait_for("[1] ")
    assert "000001.5.png" in first
    run.proc.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    code, out, err = run.finish()
    assert code == 130, err
    assert time.monotonic() - interrupted < 30
    assert "interrupted" in err and "Traceback" not in err + out
    assert "[2]" not in out
    folder = tmp_path / "D"
    assert sorted(p.name for p in folder.glob("*.png")) == ["000001.5.png"]  # the later line never ran
    with Image.open(folder / "000001.5.png") as image:
        image.load()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temp left


def test_sigint_during_a_slow_model_load_exits_130_at_once(tmp_path: Path) -> None:
    tiny_catalogue(tmp_path)
    run = Watched(
        [sys.executable, "-c", SLOW_LOADER, "--outdir", "D", "--no-progress"],
        tmp_path,
        '!dialect\n"needs the model" --steps 2 --seed 1\n"never" --steps 2\n',
    )
    run.wait_for("LOADING-NOW")
    run.wait_for("dialect: guide")
    time.sleep(0.5)  # the generation line is now waiting for the load
    run.proc.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    code, out, err = run.finish(timeout=60)
    waited = time.monotonic() - interrupted
    assert code == 130, err
    assert waited < 5, waited  # the load sleeps for 300 s; the run does not wait for it
    assert "line 2: cancelled" in err and "interrupted" in err and "Traceback" not in err + out
    assert not (tmp_path / "D").exists() or not list((tmp_path / "D").glob("*.png"))


def test_sigterm_during_a_save_publishes_that_image_and_exits_143(tmp_path: Path) -> None:
    tiny_catalogue(tmp_path)
    script = '"saved whole" --steps 3 -n 2 --seed 5 -W 32 -H 32\n"never" --steps 2 --seed 9\n'
    run = Watched([sys.executable, "-c", SLOW_SAVE, "--outdir", "D", "--no-progress"], tmp_path, script)
    run.wait_for("SAVING-NOW")  # the first image's bytes are going into its temp file now
    run.proc.send_signal(signal.SIGTERM)
    code, out, err = run.finish()
    assert code == 143, err  # 128 + SIGTERM, what a shell reports for a process the signal ended
    assert "terminated" in err and "Traceback" not in err + out
    folder = tmp_path / "D"
    assert sorted(p.name for p in folder.glob("*.png")) == ["000001.5.png"]  # seed 6 and line 2 never started
    with Image.open(folder / "000001.5.png") as image:
        image.load()  # complete, not truncated
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temp left


def test_a_second_sigterm_cuts_the_save_short_and_leaves_no_temp(tmp_path: Path) -> None:
    tiny_catalogue(tmp_path)
    run = Watched(
        [sys.executable, "-c", SLOW_SAVE, "--outdir", "D", "--no-progress"],
        tmp_path,
        '"cut" --steps 2 --seed 5 -W 32 -H 32\n',
    )
    run.wait_for("SAVING-NOW")
    run.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    run.proc.send_signal(signal.SIGTERM)  # someone who will not wait: stop now
    code, out, err = run.finish()
    assert code == 143, err
    assert "Traceback" not in err + out
    assert not [p.name for p in (tmp_path / "D").iterdir()]  # neither a half image nor its temp


def test_sighup_ignored_by_the_parent_stays_ignored(tmp_path: Path) -> None:
    tiny_catalogue(tmp_path)
    script = '"keeps going" --steps 40 -n 2 --seed 5 -W 32 -H 32\n'
    run = Watched(
        [sys.executable, "-m", "invoke_repl", "--outdir", "D", "--no-progress"], tmp_path, script, _ignore_sighup
    )
    run.wait_for("[1] ")
    run.proc.send_signal(signal.SIGHUP)
    code, out, err = run.finish()
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "D").glob("*.png")) == ["000001.5.png", "000001.6.png"]


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_a_script_waits_for_its_next_line_ends_it_at_once(
    tmp_path: Path, signum: int, status: int
) -> None:
    """`producer | invoke-repl` with the producer silent: there is no step to finish, so nothing to wait for."""
    tiny_catalogue(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke_repl", "--outdir", "D"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=isolated_env(tmp_path),
        cwd=tmp_path,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"!dialect\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == b"dialect: guide\n"  # the line ran; now it reads the pipe, which stays open
    time.sleep(0.3)
    proc.send_signal(signum)
    try:
        code = proc.wait(timeout=10)  # it waited for the pipe to close, that is forever
    finally:
        proc.kill()
        proc.stdin.close()
    assert code == status
    assert b"Traceback" not in proc.stderr.read()  # type: ignore[union-attr]


# `!switch slow` loads for a minute in torch's C++ code (matmuls, the GIL released), as a real weight read does.
SLOW_SWITCH = """
import sys, time
import invoke_repl.loading as loading
real = loading.load_entry
def slow(entry, *args, **kwargs):
    if entry.name == "slow":
        import torch
        print("LOADING-NOW", file=sys.stderr, flush=True)
        x = torch.randn(1000, 1000)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            x = (x @ x).clamp(-1, 1)
    return real(entry, *args, **kwargs)
loading.load_entry = slow
from invoke_repl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_signal_during_a_switch_load_exits_143_instead_of_aborting(tmp_path: Path) -> None:
    """The load runs in a thread the start-up bookkeeping did not know: the interpreter shut down under it and
    the process aborted ("terminate called without an active exception", status 134)."""
    tiny_catalogue(tmp_path)
    with (tmp_path / "models.yaml").open("a") as catalogue:
        catalogue.write("slow:\n  description: slow\n  format: builtin\n  path: tiny-random\n")
    run = Watched(
        [sys.executable, "-c", SLOW_SWITCH, "--outdir", "D", "--no-progress"],
        tmp_path,
        '"first" --steps 2 --seed 1 -W 32 -H 32\n!switch slow\n"never" --steps 2\n',
    )
    run.wait_for("LOADING-NOW")
    time.sleep(0.5)
    run.proc.send_signal(signal.SIGTERM)
    code, out, err = run.finish()
    assert code == 143, err
    assert "terminated" in err and "terminate called" not in err
    assert sorted(p.name for p in (tmp_path / "D").glob("*.png")) == ["000001.1.png"]


def test_a_signal_during_the_last_lines_save_is_not_forgotten(tmp_path: Path) -> None:
    """Nothing looks at the cancel flag after the last image: the run used to exit 0 as if nothing came."""
    tiny_catalogue(tmp_path)
    (tmp_path / "cmds.txt").write_text('"last" --steps 2 --seed 4 -W 32 -H 32\n')
    run = Watched(
        [sys.executable, "-c", SLOW_SAVE, "--outdir", "D", "--no-progress", "--from-file", "cmds.txt"], tmp_path, ""
    )
    run.wait_for("SAVING-NOW")
    run.proc.send_signal(signal.SIGTERM)
    code, out, err = run.finish()
    assert code == 143, err
    assert "terminated" in err
    assert sorted(p.name for p in (tmp_path / "D").glob("*.png")) == ["000001.4.png"]  # finished, so kept


# The save is stuck in one long native call that never lets Python run a signal handler (a matrix product that
# releases the interpreter lock, as torch's convolutions do): a 4096² image on the CPU spends minutes in one.
STUCK_IN_NATIVE_CODE = """
import sys, torch
import invoke_repl.outputs as outputs
write = outputs._write_all
def stuck(fd, data):
    a = torch.ones(11000, 11000)
    print("STUCK-NOW", file=sys.stderr, flush=True)
    torch.mm(a, a)  # ~20 s on 2 cores
    write(fd, data)
outputs._write_all = stuck
from invoke_repl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_second_signal_ends_the_run_within_seconds_while_native_code_runs(tmp_path: Path) -> None:
    """Handlers run between bytecodes only: a second Ctrl-C, or SIGTERMs minutes apart, did nothing until the
    native call returned. The first signal still waits for it (the step or save ends first); the second does not."""
    from invoke_repl.stopping import SECOND_SIGNAL_GRACE_S, STILL_STOPPING_NOTICE_S

    tiny_catalogue(tmp_path)
    run = Watched(
        [sys.executable, "-c", STUCK_IN_NATIVE_CODE, "--outdir", "D", "--no-progress"],
        tmp_path,
        '"stuck" --steps 2 --seed 5 -W 32 -H 32\n',
    )
    run.wait_for("STUCK-NOW")
    run.proc.send_signal(signal.SIGTERM)
    run.wait_for("stopping after the current step", timeout=STILL_STOPPING_NOTICE_S + 3)  # it was silent
    time.sleep(SECOND_SIGNAL_GRACE_S + 1)
    assert run.proc.poll() is None  # one signal: it waits for the save, which may still finish
    run.proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    code, out, err = run.finish(timeout=30)
    assert time.monotonic() - sent < SECOND_SIGNAL_GRACE_S + 3
    assert code == 143, err  # the status of the first signal, SIGTERM
    assert not list((tmp_path / "D").glob("*.png"))  # no image under a final name, complete or not


# What `python -m invoke_repl` runs, once Python's own start-up is over: a Ctrl-C before that (the `site` import,
# about 50 ms here, longer on a loaded machine) is Python's to report, not ours.
AFTER_PYTHON_START = """
import runpy, sys
print("PYTHON-UP", file=sys.stderr, flush=True)
sys.argv[0] = "invoke-repl"
runpy.run_module("invoke_repl", run_name="__main__")
"""


def test_ctrl_c_in_the_first_moments_ends_quietly(tmp_path: Path) -> None:
    """A Ctrl-C while the program was still importing (before any handler of ours was up) printed a
    KeyboardInterrupt traceback through prompt_toolkit's or torch's import."""
    tiny_catalogue(tmp_path)
    for delay in (0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.45):  # from runpy finding the package on, a few ms
        proc = subprocess.Popen(
            [sys.executable, "-c", AFTER_PYTHON_START, "--outdir", "out"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=isolated_env(tmp_path),
            cwd=tmp_path,
        )
        assert proc.stderr is not None and proc.stderr.readline() == "PYTHON-UP\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate('"x" --steps 1 --seed 1\n', timeout=60)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, (delay, err)
        assert proc.returncode == 130, (delay, proc.returncode, err)
