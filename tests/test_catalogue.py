"""models.yaml: search order, validation errors that name the entry, atomic edits, the shipped file left alone."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

from invoke_repl import paths
from invoke_repl.catalogue import Catalogue, ModelError, user_catalogue_path

pytest_plugins = ["tests.test_models_fixtures"]  # tiny models in each real format, user-folder isolation


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shipped_catalogue_has_embedded_default_and_tiny_random():
    catalogue = Catalogue.load(paths.shipped_catalogue())
    embedded, tiny = catalogue.get("embedded"), catalogue.get("tiny-random")
    assert embedded.default and embedded.format == "diffusers"
    assert embedded.path == paths.REPO_DIR / "invoke_repl" / "embedded" / "model"
    assert tiny.format == "builtin" and tiny.files_present()


def test_a_user_or_target_install_finds_its_shipped_catalogue_through_its_record(monkeypatch, tmp_path):
    """`pip install --user` / `--target DIR` put the wheel's data file outside sys.prefix; every line then failed
    with "models.yaml is missing (reinstall the package)", which reinstalling could not mend."""
    import sys

    site = tmp_path / "target"
    info = site / "invoke_repl-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: invoke-repl\nVersion: 0.1.0\n")
    (info / "RECORD").write_text("invoke_repl/__init__.py,,\nshare/invoke-repl/models.yaml,,\n")
    data = site / "share" / "invoke-repl" / "models.yaml"
    data.parent.mkdir(parents=True)
    data.write_bytes(paths.shipped_catalogue().read_bytes())
    monkeypatch.setattr(paths, "REPO_DIR", tmp_path / "no-checkout")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.syspath_prepend(str(site))
    assert paths.shipped_catalogue() == data.resolve()
    (info / "RECORD").write_text("invoke_repl/__init__.py,,\n")  # a copy whose data file is really gone
    with pytest.raises(FileNotFoundError, match="models.yaml is missing"):
        paths.shipped_catalogue()


def test_a_start_model_check_without_any_catalogue_leaves_the_error_to_the_lines(monkeypatch, user_dirs):
    """`--model NAME` with no catalogue anywhere printed a traceback before the first line ran."""
    import argparse

    from invoke_repl import cli

    def missing() -> Path:
        raise FileNotFoundError("invoke-repl's models.yaml is missing (reinstall the package)")

    monkeypatch.setattr(paths, "shipped_catalogue", missing)
    assert cli._unknown_start_model(argparse.Namespace(models=None, model="tiny-random")) is None


def test_search_order(user_dirs, tmp_path):
    shipped = Catalogue.find()
    assert shipped.source == paths.shipped_catalogue() and shipped.writable == user_catalogue_path()
    user = user_catalogue_path()
    user.parent.mkdir(parents=True)
    user.write_text("mine:\n  format: builtin\n  path: tiny-random\n")
    assert Catalogue.find().names() == ["mine"]
    (user_dirs["work"] / "models.yaml").write_text("here:\n  format: builtin\n  path: tiny-random\n")
    assert Catalogue.find().names() == ["here"]
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("there:\n  format: builtin\n  path: tiny-random\n")
    assert Catalogue.find(explicit).names() == ["there"]
    with pytest.raises(ModelError, match="no such file"):
        Catalogue.find(tmp_path / "absent.yaml")


def test_relative_paths_resolve_against_the_catalogue_folder(tmp_path):
    folder = tmp_path / "cats"
    folder.mkdir()
    (folder / "models.yaml").write_text(
        "a:\n  format: checkpoint\n  path: weights/a.safetensors\n  config: ../cfg\n  vae: vae.ckpt\n"
    )
    entry = Catalogue.load(folder / "models.yaml").get("a")
    assert entry.path == folder / "weights" / "a.safetensors"
    assert entry.config == folder / "../cfg" and entry.vae == folder / "vae.ckpt"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "good:\n  format: builtin\n  path: tiny-random\nbroken:\n  format: onnx\n  path: x\n",
            r"entry 'broken': format must be one of",
        ),
        ("broken:\n  format: diffusers\n", r"entry 'broken': a diffusers entry needs a path"),
        ("broken:\n  format: checkpoint\n  path: model.zip\n", r"entry 'broken': a checkpoint path must end in"),
        ("broken:\n  format: builtin\n  colour: red\n", r"entry 'broken': unknown field 'colour'"),
        (
            "broken:\n  format: builtin\n  path: tiny-random\n  width: 500\n",
            r"entry 'broken': width must be a positive multiple of 8",
        ),
        (
            "broken:\n  format: builtin\n  path: tiny-random\n  default: maybe\n",
            r"entry 'broken': default must be true or false",
        ),
        ("broken:\n  format: builtin\n  path: dall-e\n", r"entry 'broken': unknown builtin recipe 'dall-e'"),
        ("broken:\n  format: diffusers\n  path: x\n  config: 7\n", r"entry 'broken': config must be a family"),
        ("broken: just text\n", r"entry 'broken': expected a mapping of fields"),
        ("two words:\n  format: builtin\n", r"entry 'two words': a model name is one word"),
        ("broken:\n  format: builtin\n", r"entry 'broken': a builtin entry needs path: one of tiny-random"),
        (
            "a:\n  format: builtin\n  path: tiny-random\n  default: true\n"
            "b:\n  format: builtin\n  path: tiny-random\n  default: true\n",
            "both marked default",
        ),
        ("- a\n- b\n", "expected a mapping of model names"),
        ("a: [unclosed\n", r"not valid YAML at line \d"),
        (  # two `path:` lines in one entry silently used the second; which one was meant is the user's to say
            "tiny:\n  format: builtin\n  path: tiny-random\n"
            "mine:\n  format: checkpoint\n  path: /models/old.safetensors\n  config: sd-1\n"
            '  "path": /models/new.safetensors\n',
            r"entry 'mine': field 'path' appears twice \(lines 6 and 8\)",
        ),
    ],
)
def test_malformed_catalogue_errors_name_the_entry_and_problem(tmp_path, text, message):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(ModelError, match=message) as info:
        Catalogue.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_default_falls_back_when_its_files_are_missing(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "gone:\n  format: diffusers\n  path: nowhere\n  default: true\ntiny:\n  format: builtin\n  path: tiny-random\n"
    )
    name, notice = Catalogue.load(path).default_name()
    assert name == "tiny" and "'gone' is missing" in notice and "\n" not in notice
    (tmp_path / "nowhere").mkdir()  # a folder that exists but holds no model yet (a training run writing it)
    assert Catalogue.load(path).default_name()[0] == "tiny"
    (tmp_path / "nowhere" / "unet").mkdir()
    assert Catalogue.load(path).default_name() == ("gone", None)


def test_first_edit_seeds_the_user_catalogue_and_never_writes_the_shipped_one(user_dirs):
    shipped = paths.shipped_catalogue()
    before = _digest(shipped)
    catalogue = Catalogue.find()
    catalogue.add("extra", {"format": "builtin", "path": "tiny-random", "description": "mine"})
    user = user_catalogue_path()
    assert user.is_file() and _digest(shipped) == before
    again = Catalogue.find()
    assert again.source == user and again.names() == ["embedded", "tiny-random", "extra"]
    # The shipped relative path was made absolute so it still points at the package from the user's folder.
    assert again.get("embedded").path == paths.REPO_DIR / "invoke_repl" / "embedded" / "model"
    again.remove("tiny-random")
    again.update("embedded", {"description": "changed"})
    assert _digest(shipped) == before
    assert Catalogue.find().names() == ["embedded", "extra"]


def test_a_seeded_catalogue_finds_the_embedded_model_after_a_reinstall(user_dirs):
    """The seeded entry holds the package's absolute path; a new environment moves the package elsewhere."""
    user = user_catalogue_path()
    user.parent.mkdir(parents=True, exist_ok=True)
    old = "/home/me/old-venv/lib/python3.11/site-packages/invoke_repl/embedded/model"
    user.write_text(
        f"embedded:\n  format: diffusers\n  path: {old}\n  default: true\n"
        "mine:\n  format: diffusers\n  path: /home/me/gone/invoke_repl/not-shipped\n"
    )
    catalogue = Catalogue.find()
    assert catalogue.get("embedded").path == paths.embedded_model_dir()
    assert catalogue.default_name() == ("embedded", None)  # not a fallback to the noise model
    # Only files this package has move; the next edit writes the path that works now.
    assert catalogue.get("mine").path == Path("/home/me/gone/invoke_repl/not-shipped")
    catalogue.update("embedded", {"description": "changed"})
    assert yaml.safe_load(user.read_text())["embedded"]["path"] == str(paths.embedded_model_dir())


