"""Start-up: options, the session, and the choice between an interactive prompt and a script.

Kept free of torch and diffusers imports: the interactive prompt must appear before they load (they take seconds),
and a scripted run with no generation lines must not load them at all. The model manager is created lazily — in a
background thread for interactive runs, so the default model is loading while the user types.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NoReturn

from invoke_repl import __version__
from invoke_repl.commands import DIALECTS
from invoke_repl.session import Session, default_outdir
from invoke_repl.stopping import cancel_on_signals, exit_status
from invoke_repl.streams import guard_standard_streams

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2  # and 128 + a signal's number when one stopped the run (130: Ctrl-C)


class _OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line (its own form is the 7-line usage block, then the error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def _path(text: str) -> Path:
    """A path option's value, `~` expanded: `--outdir=~/pics` is not expanded by the shell (no word start), and
    made a folder named `~` in the working directory, while `--models=~/x.yaml` and a line's `-o ~/pics` were read
    as the home folder. An empty value (an unset `-o "$DIR"`) is refused: it meant the working directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset variable?)")
    return Path(text).expanduser()


def _outdir(text: str) -> Path:
    """An output folder every `[N] PATH: …` line can name on one line, as a line's own `-o` must: one with a
    newline split the printed line in two and was logged as a path that does not exist."""
    from invoke_repl.request import control_character

    bad = control_character(text)
    if bad is not None:
        raise argparse.ArgumentTypeError(f"the folder name contains the control character {bad!r}")
    return _path(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="invoke-repl",
        description="An interactive invoke> command line for Stable Diffusion (txt2img and img2img).",
    )
    parser.add_argument("--outdir", "-o", type=_outdir, default=None, help="where images go (default ./outputs)")
    parser.add_argument(
        "--dialect",
        choices=DIALECTS,
        default="guide",
        help="switch letters: guide (-S steps, -s strength) or legacy (InvokeAI 2.x: -S seed, -s steps)",
    )
    parser.add_argument(
        "--from-file", type=_path, default=None, help="run the commands in FILE (- for stdin), then exit"
    )
    parser.add_argument("--models", type=_path, default=None, help="model catalogue (models.yaml) to use")
    parser.add_argument("--model", default=None, help="model to start with (default: the catalogue's default)")
    parser.add_argument("--device", choices=("auto", "cuda", "mps", "cpu"), default="auto")
    parser.add_argument("--precision", choices=("auto", "float32", "float16", "bfloat16"), default="auto")
    parser.add_argument("--max-loaded-models", type=int, default=2, help="models kept resident (default 2)")
    parser.add_argument("--history-file", type=_path, default=None, help="interactive history file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="CUDA only: compile the UNet in the background per image size (auto: in interactive sessions)",
    )
    parser.add_argument("--version", action="version", version=f"invoke-repl {__version__}")
    return parser


def make_manager_factory(args: argparse.Namespace, *, scripted: bool = False):
    """A function that builds the model manager; it runs only when a line needs it.

    An interactive session starts the start model's load at once, while the user types. A script does not: its
    next line is read at once anyway, and a script of catalogue commands (`!models`, `!edit_model`, …) then never
    imports torch nor loads a model it does not use (a `!switch` waited for that load). A script's lines each
    report an unusable catalogue as `line N: …`; an early notice would be one more copy, outside that format."""

    def factory():
        from invoke_repl.models import ModelManager, open_catalogue

        catalogue = open_catalogue(args.models)
        manager = ModelManager(
            catalogue,
            device=args.device,
            precision=args.precision,
            max_loaded=args.max_loaded_models,
            notify=None if scripted else _above_prompt,
        )
        if not scripted:
            manager.start_background_load(args.model)
        elif args.model is not None:
            manager.prefer(args.model)
        return manager

    return factory


