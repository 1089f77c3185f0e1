"""Rebuild CLIP's BPE tokenizer files offline from the vocabulary that a PyPI wheel ships.

Model hubs are out of reach here and for many users, yet every SD 1.x/2.x checkpoint needs the CLIP tokenizer.
The `open_clip_torch` wheel carries the original BPE merge list (`open_clip/bpe_simple_vocab_16e6.txt.gz`); the
Hugging Face `vocab.json`/`merges.txt` pair is a pure function of it:

    vocab = 256 byte characters, the same 256 with `</w>`, the first 48,894 merges joined,
            then `<|startoftext|>` and `<|endoftext|>`            (49,408 entries)
    merges.txt = "#version: 0.2" + those 48,894 merges

Run, with invoke-repl installed:
    pip download --no-deps open_clip_torch -d /tmp/w
    python configs/clip-tokenizer/derive.py /tmp/w/*.whl
The wheel's version and the gz file's sha256 are written to SOURCE.txt so the derivation can be checked.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
import zipfile
from pathlib import Path

from invoke_repl.bpe import bytes_to_unicode

HERE = Path(__file__).resolve().parent
MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # the count CLIP's own tokenizer keeps; gives a 49,408 vocabulary


def derive(wheel: Path, out: Path = HERE) -> None:
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(MEMBER)
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    assert len(merges) == N_MERGES and all(len(m) == 2 for m in merges)
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    version = wheel.name.split("-")[1]
    (out / "SOURCE.txt").write_text(
        f"wheel: {wheel.name}\nopen_clip_torch version: {version}\nmember: {MEMBER}\n"
        f"member sha256: {hashlib.sha256(raw).hexdigest()}\nvocab size: {len(vocab)}\nmerges: {len(merges)}\n"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: derive.py open_clip_torch-*.whl")
    derive(Path(sys.argv[1]))