def test_editing_with_the_repo_catalogue_in_the_working_directory_goes_to_the_user_file(monkeypatch, user_dirs):
    """Running from a checkout finds ./models.yaml, which is the shipped file: it must stay untouched."""
    monkeypatch.chdir(paths.REPO_DIR)
    before = _digest(paths.shipped_catalogue())
    catalogue = Catalogue.find()
    catalogue.add("extra", {"format": "builtin", "path": "tiny-random"})
    assert _digest(paths.shipped_catalogue()) == before
    assert "extra" in yaml.safe_load(user_catalogue_path().read_text())
    # A restart in the same folder reads the user's file, not the shipped one that would hide the edit.
    restarted = Catalogue.find()
    assert restarted.source == user_catalogue_path() and "extra" in restarted.names()


def test_edits_are_atomic_and_a_failed_write_leaves_the_old_file(user_dirs, monkeypatch):
    user = user_catalogue_path()
    user.parent.mkdir(parents=True)
    user.write_text("a:\n  format: builtin\n  path: tiny-random\n")
    catalogue = Catalogue.find()
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append((src, dst)), real_replace(src, dst)))
    catalogue.update("a", {"width": "512", "height": "768", "default": "yes", "description": "tall"})
    assert replaced and Path(replaced[0][1]) == user and not Path(replaced[0][0]).exists()
    entry = Catalogue.find().get("a")
    assert (entry.width, entry.height, entry.default, entry.description) == (512, 768, True, "tall")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    before = user.read_text()
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        catalogue.update("a", {"description": "lost"})
    assert user.read_text() == before
    assert [p.name for p in user.parent.iterdir() if not p.name.endswith(".lock")] == ["models.yaml"]  # no temp file


