"""The resident model manager: import, switch, list, background loads, memory-measured caching, failures."""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from pathlib import Path

import pytest
import torch

from invoke_repl import loading, models
from invoke_repl.catalogue import Catalogue, ModelError, user_catalogue_path
from invoke_repl.models import ModelManager
from tests.test_models_fixtures import model_dir_copy

pytest_plugins = ["tests.test_models_fixtures"]  # tiny models in each real format, user-folder isolation

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


def _catalogue(tmp_path: Path, body: str) -> Catalogue:
    path = tmp_path / "models.yaml"
    path.write_text(body)
    return Catalogue.load(path)


TINY_ONLY = "tiny:\n  format: builtin\n  path: tiny-random\n  default: true\n"


def held_loads(monkeypatch) -> threading.Event:
    """Every model read waits for the returned event (up to 10 s): a load that is still running when it matters."""
    release = threading.Event()
    real = loading.load_entry

    def slow(entry, *args, **kwargs):
        release.wait(10)
        return real(entry, *args, **kwargs)

    monkeypatch.setattr(loading, "load_entry", slow)
    return release


@pytest.fixture
def count_loads(monkeypatch):
    """Count every read of a model from disk (or a builtin build): the manager's only way to get weights."""
    calls: list[str] = []
    real = loading.load_entry

    def counting(entry, *args, **kwargs):
        calls.append(entry.name)
        return real(entry, *args, **kwargs)

    monkeypatch.setattr(loading, "load_entry", counting)
    return calls


def test_import_switch_list_and_survive_a_restart(tiny_store, tmp_path, user_dirs, no_network, count_loads):
    folder = model_dir_copy(tiny_store, tmp_path, "my-folder")
    manager = ModelManager(Catalogue.find(), device="cpu")
    first = manager.get()  # the shipped default is missing until the embedded model lands: falls back
    assert manager.active_name in ("embedded", "tiny-random") and first.unet.device.type == "cpu"
    name = manager.import_model(folder, description="a tiny folder")
    assert name == "my-folder"
    entry = Catalogue.find().get(name)
    assert (entry.format, entry.path, entry.width, entry.height) == ("diffusers", folder, 64, 64)
    components = manager.switch(name)
    assert manager.active_name == name and components.name == name and components.family == "sd-1"
    rows = {row.name: row for row in manager.list_models()}
    assert rows[name].active and rows[name].state == "on device" and rows[name].size_bytes > 1_000_000
    assert rows[name].description == "a tiny folder"

    # A restart reads the user's catalogue again: the import is still there and loads.
    restarted = ModelManager(Catalogue.find(), device="cpu")
    assert name in restarted.model_names()
    assert restarted.switch(name).sha256 == components.sha256
    assert user_catalogue_path().is_file()


def test_switching_back_to_a_cached_model_does_not_touch_the_disk(
    tiny_store, tmp_path, user_dirs, count_loads, monkeypatch
):
    folder = model_dir_copy(tiny_store, tmp_path)
    catalogue = _catalogue(tmp_path, TINY_ONLY + f"folder:\n  format: diffusers\n  path: {folder}\n")
    manager = ModelManager(catalogue, device="cpu", max_loaded=2)
    tiny = manager.switch("tiny")
    manager.switch("folder")
    assert count_loads == ["tiny", "folder"]

    opened: list[str] = []
    import builtins
    import io

    real_open = builtins.open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    for _ in range(3):
        assert manager.switch("tiny") is tiny
        manager.switch("folder")
    assert count_loads == ["tiny", "folder"]
    assert not [p for p in opened if str(folder) in p]


