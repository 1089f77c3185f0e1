"""The resident model manager: the catalogue, loading in the background, and a memory-measured cache.

The active model stays on the device between commands. Up to `max_loaded` models stay on the device; beyond that
(or when measured free device memory runs short) the least recently used move to CPU RAM — pinned on CUDA, so the
move back is fast — or are dropped when host memory (/proc/meminfo MemAvailable) would fall under a margin.
InvokeAI's cache counted models and users ran out of RAM when switching; this one measures before it keeps.
Switching back to a model still held (on the device or in RAM) never reads the disk.

On a CPU-only machine the device *is* RAM, so there is no RAM tier: models past `max_loaded` are dropped.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoke_repl.catalogue import CHECKPOINT_SUFFIXES, FAMILIES, Catalogue, ModelEntry, ModelError

if TYPE_CHECKING:
    import torch

    from invoke_repl.components import Components

__all__ = [
    "Catalogue",
    "ModelEntry",
    "ModelError",
    "ModelInfo",
    "ModelManager",
    "host_available_bytes",
    "open_catalogue",
]

GiB = 1 << 30
STATES = ("on device", "in RAM", "on disk", "loading", "missing")


@dataclass(frozen=True)
class ModelInfo:
    """One row of `!models`."""

    name: str
    format: str
    size_bytes: int | None
    state: str
    active: bool
    description: str
    path: str | None = None
    config: str | None = None
    default: bool = False


def host_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo: what can be allocated without swapping (None where there is no /proc)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def device_free_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA device as the driver reports it (other processes included); None elsewhere."""
    import torch

    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def open_catalogue(models_file: str | Path | None = None) -> Catalogue:
    """The catalogue the REPL uses: `--models FILE`, ./models.yaml, the user's, or the shipped defaults."""
    return Catalogue.find(models_file)


class _Slot:
    """A loaded model and where it lives now ("device" or "cpu")."""

    def __init__(self, components: Components, where: str, nbytes: int) -> None:
        self.components = components
        self.where = where
        self.nbytes = nbytes