def test_invalid_edits_are_refused_before_writing(user_dirs):
    catalogue = Catalogue.find()
    with pytest.raises(ModelError, match="width must be a positive multiple of 8"):
        catalogue.update("tiny-random", {"width": "513"})
    with pytest.raises(ModelError, match="unknown field 'colour'"):
        catalogue.update("tiny-random", {"colour": "red"})
    with pytest.raises(ModelError, match="already in the catalogue"):
        catalogue.add("tiny-random", {"format": "builtin"})
    assert not user_catalogue_path().exists()


def test_making_one_entry_default_clears_the_others(user_dirs):
    catalogue = Catalogue.find()
    catalogue.update("tiny-random", {"default": "true"})
    reread = Catalogue.find()
    assert reread.get("tiny-random").default and not reread.get("embedded").default


def test_edits_apply_to_the_file_as_it_is_now_not_to_a_start_up_snapshot(tmp_path):
    """Two sessions on one catalogue, and a hand edit meanwhile: every change survives every later edit."""
    path = tmp_path / "models.yaml"
    path.write_text("a:\n  format: builtin\n  path: tiny-random\n")
    one, two = Catalogue.load(path), Catalogue.load(path)
    one.add("from-one", {"format": "builtin", "path": "tiny-random"})
    two.add("from-two", {"format": "builtin", "path": "tiny-random"})
    with open(path, "a") as handle:
        handle.write("by-hand:\n  format: builtin\n  path: tiny-random\n")
    one.update("a", {"description": "edited"})
    assert Catalogue.load(path).names() == ["a", "from-one", "from-two", "by-hand"]
    assert Catalogue.load(path).get("a").description == "edited"
    with pytest.raises(ModelError, match="already in the catalogue"):
        one.add("from-two", {"format": "builtin", "path": "tiny-random"})  # session two's, seen on disk
    two.remove("from-one")
    with pytest.raises(ModelError, match="no model named 'from-one'"):
        one.update("from-one", {"description": "gone meanwhile"})
    assert Catalogue.load(path).names() == ["a", "from-two", "by-hand"]


