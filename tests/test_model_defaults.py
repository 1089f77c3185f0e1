"""A catalogue entry's `cfg_scale` is its model's default CFG: lines without -C get it, and the file records it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from invoke_repl.catalogue import Catalogue, ModelError
from invoke_repl.metadata import read_request
from invoke_repl.models import ModelManager
from invoke_repl.session import Session


def catalogue_file(tmp_path, cfg_line: str = "  cfg_scale: 3\n"):
    path = tmp_path / "models.yaml"
    path.write_text(
        "tiny-random:\n  format: builtin\n  path: tiny-random\n  default: true\n"
        + cfg_line
        + "plain:\n  format: builtin\n  path: tiny-random\n"
    )
    return path


@pytest.fixture
def session(tmp_path):
    manager = ModelManager(Catalogue.load(catalogue_file(tmp_path)), device="cpu")
    out = io.StringIO()
    session = Session(lambda: manager, outdir=tmp_path / "out", out=out, err=io.StringIO(), progress=False)
    return session, manager, out


def made(tmp_path, n: int):
    (path,) = (tmp_path / "out").glob(f"{n:06d}.*.png")
    return path


def test_line_without_cfg_gets_the_models_default_and_records_it(session, tmp_path):
    session, _manager, out = session
    assert session.run_line('"a red circle" --steps 3 --seed 5').ok
    assert read_request(made(tmp_path, 1)).cfg_scale == 3.0
    assert "--cfg-scale 3.0" in out.getvalue()
    assert session.run_line('"a red circle" --steps 3 --seed 5 -C 3').ok  # the same image, said explicitly
    with Image.open(made(tmp_path, 1)) as a, Image.open(made(tmp_path, 2)) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert session.run_line('"a red circle" --steps 3 --seed 5 -C 9').ok  # -C wins over the model's default
    assert read_request(made(tmp_path, 3)).cfg_scale == 9.0
    assert session.run_line('"a red circle" --steps 3 --seed 5 --model plain').ok  # no entry default: 7.5
    assert read_request(made(tmp_path, 4)).cfg_scale == 7.5


def test_edit_model_changes_the_default_of_a_loaded_model(session, tmp_path):
    session, manager, _out = session
    assert session.run_line('"x" --steps 2 --seed 1').ok
    assert session.run_line("!edit_model tiny-random cfg_scale=5.5").ok
    assert manager.catalogue.get("tiny-random").cfg_scale == 5.5
    assert session.run_line('"x" --steps 2 --seed 1').ok
    assert read_request(made(tmp_path, 2)).cfg_scale == 5.5
    assert session.run_line("!edit_model tiny-random cfg_scale=").ok  # cleared: back to the global default
    assert session.run_line('"x" --steps 2 --seed 1').ok
    assert read_request(made(tmp_path, 3)).cfg_scale == 7.5
    # A value pasted with typographic quotes is one quoted word, as with straight ones.
    assert session.run_line("!edit_model tiny-random description=\u201ca tiny model\u201d").ok
    assert manager.catalogue.get("tiny-random").description == "a tiny model"


@pytest.mark.parametrize(
    "bad", ["cfg_scale: high", "cfg_scale: -1", "cfg_scale: 101", "cfg_scale: true", "cfg_scale: .nan"]
)
def test_bad_default_cfg_is_one_line_naming_the_field(tmp_path, bad):
    with pytest.raises(ModelError) as caught:
        Catalogue.load(catalogue_file(tmp_path, f"  {bad}\n"))
    message = str(caught.value)
    assert "\n" not in message and "cfg_scale must be a number from 0 to 100" in message and "tiny-random" in message


def test_bad_edit_keeps_the_old_default(session):
    session, manager, _out = session
    outcome = session.run_line("!edit_model tiny-random cfg_scale=lots")
    assert not outcome.ok and "cfg_scale must be a number" in outcome.error
    assert manager.catalogue.get("tiny-random").cfg_scale == 3.0


@pytest.mark.parametrize("key", ["name", "self"])
def test_an_edit_of_a_field_that_names_a_parameter_is_an_unknown_field(session, key):
    """`name=`/`self=` collided with edit_model's own parameters: "got multiple values for argument 'name'"."""
    session, manager, _out = session
    outcome = session.run_line(f"!edit_model tiny-random {key}=other")
    assert not outcome.ok and outcome.error.startswith(f"entry 'tiny-random': unknown field '{key}' (fields: ")
    assert "other" not in manager.model_names()


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("!import_model --name x", "!import_model needs a path first: !import_model PATH --name x"),
        ('!import_model /models/a.safetensors --name ""', "--name needs a value, not an empty one"),
        ("!import_model /models/a.safetensors --name a --name b", "--name is given twice"),
    ],
)
def test_import_model_options_a_careless_line_gets_wrong_are_said(session, line, says):
    """A forgotten path read `--name` as the path ("unknown option x"); an empty or doubled --name silently used
    the file's name or the last one."""
    session, manager, _out = session
    outcome = session.run_line(line)
    assert not outcome.ok and outcome.error == says
    assert manager.model_names() == ["tiny-random", "plain"]


@pytest.mark.parametrize("key", ["format", "path"])
def test_removing_a_field_every_model_needs_is_said_so(session, key):
    session, manager, _out = session
    outcome = session.run_line(f"!edit_model tiny-random {key}=")
    assert not outcome.ok and outcome.error == f"entry 'tiny-random': {key} cannot be removed; every model needs one"
    assert manager.catalogue.get("tiny-random").format == "builtin"