class ModelManager:
    """Owns the catalogue, the loaded models and which one is active. Thread-safe; loads one model at a time."""

    def __init__(
        self,
        catalogue: Catalogue | str | Path | None = None,
        device: str = "auto",
        precision: str = "auto",
        max_loaded: int = 2,
        *,
        notify: Callable[[str], None] | None = None,
        host_margin_bytes: int | None = None,
        device_margin_bytes: int | None = None,
        host_available: Callable[[], int | None] = host_available_bytes,
        device_free: Callable[[Any], int | None] = device_free_bytes,
    ) -> None:
        from invoke_repl.loading import HashCache

        if max_loaded < 1:
            raise ModelError("--max-loaded-models must be at least 1")
        self.catalogue = catalogue if isinstance(catalogue, Catalogue) else Catalogue.find(catalogue)
        self._device_option, self._precision_option = device, precision
        self._device_and_dtype: tuple[torch.device, torch.dtype] | None = None
        self.max_loaded = max_loaded
        self._notify = notify or (lambda message: print(message, file=sys.stderr, flush=True))
        # Margins: room left for activations and the rest of the machine after a model is kept.
        self.host_margin = host_margin_bytes if host_margin_bytes is not None else _default_host_margin()
        self.device_margin = device_margin_bytes if device_margin_bytes is not None else 2 * GiB
        self._host_available = host_available
        self._device_free = device_free
        self._hashes = HashCache()
        self._lock = threading.RLock()  # guards the fields below; never held while reading weights
        self._load_lock = threading.Lock()  # one load at a time: two big loads at once is how RAM runs out
        self._slots: OrderedDict[str, _Slot] = OrderedDict()  # least recently used first
        self._pending: dict[str, Future[Components]] = {}
        self._active: str | None = None
        self._thread = threading.local()  # .background is set in the start-up load thread
        self._loaders: list[threading.Thread] = []

    # ------------------------------------------------------------------------------------------ queries
    @property
    def device(self) -> torch.device:
        """Resolved at the first load, not at creation: finding the device imports torch, and a script of
        catalogue commands (`!models`, `!edit_model`, …) must not pay seconds for it (issue 7: no generation
        line, no torch)."""
        return self._resolved()[0]

    @device.setter
    def device(self, device: torch.device) -> None:  # tests play a CUDA machine's decisions on the CPU
        self._device_and_dtype = device, self.dtype

    @property
    def dtype(self) -> torch.dtype:
        return self._resolved()[1]

    @property
    def resolved_device_and_dtype(self) -> tuple[torch.device, torch.dtype] | None:
        """The device and dtype if a load has resolved them already, else None (never imports torch)."""
        return self._device_and_dtype

    def _resolved(self) -> tuple[torch.device, torch.dtype]:
        if self._device_and_dtype is None:
            from invoke_repl.loading import resolve_device, resolve_dtype

            device = resolve_device(self._device_option)
            self._device_and_dtype = device, resolve_dtype(self._precision_option, device)
        return self._device_and_dtype

    def prefer(self, name: str) -> None:
        """Make `name` the model lines use until a `!switch`, without loading it yet (a script's `--model`)."""
        self.catalogue.get(name)
        with self._lock:
            if self._active is None:
                self._active = name

    @property
    def active_name(self) -> str | None:
        """The active model's name; before anything was chosen, the one that will be (default or fallback)."""
        with self._lock:
            if self._active is not None:
                return self._active
        try:
            return self.catalogue.default_name()[0]
        except ModelError:
            return None

    def model_names(self) -> list[str]:
        return self.catalogue.names()

    def list_models(self) -> list[ModelInfo]:
        from invoke_repl.loading import size_on_disk

        rows = []
        active = self.active_name  # before any load (a script's `!models`), the one that will be
        with self._lock:
            slots = {name: slot.where for name, slot in self._slots.items()}
            pending = set(self._pending)
        for name, entry in self.catalogue.entries.items():
            if name in pending:
                state = "loading"
            elif name in slots:
                state = "on device" if slots[name] == "device" else "in RAM"
            else:
                state = "on disk" if entry.files_present() else "missing"
            try:
                size = size_on_disk(entry)
            except OSError:
                size = None
            rows.append(
                ModelInfo(
                    name=name,
                    format=entry.format,
                    size_bytes=size,
                    state=state,
                    active=name == active,
                    description=entry.description,
                    path=str(entry.path) if entry.path is not None else None,
                    config=str(entry.config) if entry.config is not None else None,
                    default=entry.default,
                )
            )
        return rows

    # ------------------------------------------------------------------------------------------ using models
    def get(self, name: str | None = None) -> Components:
        """The named model (default: the active one) on the device, waiting for a load in progress.

        Naming a model here (a line's `--model`) does not change which one is active.
        """
        if name is None:
            with self._lock:
                name = self._active
            if name is None:
                return self._activate_default()
        self.catalogue.get(name)
        return self._ensure(name)

    def start_background_load(self, name: str | None = None, *, report_unusable: bool = True) -> None:
        """Start loading (default: the active/default model) in a thread and return at once.

        The first `get()` waits for it; a failure is reported by that `get()`, not here. An unknown name or a
        catalogue with nothing usable is reported through `notify` only (unless `report_unusable` is off: every
        line that needs a model says it again), so `!models` and `!import_model` keep working and the user can
        repair things from the prompt.
        """
        if name is None:
            with self._lock:
                name = self._active
        notice = None
        try:
            if name is None:
                name, notice = self.catalogue.default_name()
            self.catalogue.get(name)
        except ModelError as exc:
            if report_unusable:
                self._notify(str(exc))
            return
        with self._lock:
            if self._active is None:
                self._active = name
        if notice:
            self._notify(notice)
        future = self._claim(name)
        if future is None:
            return

        def work() -> None:
            self._thread.background = True
            with contextlib.suppress(BaseException):  # the waiting get() re-raises it
                self._load_claimed(name, future)

        loader = threading.Thread(target=work, name=f"load-{name}", daemon=True)
        self._loaders.append(loader)
        loader.start()

    def loading(self) -> bool:
        """Whether a background load is still running."""
        return any(loader.is_alive() for loader in self._loaders)

    def settle(self) -> None:
        """Wait for background loads to end. The process must not exit in the middle of one: a thread still
        inside torch's C++ code when the interpreter shuts down aborts it ("terminate called without an active
        exception", exit status 134), which a script ending with `!models` while the default loaded hit 5 times in 5."""
        for loader in list(self._loaders):
            loader.join()

    def switch(self, name: str) -> Components:
        """Make `name` active. A failed load leaves the previous model active (by name: if it was dropped to make
        room on a CPU with RAM for one model, the next line loads it again) and raises ModelError saying why."""
        self.catalogue.get(name)
        components = self._ensure(name)
        with self._lock:
            self._active = name
            self._touch(name)
        return components

    # ------------------------------------------------------------------------------------------ catalogue edits
    def import_model(self, path: str | Path, **options: Any) -> str:
        """Add a diffusers folder or a single checkpoint file to the user's catalogue; returns the name used.

        The family and native width/height are read from the files (a checkpoint's header, a folder's configs), so
        a bad path or an unreadable / unsafe file is reported now rather than at the first `!switch`. `options`
        are `plan_import`'s (name, description, default, config, vae).
        """
        return self.add_import(*self.plan_import(path, **options))

    def add_import(self, name: str, fields: dict[str, Any]) -> str:
        """Write an entry `plan_import` made (the quick half of `import_model`, which a cancelled line skips)."""
        with self._lock:
            self.catalogue.add(name, fields)
        self._announce_backup()
        return name

    def plan_import(
        self,
        path: str | Path,
        name: str | None = None,
        description: str | None = None,
        default: bool = False,
        *,
        config: str | None = None,
        vae: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """(name, fields) of the entry `import_model` would write, read from the files; writes nothing."""
        from invoke_repl.loading import (
            NATIVE_SIZE,
            checkpoint_plan,
            detect_folder_family,
            folder_native_size,
        )

        # Absolute, but links kept: the Hugging Face cache (snapshots/<rev>/x.safetensors → ../../blobs/<sha256>)
        # and files shared between UIs are links whose own name carries the suffix, the "768" hint and the sidecar
        # yaml; the target's name is a hash.
        source = Path(os.path.abspath(Path(path).expanduser()))
        if not source.exists():
            raise ModelError(f"!import_model: {path} does not exist")
        source = _hub_snapshot(source)
        name = name or _name_from(source)
        config_value: str | Path | None = None
        if config:
            config_value = config if config in FAMILIES else Path(config).expanduser().resolve()
        fields: dict[str, Any] = {}
        if source.is_dir():
            from invoke_repl.loading import check_folder

            if (source / "transformer").is_dir() and not (source / "unet").is_dir():
                check_folder(source)  # names what it is: an SD3/Flux-style model
            if not (source / "unet" / "config.json").is_file():
                raise ModelError(f"!import_model: {source} is not a diffusers folder (no unet/config.json)")

            check_folder(source)  # an SDXL, inpainting or custom-code folder is refused now, not at first use
            for part in ("text_encoder",) if vae else ("vae", "text_encoder"):  # as loading needs them
                if not (source / part).is_dir():
                    hint = " (or give it a VAE: --vae PATH)" if part == "vae" else ""
                    raise ModelError(f"!import_model: {source} has no {part}/ folder{hint}")
            fields["format"] = "diffusers"
            family = config_value if isinstance(config_value, str) else detect_folder_family(source)
            size = folder_native_size(source)
        else:
            if source.suffix.lower() not in CHECKPOINT_SUFFIXES:
                raise ModelError(
                    f"!import_model: {source.name} is neither a folder nor a checkpoint "
                    f"({', '.join(CHECKPOINT_SUFFIXES)})"
                )
            fields["format"] = "checkpoint"
            family, config_dir = checkpoint_plan(config_value, source)
            size = folder_native_size(config_dir) if isinstance(config_value, Path) else None
            if size is None:
                size = (NATIVE_SIZE[family], NATIVE_SIZE[family])
            if config_value is None:
                config_value = family  # record what was detected, so a restart does not guess again
        fields["path"] = str(source)
        if config_value is not None:
            fields["config"] = str(config_value)
        if vae:
            vae_path = Path(os.path.abspath(Path(vae).expanduser()))
            if not vae_path.exists():
                raise ModelError(f"!import_model: --vae {vae} does not exist")
            fields["vae"] = str(vae_path)
        if size is not None:
            fields["width"], fields["height"] = size
        fields["description"] = description or f"{family} {fields['format']} imported from {source.name}"
        if default:
            fields["default"] = True
        return name, fields

    def wait_for_load(self, name: str) -> None:
        """Wait for a background load of `name` to end, however it ends (its `get()` reports a failure)."""
        with self._lock:
            pending = self._pending.get(name)
        if pending is not None:
            with contextlib.suppress(BaseException):
                pending.result()

    def edit_model(self, name: str, /, **fields: Any) -> None:
        """Change fields of an entry (text values are converted). A loaded copy is dropped if its files changed.

        Relative paths are read from the working directory, as `!import_model` reads them. A load of this model
        still running in the background is waited for first: it read the old entry, and would otherwise serve the
        old settings (or the old files) for the rest of the session."""
        old = self.catalogue.get(name)
        fields = self._size_following_config(old, fields)
        self.wait_for_load(name)  # a failed load has nothing to update; its get() says why
        with self._lock:
            new = self.catalogue.update(name, fields, base=Path.cwd())
            if (old.format, old.path, old.config, old.vae) != (new.format, new.path, new.config, new.vae):
                self._drop(name)
            elif name in self._slots and self._slots[name].components is not None:
                from invoke_repl.loading import apply_entry_defaults

                apply_entry_defaults(new, self._slots[name].components)  # new defaults apply from the next line
        self._announce_backup()

    def _size_following_config(self, old: ModelEntry, fields: dict[str, Any]) -> dict[str, Any]:
        """A width/height that only restate the old config's native size follow a new config.

        `!import_model` writes the detected family's size, so correcting the family afterwards (`config=sd-2-v`
        for a 768 model that was detected as sd-2) kept 512 and made every line without -W/-H at the wrong size.
        A size typed in the same edit, or one that differs from the old config's (the user's own), stays.
        """
        if "config" not in fields or "width" in fields or "height" in fields or not fields["config"]:
            return fields
        before = _native_size_of(old.config)
        if before is None or (old.width, old.height) != before:
            return fields
        value = str(fields["config"])
        after = _native_size_of(value if value in FAMILIES else Path(value).expanduser())
        if after is None or after == before:
            return fields
        self._notify(
            f"{old.name}: width and height follow the new config: {after[0]}×{after[1]} (were {before[0]}×{before[1]})"
        )
        return {**fields, "width": str(after[0]), "height": str(after[1])}

    def _announce_backup(self) -> None:
        if self.catalogue.backup is not None:
            self._notify(f"the hand-written catalogue's comments are kept in {self.catalogue.backup}")
            self.catalogue.backup = None

    def del_model(self, name: str) -> None:
        """Remove an entry from the catalogue; its weight files are left where they are."""
        self.catalogue.get(name)
        with self._lock:
            if name == self._active:
                raise ModelError(f"{name!r} is the active model; !switch to another one before removing it")
            if name in self._pending:
                raise ModelError(f"{name!r} is loading; wait for it before removing it")
            self.catalogue.remove(name)
            self._drop(name)
        self._announce_backup()

    # ------------------------------------------------------------------------------------------ internals
    def _activate_default(self) -> Components:
        name, notice = self.catalogue.default_name()
        with self._lock:
            if self._active is not None:  # a background load claimed it meanwhile
                name, notice = self._active, None
        if notice:
            self._notify(notice)
        components = self._ensure(name)
        with self._lock:
            if self._active is None:
                self._active = name
        return components

    def _ensure(self, name: str) -> Components:
        """The model on the device: from the device, from RAM, by waiting for its load, or by loading it now."""
        while True:
            with self._lock:
                slot = self._slots.get(name)
                if slot is not None:
                    if slot.where != "device":
                        self._to_device(name, slot)
                    self._touch(name)
                    return slot.components
                future = self._pending.get(name)
            if future is not None:
                future.result()  # raises the load's ModelError
                continue  # it landed in the cache (or was evicted at once): look again
            future = self._claim(name)
            if future is None:
                continue
            return self._load_claimed(name, future)

    def _claim(self, name: str) -> Future[Components] | None:
        """Register a load of `name`; None when it is already loaded or someone else is loading it."""
        with self._lock:
            if name in self._slots or name in self._pending:
                return None
            future: Future[Components] = Future()
            self._pending[name] = future
            return future

    def _load_claimed(self, name: str, future: Future[Components]) -> Components:
        try:
            with self._load_lock:
                components = self._read(name)
            with self._lock:
                nbytes = _components_bytes(components)
                self._slots[name] = _Slot(components, "device", nbytes)
                self._slots.move_to_end(name)
                self._enforce_limits(keep=name)
        except BaseException as exc:
            with self._lock:
                self._pending.pop(name, None)
            if isinstance(exc, ModelError):
                error = exc
            elif isinstance(exc, KeyboardInterrupt):
                error = ModelError(f"loading model {name!r} was interrupted")
            else:
                error = ModelError(f"cannot load model {name!r}: {_short(exc)}")
            future.set_exception(error)  # anyone waiting on this load hears why it failed
            gc.collect()
            if error is exc or isinstance(exc, KeyboardInterrupt):
                raise  # Ctrl-C stays Ctrl-C for the session's cancellation handling
            raise error from exc
        with self._lock:
            self._pending.pop(name, None)
        future.set_result(components)
        return components

    def _read(self, name: str) -> Components:
        """Read a model from disk (or build a builtin) and put it on the device at the chosen precision."""
        from invoke_repl.loading import estimate_bytes, load_entry

        entry = self.catalogue.get(name)
        if not entry.files_present():
            if entry.path is not None and entry.path.exists():
                raise ModelError(f"model {name!r}: {entry.path} holds no model yet (no unet/ folder)")
            raise ModelError(f"model {name!r}: {entry.path} does not exist")
        needed = estimate_bytes(entry, self.dtype)
        self._make_room_in_host(needed, name)
        components = load_entry(entry, self._hashes, dtype=self.dtype)
        components.name = name
        for module in (components.unet, components.vae, components.text_encoder):
            module.requires_grad_(False)
            module.eval()
        try:
            with self._lock:
                self._make_room_on_device(_components_bytes(components), keep=name)
            _move(components, self.device, self.dtype, pin=False)
        except Exception:
            del components
            gc.collect()
            self._empty_device_cache()
            raise
        return components

    def _touch(self, name: str) -> None:
        if name in self._slots:
            self._slots.move_to_end(name)

    def _on_device(self) -> list[str]:
        return [name for name, slot in self._slots.items() if slot.where == "device"]

    def _enforce_limits(self, keep: str) -> None:
        """At most max_loaded on the device; the least recently used beyond that go to RAM or away."""
        while True:
            resident = self._on_device()
            if len(resident) <= self.max_loaded:
                return
            victim = next((n for n in resident if n != keep and n != self._active), None)
            if victim is None:
                victim = next((n for n in resident if n != keep), None)
            if victim is None:
                return
            self._evict(victim)

    def _make_room_on_device(self, nbytes: int, keep: str) -> None:
        """Before putting `nbytes` on a CUDA device, evict LRU models until the driver says it fits."""
        if self.device.type != "cuda":
            return
        while True:
            free = self._device_free(self.device)
            if free is None or free >= nbytes + self.device_margin:
                return
            victims = [n for n in self._on_device() if n != keep]
            if not victims:
                raise ModelError(
                    f"not enough device memory for {keep!r}: needs about {nbytes / GiB:.1f} GiB + "
                    f"{self.device_margin / GiB:.1f} GiB headroom, {free / GiB:.1f} GiB free "
                    "(try --precision float16 or close other GPU programs)"
                )
            self._evict(victims[0])

    def _make_room_in_host(self, nbytes: int, name: str) -> None:
        """Before reading weights into RAM, drop RAM-held (then device-held, on CPU) models until it fits."""
        with self._lock:
            while True:
                available = self._host_available()
                if available is None or available >= nbytes + self.host_margin:
                    return
                in_ram = [n for n, s in self._slots.items() if s.where == "cpu"]
                if not in_ram and self.device.type == "cpu":
                    in_ram = [n for n in self._slots if n != self._active]
                    active = self._slots.get(self._active) if self._active is not None else None
                    # RAM for one model: the active one goes too, as the last resort, but only when that makes room
                    # (else a refused load would also cost the model the user has).
                    if not in_ram and active is not None and available + active.nbytes >= nbytes + self.host_margin:
                        self._notify(f"dropping {self._active!r} from memory to make room for {name!r}")
                        in_ram = [self._active]
                if not in_ram:
                    raise ModelError(
                        f"not enough memory to load {name!r}: needs about {nbytes / GiB:.1f} GiB + "
                        f"{self.host_margin / GiB:.1f} GiB margin, {available / GiB:.1f} GiB available"
                    )
                self._drop(in_ram[0])

    def _evict(self, name: str) -> None:
        """Move a device-resident model to RAM when host memory allows (and it is a real move), else drop it."""
        slot = self._slots[name]
        if self.device.type == "cpu":
            self._drop(name)
            return
        available = self._host_available()
        if available is not None and available < slot.nbytes + self.host_margin:
            self._drop(name)
            return
        _move(slot.components, _cpu(), None, pin=self.device.type == "cuda")
        slot.where = "cpu"
        self._empty_device_cache()

    def _to_device(self, name: str, slot: _Slot) -> None:
        self._make_room_on_device(slot.nbytes, keep=name)
        _move(slot.components, self.device, None, pin=False)
        slot.where = "device"
        self._slots.move_to_end(name)
        self._enforce_limits(keep=name)

    def _drop(self, name: str) -> None:
        slot = self._slots.pop(name, None)
        if slot is None:
            return
        if not getattr(self._thread, "background", False):
            # In the foreground nothing else runs (the REPL does one line at a time), so a dropped model is not in
            # use: free its weights now. A background load must not pull weights from under a running line.
            _release(slot.components)
        slot.components = None  # type: ignore[assignment]
        del slot
        self._empty_device_cache()

    def _empty_device_cache(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------ helpers
def _cpu() -> Any:
    import torch

    return torch.device("cpu")


def _move(components: Components, device: Any, dtype: Any, *, pin: bool) -> None:
    """Move (and cast) the three modules in place; pinned host memory makes the next move to CUDA faster."""
    from invoke_repl.accel import forget_compiled, optimise_layout
    from invoke_repl.loading import own_host_weights, quiet_libraries

    forget_compiled(components)  # compiled UNets hold device buffers and guards for the old placement
    for module in (components.unet, components.vae, components.text_encoder):
        with quiet_libraries():  # diffusers warns on every dtype cast even when nothing must stay float32
            if dtype is not None and module.dtype != dtype:
                module.to(device=device, dtype=dtype)
            else:
                module.to(device=device)
        if pin:
            for tensor in list(module.parameters()) + list(module.buffers()):
                with contextlib.suppress(RuntimeError):  # pinning is an optimisation; out of pinnable memory is fine
                    tensor.data = tensor.data.pin_memory()
    if getattr(device, "type", device) == "cpu" and not pin:
        own_host_weights(components.unet, components.vae, components.text_encoder)
    optimise_layout(components)  # CUDA only: channels_last and fused QKV (a no-op elsewhere)


def _release(components: Components) -> None:
    """Free a dropped model's weights now. Modules loaded by from_pretrained sit in reference cycles, so waiting
    for the garbage collector would keep them in memory for a while — and a full gc.collect() per switch costs half
    a second on a big heap. Moving them to the meta device releases the storage at once; the emptied modules
    are unusable, which is fine: the manager only drops models nobody is running."""
    for module in (components.unet, components.vae, components.text_encoder):
        try:
            module.to(device="meta")
        except Exception:  # some wrapper refused: empty the tensors one by one
            import torch

            for tensor in list(module.parameters()) + list(module.buffers()):
                tensor.data = torch.empty(0, dtype=tensor.dtype)


def _components_bytes(components: Components) -> int:
    from invoke_repl.loading import components_bytes

    return components_bytes(components)


def _default_host_margin() -> int:
    """Keep at least 1 GiB or a tenth of RAM free: room for the rest of the machine, never swap."""
    total = None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        total = None
    return max(GiB, (total or 0) // 10)


def _hub_snapshot(path: Path) -> Path:
    """A Hugging Face cache repo folder (`models--org--name`) → the snapshot its `refs/main` names, or its only one."""
    snapshots = path / "snapshots"
    if not path.is_dir() or (path / "unet").is_dir() or not snapshots.is_dir():
        return path
    ref = path / "refs" / "main"
    if ref.is_file():
        chosen = snapshots / ref.read_text(encoding="utf-8").strip()
        if chosen.is_dir():
            return chosen
    found = sorted(p for p in snapshots.iterdir() if p.is_dir())
    if len(found) == 1:
        return found[0]
    raise ModelError(
        f"!import_model: {path.name} holds {len(found)} snapshots and no refs/main; import one of {snapshots}/*"
    )


def _name_from(path: Path) -> str:
    import re

    stem = path.name if path.is_dir() else path.stem
    repo = path.parent.parent.name
    if path.is_dir() and path.parent.name == "snapshots" and repo.startswith("models--"):
        stem = repo.split("--")[-1]  # …/models--org--name/snapshots/<revision hash>
    name = re.sub(r"[^A-Za-z0-9._+@-]+", "-", stem).strip("-.") or "model"
    return name if name[0].isalnum() else f"m{name}"


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _native_size_of(config: str | Path | None) -> tuple[int, int] | None:
    """The native (width, height) a config names: a family's, or a diffusers config folder's."""
    from invoke_repl.loading import NATIVE_SIZE, folder_native_size

    if isinstance(config, str) and config in NATIVE_SIZE:
        return NATIVE_SIZE[config], NATIVE_SIZE[config]
    if config is not None and Path(config).is_dir():
        return folder_native_size(Path(config))
    return None
