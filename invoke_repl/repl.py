"""The interactive `invoke>` prompt: history, completion, paste, Ctrl-C and Ctrl-D.

prompt_toolkit does the terminal work; this module only adapts it to invoke-repl's rules: every pasted line is its
own command and its own history entry, a broken history file never stops the session, Ctrl-C at the prompt clears
the line, Ctrl-C during a generation cancels that generation and comes back here, SIGTERM and SIGHUP end the
session as `stopping` describes. It never imports torch.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.completion.base import get_common_complete_suffix
from prompt_toolkit.document import Document
from prompt_toolkit.history import History
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.output import create_output

from invoke_repl import stopping
from invoke_repl.commands import BANG_COMMANDS, DIALECTS, QUOTE_PAIRS, switch_names
from invoke_repl.request import SAMPLERS
from invoke_repl.session import Outcome, Session
from invoke_repl.streams import terminal_stream

SAMPLER_SWITCHES = ("-A", "-m", "--sampler")
IMAGE_SWITCHES = ("-I", "--init-img", "--init_img")
MODEL_SWITCHES = ("--model",)
SEED_SWITCHES = ("--seed",)
PATH_COMMANDS = ("!fetch", "!replay", "!import_model")
MODEL_COMMANDS = ("!switch", "!del_model", "!edit_model")


def default_history_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "invoke-repl" / "history"


def _is_devnull(path: Path) -> bool:
    try:
        return os.path.samefile(path, os.devnull)
    except OSError:
        return False


class CommandHistory(History):
    """One command per line in a plain UTF-8 file, appended as each command is accepted.

    A pasted block is split so each line is its own entry. A history file that cannot be read is renamed aside
    with a warning when it is ours (the default path) or binary junk (NUL bytes: a crash's leftovers); a directory,
    or a text file in another encoding that the user named with --history-file, is left as it is and the history
    stays in memory, with a warning. One that cannot be written turns the history into memory-only with a warning.
    None of it ever stops the session.
    """

    def __init__(self, path: Path | None, warn: Callable[[str], None], *, owned: bool = False) -> None:
        super().__init__()
        self.path = path
        self.warn = warn
        self.owned = owned  # the default history file: ours to set aside when it is broken
        self._writable = path is not None
        self._lines: list[str] | None = None

    def load_history_strings(self) -> Iterable[str]:
        return list(reversed(self.read_lines()))

    def read_lines(self) -> list[str]:
        """Oldest first. Read once: the session numbers these lines and prompt_toolkit loads them for recall, and
        a second read warned twice about a broken file (and read a long one twice)."""
        if self._lines is None:
            self._lines = self._read_lines()
        return list(self._lines)

    def _read_lines(self) -> list[str]:
        if self.path is None or not os.path.lexists(self.path):
            return []
        if self.path.is_dir():  # never moved: a mistyped --history-file ~/projects must not rename the folder
            self._writable = False
            self.warn(f"warning: history file {self.path} is a directory; history is kept in memory only")
            return []
        if self.path.is_symlink() and not self.path.exists():
            self._writable = False
            self.warn(f"warning: history file {self.path} is a link that leads nowhere; history is kept in memory only")
            return []
        if not self.path.is_file() and not _is_devnull(self.path):
            # A FIFO blocked the prompt forever and /dev/zero read until memory ran out; /dev/null stays the
            # usual way to keep no history.
            self._writable = False
            self.warn(f"warning: history file {self.path} is not a regular file; history is kept in memory only")
            return []
        try:
            data = self.path.read_bytes()
            if b"\x00" in data:
                raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            junk = isinstance(exc, UnicodeDecodeError) and exc.reason == "NUL byte"
            if self.owned or junk:
                self._set_aside(exc)
            else:
                self._writable = False
                self.warn(
                    f"warning: history file {self.path} is unreadable ({_reason(exc)}); left as it is, "
                    "history is kept in memory only"
                )
            return []
        return [line for line in text.splitlines() if line.strip()]

    def _set_aside(self, exc: Exception) -> None:
        assert self.path is not None
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        try:
            os.replace(self.path, aside)
            self.warn(f"warning: history file {self.path} was unreadable ({_reason(exc)}); moved to {aside}")
        except OSError:
            self.warn(f"warning: history file {self.path} is unreadable ({_reason(exc)}); history is not saved")
            self._writable = False

    def append_string(self, string: str) -> None:
        for line in string.splitlines():
            if line.strip():
                super().append_string(line.strip())

    def store_string(self, string: str) -> None:
        if not self._writable or self.path is None:
            return
        try:
            text = (string.replace("\n", " ") + "\n").encode("utf-8")
        except UnicodeEncodeError:  # a byte that is not UTF-8, typed or pasted: the session refuses the line anyway
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as handle:
                handle.write(text)
        except OSError as exc:
            self._writable = False
            self.warn(f"warning: cannot write history file {self.path} ({_reason(exc)}); history kept in memory only")


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return "not UTF-8 text"


class InvokeCompleter(Completer):
    """Completes what the word before the cursor asks for: a !command, a switch, a sampler, a path, a model."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterator[Completion]:
        text = document.text_before_cursor
        words = _words(text)
        current = words[-1]
        previous = words[-2] if len(words) >= 2 else ""
        first = words[0] if words else ""
        if len(words) == 1 and current.startswith("!"):
            yield from _matching(current, [f"!{name}" for name in BANG_COMMANDS])
            return
        attached = _attached(current)
        if attached is not None:
            switch, value = attached
            yield from self._values_for(switch, value, document)
            return
        if previous in SAMPLER_SWITCHES + IMAGE_SWITCHES + MODEL_SWITCHES + SEED_SWITCHES:
            yield from self._values_for(previous, current, document)
            return
        if len(words) >= 2 and first in PATH_COMMANDS and len(words) == 2:
            yield from self._paths(current, document)
            return
        if len(words) == 2 and first in MODEL_COMMANDS:
            yield from _matching(current, self.session.model_names())
            return
        if current.startswith("-"):
            yield from _matching(current, switch_names(self.session.dialect))

    def _values_for(self, switch: str, value: str, document: Document) -> Iterator[Completion]:
        if switch in SAMPLER_SWITCHES:
            yield from _matching(value, SAMPLERS)
        elif switch in MODEL_SWITCHES:
            yield from _matching(value, self.session.model_names())
        elif switch in SEED_SWITCHES:
            seeds = [str(s) for s in dict.fromkeys(reversed(self.session.seeds_used))]
            yield from _matching(value, seeds)
        elif switch in IMAGE_SWITCHES:
            yield from self._paths(value, document)

    def _paths(self, raw: str, document: Document) -> Iterator[Completion]:
        """Paths, quoted where the parser needs quotes: a name with a space comes back as `"my dir/` (a folder,
        left open so the next Tab goes on inside it) or `"my dir/fire.png"` (a file, closed), replacing the word.
        A word already opened with a quote is completed inside it."""
        quote = raw[:1] if raw[:1] in _QUOTES else ""
        value = raw[len(quote) :]
        sub = Document(value, len(value))
        for found in self.paths.get_completions(sub, CompleteEvent(completion_requested=True)):
            full = value[: len(value) + found.start_position] + found.text
            if not quote and " " not in full:
                yield found
                continue
            mark = quote or '"'
            if os.path.isdir(os.path.expanduser(full)):
                full, closing = full.rstrip(os.sep) + os.sep, ""
            else:
                closing = QUOTE_PAIRS[mark][0]
            yield Completion(mark + full + closing, start_position=-len(raw), display=found.display)


_QUOTES = "".join(QUOTE_PAIRS)


def _words(text: str) -> list[str]:
    """`text` split at spaces as the parser splits it: a quote opens only at the start of a word (so `dog's` is one
    word) and a quoted word keeps its spaces and its quotes; the last word may be an unclosed quoted one."""
    words: list[str] = []
    current, quote = "", ""
    for char in text:
        if quote:
            current += char
            if char in QUOTE_PAIRS[quote]:
                quote = ""
        elif char == " ":
            words.append(current)
            current = ""
        else:
            if not current and char in _QUOTES:
                quote = char
            current += char
    words.append(current)
    return words


def _attached(word: str) -> tuple[str, str] | None:
    """`-Ak_` → ("-A", "k_"); `--sampler=k_` → ("--sampler", "k_")."""
    if word.startswith("--") and "=" in word:
        switch, _, value = word.partition("=")
        return switch, value
    if len(word) > 2 and word[0] == "-" and word[1] != "-" and word[:2] in SAMPLER_SWITCHES + IMAGE_SWITCHES:
        return word[:2], word[2:]
    return None


def _matching(prefix: str, options: Iterable[str]) -> Iterator[Completion]:
    for option in options:
        if option.startswith(prefix) and option != prefix:
            yield Completion(option, start_position=-len(prefix))


def split_commands(text: str) -> list[str]:
    """A pasted block runs line by line; a leading `invoke> ` is handled by the parser."""
    return [line for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]


def prompt_text(session: Session) -> str:
    return "invoke> "


_DIALECT_LINE = re.compile(r"^\s*(?:invoke>\s*)?!dialect\s+(\S+)\s*$")


def restore_history(session: Session, history: CommandHistory) -> None:
    """Give the session the history file's lines to number, and make the file say the dialect this session types in.

    A file's lines are numbered again at every start, each read under the dialect it was typed in: the file begins
    in the default dialect and its `!dialect` lines switch it. A session started with `--dialect legacy`, or one
    started in the default after the last session ended in `!dialect legacy`, typed its lines in a dialect the file
    did not say, so at the next start they were read in another (and `"x" -s10 -S5` is a bad line in guide, where
    -s is a strength): every later `!NN` moved. Such a session's history therefore starts with the `!dialect` line
    it would otherwise lack, numbered like a typed one.
    """
    lines = history.read_lines()
    session.add_earlier_history(lines, dialect=DIALECTS[0])
    dialect = DIALECTS[0]
    for line in lines:
        found = _DIALECT_LINE.match(line)
        if found and found.group(1) in DIALECTS:
            dialect = found.group(1)
    if dialect != session.dialect:
        marker = f"!dialect {session.dialect}"
        history.append_string(marker)
        session.number_unrun(marker, kept=True)


def tab_completes_at_once(completer: Completer) -> KeyBindings:
    """Tab inserts what it completes before the next key is handled.

    prompt_toolkit's own Tab starts the completion as a task, so an Enter in the same burst of input (typed ahead
    while an image was generating, or fast) ran the line as it was before: the screen showed `-A k_euler` and the
    session said "unknown sampler 'k_eul'". Our completions are cheap (names, switches, one folder listing), so
    Tab computes them on the spot: a single one, or the common start of several, is inserted at once; the menu
    of several still opens as before.
    """
    bindings = KeyBindings()

    @bindings.add("tab")
    def _complete(event: Any) -> None:
        buffer = event.current_buffer
        if buffer.complete_state:  # a menu is open: Tab moves through it, as before
            buffer.complete_next()
            return
        found = list(completer.get_completions(buffer.document, CompleteEvent(completion_requested=True)))
        if len(found) == 1:
            buffer.apply_completion(found[0])
            return
        common = get_common_complete_suffix(buffer.document, found)
        if common:
            buffer.insert_text(common)
        if len(found) > 1:
            buffer.start_completion(insert_common_part=False)

    return bindings


_PROMPTS: list[PromptSession[str]] = []  # the prompt of the running session, for messages from other threads


def say_above_prompt(text: str) -> None:
    """Print a message from a background thread (the default model's load: a fallback notice, a failed start)
    on stderr. While the prompt is up it goes above the prompt, which is drawn again with what was typed so far:
    printed straight it landed in the middle of the line being typed, and typing went on without a prompt."""
    app = _PROMPTS[-1].app if _PROMPTS else None
    loop = app.loop if app is not None else None
    if (
        app is not None
        and app.is_running
        and loop is not None
        and threading.current_thread() is not threading.main_thread()
    ):

        def show() -> None:
            run_in_terminal(lambda: print(text, file=sys.stderr, flush=True))

        try:
            loop.call_soon_threadsafe(show)
            return
        except RuntimeError:  # the loop closed meanwhile: no prompt is up
            pass
    print(text, file=sys.stderr, flush=True)


def run_interactive(session: Session, history: CommandHistory, **prompt_options: Any) -> int:
    """Loop until Ctrl-D or !quit (status 0: errors were shown and survived), or until SIGTERM or SIGHUP (128 + its
    number, after the running line stopped as Ctrl-C stops it and with the terminal given back in cooked mode)."""
    restore_history(session, history)
    completer = InvokeCompleter(session)
    prompt: PromptSession[str] = PromptSession(
        history=history,
        auto_suggest=AutoSuggestFromHistory(),
        completer=completer,
        complete_while_typing=False,
        enable_history_search=False,
        key_bindings=tab_completes_at_once(completer),
        **{"output": create_output(stdout=terminal_stream()), **prompt_options},
    )

    def stop_at_the_prompt(signum: int, frame: Any) -> None:
        # Never raises: between two lines the loop looks at `pending` after every line and before every prompt.
        # While a prompt is up, raising would unwind past prompt_toolkit's event loop and leave the terminal raw;
        # it is asked to end the prompt instead, which restores the terminal on the way out.
        if signum == signal.SIGINT:  # between two lines: prompt_toolkit takes Ctrl-C while its prompt is up
            return
        pending.append(signum)
        _end_prompt_soon(prompt.app, pending)

    pending: list[int] = []  # stop signals seen; checked around every prompt, so one that came as it ended counts
    previous = stopping.install(stop_at_the_prompt)
    _PROMPTS.append(prompt)
    try:
        return _loop(session, prompt, pending)
    except Stopped as stop:
        _report("invoke-repl: terminated", session.err, pending)
        return stopping.exit_status(stop.signum)
    except OSError:
        if not pending:
            raise
        return stopping.exit_status(pending[0])  # SIGHUP: the closed terminal failed prompt_toolkit's last write
    finally:
        _PROMPTS.remove(prompt)
        stopping.restore(previous)


def _report(text: str, stream: Any, pending: list[int]) -> None:
    """Print, unless a stop signal came and the terminal is gone (SIGHUP: writes fail with EIO)."""
    try:
        print(text, file=stream, flush=True)
    except OSError:
        if not pending:
            raise


class Stopped(Exception):
    """SIGTERM or SIGHUP reached the prompt, or ended a line."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _end_prompt_soon(app: Any, pending: list[int]) -> None:
    loop = app.loop
    if pending and app.is_running and loop is not None and not loop.is_closed():
        try:
            loop.call_soon_threadsafe(_end_prompt, app, pending)
        except RuntimeError:  # the loop closed meanwhile: the check after the prompt sees `pending`
            pass


def _end_prompt(app: Any, pending: list[int]) -> None:
    if pending and app.future is not None and not app.future.done():
        app.exit(exception=Stopped(pending[0]))


def _loop(session: Session, prompt: PromptSession[str], pending: list[int]) -> int:
    pending_edit = ""
    while True:
        if pending:
            raise Stopped(pending[0])
        try:
            # pre_run: a signal that came while this prompt was starting, before it could be asked to end
            text = prompt.prompt(
                prompt_text(session), default=pending_edit, pre_run=lambda: _end_prompt_soon(prompt.app, pending)
            )
        except KeyboardInterrupt:  # Ctrl-C at the prompt clears the line
            pending_edit = ""
            continue
        except EOFError:  # Ctrl-D
            if pending:
                raise Stopped(pending[0]) from None
            return 0
        if pending:
            raise Stopped(pending[0])
        pending_edit = ""
        lines = split_commands(text)
        for number, line in enumerate(lines):
            outcome, signum = run_with_cancel(session, line)
            if signum is not None and signum != signal.SIGINT:
                pending.append(signum)
            if outcome.error:
                _report(outcome.error, session.err, pending)
            if pending:
                raise Stopped(pending[0])
            if outcome.edit is not None:
                pending_edit = outcome.edit
            if outcome.quit:
                return 0
            if outcome.cancelled:
                for unrun in lines[number + 1 :]:  # in the history file already, so numbered as well
                    session.number_unrun(unrun)
                break


def run_with_cancel(session: Session, line: str) -> tuple[Outcome, int | None]:
    """Run one line with stop signals turned into a cancel request (see `stopping`): the generator stops within
    one step. Returns the outcome and the first stop signal received, if any: Ctrl-C comes back to the prompt,
    the others end the session.

    A second signal while the first is being honoured interrupts at once (files are written atomically, so an
    interrupted save leaves no partial image behind).
    """
    session.cancel.clear()
    received = stopping.Received()
    outcome = Outcome(ok=False, error="cancelled", cancelled=True)
    try:
        with stopping.cancel_on_signals(session.cancel, received=received):
            outcome = session.run_line(line)
    except KeyboardInterrupt:  # a second signal just outside the line's own handling of it
        pass
    finally:
        session.cancel.clear()
    return outcome, received.signum