def test_max_loaded_one_keeps_memory_flat_over_ten_switches(tiny_store, tmp_path, user_dirs, count_loads):
    body = "".join(
        f"{name}:\n  format: diffusers\n  path: {model_dir_copy(tiny_store, tmp_path, name)}\n" for name in "ab"
    )
    manager = ModelManager(_catalogue(tmp_path, body), device="cpu", max_loaded=1)
    dropped: list[weakref.ref] = []
    rss: list[int] = []
    model_bytes = 0
    for i in range(10):
        name = "b" if i % 2 else "a"
        components = manager.switch(name)
        model_bytes = loading.components_bytes(components)
        dropped.append(weakref.ref(components.unet))
        del components
        rss.append(_rss())  # no gc.collect() here: the manager must free a dropped model's weights by itself
        resident = [row.name for row in manager.list_models() if row.state == "on device"]
        assert resident == [name]
    assert len(count_loads) == 10  # one slot: every switch is a fresh read, the other model is gone
    gc.collect()
    assert sum(ref() is not None for ref in dropped) == 1  # only the active model's modules are still alive
    growth = max(rss[4:]) - rss[3]
    assert growth < 2 * model_bytes, f"RSS grew {growth / 2**20:.1f} MiB over 6 switches: {rss}"


def test_failed_switch_leaves_the_previous_model_active(tiny_store, tmp_path, user_dirs):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 64)
    folder = model_dir_copy(tiny_store, tmp_path)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    catalogue = _catalogue(
        tmp_path,
        TINY_ONLY
        + f"broken:\n  format: checkpoint\n  path: {broken}\n  config: sd-1\n"
        + f"corrupt:\n  format: diffusers\n  path: {folder}\n"
        + f"gone:\n  format: diffusers\n  path: {tmp_path / 'nowhere'}\n",
    )
    manager = ModelManager(catalogue, device="cpu")
    tiny = manager.switch("tiny")
    for name, reason in (
        ("broken", "not a valid .safetensors"),
        ("corrupt", "cannot load model 'corrupt'"),
        ("gone", "does not exist"),
        ("nobody", "no model named 'nobody'"),
    ):
        with pytest.raises(ModelError, match=reason) as info:
            manager.switch(name)
        assert "\n" not in str(info.value)
        assert manager.active_name == "tiny" and manager.get() is tiny
    states = {row.name: row.state for row in manager.list_models()}
    assert states == {"tiny": "on device", "broken": "on disk", "corrupt": "on disk", "gone": "missing"}


def test_background_load_returns_at_once_and_get_waits(tmp_path, user_dirs, monkeypatch):
    release = held_loads(monkeypatch)
    manager = ModelManager(_catalogue(tmp_path, TINY_ONLY), device="cpu")
    started = time.monotonic()
    manager.start_background_load()
    assert time.monotonic() - started < 1.0
    assert manager.active_name == "tiny"
    assert [row.state for row in manager.list_models()] == ["loading"]
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(manager.get()))
    waiter.start()
    time.sleep(0.2)
    assert not got  # still waiting for the load
    release.set()
    waiter.join(20)
    assert got and got[0] is manager.get() and manager.list_models()[0].state == "on device"


def test_background_load_failure_is_reported_by_get(tmp_path, user_dirs):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    body = f"corrupt:\n  format: checkpoint\n  path: {corrupt}\n  config: sd-1\n  default: true\n" + TINY_ONLY.replace(
        "  default: true\n", ""
    )
    manager = ModelManager(_catalogue(tmp_path, body), device="cpu")
    manager.start_background_load()  # returns; the failure belongs to the first command that needs the model
    with pytest.raises(ModelError, match="not a valid .safetensors"):
        manager.get()
    assert manager.switch("tiny").name == "tiny"


def test_background_load_of_an_unknown_model_only_warns(tmp_path, user_dirs):
    notices: list[str] = []
    manager = ModelManager(_catalogue(tmp_path, TINY_ONLY), device="cpu", notify=notices.append)
    manager.start_background_load("nobody")
    assert len(notices) == 1 and "no model named 'nobody'" in notices[0]
    assert manager.get().name == "tiny"


def test_default_fallback_prints_one_notice(tmp_path, user_dirs):
    notices: list[str] = []
    body = f"gone:\n  format: diffusers\n  path: {tmp_path / 'nowhere'}\n  default: true\n"
    body += "tiny:\n  format: builtin\n  path: tiny-random\n"
    manager = ModelManager(_catalogue(tmp_path, body), device="cpu", notify=notices.append)
    assert manager.get().name == "tiny" and manager.active_name == "tiny"
    assert len(notices) == 1 and "'gone' is missing" in notices[0]


