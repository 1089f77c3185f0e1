"""The interactive prompt on a real pseudo-terminal: what a person at a keyboard sees.

Pins issue 2's terminal acceptance: the prompt appears; Tab after `-A k_` offers `k_lms`; history survives a
restart; Ctrl-C at the prompt clears the line; Ctrl-C during a long generation returns to `invoke>` with the
session alive; a pasted block runs line by line, each its own history entry. SIGTERM ends the session with status
143 and the terminal back in cooked mode, after the running line stopped as Ctrl-C stops it.
"""

from __future__ import annotations

import signal
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.clirun import SLOW_LOADER, Terminal, tiny_catalogue

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")

PROMPT = "invoke>"  # prompt_toolkit draws the trailing space as a cursor move


def _start(tmp: Path, *extra: str) -> Terminal:
    tiny_catalogue(tmp)
    terminal = Terminal(["--outdir", "out", "--history-file", str(tmp / "history"), *extra], tmp)
    terminal.read_until(PROMPT, timeout=60)
    return terminal


def test_tab_after_sampler_switch_offers_k_lms(tmp_path: Path) -> None:
    terminal = _start(tmp_path)
    try:
        terminal.send('"x" -A k_')
        terminal.send("\t")
        assert b"k_lms" in terminal.read_until("k_lms", timeout=20)
        terminal.send("\x03")  # Ctrl-C clears the line, the session stays
        terminal.read_until(PROMPT, timeout=20)
        terminal.send("!dialect\r")
        terminal.read_until("dialect: guide", timeout=20)
    finally:
        assert terminal.close() == 0


def test_history_survives_a_restart_and_paste_runs_each_line(tmp_path: Path) -> None:
    terminal = _start(tmp_path)
    try:
        # a bracketed paste of two lines: each runs, each becomes its own history entry
        terminal.send("\x1b[200~!dialect legacy\r!dialect guide\x1b[201~\r")
        terminal.read_until("dialect: legacy", timeout=20)
        terminal.read_until("dialect: guide", timeout=20)
        terminal.read_until(PROMPT, timeout=20)
    finally:
        assert terminal.close() == 0
    lines = (tmp_path / "history").read_text().splitlines()
    assert lines[-2:] == ["!dialect legacy", "!dialect guide"]

    again = _start(tmp_path)
    try:
        again.send("!history\r")
        shown = again.read_until("] !dialect guide", timeout=20)
        assert b"] !dialect legacy" in shown
        again.read_until(PROMPT, timeout=20)
        again.send("\x1b[A")  # Up arrow recalls the last line from the restored history
        again.read_until("!history", timeout=20)
    finally:
        again.close()


def test_ctrl_c_during_generation_returns_to_the_prompt(tmp_path: Path) -> None:
    terminal = _start(tmp_path)
    try:
        terminal.send('"long one" --steps 1000 --seed 3\r')
        terminal.read_until("/1000", timeout=120)  # the progress bar is running
        terminal.send("\x03")
        terminal.read_until("cancelled", timeout=30)
        terminal.read_until(PROMPT, timeout=30)
        terminal.send('"short" --steps 2 --seed 4\r')
        terminal.read_until("000001.4.png", timeout=60)  # the session is alive, the prefix was not used up
        terminal.read_until(PROMPT, timeout=30)
    finally:
        assert terminal.close() == 0
    assert not list((tmp_path / "out").glob("*.3.png"))


def test_corrupt_history_file_is_set_aside_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "history").write_bytes(b"\xff\xfe\x00garbage")
    terminal = _start(tmp_path)
    try:
        terminal.send("!dialect\r")
        terminal.read_until("dialect: guide", timeout=20)
    finally:
        assert terminal.close() == 0
    assert b"moved to" in terminal.seen
    assert list(tmp_path.glob("history.corrupt-*"))


def _cooked(terminal: Terminal) -> bool:
    """Whether the pty echoes and edits lines itself again, as a shell needs after we are gone."""
    flags = termios.tcgetattr(terminal.master)[3]
    return bool(flags & termios.ECHO) and bool(flags & termios.ICANON)


