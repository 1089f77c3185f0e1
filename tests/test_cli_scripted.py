"""Scripted sessions as a user runs them: a pipe into a real `python -m invoke_repl` process.

These pin issue 2's acceptance lines: the seed's img2img line writes the right file, metadata and announcement; the
legacy dialect's spelling of the same line gives identical pixels; broken lines each give one `line N:` error and
the run goes on with exit status 1; nothing prints a Python traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.clirun import REPO, isolated_env, run_cli, tiny_catalogue

FIRE = REPO / "invoke_repl" / "embedded" / "fire-drawing.png"
SEED_LINE = '"fire" -S10 -s0.7 -I fire.png -A k_lms --seed 1592514025\n'
LEGACY_LINE = '"fire" -s10 -S1592514025 -f0.7 -I fire.png -Ak_lms\n'


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    if FIRE.exists():
        shutil.copy(FIRE, tmp_path / "fire.png")
    else:  # the embedded model's drawing is not there yet: any small picture will do
        Image.new("RGB", (64, 64), (200, 80, 20)).save(tmp_path / "fire.png")
    tiny_catalogue(tmp_path)
    return tmp_path


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_seed_line_writes_named_file_metadata_and_announcement(workdir: Path) -> None:
    result = run_cli(["--outdir", "D", "--no-progress"], workdir, stdin=SEED_LINE)
    assert result.returncode == 0, result.stderr
    image = workdir / "D" / "000001.1592514025.png"
    assert image.is_file()
    with Image.open(image) as png:
        meta = json.loads(png.text["sd-metadata"])
        dream = png.text["Dream"]
        parameters = png.text["parameters"]
    assert meta["image"]["steps"] == 10
    assert meta["image"]["strength"] == pytest.approx(0.7)
    assert meta["image"]["sampler"] == "k_lms"
    assert meta["image"]["steps_taken"] == 7
    assert dream.startswith('"fire"') and "-s10" in dream and "-S1592514025" in dream
    lines = parameters.splitlines()
    assert lines[0] == "fire" and lines[1].startswith("Negative prompt:")
    assert lines[2].startswith("Steps: 10, Sampler: ") and "Denoising strength: 0.7" in lines[2]
    first = result.stdout.splitlines()[0]
    assert first.startswith('[1] D/000001.1592514025.png: "fire" --steps 10 ')
    assert "--seed 1592514025" in first and "--strength 0.7" in first and "--sampler k_lms" in first
    log = (workdir / "D" / "invoke_log.txt").read_text()
    assert first in log
    assert "Traceback" not in result.stderr + result.stdout


def test_legacy_dialect_gives_pixel_identical_image(workdir: Path) -> None:
    guide = run_cli(["--outdir", "G", "--no-progress"], workdir, stdin=SEED_LINE)
    legacy = run_cli(["--outdir", "L", "--dialect", "legacy", "--no-progress"], workdir, stdin=LEGACY_LINE)
    assert guide.returncode == 0 and legacy.returncode == 0, guide.stderr + legacy.stderr
    a = _pixels(workdir / "G" / "000001.1592514025.png")
    b = _pixels(workdir / "L" / "000001.1592514025.png")
    assert np.array_equal(a, b)
    # the announced canonical lines are the same too: they use long switches only
    assert guide.stdout.split(": ", 1)[1] == legacy.stdout.split(": ", 1)[1]


def test_broken_lines_report_line_numbers_and_the_run_goes_on(workdir: Path) -> None:
    script = "\n".join(
        [
            "# a comment, then a blank line",
            "",
            '"cat" -S ten',  # 3: not a number
            '"cat" -Q5',  # 4: unknown switch
            '"cat" -A k_lmz',  # 5: unknown sampler
            '"cat -S5',  # 6: unclosed quote
            '"cat" -I missing.png -S5',  # 7: init image missing
            '"cat" -s50',  # 8: other dialect's meaning
            '"cat" -S3 --seed 7',  # 9: fine
        ]
    )
    result = run_cli(["--outdir", "D", "--no-progress"], workdir, stdin=script + "\n")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("line ")]
    assert [e.split(":")[0] for e in errors] == [f"line {n}" for n in range(3, 9)]
    assert "ten" in errors[0]
    assert "-Q" in errors[1]
    assert "k_lmz" in errors[2] and "k_lms" in errors[2]
    assert "quote" in errors[3]
    assert "missing.png" in errors[4]
    assert "legacy" in errors[5]
    assert len(list((workdir / "D").glob("*.png"))) == 1
    assert "Traceback" not in result.stderr + result.stdout


def test_from_file_and_n3_seeds_and_exit_zero(workdir: Path) -> None:
    (workdir / "script.txt").write_text('"dots" -S2 -n 3 --seed 5\n')
    result = run_cli(["--outdir", "D", "--from-file", "script.txt", "--no-progress"], workdir)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (workdir / "D").glob("*.png"))
    assert names == ["000001.5.png", "000001.6.png", "000001.7.png"]
    assert [line.split("]")[0] for line in result.stdout.splitlines()] == ["[1", "[2", "[3"]


def test_walkthrough_replays_with_step_strips_and_is_byte_identical_twice(workdir: Path) -> None:
    """The seed document's walkthrough: 0.7 of 10 steps → 7 frames, 0.4 → 4, no init image → 10."""
    base = '"fire" -S10 -A k_lms --seed 1592514025 --save-steps'
    script = f"{base} -s0.7 -I fire.png\n{base} -s0.4 -I fire.png\n{base}\n"
    for folder in ("A", "B"):
        result = run_cli(["--outdir", folder, "--no-progress"], workdir, stdin=script)
        assert result.returncode == 0, result.stderr
    expected = {1: ("7", 7), 2: ("4", 4), 3: ("10", 10)}
    for prefix, (frames, taken) in expected.items():
        image = workdir / "A" / f"{prefix:06d}.1592514025.png"
        with Image.open(image) as png:
            assert json.loads(png.text["sd-metadata"])["image"]["steps_taken"] == taken
        with Image.open(workdir / "A" / f"{prefix:06d}.1592514025.steps.png") as strip:
            assert strip.text.get("Frames") == frames
    names = sorted(p.name for p in (workdir / "A").glob("*.png"))
    assert len(names) == 6
    for name in names:
        assert np.array_equal(_pixels(workdir / "A" / name), _pixels(workdir / "B" / name)), name