def main(argv: list[str] | None = None) -> int:
    """The program; a Ctrl-C that comes before the prompt or the script has its own handling (the first few tenths
    of a second: imports) ends it quietly with 130, as it would a moment later, instead of with a traceback."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        status = exit_status(signal.SIGINT)
        if any(thread.is_alive() for thread in _WARM_UP):  # never shut down under torch's import (see _settle)
            _leave_now(status)
        return status


def _main(argv: list[str] | None) -> int:
    guard_standard_streams()
    args = build_parser().parse_args(argv)
    try:
        os.getcwd()
    except FileNotFoundError:  # torch's import dies in one ("oneMKL FATAL ERROR"), leaving the terminal raw
        print("invoke-repl: the working folder no longer exists; cd to another one and start again", file=sys.stderr)
        return EXIT_USAGE
    # transformers announces at import that torchvision is missing for image processors we never use; one such
    # line per start is noise in a REPL. Real errors still surface as exceptions.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.max_loaded_models < 1:
        print("invoke-repl: --max-loaded-models must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.models is not None and not args.models.is_file():
        why = "it is a folder" if args.models.is_dir() else "not a file" if args.models.exists() else "no such file"
        print(f"invoke-repl: --models {args.models}: {why}", file=sys.stderr)
        return EXIT_USAGE
    if args.model is not None:
        problem = _unknown_start_model(args)
        if problem:
            print(f"invoke-repl: --model {args.model}: {problem}", file=sys.stderr)
            return EXIT_USAGE
    outdir = args.outdir if args.outdir is not None else default_outdir()
    scripted = args.from_file is not None or not sys.stdin.isatty()
    session = Session(
        make_manager_factory(args, scripted=scripted),
        outdir=outdir,
        dialect=args.dialect,
        # Bars redraw with carriage returns: into a log file (stderr redirected) they are noise around the errors.
        progress=not args.no_progress and sys.stderr.isatty(),
        compile_unet=args.compile == "on" or (args.compile == "auto" and not scripted),
    )
    status: int | None = None
    try:
        status = run_script(session, args) if scripted else run_terminal(session, args)
        return status
    finally:
        _settle(session, status)


_WARM_UP: list[threading.Thread] = []


def _settle(session: Session, status: int | None) -> None:
    """Never shut the interpreter down under background start-up work (torch's import, the default model's load):
    exiting while a thread is inside torch's C++ code aborts the process (see `ModelManager.settle`). Waiting for
    that work is no better: Ctrl-D at a fresh prompt sat silent for 13 s while the default model loaded for
    nothing, and a Ctrl-C during that wait printed a traceback. So a run that ends with such work still going
    leaves without the interpreter's shutdown, every file it wrote being closed already (images and catalogue
    edits are written whole before their line ends; history lines as they are typed)."""
    if status is None:  # an exception is on its way out: let it
        return
    if any(thread.is_alive() for thread in _WARM_UP) or session.model_work_running:
        _leave_now(status)


def _leave_now(status: int) -> NoReturn:
    """Exit without the interpreter's shutdown, which aborts under a thread inside torch's C++ code."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _unknown_start_model(args: argparse.Namespace) -> str | None:
    """Why `--model NAME` cannot be the start model, if the catalogue says it is not there; checked before anything
    runs, since a script that asked for one model must not make its images with another. A catalogue that cannot be
    read is left for the session to report (its lines can still repair it)."""
    from invoke_repl.catalogue import Catalogue, ModelError

    try:
        catalogue = Catalogue.find(args.models)
    except (ModelError, FileNotFoundError):  # no catalogue at all: each line that needs a model says so
        return None
    if args.model in catalogue.entries:
        return None
    return f"no model named {args.model!r} in {catalogue.source} (known: {', '.join(catalogue.entries) or 'none'})"


