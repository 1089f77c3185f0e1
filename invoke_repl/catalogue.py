"""The model catalogue (`models.yaml`): which models exist, where their files are and how to read them.

Kept free of torch so the REPL can list and complete model names before anything heavy is imported.

Format: a mapping of model name → entry::

    my-model:
      description: what it is
      format: diffusers | checkpoint | builtin
      path: folder, .safetensors/.ckpt file, or a builtin recipe name
      config: sd-1 | sd-1-v | sd-2 | sd-2-v | a diffusers config folder (optional; detected when left out)
      vae: a VAE folder or single file                                 (optional)
      width: 512                                                       (optional native size)
      height: 512
      cfg_scale: 4                                                     (optional: the model's default CFG)
      default: true                                                    (at most one entry)

Which file is the catalogue: `--models FILE`, else `./models.yaml`, else the user's
`$XDG_CONFIG_HOME/invoke-repl/models.yaml`, else the shipped one (read-only: the installed package is never
written). Edits go to the user's file; when there is none yet it is created, seeded with the shipped entries.
Relative paths resolve against the folder of the file they are written in, except in the shipped catalogue, where
they resolve against the repository/site-packages folder so the same text works in a checkout and in a wheel.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from invoke_repl import paths

FORMATS = ("diffusers", "checkpoint", "builtin")
FAMILIES = ("sd-1", "sd-1-v", "sd-2", "sd-2-v")
FIELDS = ("description", "format", "path", "config", "vae", "width", "height", "cfg_scale", "default")
MAX_CFG = 100.0  # as request.MAX_CFG (not imported: request.py is for lines, this module for files)
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
BUILTIN_RECIPES = ("tiny-random",)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@-]*$")


class ModelError(Exception):
    """Anything wrong with a model or the catalogue, said in one line the REPL can print as it is."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def user_config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "invoke-repl"


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "invoke-repl"


def user_catalogue_path() -> Path:
    return user_config_dir() / "models.yaml"


@dataclass(frozen=True)
class ModelEntry:
    """One catalogue entry with its paths resolved; `raw` keeps the text as written for saving back."""

    name: str
    format: str
    path: Path | None
    config: str | Path | None = None  # a family name or a resolved config folder
    vae: Path | None = None
    width: int | None = None
    height: int | None = None
    cfg_scale: float | None = None  # the CFG a line without -C gets on this model (None: the global default)
    default: bool = False
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False)
    base: Path = field(default=Path("."), compare=False)

    @property
    def family(self) -> str | None:
        """The family the catalogue names, if it names one (a config folder is not a family)."""
        return self.config if isinstance(self.config, str) else None

    def files_present(self) -> bool:
        """Whether the weights are where the entry says (builtin recipes have no files)."""
        if self.format == "builtin":
            return True
        if self.path is None:
            return False
        if self.format == "diffusers":  # a folder still being written (say, by a training run) has no unet/ yet
            return (self.path / "unet").is_dir()
        return self.path.is_file()

    def to_yaml(self, target_dir: Path) -> dict[str, Any]:
        """The entry as it should be written into a catalogue living in `target_dir`."""
        out: dict[str, Any] = {}
        for key in FIELDS:
            if key not in self.raw or self.raw[key] is None:
                continue
            value = self.raw[key]
            if key in ("path", "config", "vae") and not (self.format == "builtin" and key == "path"):
                if not (key == "config" and value in FAMILIES):
                    value = _rebase(str(value), self.base, target_dir)
            out[key] = value
        return out


def _rebase(text: str, base: Path, target_dir: Path) -> str:
    """Keep a relative path relative only when the file it is written in resolves it the same way."""
    expanded = Path(os.path.expanduser(text))
    if expanded.is_absolute():
        return text
    if base.resolve() == target_dir.resolve():
        return text
    return str((base / expanded).resolve())