def test_previous_seed_and_previous_image_references(workdir: Path) -> None:
    script = '"a" -S2 --seed 11\n"b" -S2 --seed -1 -I -1 -s0.5\n'
    result = run_cli(["--outdir", "D", "--no-progress"], workdir, stdin=script)
    assert result.returncode == 0, result.stderr
    second = result.stdout.splitlines()[1]
    assert "--seed 11" in second and f"--init-img {workdir / 'D' / '000001.11.png'}" in second


def test_an_img2img_line_records_its_init_image_absolute_so_its_log_reruns_it_from_any_folder(workdir: Path) -> None:
    """`-I rot.png` was recorded as typed: `!replay D/invoke_log.txt` (or `!fetch`) from another folder failed
    with "init image not found: rot.png"."""
    Image.new("RGB", (64, 64), (200, 40, 10)).save(workdir / "rot.png")
    script = '"b" -S2 --seed 5 -I rot.png -s0.5\n"c" -S2 --seed 6 -I gone.png -s0.5\n'
    result = run_cli(["--outdir", "D", "--no-progress"], workdir, stdin=script)
    assert result.returncode == 1 and result.stderr == "line 2: init image not found: gone.png\n"  # as typed
    assert f"--init-img {workdir / 'rot.png'} " in result.stdout
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    again = run_cli(["--outdir", "E", "--no-progress"], elsewhere, stdin="!replay ../D/invoke_log.txt\n")
    assert again.returncode == 0, again.stderr
    assert np.array_equal(_pixels(workdir / "D" / "000001.5.png"), _pixels(elsewhere / "E" / "000001.5.png"))


def test_previous_reference_without_previous_image_is_a_line_error(workdir: Path) -> None:
    result = run_cli(["--outdir", "D", "--no-progress"], workdir, stdin='"a" --seed -1\n')
    assert result.returncode == 1
    assert result.stderr.startswith("line 1: ") and "previous" in result.stderr


def _run_probing_torch(args: list[str], tmp: Path, script: str) -> subprocess.CompletedProcess[str]:
    """A scripted run that ends by printing `NO-TORCH <status>` on stderr if torch was never imported."""
    probe = (
        f"import sys, runpy; sys.argv=['invoke-repl', *{args!r}];"
        "code=0\ntry:\n runpy.run_module('invoke_repl', run_name='__main__')\nexcept SystemExit as e:\n code=e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code, file=sys.stderr)"
    )
    return subprocess.run(
        [sys.executable, "-c", probe],
        input=script,
        capture_output=True,
        text=True,
        env=isolated_env(tmp),
        cwd=tmp,
        timeout=60,
    )


