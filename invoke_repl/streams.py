"""Standard streams that a run can lose without losing its images.

The images are what a run makes; stdout and stderr only report on them. A reader that went away
(`invoke-repl … | head -1`), a full disk behind `> log`, `2>/dev/full` or an ASCII-only locale made a `print` raise
in the middle of a command: a `-n 3` saved its first image and lost the other two and the grid, reported as
"Broken pipe" or "No space left on device" although the disk had room; an unwritable stderr ended a script at its
first failed line. Here a failed write is dropped instead, the run goes on, and the exit status still says whether
every line succeeded.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO


class ForgivingStream:
    """A text stream whose write and flush never raise. After the first failure it drops everything (a broken pipe
    stays broken), says so once on `tell` if given (stdout's loss is worth a line on stderr; stderr's has nowhere to
    go), and points the file descriptor at /dev/null, so that the interpreter's own flush at exit does not print
    'Exception ignored … BrokenPipeError'."""

    def __init__(self, stream: TextIO, name: str, tell: TextIO | None = None) -> None:
        self._stream = stream
        self._name = name
        self._tell = tell
        self.lost: str | None = None  # why output stopped, once it has

    @property
    def wrapped(self) -> TextIO:
        return self._stream

    def write(self, text: str) -> int:
        if self.lost is None:
            try:
                return self._stream.write(text)
            except UnicodeEncodeError:  # an ASCII locale: the text, escaped, rather than nothing
                try:
                    escaped = text.encode(self._stream.encoding or "ascii", "backslashreplace")
                    return self._stream.write(escaped.decode(self._stream.encoding or "ascii"))
                except (OSError, ValueError, UnicodeError) as exc:
                    self._lose(exc)
            except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us
                self._lose(exc)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.lost is None:
            try:
                self._stream.flush()
            except (OSError, ValueError) as exc:
                self._lose(exc)

    def _lose(self, exc: BaseException) -> None:
        self.lost = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        if self._tell is not None:
            try:
                print(
                    f"invoke-repl: cannot write to {self._name} ({self.lost}); images are still saved and listed in"
                    " invoke_log.txt beside them",
                    file=self._tell,
                    flush=True,
                )
            except (OSError, ValueError, UnicodeError):
                pass

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, buffer, … as the real stream has them
        return getattr(self._stream, name)


def guard_standard_streams() -> None:
    """Give every standard stream something to be: a closed one (`2>&-`, `<&-`) is None in Python, and
    `sys.stderr.isatty()` then failed start-up with an AttributeError. Then make stdout and stderr forgiving."""
    if sys.stdin is None:
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115
    if not isinstance(sys.stderr, ForgivingStream):
        sys.stderr = ForgivingStream(sys.stderr, "standard error")  # type: ignore[assignment]
    if not isinstance(sys.stdout, ForgivingStream):
        sys.stdout = ForgivingStream(sys.stdout, "standard output", tell=sys.stderr)  # type: ignore[assignment]


def terminal_stream() -> TextIO | None:
    """The stream the prompt is drawn on: stdout if it is a terminal, else stderr if that is one. With stdout
    redirected (`invoke-repl > log`) the prompt and its escape sequences went into the log and the user typed
    blind; the real streams, since the forgiving ones would hide a vanished terminal from prompt_toolkit."""
    for stream in (sys.stdout, sys.stderr):
        real = stream.wrapped if isinstance(stream, ForgivingStream) else stream
        try:
            if real is not None and real.isatty():
                return real
        except (OSError, ValueError):
            continue
    real_stdout = sys.stdout.wrapped if isinstance(sys.stdout, ForgivingStream) else sys.stdout
    return real_stdout
