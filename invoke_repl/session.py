"""Runs what the user typed: generation requests and `!commands`, one line at a time.

The session is the only stateful piece between the prompt and the generator: it remembers the previous image
(for `--seed -1` and `-I -1`), the command history, the dialect and the image counter. It never parses text itself
(commands.parse does) and never touches torch until a line actually asks for a picture, so scripted runs without
generation lines and the first prompt of an interactive run stay instant.
"""

from __future__ import annotations

import bisect
import gc
import os
import re
import shlex
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from invoke_repl import __version__
from invoke_repl.commands import (
    DIALECTS,
    QUOTE_PAIRS,
    TYPOGRAPHIC_QUOTES,
    BangCommand,
    ParseError,
    canonical,
    help_text,
    parse,
)
from invoke_repl.request import PREVIOUS, PREVIOUS_IMAGE, Request, RequestError

if TYPE_CHECKING:
    from invoke_repl.models import ModelManager


@dataclass
class Outcome:
    """What one line did. `error` is a one-line message; `edit` is text for the next input buffer."""

    ok: bool = True
    error: str | None = None
    quit: bool = False
    edit: str | None = None
    cancelled: bool = False
    images: int = 0


class GenerationCancelled(Exception):
    """Ctrl-C arrived while a line was running; files already written are kept."""


OOM_HINT = "out of memory: try a smaller -W/-H, fewer images (-n), or --precision float16/bfloat16"
CANCEL_POLL_SECONDS = 0.05  # how often a line waiting for a model load looks at the cancel flag


