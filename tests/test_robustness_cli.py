"""Hostile init images and an unwritable log through a real scripted `python -m invoke_repl` run (issue 6).

One process runs every case of `tests.test_robustness._init_images`: the usable ones make an image, each unusable
one is one `line N:` error naming the file, the run goes on and exits 1; the log being a folder is a warning only.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from tests.clirun import run_cli, tiny_catalogue
from tests.test_robustness import _init_images


def test_init_images_and_unwritable_log_in_a_scripted_run(tmp_path: Path) -> None:
    tiny_catalogue(tmp_path)
    cases = list(_init_images(tmp_path).items())
    (tmp_path / "D" / "invoke_log.txt").mkdir(parents=True)  # the log cannot be written
    script = "".join(f'"{name}" -I "{path}" -S3 -s0.5 --seed {n} --fit\n' for n, (name, (path, _)) in enumerate(cases))
    script += "!dialect\n"
    result = run_cli(["--outdir", "D", "--no-progress"], tmp_path, stdin=script, timeout=240)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = {line.split(":", 1)[0]: line for line in result.stderr.splitlines() if line.startswith("line ")}
    for n, (name, (path, problem)) in enumerate(cases, start=1):
        if problem is None:
            assert f"line {n}" not in errors, errors.get(f"line {n}")
            (made,) = (tmp_path / "D").glob(f"*.{n - 1}.png")  # failed lines take no prefix
            with Image.open(made) as image:
                assert image.mode == "RGB"
        else:
            assert problem in errors[f"line {n}"] and str(path) in errors[f"line {n}"], (name, errors)
    usable = [case for case in cases if case[1][1] is None]
    assert result.stderr.count("warning: could not append to the log") == len(usable)
    assert len(list((tmp_path / "D").glob("*.png"))) == len(usable)
    assert "dialect: guide" in result.stdout  # the run went on to the last line
    assert not list((tmp_path / "D").glob(".invoke-*.tmp"))