def test_sigterm_at_the_prompt_gives_the_terminal_back_and_exits_143(tmp_path: Path) -> None:
    terminal = _start(tmp_path)
    try:
        terminal.send("!dialect\r")
        terminal.read_until("dialect: guide", timeout=20)
        terminal.read_until(PROMPT, timeout=20)
        assert not _cooked(terminal)  # prompt_toolkit has the terminal in raw mode while it reads keys
        terminal.proc.send_signal(signal.SIGTERM)
        assert terminal.proc.wait(timeout=30) == 143
        assert _cooked(terminal)  # the default action left it raw: no echo in the shell afterwards
    finally:
        terminal.close()
    assert (tmp_path / "history").read_text().splitlines()[-1] == "!dialect"


def test_sigterm_during_generation_stops_it_and_ends_the_session(tmp_path: Path) -> None:
    terminal = _start(tmp_path)
    try:
        terminal.send('"short" --steps 2 --seed 4\r')
        terminal.read_until("000001.4.png", timeout=60)
        terminal.read_until(PROMPT, timeout=30)
        terminal.send('"long one" --steps 1000 --seed 3\r')
        terminal.read_until("/1000", timeout=120)
        terminal.proc.send_signal(signal.SIGTERM)
        assert terminal.proc.wait(timeout=30) == 143
        assert _cooked(terminal)
        terminal.read_until("terminated", timeout=10)
    finally:
        terminal.close()
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".png") == ["000001.4.png"]
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


# The PNG write of each image is slowed and announced, so a signal lands inside a save for certain.
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


def test_closing_the_terminal_at_the_prompt_exits_129_without_a_traceback(tmp_path: Path) -> None:
    terminal = _start(tmp_path)
    try:
        terminal.send("!dialect\r")
        terminal.read_until("dialect: guide", timeout=20)
        terminal.read_until(PROMPT, timeout=20)
        terminal.hang_up()  # prompt_toolkit's last write then fails (EIO): that was a traceback and status 1
        assert terminal.proc.wait(timeout=30) == 129
    finally:
        terminal.close()
    assert (tmp_path / "history").read_text().splitlines() == ["!dialect"]


def test_sigterm_after_ctrl_c_during_a_save_still_ends_the_session(tmp_path: Path) -> None:
    tiny_catalogue(tmp_path)
    terminal = Terminal(
        ["--outdir", "out", "--history-file", str(tmp_path / "history")],
        tmp_path,
        program=[sys.executable, "-c", SLOW_SAVE],
    )
    try:
        terminal.read_until(PROMPT, timeout=60)
        terminal.send('"x" --steps 2 --seed 4 -W 32 -H 32\r')
        terminal.read_until("SAVING-NOW", timeout=60)
        terminal.send("\x03")  # Ctrl-C: back to the prompt once the save is done ...
        time.sleep(0.3)
        terminal.proc.send_signal(signal.SIGTERM)  # ... but this one ends the session: it was taken for a Ctrl-C
        assert terminal.proc.wait(timeout=30) == 143
        assert _cooked(terminal)
    finally:
        terminal.close()
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("key", ["\x03", "\x04"])
def test_sigterm_just_after_ctrl_c_or_ctrl_d_at_the_prompt_is_not_lost(tmp_path: Path, key: str) -> None:
    terminal = _start(tmp_path)
    try:
        terminal.send(key)
        time.sleep(0.001)  # the prompt has ended, the next one has not started: the signal was dropped there
        terminal.proc.send_signal(signal.SIGTERM)
        assert terminal.proc.wait(timeout=20) in (143, -signal.SIGTERM)  # -15: it came after Ctrl-D's exit
        assert _cooked(terminal)
    finally:
        terminal.close()


def test_a_byte_that_is_not_utf8_at_the_prompt_is_one_line_and_the_session_goes_on(tmp_path: Path) -> None:
    """prompt_toolkit handed the history a surrogate-escaped line, whose write raised inside its event loop: a
    25-line traceback, then "Press ENTER to continue", which swallowed the next line typed."""
    import os

    terminal = _start(tmp_path)
    try:
        os.write(terminal.master, b"caf\xe9 -S10 --seed 3\r")
        terminal.read_until("not UTF-8 text (byte 0xE9 at column 4)", timeout=20)
        terminal.read_until(PROMPT, timeout=20)
        terminal.send("!dialect\r")
        terminal.read_until("dialect: guide", timeout=20)
    finally:
        assert terminal.close() == 0
    assert b"Unhandled exception" not in terminal.seen and b"Traceback" not in terminal.seen
    assert (tmp_path / "history").read_text().splitlines() == ["!dialect"]  # the refused line is not numbered


