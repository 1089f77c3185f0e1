"""Remake the README's example pictures: ``python -m invoke_repl.embedded.examples``.

The lines run through the real command line (a child ``python -m invoke_repl`` reading them on stdin, the shipped
catalogue's default model), so the pictures are exactly what a user gets for the same lines. Seeds were fixed
before the model was trained, not picked from its outputs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "examples"
DRAWING = HERE / "fire-drawing.png"

# (file stem, line). Each line makes one image (and a strip with --save-steps), numbered in order.
LINES: tuple[tuple[str, str], ...] = (
    ("red-circle", "a red circle on a blue background --seed 1"),
    ("yellow-star", "a small yellow star at the top on a purple background --seed 2"),
    ("two-objects", "a green square and a white circle on a black background --seed 3"),
    ("fire-0.4", f'"fire" -S10 -s0.4 -I {DRAWING.name} -A k_lms --seed 1592514025 --save-steps'),
    ("fire-0.7", f'"fire" -S10 -s0.7 -I {DRAWING.name} -A k_lms --seed 1592514025 --save-steps'),
)


def make(out: Path = OUT) -> list[Path]:
    """Run every line in one session and copy its image (and step strip) to `out` under a stable name."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copy(DRAWING, work / DRAWING.name)
        from invoke_repl.paths import shipped_catalogue

        env = dict(os.environ, PYTHONPATH=str(HERE.parent.parent), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        script = "".join(line + "\n" for _, line in LINES)
        done = subprocess.run(
            [sys.executable, "-m", "invoke_repl", "--models", str(shipped_catalogue()), "--outdir", "D"],
            input=script,
            text=True,
            capture_output=True,
            cwd=work,
            env=env,
            check=False,
        )
        print(done.stdout, end="")
        if done.returncode != 0:
            raise SystemExit(f"invoke-repl failed ({done.returncode}):\n{done.stderr}")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for k, (stem, _line) in enumerate(LINES, start=1):
            (image,) = [p for p in (work / "D").glob(f"{k:06d}.*.png") if p.name.count(".") == 2]
            written.append(Path(shutil.copy(image, out / f"{stem}.png")))
            strips = list((work / "D").glob(f"{k:06d}.*.steps.png"))
            if strips:
                written.append(Path(shutil.copy(strips[0], out / f"{stem}.steps.png")))
        return written


def default_out(here: Path = HERE) -> Path:
    """In a checkout the pictures are the README's own; an installed copy writes to the working directory, never
    into site-packages (files pip did not install there would outlive an uninstall)."""
    return here / "examples" if (here.parent.parent / "pyproject.toml").is_file() else Path("invoke-repl-examples")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = default_out()
    ap.add_argument("--out", type=Path, default=default, help=f"where the pictures go (default: {default})")
    args = ap.parse_args(argv)
    for path in make(args.out):
        print(path)


if __name__ == "__main__":
    main()
