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


def test_editing_with_the_repo_catalogue_in_the_working_directory_goes_to_the_user_file(monkeypatch, user_dirs):
    """Running from a checkout finds ./models.yaml, which is the shipped file: it must stay untouched."""
    monkeypatch.chdir(paths.REPO_DIR)
    before = _digest(paths.shipped_catalogue())
    catalogue = Catalogue.find()
    catalogue.add("extra", {"format": "builtin", "path": "tiny-random"})
    assert _digest(paths.shipped_catalogue()) == before
    assert "extra" in yaml.safe_load(user_catalogue_path().read_text())


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
    assert [p.name for p in user.parent.iterdir()] == ["models.yaml"]  # no temporary file left behind


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