def test_a_hand_edit_that_breaks_the_file_is_not_overwritten(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("a:\n  format: builtin\n  path: tiny-random\n")
    catalogue = Catalogue.load(path)
    path.write_text("a: [half-typed\n")
    with pytest.raises(ModelError, match="not valid YAML"):
        catalogue.add("b", {"format": "builtin", "path": "tiny-random"})
    assert path.read_text() == "a: [half-typed\n"


def test_comments_of_a_hand_written_catalogue_are_kept_in_a_backup(tmp_path):
    path = tmp_path / "models.yaml"
    text = "# my models, do not lose this note\na:\n  format: builtin\n  path: tiny-random  # noise\n"
    path.write_text(text)
    catalogue = Catalogue.load(path)
    catalogue.update("a", {"description": "x"})
    assert catalogue.backup == tmp_path / "models.yaml.bak" and catalogue.backup.read_text() == text
    catalogue.update("a", {"description": "y"})  # the rewritten file has no comments of the user's left to keep
    assert catalogue.backup is None
    path.write_text(text.replace("note", "other note"))
    catalogue.update("a", {"description": "z"})  # a second hand-written version does not replace the first copy
    assert catalogue.backup == tmp_path / "models.yaml.bak.1"
    assert (tmp_path / "models.yaml.bak").read_text() == text


def test_a_symlinked_catalogue_stays_a_link_with_its_permissions(tmp_path):
    dotfiles = tmp_path / "dotfiles" / "models.yaml"
    dotfiles.parent.mkdir()
    dotfiles.write_text("a:\n  format: builtin\n  path: tiny-random\n")
    dotfiles.chmod(0o644)
    link = tmp_path / "config" / "models.yaml"
    link.parent.mkdir()
    link.symlink_to(dotfiles)
    Catalogue.load(link).add("b", {"format": "builtin", "path": "tiny-random"})
    assert link.is_symlink() and Catalogue.load(dotfiles).names() == ["a", "b"]
    assert dotfiles.stat().st_mode & 0o777 == 0o644


def _catalogue_in_config(tmp_path: Path, text: str) -> tuple[Path, Catalogue, Path]:
    """(file, catalogue, working folder): a catalogue in its own folder, edited from another one."""
    path = tmp_path / "config" / "models.yaml"
    path.parent.mkdir()
    path.write_text(text)
    return path, Catalogue.load(path), tmp_path / "work"


def test_relative_paths_of_an_edit_resolve_against_the_given_folder(tmp_path, monkeypatch):
    path, catalogue, work = _catalogue_in_config(tmp_path, "a:\n  format: diffusers\n  path: /elsewhere/a\n")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (work / "models" / "a-v2").mkdir(parents=True)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "vae.safetensors").touch()
    entry = catalogue.update("a", {"path": "models/a-v2", "vae": "~/vae.safetensors", "config": "sd-1"}, base=work)
    assert entry.path == work / "models" / "a-v2" and entry.config == "sd-1"
    assert entry.vae == Path.home() / "vae.safetensors"
    assert Catalogue.load(path).get("a").path == work / "models" / "a-v2"


def test_an_edit_of_format_and_path_together_reads_the_path_for_the_new_format(tmp_path):
    text = "a:\n  format: diffusers\n  path: /models/a\nb:\n  format: builtin\n  path: tiny-random\n"
    _, catalogue, work = _catalogue_in_config(tmp_path, text)
    (work / "mymodel").mkdir(parents=True)
    assert catalogue.update("a", {"format": "builtin", "path": "tiny-random"}, base=work).format == "builtin"
    assert catalogue.update("b", {"format": "diffusers", "path": "mymodel"}, base=work).path == work / "mymodel"


