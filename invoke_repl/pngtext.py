"""The text chunks of a PNG file, read by walking its chunks rather than through Pillow.

Pillow reads every text chunk when it opens a PNG and refuses the file when any one decompresses past 1 MiB
(`PngImagePlugin.MAX_TEXT_CHUNK`): a ComfyUI or InvokeAI workflow chunk of 2.4 MB made the whole image unreadable,
both for `!fetch` and as an init image, although the metadata invoke-repl wants is a few kB. It also refuses to open
an image over its pixel limit (178 M pixels) whose text chunks need no decoding at all, reports a bad checksum in any
chunk as "not a PNG", and finds chunks after the pixel data only by decoding the pixels. Walking the chunks (the
format is a signature, then length, type, data and CRC-32 per chunk: PNG specification, section 5) reads only the
chunks asked for, bounded, and leaves the pixels alone.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["SIGNATURE", "PngTextError", "read_text_chunks", "without_text_chunks"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_TYPES = (b"tEXt", b"zTXt", b"iTXt")
# One chunk's text after decompression; invoke-repl's own metadata is a few kB (a prompt is capped at 10,000
# characters), and a workflow graph a few MB. A zTXt of a few kB can inflate to gigabytes, so the bound stays.
MAX_TEXT_BYTES = 16 * 2**20
_KEYWORD_MAX = 80  # PNG keywords are 1-79 bytes, then a NUL (section 11.3.4.2)


class PngTextError(ValueError):
    """A chunk asked for cannot be read; the message is one line, without the file's name."""


def _chunks(stream: BinaryIO) -> Iterator[tuple[bytes, int, int]]:
    """(type, data length, data offset) of each whole chunk header after the signature, until IEND or the end of a
    truncated file; the stream is left at the chunk's data."""
    while True:
        header = stream.read(8)
        if len(header) < 8:
            return
        length, kind = struct.unpack(">I4s", header)
        if length > 2**31 - 1:  # the specification's bound; anything above is a damaged length field
            raise PngTextError(f"damaged PNG: a {kind!r} chunk claims {length:,} bytes")
        start = stream.tell()
        yield kind, length, start
        if kind == b"IEND":
            return
        stream.seek(start + length + 4)  # past the data and its CRC


def _inflate(data: bytes, keyword: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_TEXT_BYTES + 1)
    except zlib.error as exc:
        raise PngTextError(f"damaged PNG: its {keyword} chunk does not decompress ({exc})") from None
    if len(out) > MAX_TEXT_BYTES:
        raise PngTextError(f"its {keyword} chunk is over {MAX_TEXT_BYTES // 2**20} MiB of text")
    return out


def _decode(kind: bytes, body: bytes, keyword: str) -> str | None:
    """The chunk's text (None for a compression method or layout this reader does not know: the chunk is skipped
    as Pillow skips it)."""
    if kind == b"tEXt":
        return body.decode("latin-1")
    if kind == b"zTXt":
        if not body or body[0] != 0:
            return None
        return _inflate(body[1:], keyword).decode("latin-1")
    # iTXt: compression flag, method, language tag NUL, translated keyword NUL, UTF-8 text
    if len(body) < 2:
        return None
    compressed, method = body[0], body[1]
    rest = body[2:].split(b"\0", 2)
    if len(rest) != 3:
        return None
    text = rest[2]
    if compressed:
        if method != 0:
            return None
        text = _inflate(text, keyword)
    return text.decode("utf-8", errors="replace")


def read_text_chunks(path: Path, keys: Collection[str]) -> dict[str, str]:
    """The text of the chunks named `keys` (the first of each), reading nothing else.

    A chunk asked for that is damaged (bad CRC, does not decompress, too large) is left out, so another one can
    serve; when none is left, its damage is the error. Raises PngTextError for that and when the file is not a PNG
    (the message is "not a PNG"); OSError as reading does. A file cut short gives what came before the cut."""
    found: dict[str, str] = {}
    damage: list[str] = []
    wanted = {key.encode("latin-1") for key in keys}
    with open(path, "rb") as stream:
        if stream.read(len(SIGNATURE)) != SIGNATURE:
            raise PngTextError("not a PNG")
        for kind, length, start in _chunks(stream):
            if kind not in TEXT_TYPES:
                continue
            head = stream.read(min(length, _KEYWORD_MAX))
            keyword_bytes, nul, _ = head.partition(b"\0")
            if not nul or keyword_bytes not in wanted or keyword_bytes.decode("latin-1") in found:
                continue
            keyword = keyword_bytes.decode("latin-1")
            if length > MAX_TEXT_BYTES:
                damage.append(f"its {keyword} chunk is over {MAX_TEXT_BYTES // 2**20} MiB")
                continue
            stream.seek(start)
            data = stream.read(length)
            crc = stream.read(4)
            if len(data) < length or len(crc) < 4:
                break  # cut off inside this chunk: what came before is all there is
            if zlib.crc32(kind + data) != struct.unpack(">I", crc)[0]:
                damage.append(f"damaged PNG: its {keyword} chunk fails its checksum")
                continue
            try:
                text = _decode(kind, data[len(keyword_bytes) + 1 :], keyword)
            except PngTextError as exc:
                damage.append(str(exc))
                continue
            if text is not None:
                found[keyword] = text
    if not found and damage:
        raise PngTextError(damage[0])
    return found


def without_text_chunks(data: bytes) -> bytes:
    """The PNG `data` with every text chunk left out (the pixels and everything else as they were), for handing
    an image whose metadata Pillow refuses to Pillow."""
    import io

    stream = io.BytesIO(data)
    if stream.read(len(SIGNATURE)) != SIGNATURE:
        return data
    kept = [SIGNATURE]
    for kind, length, start in _chunks(stream):
        if kind not in TEXT_TYPES:
            kept.append(data[start - 8 : start + length + 4])
    return b"".join(kept)