def _is_oom(exc: BaseException) -> bool:
    name = type(exc).__name__
    if name == "OutOfMemoryError" or isinstance(exc, MemoryError):  # torch's device OOM; host RAM
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class Session:
    def __init__(
        self,
        manager_factory: Callable[[], ModelManager],
        *,
        outdir: Path,
        dialect: str = "guide",
        out: TextIO | None = None,
        err: TextIO | None = None,
        progress: bool = True,
        history: list[str] | None = None,
        compile_unet: bool = False,
    ) -> None:
        self._manager_factory = manager_factory
        # Background UNet compiles (CUDA only) pay off over a session of many images; a one-shot script would
        # only make its few images compete with the compiler for the GIL and the GPU.
        self.compile_unet = compile_unet
        self._manager: ModelManager | None = None
        self._manager_lock = threading.Lock()
        self.outdir = Path(outdir)
        self.dialect = dialect
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.progress = progress
        self._history: list[str] = history if history is not None else []
        self._earlier: tuple[list[str], str] | None = None  # history file lines not numbered yet, start dialect
        self.cancel = threading.Event()
        self.image_count = 0
        self.last_seed: int | None = None
        self.last_path: Path | None = None
        self.seeds_used: list[int] = []
        self._told: set[str] = set()
        self._manager_work: threading.Thread | None = None  # a model load a cancelled line left running
        self._replaying: set[str] = set()

    # ----------------------------------------------------------------- model manager (lazy, maybe background)
    @property
    def manager(self) -> ModelManager:
        with self._manager_lock:
            if self._manager is None:
                self._manager = self._manager_factory()
            return self._manager

    @property
    def manager_ready(self) -> bool:
        return self._manager is not None

    @property
    def model_work_running(self) -> bool:
        """Whether a thread is still inside model code: a load that a cancelled line left running (`!switch`,
        `--model`), or one of the manager's own background loads. The interpreter must not shut down under one
        (see `ModelManager.settle`): a signal during a `!switch` load aborted the process that way."""
        work = self._manager_work
        return (work is not None and work.is_alive()) or (self._manager is not None and self._manager.loading())

    def model_names(self) -> list[str]:
        """Names for completion; empty until the manager exists so completion never waits for torch."""
        if self._manager is None:
            return []
        try:
            return list(self._manager.model_names())
        except Exception:
            return []

    # ----------------------------------------------------------------------------------------- lines
    def run_line(self, line: str) -> Outcome:
        """Run one line; never raises for anything the user typed or any file they named."""
        notices: list[str] = []
        try:
            parsed = parse(line, self.dialect, notices)
        except (ParseError, RequestError) as exc:
            return Outcome(ok=False, error=str(exc))
        for notice in notices:
            self._say(notice)
        if parsed is None:
            return Outcome()
        if _remembered(parsed) and not self._replaying:
            # After the earlier lines, whenever those are numbered. A replayed file's lines are not numbered: they
            # never reach the history file, so after a restart every later number would have moved.
            self._history.append(line.strip())
        try:
            if isinstance(parsed, BangCommand):
                return self._bang(parsed)
            return self._generate(parsed)
        except GenerationCancelled:
            return Outcome(ok=False, error="cancelled", cancelled=True)
        except KeyboardInterrupt:
            return Outcome(ok=False, error="cancelled", cancelled=True)
        except Exception as exc:  # the REPL must survive anything a line can trigger
            out_of_memory = _is_oom(exc)
            failed = Outcome(ok=False, error=OOM_HINT if out_of_memory else _one_line(exc))
        # Outside the except block: the traceback (and the failed generation's tensors in its frames) is gone now,
        # so collecting and emptying the device cache can actually give that memory back.
        if out_of_memory:
            self._free_memory()
        return failed

    def number_unrun(self, line: str, *, kept: bool = False) -> None:
        """Number a line that reached the history file but never ran: the rest of a pasted block after a Ctrl-C
        (prompt_toolkit stores the whole block when it is accepted), or the `!dialect` line a start adds. Without
        it every later `!NN` changed at the next start, which numbers the file's lines. `kept`: the caller knows
        the line is numbered (it is not parsed: the prompt must not wait)."""
        if kept or self.keeps_in_history(line):
            self._history.append(line.strip())

    def keeps_in_history(self, line: str) -> bool:
        """Whether `run_line` would number `line` in the history (`!NN`, `!history`) under the current dialect."""
        try:
            return _remembered(parse(line, self.dialect))
        except (ParseError, RequestError):
            return False

    @property
    def history(self) -> list[str]:
        """The numbered lines (`!NN`, `!history`, `!search`): the history file's, then this session's."""
        if self._earlier is not None:
            lines, dialect = self._earlier
            self._earlier = None
            self._history[:0] = self.numbered_history(lines, dialect)
        return self._history

    def add_earlier_history(self, lines: list[str], dialect: str | None = None) -> None:
        """Put a history file's lines (oldest first) before this session's, numbered only when a command first
        asks for a number. Numbering parses every line (~65 µs each on this 2-core CPU: 20,000 lines took 1.4 s)
        and the prompt must not wait for it, nor the model's warm-up share the interpreter with it. `dialect`: the
        one the first line was typed in (default: the session's)."""
        if self._earlier is not None:
            lines, dialect = self._earlier[0] + lines, self._earlier[1]
        self._earlier = (list(lines), dialect or self.dialect)

    def numbered_history(self, lines: Iterable[str], dialect: str | None = None) -> list[str]:
        """The lines of a history file that `run_line` numbered when they were typed, so `!NN` still names the same
        line after a restart. Each is read under the dialect in force when it was typed: `!dialect NAME` lines
        switch it as they did then (a history typed in `legacy` read under `guide` lost its `-s 50` lines); the
        first under `dialect`, by default the session's."""
        dialect, kept = dialect or self.dialect, []
        for line in lines:
            try:
                parsed = parse(line, dialect)
            except (ParseError, RequestError):
                continue
            if isinstance(parsed, BangCommand) and parsed.name == "dialect" and parsed.args in DIALECTS:
                dialect = parsed.args
            if _remembered(parsed):
                kept.append(line.strip())
        return kept

    def run_lines(self, lines: Iterable[str], source: str | None = None) -> tuple[int, bool]:
        """Scripted mode: every line is a command; errors go to `err` as `line N: message`.

        Returns (number of failed lines, cancelled). Stops at a cancellation (Ctrl-C), keeping finished files.
        """
        failures = 0
        for number, line in enumerate(lines, start=1):
            if self.cancel.is_set():
                return failures, True
            outcome = self.run_line(line.rstrip("\r\n"))
            if outcome.edit is not None:
                print(outcome.edit, file=self.out, flush=True)
            if not outcome.ok:
                failures += 1
                where = f"{source} line {number}" if source else f"line {number}"
                print(f"{where}: {outcome.error}", file=self.err, flush=True)
            if outcome.cancelled:
                return failures, True
            if outcome.quit:
                break
        return failures, False

    # ------------------------------------------------------------------------------------ generation
    def _resolve(self, request: Request) -> Request:
        changes: dict[str, Any] = {}
        if request.seed == PREVIOUS:
            if self.last_seed is None:
                raise RequestError("--seed -1 means the previous image's seed, but no image was made yet")
            changes["seed"] = self.last_seed
        if request.init_img == PREVIOUS_IMAGE:
            if self.last_path is None:
                raise RequestError("-I -1 means the previous image, but no image was made yet")
            changes["init_img"] = str(self.last_path)
        return request.replace(**changes) if changes else request

    def _generate(self, request: Request) -> Outcome:
        from invoke_repl import outputs
        from invoke_repl.images import load_init_image

        request = self._resolve(request)
        init_image = load_init_image(Path(request.init_img).expanduser()) if request.init_img else None
        if request.init_img and not request.init_img.startswith("~") and not os.path.isabs(request.init_img):
            # Recorded absolute, so the printed line, the log beside the images and the PNG's metadata re-run the
            # image from any folder: `rot6.jpg` as typed failed `!replay outputs/invoke_log.txt` run elsewhere.
            request = request.replace(init_img=os.path.abspath(request.init_img))
        outdir = Path(request.outdir).expanduser() if request.outdir else self.outdir
        components = self._components(request.model)
        from invoke_repl.generator import Cancelled, generate, sampler_substitution

        if self.compile_unet:
            from invoke_repl.accel import compiled_unets

            compiled_unets(components)  # CUDA only: from now on the loop asks it for a compiled UNet

        note = sampler_substitution(request.sampler)
        if note and note not in self._told:
            self._told.add(note)
            self._say(note)
        prefix = outputs.reserve_prefix(outdir)
        first_prefix: int | None = None
        # Only what the grid needs, and only with -g: every finished image with its step previews stayed in memory
        # until the command ended (16 MiB an image at 2048², so a long -n at a large size ran out of memory).
        made: list[Any] = []
        count = 0
        try:
            for generated in generate(
                components,
                request,
                init_image=init_image,
                cancel=self.cancel,
                previews=request.save_steps,
                progress=self.progress,
            ):
                path = outputs.save_image(
                    outdir, prefix, generated, model_hash=components.sha256, app_version=__version__
                )
                # Another process took this prefix for the same seed: the rest of the command follows the bump, so
                # its images share a prefix from there on.
                prefix = outputs.prefix_of(path)  # (the grid stays with the command's first image)
                first_prefix = prefix if first_prefix is None else first_prefix
                count += 1
                if request.grid:
                    made.append((generated.seed, generated.image))
                self._announce(outdir, path, generated)  # saved is said at once, whatever happens to its strip
                if request.save_steps:
                    self._save_strip(outdir, prefix, path, generated)
                del generated
        except Cancelled as exc:
            self._finish_grid(outdir, first_prefix, request, made)
            raise GenerationCancelled() from exc
        finally:
            self._compile_notices(components)
        self._finish_grid(outdir, first_prefix, request, made)
        return Outcome(images=count)

    def _save_strip(self, outdir: Path, prefix: int, path: Path, generated: Any) -> None:
        from invoke_repl import outputs
        from invoke_repl.metadata import OutputError

        if not generated.previews:
            self._say(f"no --save-steps strip for {path.name}: it took 0 steps (⌊steps × strength⌋ = 0)")
            return
        try:
            outputs.save_steps_strip(outdir, prefix, generated)
        except OutputError as exc:
            self._say(f"warning: {path} is saved, but its --save-steps strip is not: {exc}")

    def _compile_notices(self, components: Any) -> None:
        """Say what the GPU fast path's background compiles started or finished (and what each cost)."""
        for name in ("compiled_unets", "cuda_graphs"):
            registry = components.extras.get(name)
            if registry:
                for notice in registry.take_notices():
                    self._say(notice)

    def _finish_grid(self, outdir: Path, prefix: int | None, request: Request, made: list[Any]) -> None:
        """`made`: (seed, image) of each image saved. A grid that cannot be saved is a warning, as a strip is: the
        images are saved and were announced, and the line used to fail as if they were not."""
        if request.grid and len(made) > 1 and prefix is not None:
            from invoke_repl import outputs
            from invoke_repl.metadata import OutputError

            try:
                path = outputs.save_grid(outdir, prefix, [image for _, image in made], made[0][0])
            except OutputError as exc:
                self._say(f"warning: the {len(made)} images are saved, but their grid is not: {exc}")
                return
            print(f"grid: {path}", file=self.out, flush=True)

    def _announce(self, outdir: Path, path: Path, generated: Any) -> None:
        from invoke_repl import outputs

        self.image_count += 1
        self.last_seed = generated.seed
        self.last_path = path
        self.seeds_used.append(generated.seed)
        line = f"[{self.image_count}] {path}: {canonical(generated.request)}"
        warning = outputs.append_log(outdir, line)  # first: a terminal closed under the print must not cost it
        print(line, file=self.out, flush=True)
        if warning:
            self._say(warning)

    def _components(self, name: str | None) -> Any:
        return self._with_manager(lambda manager: manager.get() if name is None else manager.get(name))

    def _with_manager(
        self, call: Callable[[ModelManager], Any], commit: Callable[[ModelManager, Any], Any] | None = None
    ) -> Any:
        """`call(manager)` in a helper thread, waited for in a way Ctrl-C (`self.cancel`) can end at once, then
        `commit(manager, its result)` unless the line was cancelled first.

        Creating the manager (importing torch) and loading a model take seconds to minutes, in code that cannot be
        interrupted; the line gives up waiting instead (GenerationCancelled) and the work goes on in the
        background. The next line that needs the manager first waits for that leftover work, so a load finishing
        late never evicts a model from under a running generation. What the command changes (the active model, the
        catalogue) is its `commit`, which a cancelled line never runs: a `!switch` cancelled mid-load said
        "cancelled" and then made the model active anyway. A cancel that comes while the commit runs waits for it
        (milliseconds) and the line reports what it did.
        """
        leftover = self._manager_work
        if leftover is not None:
            self._wait_for(leftover)
        box: dict[str, Any] = {}
        gate = threading.Lock()
        state = {"abandoned": False, "committing": False}

        def work() -> None:
            try:
                value = call(self.manager)
                if commit is not None:
                    with gate:
                        if state["abandoned"]:
                            return
                        state["committing"] = True
                    value = commit(self.manager, value)
                box["value"] = value
            except (Exception, KeyboardInterrupt) as exc:  # handed to the waiting line
                box["error"] = exc
            except BaseException as exc:  # a library's sys.exit() at import must end this line, not the session
                box["error"] = RuntimeError(f"model code exited: {str(exc) or type(exc).__name__}")

        thread = threading.Thread(target=work, name="invoke-repl-model", daemon=True)
        self._manager_work = thread
        thread.start()
        try:
            self._wait_for(thread)
        except GenerationCancelled:
            with gate:
                if not state["committing"]:
                    state["abandoned"] = True
                    raise
            thread.join()
        self._manager_work = None
        if "error" in box:
            error = box.pop("error")
            try:
                raise error
            finally:
                del error
        return box["value"]

    def _wait_for(self, thread: threading.Thread) -> None:
        while thread.is_alive():
            if self.cancel.is_set():
                raise GenerationCancelled()
            thread.join(CANCEL_POLL_SECONDS)

    def _free_memory(self) -> None:
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _say(self, message: str) -> None:
        print(message, file=self.err, flush=True)

    # ---------------------------------------------------------------------------------- !commands
    def _bang(self, command: BangCommand) -> Outcome:
        handler = getattr(self, f"_cmd_{command.name}", None)
        if handler is None:
            return Outcome(ok=False, error=f"!{command.name} is not available")
        return handler(command.args.strip())

    def _cmd_quit(self, args: str) -> Outcome:
        return Outcome(quit=True)

    _cmd_exit = _cmd_quit

    def _cmd_help(self, args: str) -> Outcome:
        print(help_text(self.dialect), file=self.out, flush=True)
        return Outcome()

    def _cmd_dialect(self, args: str) -> Outcome:
        from invoke_repl.commands import DIALECTS

        if not args:
            print(f"dialect: {self.dialect}", file=self.out, flush=True)
            return Outcome()
        if args not in DIALECTS:
            return Outcome(ok=False, error=f"unknown dialect {args!r}; choose {' or '.join(DIALECTS)}")
        self.dialect = args
        print(f"dialect: {self.dialect}", file=self.out, flush=True)
        return Outcome()

    def _cmd_history(self, args: str) -> Outcome:
        count = len(self.history)
        if args:
            if not args.isdigit():
                return Outcome(ok=False, error=f"!history takes a number of lines, got {args!r}")
            count = int(args)
        start = max(0, len(self.history) - count)
        for index in range(start, len(self.history)):
            print(f"[{index}] {self.history[index]}", file=self.out)
        self.out.flush()
        return Outcome()

    def _cmd_search(self, args: str) -> Outcome:
        if not args:
            return Outcome(ok=False, error="!search needs some text to look for")
        needle = args.lower()
        for index, line in enumerate(self.history[:-1]):
            if needle in line.lower():
                print(f"[{index}] {line}", file=self.out)
        self.out.flush()
        return Outcome()

    def _cmd_recall(self, args: str) -> Outcome:
        index = int(args)
        if not 0 <= index < len(self.history):
            return Outcome(ok=False, error=f"no history line {index} (there are {len(self.history)}; see !history)")
        return Outcome(edit=self.history[index])

    def _cmd_fetch(self, args: str) -> Outcome:
        from invoke_repl.outputs import read_request

        if not args:
            return Outcome(ok=False, error="!fetch needs a PNG file made by invoke-repl, InvokeAI or AUTOMATIC1111")
        path = Path(_unquote(args)).expanduser()
        if path.exists() and not path.is_file():
            return Outcome(ok=False, error=f"!fetch: {path} is not a file (a PNG made by invoke-repl or another tool)")
        if not path.is_file():
            return Outcome(ok=False, error=f"!fetch: no such file: {path}")
        notices: list[str] = []
        request = read_request(path, notices)
        notices += self._made_elsewhere(path)
        for notice in notices:
            self._say(notice)
        return Outcome(edit=canonical(request))

    def _made_elsewhere(self, path: Path) -> list[str]:
        """A notice when the fetched image was made on another device type or in another precision than this
        session runs: the line is the same, the pixels will not be (fp16, bf16 and fp32 differ by a few levels).
        Said only when the model manager already exists; `!fetch` never imports torch to find out."""
        from invoke_repl.metadata import MetadataError, made_on, read_chunks

        if not self.manager_ready:
            return []
        try:
            origin = made_on(read_chunks(path))
        except MetadataError:
            return []
        resolved = self.manager.resolved_device_and_dtype  # None before a first load: never resolve it here
        if resolved is None:
            return []
        here = (resolved[0].type, str(resolved[1]).removeprefix("torch."))
        if origin is None or origin == here:
            return []
        return [
            f"this image was made on {origin[0]} in {origin[1]}; this session runs on {here[0]} in {here[1]}, so the"
            " same line makes a close but not identical image (pixels differ by a few levels)"
        ]

    def _cmd_replay(self, args: str) -> Outcome:
        if not args:
            return Outcome(ok=False, error="!replay needs a file of commands")
        path = Path(_unquote(args)).expanduser()
        if path.exists() and not path.is_file():  # a folder, or a device/FIFO that would never end (/dev/zero)
            return Outcome(ok=False, error=f"!replay: {path} is not a regular file")
        try:
            lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        except OSError as exc:
            return Outcome(ok=False, error=f"!replay: cannot read {path}: {exc.strerror or exc}")
        key = os.path.realpath(path)
        if key in self._replaying:
            return Outcome(ok=False, error=f"!replay: {path} is already being replayed (a file cannot replay itself)")
        self._replaying.add(key)
        try:
            failures, cancelled = self.run_lines(lines, source=str(path))
        finally:
            self._replaying.discard(key)
        if cancelled:
            return Outcome(ok=False, error="cancelled", cancelled=True)
        if failures:
            return Outcome(ok=False, error=f"!replay {path}: {failures} line(s) failed")
        return Outcome()

    # model commands: thin wrappers, the manager owns the catalogue and the cache
    def _cmd_models(self, args: str) -> Outcome:
        for info in self._with_manager(lambda manager: manager.list_models()):
            print(_format_model(info), file=self.out)
        self.out.flush()
        return Outcome()

    def _cmd_switch(self, args: str) -> Outcome:
        if not args:
            return Outcome(ok=False, error="!switch needs a model name (see !models)")
        name = _unquote(args)
        # Loaded first (a line's --model does the same), made active only if the line was not cancelled meanwhile.
        self._with_manager(lambda manager: manager.get(name), lambda manager, _: manager.switch(name))
        print(f"active model: {self.manager.active_name}", file=self.out, flush=True)
        return Outcome()

    def _cmd_import_model(self, args: str) -> Outcome:
        words = _split(args)
        if not words:
            return Outcome(
                ok=False,
                error="!import_model needs a path: !import_model PATH [--name N] [--description D] [--config C]"
                " [--vae V]",
            )
        spec = {"--name": str, "--description": str, "--default": bool, "--config": str, "--vae": str}
        if words[0].partition("=")[0] in spec:  # `!import_model --name x`: the path was forgotten
            return Outcome(ok=False, error=f"!import_model needs a path first: !import_model PATH {' '.join(words)}")
        path, options = words[0], _options(words[1:], spec)
        name = self._with_manager(
            lambda manager: manager.plan_import(
                Path(path).expanduser(),
                name=options.get("--name"),
                description=options.get("--description"),
                default=bool(options.get("--default", False)),
                config=options.get("--config"),
                vae=options.get("--vae"),
            ),
            lambda manager, planned: manager.add_import(*planned),
        )
        print(f"imported model {name}", file=self.out, flush=True)
        return Outcome()

    def _cmd_edit_model(self, args: str) -> Outcome:
        words = _split(args)
        if len(words) < 2 or any("=" not in w for w in words[1:]):
            return Outcome(ok=False, error="usage: !edit_model NAME key=value ...")
        fields = dict(w.split("=", 1) for w in words[1:])
        self._with_manager(
            lambda manager: manager.wait_for_load(words[0]), lambda manager, _: manager.edit_model(words[0], **fields)
        )
        print(f"updated model {words[0]}", file=self.out, flush=True)
        return Outcome()

    def _cmd_del_model(self, args: str) -> Outcome:
        if not args:
            return Outcome(ok=False, error="!del_model needs a model name")
        name = _unquote(args)
        self._with_manager(lambda manager: None, lambda manager, _: manager.del_model(name))
        print(f"removed {args} from the catalogue (its files are untouched)", file=self.out, flush=True)
        return Outcome()