def _not_a_script(path: Path) -> str | None:
    """Why `--from-file PATH` cannot be a script, if it cannot: a folder, or a device such as /dev/zero, which
    has no end (reading it all ran out of memory with a traceback). Pipes stay welcome: `--from-file <(…)`."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        return None  # the read says why, in one line
    if stat.S_ISDIR(mode):
        return "it is a folder"
    if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) and not _is_terminal(path):
        return "it is a device, not a file of commands"
    return None


def _is_terminal(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.isatty(fd)
    finally:
        os.close(fd)


def run_script(session: Session, args: argparse.Namespace) -> int:
    if args.from_file is not None and str(args.from_file) == "-":  # the usual name for stdin; it was "no such file"
        lines: Iterable[str] = _stdin_lines()
    elif args.from_file is not None:
        unreadable = _not_a_script(args.from_file)
        if unreadable:
            print(f"invoke-repl: cannot read {args.from_file}: {unreadable}", file=sys.stderr)
            return EXIT_USAGE
        try:
            lines = args.from_file.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        except OSError as exc:
            print(f"invoke-repl: cannot read {args.from_file}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
    else:
        lines = _stdin_lines()

    reading = threading.Event()  # set while waiting for the next line: a signal then ends the run at once
    with cancel_on_signals(session.cancel, idle=reading.is_set) as received:  # else after the current step
        try:
            failures, cancelled = session.run_lines(_flagged_reads(lines, reading, session.cancel))
        except KeyboardInterrupt:  # a second signal while the first was honoured
            cancelled, failures = True, 1
    # A signal during work that never looks at the cancel flag (the last image's save, `!fetch`) still ends the
    # run as signalled: it was forgotten, and the run exited 0 or waited on the pipe for more.
    cancelled = cancelled or received.signum is not None
    if cancelled:
        print(
            "invoke-repl: interrupted" if received.signum in (None, signal.SIGINT) else "invoke-repl: terminated",
            file=sys.stderr,
        )
        return exit_status(received.signum or signal.SIGINT)
    return EXIT_FAILED if failures else EXIT_OK


def _flagged_reads(lines: Iterable[str], reading: threading.Event, cancel: threading.Event) -> Iterator[str]:
    """`lines`, with `reading` set while the next one is awaited; none after `cancel` is set."""
    source = iter(lines)
    while True:
        reading.set()
        try:
            if cancel.is_set():  # after `reading` is set: a signal from here on stops the read itself
                return
            line = next(source)
        except StopIteration:
            return
        finally:
            reading.clear()
        yield line


def _stdin_lines() -> Iterable[str]:
    stream = sys.stdin.buffer
    for raw in stream:
        yield raw.decode("utf-8", errors="surrogateescape")


def run_terminal(session: Session, args: argparse.Namespace) -> int:
    from invoke_repl.repl import CommandHistory, default_history_file, run_interactive

    def warn(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    clash = _not_a_history(args.history_file, args.models) if args.history_file is not None else None
    if clash:
        warn(f"warning: history file {args.history_file} {clash}; history is kept in memory only")
        history = CommandHistory(None, warn)
    else:
        history = CommandHistory(args.history_file or default_history_file(), warn, owned=args.history_file is None)
    # Load torch, diffusers and the default model while the user types the first line.
    warm_up = threading.Thread(target=_warm_up, args=(session,), daemon=True, name="invoke-repl-warm-up")
    _WARM_UP.append(warm_up)
    warm_up.start()
    return run_interactive(session, history)


# Files a history line must never be appended to, by their suffix: a catalogue (`--history-file models.yaml`
# turned the catalogue into invalid YAML at the first line typed), images, weights.
_NOT_HISTORY_SUFFIXES = {".yaml": "a model catalogue", ".yml": "a model catalogue", ".png": "an image",
                         ".safetensors": "model weights", ".ckpt": "model weights", ".json": "a JSON file"}  # fmt: skip


def _not_a_history(path: Path, models: Path | None) -> str | None:
    """Why `--history-file PATH` must not be appended to, or None. Any other UTF-8 text file is used as the
    history, as before."""
    from invoke_repl.catalogue import user_catalogue_path

    try:
        same = any(path.resolve() == other.resolve() for other in (models, user_catalogue_path()) if other)
    except OSError:
        same = False
    if same:
        return "is the model catalogue"
    kind = _NOT_HISTORY_SUFFIXES.get(path.suffix.lower())
    return f"looks like {kind}, not a history" if kind else None


def _above_prompt(message: str) -> None:
    from invoke_repl.repl import say_above_prompt  # imported already: the prompt is up

    say_above_prompt(message)


def _warm_up(session: Session) -> None:
    if os.environ.get("INVOKE_REPL_NO_WARMUP"):
        return
    try:
        session.manager.device  # noqa: B018 - imports torch, starts the default's load, finds the device
    except Exception as exc:  # reported again, with its reason, when a line needs the model
        _above_prompt(f"warning: model manager failed to start: {exc}")