def parse_entry(name: Any, data: Any, base: Path, where: str) -> ModelEntry:
    """Validate one entry; every problem becomes a ModelError naming the file, the entry and the field."""

    def bad(problem: str) -> ModelError:
        return ModelError(f"{where}: entry {name!r}: {problem}")

    if not isinstance(name, str) or not _NAME.match(name):
        raise ModelError(
            f"{where}: entry {name!r}: a model name is one word of letters, digits and . _ + @ - "
            "(so it can be typed after !switch and --model)"
        )
    if not isinstance(data, dict):
        raise bad(f"expected a mapping of fields ({', '.join(FIELDS)}), got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in FIELDS)
    if unknown:
        raise bad(f"unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})")
    fmt = data.get("format")
    if fmt not in FORMATS:
        raise bad(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    raw_path = data.get("path")
    if fmt == "builtin":
        if raw_path is None and name not in BUILTIN_RECIPES:
            raise bad(f"a builtin entry needs path: one of {', '.join(BUILTIN_RECIPES)}")
        raw_path = raw_path if raw_path is not None else name
        if raw_path not in BUILTIN_RECIPES:
            raise bad(f"unknown builtin recipe {raw_path!r} (known: {', '.join(BUILTIN_RECIPES)})")
        path = None
    else:
        if not isinstance(raw_path, str) or not raw_path.strip():
            raise bad(f"a {fmt} entry needs a path")
        path = _resolve(raw_path, base)
        moved = _in_this_package(path)
        if moved is not None:
            path, data = moved, {**data, "path": str(moved)}
        if fmt == "checkpoint" and path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise bad(f"a checkpoint path must end in one of {', '.join(CHECKPOINT_SUFFIXES)}: {raw_path}")
    raw_config = data.get("config")
    config: str | Path | None
    if raw_config is None:
        config = None
    elif not isinstance(raw_config, str) or not raw_config.strip():
        raise bad(f"config must be a family ({', '.join(FAMILIES)}) or a config folder, got {raw_config!r}")
    elif raw_config in FAMILIES:
        config = raw_config
    else:
        config = _resolve(raw_config, base)
    raw_vae = data.get("vae")
    if raw_vae is not None and (not isinstance(raw_vae, str) or not raw_vae.strip()):
        raise bad(f"vae must be a path, got {raw_vae!r}")
    vae = _resolve(raw_vae, base) if raw_vae else None
    sizes: dict[str, int | None] = {}
    for key in ("width", "height"):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 8):
            raise bad(f"{key} must be a positive multiple of 8, got {value!r}")
        sizes[key] = value
    cfg = data.get("cfg_scale")
    if cfg is not None:
        if isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not 0 <= cfg <= MAX_CFG:
            raise bad(f"cfg_scale must be a number from 0 to {MAX_CFG:g}, got {cfg!r}")
        cfg = float(cfg)
    default = data.get("default", False)
    if not isinstance(default, bool):
        raise bad(f"default must be true or false, got {default!r}")
    description = data.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, (str, int, float)):
        raise bad(f"description must be text, got {type(description).__name__}")
    raw = {k: data[k] for k in FIELDS if k in data}
    return ModelEntry(
        name=name,
        format=fmt,
        path=path,
        config=config,
        vae=vae,
        width=sizes["width"],
        height=sizes["height"],
        cfg_scale=cfg,
        default=default,
        description=str(description),
        raw=raw,
        base=base,
    )


def _in_this_package(path: Path) -> Path | None:
    """Where a missing file inside an `invoke_repl` package folder is in this installation's package, if there.

    The first edit seeds the user's catalogue with the shipped entries, whose package paths must be written
    absolute (the user's file lives elsewhere). After a reinstall into a new environment that path names the old
    site-packages, and the embedded model would read as missing (and the default fall back to a noise model).
    """
    if "invoke_repl" not in path.parts or path.exists():
        return None
    parts = path.parts
    tail = parts[len(parts) - parts[::-1].index("invoke_repl") :]
    here = paths.PACKAGE_DIR.joinpath(*tail)
    return here if tail and here.exists() else None


def _resolve(text: str, base: Path) -> Path:
    path = Path(os.path.expanduser(text))
    return path if path.is_absolute() else (base / path)