def test_per_line_model_does_not_change_the_active_one(tiny_store, tmp_path, user_dirs):
    folder = model_dir_copy(tiny_store, tmp_path)
    manager = ModelManager(_catalogue(tmp_path, TINY_ONLY + f"folder:\n  format: diffusers\n  path: {folder}\n"))
    manager.switch("tiny")
    assert manager.get("folder").name == "folder" and manager.active_name == "tiny"


def test_edit_and_delete(tiny_store, tmp_path, user_dirs, count_loads):
    folder = model_dir_copy(tiny_store, tmp_path)
    manager = ModelManager(_catalogue(tmp_path, TINY_ONLY + f"folder:\n  format: diffusers\n  path: {folder}\n"))
    manager.switch("tiny")
    manager.get("folder")
    manager.edit_model("folder", description="renamed", width="128")
    assert Catalogue.load(tmp_path / "models.yaml").get("folder").width == 128
    manager.get("folder")
    assert count_loads == ["tiny", "folder"]  # a description edit keeps the loaded copy
    other = model_dir_copy(tiny_store, tmp_path, "other")
    manager.edit_model("folder", path=str(other))
    manager.get("folder")
    assert count_loads == ["tiny", "folder", "folder"]  # new files: read again
    with pytest.raises(ModelError, match="active model"):
        manager.del_model("tiny")
    manager.del_model("folder")
    assert manager.model_names() == ["tiny"] and folder.is_dir() and other.is_dir()
    assert "folder" not in Catalogue.load(tmp_path / "models.yaml").names()


def test_import_single_file_infers_family_and_size(tiny_store, tmp_path, user_dirs, no_network):
    manager = ModelManager(Catalogue.find(), device="cpu")
    with pytest.raises(ModelError, match="cannot tell which model family"):
        manager.import_model(tiny_store["safetensors"])
    name = manager.import_model(tiny_store["safetensors"], config=str(tiny_store["config"]), default=True)
    entry = Catalogue.find().get(name)
    assert (name, entry.format, entry.config, entry.width, entry.default) == (
        "tiny-sd1",
        "checkpoint",
        tiny_store["config"],
        64,
        True,
    )
    assert not Catalogue.find().get("embedded").default
    assert manager.switch(name).family == "sd-1"
    with pytest.raises(ModelError, match="already in the catalogue"):
        manager.import_model(tiny_store["safetensors"], config=str(tiny_store["config"]))
    with pytest.raises(ModelError, match="does not exist"):
        manager.import_model(tmp_path / "absent.safetensors")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelError, match="neither a folder nor a checkpoint"):
        manager.import_model(tmp_path / "notes.txt")


def test_import_model_command_takes_a_config_and_a_vae(tiny_store, tmp_path, user_dirs, no_network):
    """The manager could take a family/config folder and a VAE at import; the command refused both options."""
    import io

    from invoke_repl.session import Session

    manager = ModelManager(Catalogue.find(), device="cpu")
    session = Session(lambda: manager, outdir=tmp_path / "out", out=io.StringIO(), err=io.StringIO(), progress=False)
    line = f"!import_model {tiny_store['safetensors']} --name mine --config {tiny_store['config']}"
    outcome = session.run_line(f"{line} --vae {tmp_path / 'absent'}")
    assert not outcome.ok and outcome.error == f"!import_model: --vae {tmp_path / 'absent'} does not exist"
    assert session.run_line(f"{line} --vae {tiny_store['folder']}").ok
    entry = Catalogue.find().get("mine")
    assert (entry.config, entry.vae) == (tiny_store["config"], tiny_store["folder"])
    assert session.run_line('"x" -S2 --seed 1 --model mine').ok