def test_a_model_named_twice_is_refused_and_never_rewritten_without_one_of_them(tmp_path):
    """safe_load keeps the last of two equal keys: the first entry vanished, and the next edit wrote the file
    without it (and, the file having no comments, without a backup)."""
    path = tmp_path / "models.yaml"
    path.write_text("tiny:\n  format: builtin\n  path: tiny-random\n")
    catalogue = Catalogue.load(path)
    text = (
        "a:\n  format: builtin\n  path: tiny-random\n"
        "tiny:\n  description: the first\n  format: builtin\n  path: tiny-random\n"
        "tiny:\n  description: the second\n  format: builtin\n  path: tiny-random\n"
    )
    path.write_text(text)
    message = r"model 'tiny' appears twice \(lines 4 and 8\); rename or remove one"
    with pytest.raises(ModelError, match=message) as info:
        Catalogue.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    for edit in (
        lambda: catalogue.add("b", {"format": "builtin", "path": "tiny-random"}),
        lambda: catalogue.update("a", {"description": "edited"}),
        lambda: catalogue.remove("a"),
    ):
        with pytest.raises(ModelError, match=message):
            edit()
    assert path.read_text() == text
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == ["models.yaml"]  # no backup


def test_a_merge_key_overridden_in_an_entry_is_not_a_field_named_twice(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "base: &base\n  format: checkpoint\n  path: /models/base.safetensors\n  config: sd-1\n"
        "derived:\n  <<: *base\n  path: /models/derived.safetensors\n  config: sd-2\n"
    )
    derived = Catalogue.load(path).get("derived")
    assert derived.path == Path("/models/derived.safetensors") and derived.config == "sd-2"


# Each one a number, a boolean, null or a date to YAML, and a fine model name to type after !switch.
ODD_NAMES = ["1.10", "0777", "1_000", "123", "1e3", "0x1F", "yes", "on", "No", "null", "2024-01-01"]


def test_model_names_yaml_would_read_as_numbers_booleans_or_dates_keep_their_text(tmp_path):
    """`1.10:` was listed as 1.1 and `0777:` as 511, so `!switch 1.10` found no model, and the next edit wrote the
    file back with the new names; `yes:` and `null:` were refused as not being names at all."""
    path = tmp_path / "models.yaml"
    path.write_text("".join(f"{name}:\n  format: builtin\n  path: tiny-random\n" for name in ODD_NAMES))
    catalogue = Catalogue.load(path)
    assert catalogue.names() == ODD_NAMES
    assert catalogue.get("1.10").name == "1.10" and catalogue.get("0777").name == "0777"
    catalogue.update("1.10", {"description": "edited"})  # read, change one entry, write back
    assert catalogue.names() == ODD_NAMES
    assert Catalogue.load(path).names() == ODD_NAMES
    assert Catalogue.load(path).get("1.10").description == "edited"
    # Written as strings, so any YAML reader (not only this one) sees the same names.
    assert list(yaml.safe_load(path.read_text())) == ODD_NAMES
    catalogue.remove("0777")
    catalogue.add("2.0", {"format": "builtin", "path": "tiny-random"})
    expected = [name for name in ODD_NAMES if name != "0777"] + ["2.0"]
    assert Catalogue.load(path).names() == expected


def test_a_description_yaml_would_read_as_a_number_keeps_its_text(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("v1:\n  format: builtin\n  path: tiny-random\n  description: 1.10\nv2:\n  format: builtin\n"
                    "  path: tiny-random\n  description:\n")
    catalogue = Catalogue.load(path)
    assert catalogue.get("v1").description == "1.10" and not catalogue.get("v2").description
    catalogue.update("v2", {"description": "edited"})  # written back, read back: still the text typed
    assert Catalogue.load(path).get("v1").description == "1.10"


def test_a_catalogue_whose_folder_cannot_hold_its_lock_is_named_not_the_lock_file(tmp_path):
    """The error named the hidden lock file ("Not a directory: …/.models.yaml.lock"), not the catalogue."""
    from invoke_repl.catalogue import ModelError, _locked

    (tmp_path / "config").write_text("a file where the config folder should be")
    target = tmp_path / "config" / "invoke-repl" / "models.yaml"
    with pytest.raises(ModelError) as caught, _locked(target):
        pass
    assert str(caught.value).startswith(f"cannot edit {target}: ") and ".lock" not in str(caught.value)
