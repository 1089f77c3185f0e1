"""Signals that stop a run: Ctrl-C (SIGINT), `kill`, `timeout` or a service manager (SIGTERM), a closed terminal
(SIGHUP).

Each one asks the running line to stop after its current denoising step, as Ctrl-C always did: an image being
saved is published whole, finished images stay, unfinished ones are dropped, and later lines do not run. A second
signal while the first is being honoured interrupts at once (KeyboardInterrupt); a save cut short that way removes
its temp file. The process then exits with 128 + the first signal's number, which is what a shell reports for a
process the signal killed (130 for Ctrl-C, 143 for SIGTERM), so scripts around us see the usual status.

Why not the default action for SIGTERM: it killed the process wherever it stood. Signalled the moment a temp file
appeared in the outputs folder, 4 runs in 5 left a complete `.invoke-*.tmp` behind and lost that image (audit,
2026-11-28), and at the interactive prompt it left the terminal in raw mode, without echo.

A signal the parent set to ignore (`nohup`, the background jobs of a non-interactive shell) stays ignored.
"""

from __future__ import annotations

import signal
import sys
import threading
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

    def handler(signum: int, frame: Any) -> None:
        # A SIGTERM or SIGHUP after a Ctrl-C ends the session: it must not be lost as "just another Ctrl-C".
        if received.signum is None or (received.signum == signal.SIGINT and signum != signal.SIGINT):
            received.signum = signum
        if cancel.is_set() or idle():
            cancel.set()
            raise KeyboardInterrupt
        cancel.set()

    previous = install(handler)
    try:
        yield received
    finally:
        restore(previous)
