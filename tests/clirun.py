"""Helpers to run invoke-repl as a user would: a real process, a real catalogue, a real terminal when needed."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A program that runs invoke-repl with every model load announced ("LOADING-NOW") and stuck for 300 s.
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


def isolated_env(tmp: Path) -> dict[str, str]:
    """No model hub, no user config or history from the person running the tests."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        XDG_CONFIG_HOME=str(tmp / "config"),
        XDG_CACHE_HOME=str(tmp / "cache"),
        XDG_STATE_HOME=str(tmp / "state"),
        HOME=str(tmp / "home"),
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
    )
    env.pop("INVOKE_REPL_OUTDIR", None)
    return env


def tiny_catalogue(tmp: Path) -> Path:
    path = tmp / "models.yaml"
    path.write_text(
        "tiny-random:\n  description: test model\n  format: builtin\n  path: tiny-random\n  default: true\n"
    )
    return path


def run_cli(
    args: list[str], tmp: Path, stdin: str = "", timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke_repl", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=isolated_env(tmp),
        timeout=timeout,
        cwd=cwd or tmp,
    )


def _own_terminal() -> None:
    """In the child: a new session whose controlling terminal is the pty, so ^C becomes SIGINT as in a shell."""
    import fcntl
    import termios

    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """invoke-repl on a pseudo-terminal: type keys, read the screen's byte stream."""

    def __init__(
        self, args: list[str], tmp: Path, rows: int = 40, cols: int = 200, program: list[str] | None = None
    ) -> None:
        """`program` replaces `python -m invoke_repl` (a `python -c` wrapper that slows something down)."""
        import fcntl
        import pty
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = isolated_env(tmp)
        env["TERM"] = "xterm"
        env["PROMPT_TOOLKIT_NO_CPR"] = "1"  # a pty answers no cursor-position requests
        self.proc = subprocess.Popen(
            [*(program or [sys.executable, "-m", "invoke_repl"]), *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=tmp,
            preexec_fn=_own_terminal,
        )
        os.close(slave)
        self.seen = b""
        self.pos = 0

    def read_until(self, needle: bytes | str, timeout: float = 60) -> bytes:
        """Read until `needle` appears after what earlier calls consumed; returns the bytes up to its end."""
        if isinstance(needle, str):
            needle = needle.encode()
        deadline = time.monotonic() + timeout
        while needle not in self.seen[self.pos :]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{needle!r} not seen; got {self.seen[self.pos :][-2000:]!r}")
            ready, _, _ = select.select([self.master], [], [], min(remaining, 0.5))
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                chunk = b""
            if not chunk and self.proc.poll() is not None:
                raise EOFError(f"process ended; output {self.seen[self.pos :][-2000:]!r}")
            self.seen += chunk
        end = self.seen.index(needle, self.pos) + len(needle)
        new, self.pos = self.seen[self.pos : end], end
        return new

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int:
        """Ctrl-D at the prompt. A ^D typed while no prompt is up is eaten by the tty's cooked mode, so retry."""
        for _ in range(20):
            if self.proc.poll() is not None or self.master < 0:
                break
            self.send("\x04")
            try:
                self.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                continue
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
        return self.proc.returncode

    def hang_up(self) -> None:
        """Close the terminal, as closing its window does: the kernel sends SIGHUP, and writes to it fail."""
        os.close(self.master)
        self.master = -1