def test_host_memory_is_measured_before_loading(tiny_store, tmp_path, user_dirs):
    """With little RAM left, cached models are dropped first; with none, the load is refused (no swap, no OOM)."""
    folder = model_dir_copy(tiny_store, tmp_path, "folder")
    other = model_dir_copy(tiny_store, tmp_path, "other")
    body = TINY_ONLY + f"folder:\n  format: diffusers\n  path: {folder}\n"
    body += f"other:\n  format: diffusers\n  path: {other}\n"
    state = {"manager": None, "starved": False}

    def available() -> int:
        manager = state["manager"]
        crowded = manager is not None and "folder" in manager.list_models_raw()
        if state["starved"]:
            return 0  # not even dropping the active model would make room
        return 2**30 + 1 if crowded else 64 * 2**30

    manager = ModelManager(
        _catalogue(tmp_path, body), device="cpu", max_loaded=3, host_margin_bytes=2**30, host_available=available
    )
    manager.list_models_raw = lambda: {r.name for r in manager.list_models() if r.state == "on device"}
    state["manager"] = manager
    manager.switch("tiny")
    manager.get("folder")
    manager.get("other")  # RAM looks short while 'folder' is held: it is dropped to make room
    states = {row.name: row.state for row in manager.list_models()}
    assert states == {"tiny": "on device", "folder": "on disk", "other": "on device"}
    state["starved"] = True
    tiny = manager.get()
    with pytest.raises(ModelError, match="not enough memory to load 'folder'"):
        manager.switch("folder")
    assert manager.active_name == "tiny" and manager.get() is tiny  # kept: dropping it would not have helped


def test_with_ram_for_one_model_a_switch_replaces_the_active_one(tiny_store, tmp_path, user_dirs):
    """On the CPU with room for one model, switching drops the active model (said once) instead of refusing."""
    folder = model_dir_copy(tiny_store, tmp_path, "folder")
    body = TINY_ONLY + f"folder:\n  format: diffusers\n  path: {folder}\n"
    notices: list[str] = []
    state: dict = {"manager": None}

    def available() -> int:  # room for one tiny model beside the margin, less once one is loaded
        loaded = state["manager"] is not None and any(r.state == "on device" for r in state["manager"].list_models())
        return 2**30 + (0 if loaded else 2**26)

    manager = ModelManager(
        _catalogue(tmp_path, body),
        device="cpu",
        max_loaded=2,
        host_margin_bytes=2**30,
        host_available=available,
        notify=notices.append,
    )
    state["manager"] = manager
    manager.switch("tiny")
    assert manager.switch("folder").name == "folder" and manager.active_name == "folder"
    assert notices == ["dropping 'tiny' from memory to make room for 'folder'"]
    assert {r.name: r.state for r in manager.list_models()} == {"tiny": "on disk", "folder": "on device"}


def test_an_edit_made_while_the_model_loads_in_the_background_applies(tmp_path, user_dirs, monkeypatch):
    release = held_loads(monkeypatch)
    manager = ModelManager(_catalogue(tmp_path, TINY_ONLY), device="cpu")
    manager.start_background_load()
    threading.Timer(0.2, release.set).start()
    manager.edit_model("tiny", cfg_scale="6", width="96")
    components = manager.get()
    assert components.default_cfg == 6.0 and components.native_size == (96, 64)
    manager.edit_model("tiny", cfg_scale="", width="")  # removing the fields removes their defaults
    assert components.default_cfg == 7.5 and components.native_size == (64, 64)


def test_edit_model_reads_relative_paths_from_the_working_directory(tiny_store, tmp_path, user_dirs):
    folder = model_dir_copy(tiny_store, user_dirs["work"], "mine-v2")
    manager = ModelManager(_catalogue(tmp_path, TINY_ONLY + "mine:\n  format: diffusers\n  path: /nowhere\n"))
    manager.edit_model("mine", path="mine-v2")
    assert manager.switch("mine").name == "mine"
    assert Catalogue.load(tmp_path / "models.yaml").get("mine").path == folder


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"path": "mine-v3"}, "path {work}/mine-v3 does not exist"),
        ({"vae": "vae.safetensor"}, "vae {work}/vae.safetensor does not exist"),
        ({"config": "configs/sd-9"}, "config {work}/configs/sd-9 does not exist"),
        ({"format": "checkpoint", "path": "mine-v2.ckpt"}, "path {work}/mine-v2.ckpt does not exist"),
    ],
)
def test_an_edit_to_a_file_that_does_not_exist_changes_nothing(tiny_store, tmp_path, user_dirs, fields, says):
    """A typo in an edited path was "updated", dropped the loaded copy and failed every later !switch."""
    folder = model_dir_copy(tiny_store, user_dirs["work"], "mine-v2")
    manager = ModelManager(_catalogue(tmp_path, TINY_ONLY + f"mine:\n  format: diffusers\n  path: {folder}\n"))
    manager.switch("mine")
    before = (tmp_path / "models.yaml").read_text()
    with pytest.raises(ModelError) as caught:
        manager.edit_model("mine", **fields)
    families = "; a family is one of sd-1, sd-1-v, sd-2, sd-2-v" if "config" in fields else ""
    assert str(caught.value) == f"entry 'mine': {says.format(work=user_dirs['work'])} (nothing was changed){families}"
    assert (tmp_path / "models.yaml").read_text() == before
    assert manager.get().name == "mine" and manager.list_models()[1].state == "on device"


