"""Signals that stop a run: Ctrl-C (SIGINT), `kill`, `timeout` or a service manager (SIGTERM), a closed terminal
(SIGHUP).

Each one asks the running line to stop after its current denoising step, as Ctrl-C always did: an image being
saved is published whole, finished images stay, unfinished ones are dropped, and later lines do not run. A second
signal while the first is being honoured interrupts at once (KeyboardInterrupt); a save cut short that way removes
its temp file. If the interpreter cannot run the handler (one long native call), the process ends within
`SECOND_SIGNAL_GRACE_S` all the same (see `_Watchdog`). The process then exits with 128 + the first signal's
number, which is what a shell reports for a process the signal killed (130 for Ctrl-C, 143 for SIGTERM), so
scripts around us see the usual status.

Why not the default action for SIGTERM: it killed the process wherever it stood. Signalled the moment a temp file
appeared in the outputs folder, 4 runs in 5 left a complete `.invoke-*.tmp` behind and lost that image (audit,
2026-11-28), and at the interactive prompt it left the terminal in raw mode, without echo.

A signal the parent set to ignore (`nohup`, the background jobs of a non-interactive shell) stays ignored.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def exit_status(signum: int) -> int:
    """What a POSIX shell reports for a process ended by `signum`."""
    return 128 + int(signum)


@dataclass
class Received:
    """The stop signal seen inside a `cancel_on_signals` block, if any: the first, unless a SIGTERM or SIGHUP
    followed a SIGINT."""

    signum: int | None = None


def install(handler: Callable[[int, Any], None]) -> dict[int, Any]:
    """Point every stop signal that is not ignored at `handler`; returns the handlers to put back. Only the main
    thread may set handlers: elsewhere (an embedding program's worker thread) nothing changes."""
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {}
    for signum in STOP_SIGNALS:
        current = signal.getsignal(signum)
        if current == signal.SIG_IGN or current is None:  # None: set outside Python; leave it to its owner
            continue
        previous[signum] = signal.signal(signum, handler)
    return previous


def restore(previous: dict[int, Any]) -> None:
    """Put the handlers back with the stop signals held meanwhile: one that comes while the handlers change goes
    to the restored handler afterwards, never half-way (a KeyboardInterrupt out of here lost a later SIGTERM)."""
    if not previous:
        return
    held = hasattr(signal, "pthread_sigmask")
    if held:
        signal.pthread_sigmask(signal.SIG_BLOCK, previous)
    try:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, previous)


@contextmanager
def cancel_on_signals(
    cancel: threading.Event, idle: Callable[[], bool] = lambda: False, received: Received | None = None
) -> Iterator[Received]:
    """While the block runs, the first stop signal sets `cancel` (the generator and model waits poll it) and the
    next raises KeyboardInterrupt. A `cancel` already set counts as a first signal, and so does `idle()` being true:
    a script blocked reading its next line from a pipe has no step to finish, and would otherwise wait for that
    line (it hung until the pipe closed). What arrived is recorded in `received` (pass one in to read it even
    when a KeyboardInterrupt ends the block)."""
    received = received if received is not None else Received()
    handled = [0]  # stop signals the Python handler has run for; the watchdog compares it with those delivered

    def handler(signum: int, frame: Any) -> None:
        handled[0] += 1
        # A SIGTERM or SIGHUP after a Ctrl-C ends the session: it must not be lost as "just another Ctrl-C".
        if received.signum is None or (received.signum == signal.SIGINT and signum != signal.SIGINT):
            received.signum = signum
        if cancel.is_set() or idle():
            cancel.set()
            raise KeyboardInterrupt
        cancel.set()

    previous = install(handler)
    watchdog = _Watchdog.start(handled) if previous else None
    try:
        yield received
    finally:
        if watchdog is not None:
            watchdog.stop()
        restore(previous)


# How long a second stop signal may go unanswered before the process exits without the interpreter: Python runs
# signal handlers between bytecodes only, and one long native call (a single convolution of a 4096² image on the
# CPU took minutes) kept a second Ctrl-C, and SIGTERMs 9 minutes apart, from doing anything (audit, 2026-12-03).
SECOND_SIGNAL_GRACE_S = 2.0
# How long a first stop signal may go unanswered before the user is told why nothing happens yet: a `timeout`'s
# SIGTERM during one 5-minute step of a 4096² image was followed by 37 s of silence (audit, 2026-12-04).
STILL_STOPPING_NOTICE_S = 1.0
STILL_STOPPING = "invoke-repl: stopping after the current step; signal again (Ctrl-C) to stop at once"


@dataclass
class _Watchdog:
    """Reads the stop signals as they are delivered (`signal.set_wakeup_fd`: written by the C-level handler even
    while the main thread is inside native code), and ends the process with the first one's status when a second
    is still unanswered after `SECOND_SIGNAL_GRACE_S`. Files are published by rename, so no partial image is left;
    at most a temp file of the save that was cut off."""

    write_fd: int
    previous_fd: int
    thread: threading.Thread

    @classmethod
    def start(cls, handled: list[int]) -> _Watchdog | None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        try:
            previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except (ValueError, OSError):  # not the main thread, or an embedding program's own rules
            os.close(read_fd)
            os.close(write_fd)
            return None
        thread = threading.Thread(target=_watch, args=(read_fd, handled), name="invoke-stop-watchdog", daemon=True)
        thread.start()
        return cls(write_fd, previous_fd, thread)

    def stop(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(self.previous_fd)
        os.close(self.write_fd)  # the watchdog's read ends, and it closes its end
        self.thread.join(1.0)


def _watch(read_fd: int, handled: list[int]) -> None:
    stops = {int(s) for s in STOP_SIGNALS}
    delivered: list[int] = []
    told = False
    try:
        while True:
            waiting = len(delivered) == 1 and not told  # one signal in, the block still running
            if waiting and not select.select([read_fd], [], [], STILL_STOPPING_NOTICE_S)[0]:
                told = True
                with contextlib.suppress(Exception):
                    print(("\n" if sys.stderr.isatty() else "") + STILL_STOPPING, file=sys.stderr, flush=True)
                continue
            data = os.read(read_fd, 64)
            if not data:
                return
            delivered += [number for number in data if number in stops]
            if len(delivered) < 2:
                continue
            deadline = time.monotonic() + SECOND_SIGNAL_GRACE_S
            while handled[0] < len(delivered) and time.monotonic() < deadline:
                time.sleep(0.05)
            if handled[0] < len(delivered):  # the main thread is stuck in native code: stop at once, as promised
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                # The status `Received` keeps: the first signal, or a SIGTERM/SIGHUP that followed a Ctrl-C.
                ending = next((n for n in delivered if n != signal.SIGINT), delivered[0])
                os._exit(exit_status(ending if delivered[0] == signal.SIGINT else delivered[0]))
    finally:
        os.close(read_fd)