def test_commands_without_generation_do_not_import_torch(workdir: Path) -> None:
    result = _run_probing_torch(["--outdir", "D"], workdir, "!help\n!dialect legacy\n!history\n")
    assert "NO-TORCH 0" in result.stderr, result.stderr
    assert "dialect: legacy" in result.stdout


def test_replaying_the_log_and_a_bom_script_run_their_lines(workdir: Path) -> None:
    """`!replay invoke_log.txt` runs the logged lines (not "[1] PATH: …" as a prompt), and a script saved with a
    byte-order mark still treats its first line as the comment or command it is."""
    first = run_cli(["--outdir", "D", "--no-progress"], workdir, stdin='"a red circle" -S3 --seed 3\n')
    assert first.returncode == 0, first.stderr
    script = workdir / "bom.txt"
    script.write_bytes(b"\xef\xbb\xbf# my script\r\n!replay D/invoke_log.txt\r\n")
    result = run_cli(["--outdir", "D", "--no-progress", "--from-file", "bom.txt"], workdir)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith('[1] D/000002.3.png: "a red circle" --steps 3 --seed 3 '), line
    assert np.array_equal(_pixels(workdir / "D" / "000001.3.png"), _pixels(workdir / "D" / "000002.3.png"))


def test_a_script_line_that_is_not_utf8_is_refused_not_run_with_a_replaced_prompt(workdir: Path) -> None:
    """A Latin-1 `"caf\xe9"` ran as the prompt "caf\ufffd" (exit 0, no word); the interactive prompt already refused
    such a byte. A comment with one is still skipped, and the other lines run."""
    (workdir / "latin1.txt").write_bytes(b'# caf\xe9 au lait\n"caf\xe9" -S2 --seed 1\n"tea" -S2 --seed 2\n')
    expected = (
        "line 2: the line is not UTF-8 text (byte 0xE9 at column 5); save the file, or set the terminal, as UTF-8"
    )
    runs = {
        "--from-file": (["--from-file", "latin1.txt"], b"", expected),
        "stdin": ([], (workdir / "latin1.txt").read_bytes(), expected),
        "!replay": ([], b"!replay latin1.txt\n", "latin1.txt " + expected),
    }
    for name, (args, stdin, says) in runs.items():
        result = subprocess.run(
            [sys.executable, "-m", "invoke_repl", "--outdir", name.strip("-!"), "--no-progress", *args],
            input=stdin, capture_output=True, env=isolated_env(workdir), cwd=workdir, timeout=120,
        )  # fmt: skip
        assert result.returncode == 1, name
        assert result.stderr.decode().splitlines()[0] == says, name
        assert [p.name for p in (workdir / name.strip("-!")).glob("*.png")] == ["000001.2.png"], name


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--max-loaded-models", "abc"], "invoke-repl: argument --max-loaded-models: invalid int value: 'abc'"),
        (["--dialect", "LEGACY"], "invoke-repl: argument --dialect: invalid choice: 'LEGACY'"),
        (["--bogus"], "invoke-repl: unrecognized arguments: --bogus"),
        (["--outdir="], "invoke-repl: argument --outdir/-o: an empty path (an unset variable?)"),
        (["--models", "."], "invoke-repl: --models .: it is a folder"),
        (["--models", "/dev/null"], "invoke-repl: --models /dev/null: not a file"),
    ],
)
def test_bad_start_up_options_are_one_line_and_exit_2(workdir: Path, args: list[str], says: str) -> None:
    """argparse printed its 7-line usage block first; an empty --outdir wrote into the working folder; a folder
    or a device as --models was "no such file"."""
    result = run_cli([*args, "--no-progress"], workdir, stdin='"a" -S2 --seed 1\n')
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(says), result.stderr
    assert not list(workdir.rglob("000001.*.png"))


def test_start_up_paths_after_an_equals_sign_read_tilde_as_home(workdir: Path) -> None:
    """The shell leaves `~` alone after `--outdir=`: a folder named `~` appeared in the working directory."""
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    (home / "script.txt").write_text('"a" -S2 --seed 4\n')
    result = run_cli(["--outdir=~/pics", "--from-file=~/script.txt", "--no-progress"], workdir)
    assert result.returncode == 0, result.stderr
    assert (home / "pics" / "000001.4.png").is_file() and not (workdir / "~").exists()


def test_an_unknown_start_model_stops_before_any_line_runs(workdir: Path) -> None:
    result = run_cli(["--outdir", "D", "--no-progress", "--model", "nonexist"], workdir, stdin='"x" -S2 --seed 1\n')
    assert result.returncode == 2
    assert "--model nonexist: no model named 'nonexist'" in result.stderr and "known: tiny-random" in result.stderr
    assert not (workdir / "D").exists()