def _format_model(info: Any) -> str:
    mark = "*" if getattr(info, "active", False) else " "
    size = getattr(info, "size_bytes", None)
    size_text = f"{size / 2**20:8.1f} MiB" if isinstance(size, (int, float)) and size else "       -    "
    return f"{mark} {info.name:<20} {info.format:<11} {size_text}  {info.state:<10} {info.description or ''}".rstrip()


def _unquote(text: str) -> str:
    """A path as typed after !fetch/!replay: bare, 'single-quoted', or "double-quoted" with the escapes the printed
    lines use (`\\"` and `\\\\`), so a quoted path copied from a canonical line names the same file."""
    text = text.strip()
    if len(text) >= 2 and text[0] in TYPOGRAPHIC_QUOTES and text[-1] in QUOTE_PAIRS[text[0]]:
        return text[1:-1]  # “my drawing.png” pasted from a chat app
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r'\\(["\\])', r"\1", text[1:-1])
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1]
    return text


def _straight_quotes(text: str) -> str:
    """`“My Models/x.ckpt” name=“my model”` → shell quoting: shlex knows only straight quotes. A typographic quote
    opening a word (or a `key=` value) closes at the first of its closers that ends a word; one that nothing
    closes stays as typed. Each opener finds its closer by bisection, so the pass stays fast on any line."""
    ends = {
        opener: [j for j, c in enumerate(text) if c in closers and (j + 1 == len(text) or text[j + 1].isspace())]
        for opener, closers in QUOTE_PAIRS.items()
        if opener in TYPOGRAPHIC_QUOTES
    }
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c in ends and (i == 0 or text[i - 1].isspace() or text[i - 1] == "="):
            k = bisect.bisect_right(ends[c], i)
            if k < len(ends[c]):
                close = ends[c][k]
                out.append(shlex.quote(text[i + 1 : close]))
                i = close + 1
                continue
        out.append(c)
        i += 1
    return "".join(out)


