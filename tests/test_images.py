"""Init-image loading: every Pillow mode to upright 8-bit RGB, and one-line errors naming the path."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from invoke_repl.images import InitImageError, load_init_image


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_images_module_does_not_import_torch():
    import subprocess

    code = "import sys, invoke_repl.images; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.png", "not found"),
        (lambda d: d, "directory"),
        (lambda d: (d / "notes.png").write_text("not an image") and d / "notes.png", "not an image"),
    ],
)
def test_bad_paths_raise_init_image_error_naming_the_path(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(InitImageError, match=message) as err:
        load_init_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_an_init_image_error(tmp_path, fmt):
    rng = np.random.default_rng(0)
    path = _save(Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)), tmp_path / f"t.{fmt}", format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InitImageError) as err:
        load_init_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_decompression_bomb_limit_is_a_clear_error(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (64, 64)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px: over 1x (warning) and 2x (error) the limit
    with pytest.raises(InitImageError, match="too large") as err:
        load_init_image(path)
    assert str(path) in str(err.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # between 1x and 2x: Pillow only warns; still refused
    with pytest.raises(InitImageError, match="too large"):
        load_init_image(path)


def test_alpha_is_composited_over_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    for mode in ("RGBA", "LA"):
        image = load_init_image(_save(rgba.convert(mode), tmp_path / f"{mode}.png"))
        assert image.mode == "RGB" and image.getpixel((1, 1)) == (255, 255, 255)
    assert load_init_image(tmp_path / "RGBA.png").getpixel((0, 0)) == (0, 0, 255)
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    palette.putpixel((0, 0), 0)
    image = load_init_image(_save(palette, tmp_path / "p.png", transparency=0))
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((1, 1)) == (10, 200, 10)
    gif = load_init_image(_save(palette, tmp_path / "p.gif", transparency=0))
    assert gif.getpixel((0, 0)) == (255, 255, 255)


def test_modes_become_rgb(tmp_path):
    assert load_init_image(_save(Image.new("L", (4, 4), 77), tmp_path / "l.png")).getpixel((0, 0)) == (77, 77, 77)
    assert load_init_image(_save(Image.new("1", (4, 4), 1), tmp_path / "1.png")).getpixel((0, 0)) == (255,) * 3
    cmyk = load_init_image(_save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=100))
    red = cmyk.getpixel((4, 4))
    assert cmyk.mode == "RGB" and red[0] > 200 and red[1] < 60 and red[2] < 60


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 128, 65535, 1000]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    image = load_init_image(path)
    assert [image.getpixel((x, 0))[0] for x in range(4)] == [0, 128, 255, 4]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert [load_init_image(_save(floats, tmp_path / "f.tiff")).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # white strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    loaded = load_init_image(_save(image, tmp_path / "phone.jpg", exif=exif, quality=95))
    assert loaded.size == (20, 40)
    assert loaded.getpixel((10, 3))[0] > 200 and loaded.getpixel((10, 36))[0] < 50  # the strip is now on top


def test_fifo_is_refused_without_blocking(tmp_path) -> None:
    import os

    from invoke_repl.images import InitImageError, load_init_image

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(InitImageError, match="not a regular file"):
        load_init_image(fifo)


def test_a_missing_fire_drawing_names_the_one_that_ships(tmp_path):
    """The README's walkthrough typed in the user's own folder, from an installed copy: the error says where the
    drawing is; any other missing file gets the plain message."""
    from invoke_repl.paths import fire_drawing

    with pytest.raises(InitImageError) as caught:
        load_init_image(tmp_path / "fire-drawing.png")
    assert str(caught.value) == (
        f"init image not found: {tmp_path / 'fire-drawing.png'} (the one that ships with invoke-repl is "
        f"{fire_drawing()})"
    )
    with pytest.raises(InitImageError, match=r"^init image not found: \S+other\.png$"):
        load_init_image(tmp_path / "other.png")
    assert np.asarray(load_init_image(fire_drawing())).shape[2] == 3


def test_an_image_with_a_workflow_chunk_over_pillows_text_limit_is_a_usable_init_image(tmp_path):
    """Pillow refuses the whole PNG for a text chunk over 1 MiB (a ComfyUI workflow), though img2img reads no text."""
    from tests.test_metadata import spliced, workflow_chunk

    rng = np.random.default_rng(1)
    picture = Image.fromarray((rng.random((24, 40, 3)) * 255).astype(np.uint8))
    path = _save(picture, tmp_path / "comfy.png")
    path.write_bytes(spliced(path.read_bytes(), workflow_chunk(2.4)))
    assert np.array_equal(np.asarray(load_init_image(path)), np.asarray(picture))


def test_a_link_that_loops_is_named_as_one_not_as_missing(tmp_path) -> None:
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    with pytest.raises(InitImageError, match="is a link that loops or leads nowhere"):
        load_init_image(tmp_path / "a.png")