def test_an_edit_may_keep_a_missing_file_it_does_not_name(tiny_store, tmp_path, user_dirs):
    """A model whose drive is unplugged can still get a new description or size; its load says what is missing."""
    manager = ModelManager(_catalogue(tmp_path, TINY_ONLY + "mine:\n  format: diffusers\n  path: /nowhere\n"))
    manager.edit_model("mine", description="on the USB drive", width="128")
    assert Catalogue.load(tmp_path / "models.yaml").get("mine").description == "on the USB drive"


def test_cuda_tier_moves_to_ram_or_drops_by_measured_memory(tmp_path, user_dirs, monkeypatch):
    """The device/RAM decisions, run without a GPU: moves are recorded instead of performed."""
    moves: list[tuple[str, str, bool]] = []
    monkeypatch.setattr(models, "_move", lambda c, device, dtype, pin: moves.append((c.name, str(device), pin)))
    body = "".join(f"m{i}:\n  format: builtin\n  path: tiny-random\n" for i in range(4))
    host = {"bytes": 64 * 2**30}
    free = {"bytes": 64 * 2**30}
    manager = ModelManager(
        _catalogue(tmp_path, body),
        device="cpu",
        max_loaded=2,
        host_margin_bytes=2**30,
        device_margin_bytes=2**30,
        host_available=lambda: host["bytes"],
        device_free=lambda device: free["bytes"],
    )
    manager.device = torch.device("cuda")
    for name in ("m0", "m1", "m2"):
        manager.switch(name)
    states = {row.name: row.state for row in manager.list_models()}
    assert states == {"m0": "in RAM", "m1": "on device", "m2": "on device", "m3": "on disk"}
    assert ("m0", "cpu", True) in moves  # parked in pinned RAM
    moves.clear()
    manager.switch("m0")  # back from RAM: no disk read, m1 (least recent) parked
    assert ("m0", "cuda", False) in moves and ("m1", "cpu", True) in moves
    host["bytes"] = 2**30  # RAM is short now: the next model pushed off the device is dropped, not parked
    manager.switch("m1")
    states = {row.name: row.state for row in manager.list_models()}
    assert states == {"m0": "on device", "m1": "on device", "m2": "on disk", "m3": "on disk"}
    # Little free device memory: make room by evicting before putting the next model on the device.
    host["bytes"] = 64 * 2**30
    free["bytes"] = 2**30
    with pytest.raises(ModelError, match="not enough device memory"):
        manager.switch("m3")
    assert manager.active_name == "m1"


def test_import_refuses_an_sdxl_or_inpainting_folder_at_once(tiny_store, tmp_path, user_dirs):
    import json

    manager = ModelManager(Catalogue.find(), device="cpu")
    for name, change in (("sdxl", {"addition_embed_type": "text_time"}), ("inpaint", {"in_channels": 9})):
        folder = model_dir_copy(tiny_store, tmp_path, name)
        config = json.loads((folder / "unet" / "config.json").read_text())
        (folder / "unet" / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ModelError, match=f"{name} is an? (SDXL|inpainting) model"):
            manager.import_model(folder)
    assert "sdxl" not in Catalogue.find().names() and "inpaint" not in Catalogue.find().names()