def _split(text: str) -> list[str]:
    """Arguments split as a shell would, typographic quotes included (pasted from a chat app or a document)."""
    try:
        return shlex.split(_straight_quotes(text))
    except ValueError as exc:
        raise RequestError(f"cannot read arguments: {exc}") from exc


def _options(words: list[str], spec: dict[str, type]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    index = 0
    while index < len(words):
        word = words[index]
        key, _, inline = word.partition("=")
        if key not in spec:
            raise RequestError(f"unknown option {key}; expected one of {', '.join(spec)}")
        if key in found:  # `--name a --name b` kept the last without a word
            raise RequestError(f"{key} is given twice")
        if spec[key] is bool:
            found[key] = True
        else:
            if inline:
                found[key] = inline
            elif index + 1 < len(words):
                index += 1
                found[key] = words[index]
            else:
                raise RequestError(f"{key} needs a value")
            if not found[key].strip():  # `--name ""` imported under the derived name instead
                raise RequestError(f"{key} needs a value, not an empty one")
        index += 1
    return found


def _remembered(parsed: Request | BangCommand | None) -> bool:
    """Lines that get a history number: not blank or `#` lines, not the history commands themselves."""
    return parsed is not None and not (isinstance(parsed, BangCommand) and parsed.name in ("recall", "history"))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename:
        text = f"{exc.strerror or text}: {exc.filename}"
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if len(first) <= 300 else first[:297] + "..."


def default_outdir() -> Path:
    return Path(os.environ.get("INVOKE_REPL_OUTDIR") or "outputs")  # set but empty: not the working folder