def test_history_numbers_stay_the_same_after_a_ctrl_c_in_a_pasted_block(tmp_path: Path) -> None:
    """The whole pasted block reaches the history file when it is accepted; the lines after the cancelled one
    went unnumbered in the session, so after a restart `!2` named another line than it had."""
    terminal = _start(tmp_path)
    try:
        terminal.send("!dialect\r")
        terminal.read_until("dialect: guide", timeout=20)
        terminal.read_until(PROMPT, timeout=20)
        terminal.send('\x1b[200~"long one" --steps 1000 --seed 3\r"second pasted" -S2\r"third pasted" -S2\x1b[201~\r')
        terminal.read_until("/1000", timeout=120)
        terminal.send("\x03")
        terminal.read_until("cancelled", timeout=30)
        terminal.read_until(PROMPT, timeout=30)
        terminal.send("!history\r")
        terminal.read_until('[3] "third pasted" -S2', timeout=20)  # numbered although it never ran
        terminal.read_until(PROMPT, timeout=20)
    finally:
        assert terminal.close() == 0
    again = _start(tmp_path)
    try:
        again.send("!history\r")
        again.read_until('[3] "third pasted" -S2', timeout=20)  # the file's numbering: the same
        again.read_until(PROMPT, timeout=20)
    finally:
        again.close()


def test_a_history_file_that_is_the_catalogue_is_never_appended_to(tmp_path: Path) -> None:
    """`--history-file models.yaml` appended `!models` to the catalogue: invalid YAML at every later start."""
    terminal = _start(tmp_path, "--history-file", str(tmp_path / "models.yaml"))
    before = (tmp_path / "models.yaml").read_text()
    try:
        terminal.send("!models\r")
        terminal.read_until("tiny-random", timeout=20)
        terminal.read_until(PROMPT, timeout=20)
    finally:
        assert terminal.close() == 0
    assert (tmp_path / "models.yaml").read_text() == before
    assert b"looks like a model catalogue, not a history; history is kept in memory only" in terminal.seen


@pytest.mark.parametrize("key", ["\x04", "!quit\r"])
def test_leaving_while_the_default_model_still_loads_is_at_once(tmp_path: Path, key: str) -> None:
    """Ctrl-D or !quit at a fresh prompt waited, silently, for a load nobody would use (13 s for the embedded
    model; here the load takes 300 s), and a Ctrl-C during that wait printed a traceback."""
    tiny_catalogue(tmp_path)
    terminal = Terminal(
        ["--outdir", "out", "--history-file", str(tmp_path / "history")],
        tmp_path,
        program=[sys.executable, "-c", SLOW_LOADER],
    )
    try:
        terminal.read_until(PROMPT, timeout=60)
        terminal.read_until("LOADING-NOW", timeout=60)
        start = time.monotonic()
        terminal.send(key)
        assert terminal.proc.wait(timeout=20) == 0
        assert time.monotonic() - start < 20 and b"Traceback" not in terminal.seen
    finally:
        terminal.close()


def test_a_notice_from_the_background_load_goes_above_the_line_being_typed(tmp_path: Path) -> None:
    """The default model's fallback notice, printed while the user typed, landed inside the typed line and the
    prompt was not drawn again: typing went on blind."""
    (tmp_path / "models.yaml").write_text(
        "mine:\n  format: diffusers\n  path: nope-folder\n  default: true\n"
        "tiny-random:\n  format: builtin\n  path: tiny-random\n"
    )
    terminal = Terminal(
        ["--outdir", "out", "--history-file", str(tmp_path / "history"), "--models", str(tmp_path / "models.yaml")],
        tmp_path,
    )
    try:
        terminal.read_until(PROMPT, timeout=60)
        terminal.send("a red ci")  # before the load has even started: torch's import takes seconds
        terminal.read_until("using 'tiny-random' instead", timeout=60)
        terminal.read_until(PROMPT, timeout=10)  # drawn again below the notice …
        terminal.read_until("a red ci", timeout=10)  # … with what was typed
        terminal.send("rcle --steps 1 --seed 2\r")
        terminal.read_until("000001.2.png", timeout=60)
    finally:
        terminal.close()


def test_a_device_that_is_not_there_is_said_at_start(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    terminal = _start(tmp_path, "--device", "cuda")
    try:
        terminal.read_until("warning: model manager failed to start: --device cuda: no CUDA device", timeout=60)
    finally:
        terminal.close()
