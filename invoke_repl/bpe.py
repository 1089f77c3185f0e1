"""The byte-level alphabet CLIP's BPE is defined over, shared by the tokenizer derivation and the embedded model."""

from __future__ import annotations


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map: printable Latin-1 bytes map to themselves, the other
    bytes to code points from 256 upward, so every byte sequence is a string of visible characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))
