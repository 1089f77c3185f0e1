"""SIGINT against a real scripted `python -m invoke_repl` process (issue 6, item 4).

During a generation: the script stops with exit status 130, the finished image is kept, nothing half-written or
temporary is left and later lines do not run. During a model load (made slow by a test-only wrapper around the
loader): the run ends with 130 within a fraction of a second instead of waiting for the load.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.clirun import isolated_env, tiny_catalogue

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SLOW_LOADER = """
import sys, time
import invoke_repl.loading as loading
def slow(*args, **kwargs):
    print("LOADING-NOW", file=sys.stderr, flush=True)
    time.sleep(300)
loading.load_entry = slow
from invoke_repl.cli import main
sys.exit(main(sys.argv[1:]))
"""


class Watched:
    """A scripted run whose stdout and stderr are read line by line as they come."""

    def __init__(self, argv: list[str], tmp: Path, script: str) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=isolated_env(tmp),
            cwd=tmp,
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