class Catalogue:
    """The entries of one `models.yaml`, and where edits to them are written.

    Built by `Catalogue.find()` (the search order) or `Catalogue.load(path)`. Each edit locks the file, reads it
    again, applies its one change to what is there now and writes it back atomically (temporary file in the same
    folder + os.replace). So a crash or a full disk never leaves a half-written catalogue, and an edit made
    meanwhile by another session or in an editor is kept rather than overwritten from this session's snapshot. The
    shipped file is never written. A hand-written file's comments cannot survive the rewrite, so the first edit
    keeps a copy of it beside it (`backup`).
    """

    def __init__(self, entries: dict[str, ModelEntry], source: Path | None, *, writable: Path) -> None:
        self.entries = entries
        self.source = source
        self.writable = writable
        self.backup: Path | None = None  # where the last edit saved the hand-written file it replaced, if it did

    # ------------------------------------------------------------------------------------------ reading
    @classmethod
    def find(cls, models_file: str | Path | None = None, *, cwd: Path | None = None) -> Catalogue:
        """`--models FILE`, then ./models.yaml, then the user config folder, then the shipped defaults."""
        if models_file is not None:
            path = Path(models_file).expanduser()
            if not path.is_file():
                raise ModelError(f"--models {models_file}: no such file")
            return cls.load(path)
        here = (cwd or Path.cwd()) / "models.yaml"
        user = user_catalogue_path()
        # In a source checkout ./models.yaml is the shipped catalogue itself. Edits never go there (they go to the
        # user's file), so reading it first would hide every edit after a restart.
        for candidate in (here, user):
            if candidate.is_file() and not (candidate == here and _is_shipped(candidate)):
                return cls.load(candidate)
        return cls.load(paths.shipped_catalogue())

    @classmethod
    def load(cls, path: str | Path) -> Catalogue:
        path = Path(path)
        shipped = _is_shipped(path)
        base = paths.REPO_DIR if shipped else path.resolve().parent
        entries = read_entries(path, base)
        # The shipped file is read-only: edits made while it is the catalogue go to the user's own file.
        writable = user_catalogue_path() if shipped else path
        return cls(entries, path, writable=writable)

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> ModelEntry:
        try:
            return self.entries[name]
        except KeyError:
            known = ", ".join(self.entries) or "none"
            raise ModelError(f"no model named {name!r} in the catalogue (known: {known})") from None

    def default_name(self) -> tuple[str, str | None]:
        """(name, notice): the default entry, or the first usable one when the default's files are missing."""
        if not self.entries:
            raise ModelError(f"the model catalogue {self.source} has no entries")
        marked = next((e for e in self.entries.values() if e.default), None)
        first = marked or next(iter(self.entries.values()))
        if first.files_present():
            return first.name, None
        fallback = next((e for e in self.entries.values() if e.files_present()), None)
        if fallback is None:
            raise ModelError(f"no model in {self.source} has its files present (checked {', '.join(self.entries)})")
        return fallback.name, f"model {first.name!r} is missing ({first.path}); using {fallback.name!r} instead"

    # ------------------------------------------------------------------------------------------ writing
    def add(self, name: str, fields: dict[str, Any], *, base: Path | None = None) -> ModelEntry:
        def change(entries: dict[str, ModelEntry], target: Path) -> dict[str, ModelEntry]:
            if name in entries:
                raise ModelError(f"a model named {name!r} is already in the catalogue (pick another with --name)")
            entry = parse_entry(name, fields, base or target.parent, str(target))
            entries[name] = entry
            return _one_default(entries, name if entry.default else None)

        self._edit(change)
        return self.entries[name]

    def update(self, name: str, fields: dict[str, Any], *, base: Path | None = None) -> ModelEntry:
        """Change fields of `name`. Relative `path`/`vae`/`config` values resolve against `base` (the folder the
        user typed them in) and are stored absolute; without `base`, against the catalogue's folder."""
        for key in fields:
            if key not in FIELDS:
                raise ModelError(f"entry {name!r}: unknown field {key!r} (fields: {', '.join(FIELDS)})")

        def change(entries: dict[str, ModelEntry], target: Path) -> dict[str, ModelEntry]:
            old = _get(entries, name, target)
            raw = old.to_yaml(target.parent)
            new_format = fields.get("format") or old.format  # `format=builtin path=tiny-random` edits both at once
            for key, value in fields.items():
                if (value is None or value == "") and key in ("format", "path"):  # "format must be …, got None"
                    raise ModelError(f"entry {name!r}: {key} cannot be removed; every model needs one")
                if value is None or value == "":
                    raw.pop(key, None)
                    continue
                value = coerce_field(key, value)
                if base is not None and key in ("path", "vae", "config") and isinstance(value, str):
                    if not (key == "config" and value in FAMILIES) and not (key == "path" and new_format == "builtin"):
                        value = str(_resolve(value, base).resolve())
                raw[key] = value
            entry = parse_entry(name, raw, target.parent, str(target))
            _require_edited_files(entry, old, fields)
            entries[name] = entry
            return _one_default(entries, name if entry.default and not old.default else None)

        self._edit(change)
        return self.entries[name]

    def remove(self, name: str) -> ModelEntry:
        removed: list[ModelEntry] = []

        def change(entries: dict[str, ModelEntry], target: Path) -> dict[str, ModelEntry]:
            removed.append(_get(entries, name, target))
            return {k: v for k, v in entries.items() if k != name}

        self._edit(change)
        return removed[0]

    def _edit(self, change: Callable[[dict[str, ModelEntry], Path], dict[str, ModelEntry]]) -> None:
        """Apply `change` to the file as it is on disk now, under a lock, and write the result atomically."""
        target = self.writable
        if _is_shipped(target):  # belt and braces: never write into the package
            target = user_catalogue_path()
        target = Path(os.path.realpath(target))  # a symlinked catalogue (dotfiles) is edited where it lives
        with _locked(target):
            text = _read_text(target)
            # What another session or an editor wrote since this one started is the base of the change; with no
            # file yet, this session's entries are (the shipped ones, when the user file is being created).
            current = read_entries(target, target.parent) if text is not None else dict(self.entries)
            entries = change(dict(current), target)
            data = {name: entry.to_yaml(target.parent) for name, entry in entries.items()}
            self.backup = _keep_hand_written(target, text)
            write_atomic(target, _HEADER + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
            # Re-read what was written so relative paths and validation are exactly what a restart would see.
            self.entries = read_entries(target, target.parent)
        self.source = target
        self.writable = target


def _require_edited_files(entry: ModelEntry, old: ModelEntry, fields: dict[str, Any]) -> None:
    """A path, vae or config folder that an edit names must exist, or nothing is written.

    `!import_model` checks its paths; an edit did not, so a typo (`path=~/models/v1-5.safetensor`) was "updated",
    dropped the loaded copy and left the model failing at every `!switch` until edited again. A file that an edit
    did not name may still be missing (an unplugged drive): that is the load's one-line error, as before."""
    named = {
        "path": entry.path if entry.format != "builtin" and ("path" in fields or "format" in fields) else None,
        "vae": entry.vae if "vae" in fields else None,
        "config": entry.config if "config" in fields and isinstance(entry.config, Path) else None,
    }
    for key, value in named.items():
        if value is not None and not value.exists() and value != getattr(old, key):
            families = f"; a family is one of {', '.join(FAMILIES)}" if key == "config" else ""
            raise ModelError(f"entry {entry.name!r}: {key} {value} does not exist (nothing was changed){families}")


def _get(entries: dict[str, ModelEntry], name: str, target: Path) -> ModelEntry:
    try:
        return entries[name]
    except KeyError:
        known = ", ".join(entries) or "none"
        raise ModelError(f"no model named {name!r} in {target} (known: {known})") from None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return ""  # read_entries reports it


def _keep_hand_written(target: Path, text: str | None) -> Path | None:
    """Copy a catalogue with comments that this program did not write to a free `NAME.bak[.N]` beside it."""
    if not text:
        return None
    lines = text.splitlines()
    if lines and lines[0] + "\n" == _HEADER:
        lines = lines[1:]
    if not any(line.lstrip().startswith("#") for line in lines):
        return None  # nothing that the rewrite would lose
    for number in range(1000):
        backup = target.with_name(target.name + (".bak" if number == 0 else f".bak.{number}"))
        old = _read_text(backup)
        if old == text:
            return backup
        if old is None:
            write_atomic(backup, text)
            return backup
    return None


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """An exclusive lock that every invoke-repl process takes before editing `target` (POSIX advisory lock)."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): edits are still atomic, only not serialised between processes
        yield
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = open(target.with_name(f".{target.name}.lock"), "a")  # noqa: SIM115 - closed below, after the edit
    except OSError as exc:  # said of the catalogue: "Permission denied: …/.models.yaml.lock" named a hidden file
        raise ModelError(f"cannot edit {target}: {exc.strerror or exc} (its folder must be writable)") from exc
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


_HEADER = "# invoke-repl model catalogue (written by !import_model / !edit_model / !del_model)\n"


def coerce_field(key: str, value: Any) -> Any:
    """`!edit_model NAME width=512 default=yes` hands over text; turn it into what the YAML holds."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if key in ("width", "height") and re.fullmatch(r"[+]?\d+", text):
        return int(text)
    if key == "cfg_scale" and re.fullmatch(r"[+]?(\d+\.?\d*|\.\d+)", text):
        return float(text)
    if key == "default":
        lowered = text.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
    return text


def _one_default(entries: dict[str, ModelEntry], new_default: str | None) -> dict[str, ModelEntry]:
    """When one entry becomes the default, the others stop being it."""
    if new_default is None:
        return entries
    out = {}
    for name, entry in entries.items():
        if name != new_default and entry.default:
            raw = dict(entry.raw)
            raw.pop("default", None)
            entry = replace(entry, default=False, raw=raw)
        out[name] = entry
    return out


def _is_shipped(path: Path) -> bool:
    try:
        return path.resolve() == paths.shipped_catalogue().resolve()
    except FileNotFoundError:
        return False


def read_entries(path: Path, base: Path) -> dict[str, ModelEntry]:
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(f"cannot read the model catalogue {where}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ModelError(f"{where}: not UTF-8 text ({exc.reason})") from exc
    try:
        data = yaml.load(text, Loader=_CatalogueLoader)  # a SafeLoader: plain data only
    except _KeyTwice as exc:
        raise ModelError(f"{where}: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ModelError(f"{where}: not valid YAML{at}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ModelError(f"{where}: expected a mapping of model names to entries, got {type(data).__name__}")
    entries = {name: parse_entry(name, fields, base, where) for name, fields in data.items()}
    defaults = [name for name, entry in entries.items() if entry.default]
    if len(defaults) > 1:
        raise ModelError(f"{where}: entries {defaults[0]!r} and {defaults[1]!r} are both marked default")
    return entries


class _KeyTwice(yaml.YAMLError):
    """A mapping in the catalogue names one key twice; the text is the problem, read_entries adds the file."""


class _CatalogueLoader(yaml.SafeLoader):
    """safe_load as the catalogue needs it: no key twice in one mapping, and model names as they are written.

    Plain safe_load keeps the last of two equal keys, so a model named twice lost its first entry without a word
    and the next edit wrote the file without it. And it reads a name such as `1.10`, `0777`, `yes` or `2024-01-01`
    as a number, a boolean or a date, which renamed the model (`1.1`, `511`) or refused it. So a model name is the
    text of its key (written back as a string, which safe_dump quotes); fields are read as YAML reads them.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._top: yaml.Node | None = None
        self._entry_of: dict[int, str] = {}  # id of an entry's own mapping node → its name, to name it in errors

    def construct_document(self, node: yaml.Node) -> Any:
        self._top = node
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        top = node is self._top
        if isinstance(node, yaml.MappingNode):
            self._refuse_keys_twice(node, top)
        if not top:
            mapping = super().construct_mapping(node, deep=deep)
            if id(node) in self._entry_of:  # a description is text: `description: 1.10` was shown as 1.1
                for key_node, value_node in node.value:
                    text = isinstance(value_node, yaml.ScalarNode) and value_node.tag != "tag:yaml.org,2002:null"
                    if text and getattr(key_node, "value", None) == "description":
                        mapping["description"] = value_node.value
            return mapping
        self.flatten_mapping(node)
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            name = self._name(key_node)
            try:
                hash(name)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found unhashable key", key_node.start_mark
                ) from None
            if isinstance(value_node, yaml.MappingNode):
                self._entry_of.setdefault(id(value_node), str(name))
            mapping[name] = self.construct_object(value_node, deep=deep)
        return mapping

    def _name(self, key_node: yaml.Node) -> Any:
        """A model name as typed: `1.10` is the model "1.10", not the number 1.1."""
        return key_node.value if isinstance(key_node, yaml.ScalarNode) else self.construct_object(key_node, True)

    def _refuse_keys_twice(self, node: yaml.MappingNode, top: bool) -> None:
        # The mapping's own keys only: a field given again after `<<: *base` is how YAML overrides a merged one.
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self._name(key_node) if top else self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the constructor says so, with its line
                continue
            if first is None:
                seen[key] = line
                continue
            lines = f"(lines {first} and {line})" if first != line else f"(both on line {line})"
            entry = self._entry_of.get(id(node))
            if top:
                raise _KeyTwice(f"model {key!r} appears twice {lines}; rename or remove one")
            if entry is not None:
                raise _KeyTwice(f"entry {entry!r}: field {key!r} appears twice {lines}; remove one")
            raise _KeyTwice(f"{key!r} appears twice in one mapping {lines}; remove one")


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and os.replace, so readers see the old or the new file.

    A symlink is followed (the file it points to is replaced, the link stays) and an existing file keeps its
    permissions."""
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with contextlib.suppress(OSError):
            os.fchmod(fd, stat.S_IMODE(path.stat().st_mode))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