def test_a_script_that_ends_while_the_default_model_loads_exits_cleanly(tmp_path: Path) -> None:
    """`!models` creates the manager, whose default model loads in a thread; exiting in the middle of that load
    aborted the interpreter ("terminate called without an active exception", exit 134) most of the time."""
    (tmp_path / "one.yaml").write_text("solo:\n  format: builtin\n  path: tiny-random\n")
    for _ in range(3):
        result = run_cli(["--models", "one.yaml", "--no-progress"], tmp_path, stdin="!models\n")
        assert result.returncode == 0, result.stderr[-500:]
        assert "solo" in result.stdout


def test_a_missing_models_file_is_a_start_up_error(tmp_path: Path) -> None:
    result = run_cli(["--models", "absent.yaml"], tmp_path, stdin='"x" -S2\n!models\n')
    assert result.returncode == 2 and result.stderr.strip() == "invoke-repl: --models absent.yaml: no such file"


def test_a_device_or_a_folder_as_the_script_is_a_one_line_start_up_error(tmp_path: Path) -> None:
    """`--from-file /dev/zero` read an endless file whole: a MemoryError traceback, or all of the RAM."""
    (tmp_path / "scripts").mkdir()
    for script, why in (("/dev/zero", "it is a device, not a file of commands"), ("scripts", "it is a folder")):
        result = run_cli(["--from-file", script, "--no-progress"], tmp_path, timeout=60)
        assert result.returncode == 2 and result.stderr.strip() == f"invoke-repl: cannot read {script}: {why}"


def test_a_script_reports_an_unusable_catalogue_once_per_line_in_the_line_format(tmp_path: Path) -> None:
    """The background load announced it as well, a bare line before the first `line N: …` saying the same."""
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    result = run_cli(["--models", "empty.yaml", "--no-progress"], tmp_path, stdin='"x" -S2\n"y" -S2\n')
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"line {n}: ") for n, line in enumerate(lines, 1)), lines


def test_an_outdir_with_a_control_character_is_refused_at_start(tmp_path: Path) -> None:
    """It split every printed `[N] PATH: …` line in two, and the log named a folder that does not exist."""
    done = run_cli(["-o", str(tmp_path / "out\nnl")], tmp_path, stdin='"x" --steps 1 --seed 1\n')
    assert done.returncode == 2 and not (tmp_path / "out\nnl").exists()
    assert done.stderr.count("\n") == 1 and "control character '\\n'" in done.stderr


def test_a_script_of_catalogue_commands_never_imports_torch(tmp_path: Path) -> None:
    """`!models`, `!edit_model`, `!del_model` imported torch and loaded the default model in full (about 10 s
    for `!models` alone), for a script that makes no picture."""
    catalogue = tiny_catalogue(tmp_path)
    script = "!models\n!edit_model tiny-random description=renamed\n!models\n!del_model tiny-random\n!models\n"
    result = _run_probing_torch(["--outdir", "D", "--models", str(catalogue)], tmp_path, script)
    assert "NO-TORCH 0" in result.stderr, result.stderr
    assert result.stdout.startswith("* tiny-random")  # the default is marked active before any load, as it was
    assert "renamed" in result.stdout and "updated model tiny-random" in result.stdout
    assert "removed tiny-random from the catalogue" in result.stdout


def test_from_file_dash_reads_the_commands_from_stdin(tmp_path: Path) -> None:
    tiny_catalogue(tmp_path)
    done = run_cli(["--from-file", "-", "--outdir", "D", "--no-progress"], tmp_path, stdin="!dialect legacy\n")
    assert done.returncode == 0 and done.stdout == "dialect: legacy\n", done.stderr


def test_fetch_works_under_a_device_that_is_not_there(workdir: Path) -> None:
    """With `--device cuda` on a machine without one, `!fetch` after `!models` failed with the device's error:
    it asked the manager for its device, which is found only when a model loads."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    made = run_cli(["--outdir", "D", "--no-progress"], workdir, stdin='"a fox" --steps 1 --seed 7\n')
    assert made.returncode == 0, made.stderr
    png = workdir / "D" / "000001.7.png"
    fetched = run_cli(["--device", "cuda", "--outdir", "D"], workdir, stdin=f"!models\n!fetch {png}\n")
    assert fetched.returncode == 0, fetched.stderr
    assert '"a fox" --steps 1 --seed 7' in fetched.stdout