def test_a_corrected_config_brings_its_native_size_unless_the_size_is_the_users(tmp_path, user_dirs):
    """Import wrote the detected family's 512; saying the model is really sd-2-v must make it 768."""
    body = "".join(
        f"{name}:\n  format: checkpoint\n  path: /nowhere/{name}.safetensors\n  config: sd-2\n"
        f"  width: {width}\n  height: 512\n"
        for name, width in (("detected", 512), ("mine", 640), ("typed", 512))
    )
    notices: list[str] = []
    manager = ModelManager(_catalogue(tmp_path, TINY_ONLY + body), device="cpu", notify=notices.append)
    manager.edit_model("detected", config="sd-2-v")
    manager.edit_model("mine", config="sd-2-v")  # 640×512 is not sd-2's native size: the user chose it
    manager.edit_model("typed", config="sd-2-v", width="576")  # a size typed with the config wins
    saved = Catalogue.load(tmp_path / "models.yaml")
    assert (saved.get("detected").width, saved.get("detected").height) == (768, 768)
    assert (saved.get("mine").width, saved.get("mine").height) == (640, 512)
    assert (saved.get("typed").width, saved.get("typed").height) == (576, 512)
    assert notices == ["detected: width and height follow the new config: 768×768 (were 512×512)"]
    manager.edit_model("detected", config="sd-2")  # and back
    assert Catalogue.load(tmp_path / "models.yaml").get("detected").width == 512


@pytest.mark.parametrize("kind", ["safetensors", "ckpt", "folder"])
def test_a_loaded_model_keeps_its_weights_when_its_file_is_overwritten_in_place(kind, tiny_store, tmp_path, user_dirs):
    """Weights read by memory-mapping stayed backed by the user's file on the CPU: `cp -f` over it while the session
    ran crashed the process with SIGBUS (a shorter file) or changed the loaded weights (here: zeros, same size)."""
    if kind == "folder":
        path = model_dir_copy(tiny_store, tmp_path)
        body = f"mine:\n  format: diffusers\n  path: {path}\n"
        weight_files = [f for f in path.rglob("*") if f.suffix in (".safetensors", ".bin")]
    else:
        path = tmp_path / f"mine.{kind}"
        path.write_bytes(tiny_store[kind].read_bytes())
        body = f"mine:\n  format: checkpoint\n  path: {path}\n  config: {tiny_store['config']}\n"
        weight_files = [path]
    manager = ModelManager(_catalogue(tmp_path, body), device="cpu")
    components = manager.switch("mine")
    modules = (components.unet, components.vae, components.text_encoder)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
    mapped = loading._file_mappings()
    assert mapped is not None  # Linux: the check below can see file-backed memory
    assert not [n for m in modules for n, p in m.named_parameters() if loading._inside(mapped, p.data_ptr())]
    for file in weight_files:
        with open(file, "r+b") as handle:  # in place, as cp -f does: same inode, new bytes
            handle.write(bytes(file.stat().st_size))
    for module, saved in zip(modules, before, strict=True):
        changed = [k for k, v in module.state_dict().items() if not torch.equal(v, saved[k])]
        assert changed == []


def test_import_refuses_a_folder_without_the_parts_a_load_needs(tiny_store, tmp_path, user_dirs):
    """A folder with no vae/ or text_encoder/ was imported, then refused at every !switch to it."""
    import shutil

    manager = ModelManager(Catalogue.find(), device="cpu")
    for part in ("vae", "text_encoder"):
        folder = model_dir_copy(tiny_store, tmp_path, f"no-{part}")
        shutil.rmtree(folder / part)
        with pytest.raises(ModelError, match=f"has no {part}/ folder"):
            manager.import_model(folder)
        assert f"no-{part}" not in Catalogue.find().names()
    vae = model_dir_copy(tiny_store, tmp_path, "a-vae")  # a VAE given with it makes vae/ unnecessary
    assert manager.import_model(tmp_path / "no-vae", vae=str(vae)) == "no-vae"
    assert manager.switch("no-vae").vae is not None


def test_an_sd3_or_flux_diffusers_folder_is_named_at_import(tiny_store, tmp_path, user_dirs):
    """Such a folder has transformer/ where SD has unet/; it was refused as "not a diffusers folder"."""
    folder = tmp_path / "flux-dev"
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "config.json").write_text('{"_class_name": "FluxTransformer2DModel"}')
    (folder / "vae").mkdir()
    manager = ModelManager(Catalogue.find(), device="cpu")
    with pytest.raises(ModelError, match=r"^flux-dev is an SD3/Flux-style transformer model; invoke-repl runs SD 1"):
        manager.import_model(folder)
    assert "flux-dev" not in Catalogue.find().names()
