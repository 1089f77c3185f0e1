"""A procedural picture world: seeded (caption, PIL RGB image) pairs for the embedded model.

Pure PIL/numpy, deterministic per seed. Caption grammar (one of):

  single object   ``a [SIZE ]COLOUR SHAPE[ POSITION] on a COLOUR background``
                  SIZE in {small, large} (absent = medium), POSITION in {on the left, on the right, at the top,
                  at the bottom} (absent = centred). E.g. ``a small red circle on the left on a blue background``.
  two objects     ``a COLOUR SHAPE and a COLOUR SHAPE on a COLOUR background`` -- the first object is drawn on
                  the left half, the second on the right half, both medium-small.
  fire            ``fire`` (flames rising from the bottom on a dark or light ground, sometimes inside a crude
                  fireplace) and ``fire in a fireplace`` (always inside a fireplace).

An object's colour never equals its background colour. ``HELD_OUT`` colour/shape combinations never appear in the
training stream (``training_pairs``), in any object slot; ``held_out_prompts()`` lists evaluation prompts that use
them.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

NATIVE_SIZE = 64
_SS = 4  # supersampling factor for anti-aliased edges

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (245, 225, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 180),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOURS = tuple(PALETTE)
# Colours that appear in the world but are never named in captions (fireplace bricks, stones, soot, paper).
EXTRA_COLOURS: dict[str, tuple[int, int, int]] = {
    "brown": (120, 70, 35),
    "grey": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = ("small", "medium", "large")  # "medium" is never written in a caption
POSITIONS = ("on the left", "on the right", "at the top", "at the bottom")  # absent = centre
HELD_OUT: frozenset[tuple[str, str]] = frozenset({("purple", "star"), ("green", "triangle")})
FIRE_CAPTIONS = ("fire", "fire in a fireplace")

_SIZE_HALF = {"small": 0.14, "medium": 0.23, "large": 0.32}  # half-extent as a fraction of the image side
_POS_ALIASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}

# Every word the world's captions use (the tokenizer makes each one a single token).
WORDS = tuple(
    sorted(
        set(
            "a and on the at in of background left right top bottom small large fire fireplace".split()
            + list(COLOURS)
            + list(SHAPES)
        )
    )
)


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    size: str = "medium"
    position: str | None = None  # one of POSITIONS, None = centre


@dataclass(frozen=True)
class Scene:
    kind: str  # "object", "two", "fire"
    objects: tuple[Obj, ...] = ()
    background: str | None = None
    fireplace: bool = False
    caption_override: str | None = field(default=None, compare=False)

    @property
    def caption(self) -> str:
        if self.caption_override is not None:
            return self.caption_override
        return caption_of(self)


def _obj_phrase(o: Obj) -> str:
    size = "" if o.size == "medium" else o.size + " "
    return f"a {size}{o.colour} {o.shape}"


def caption_of(scene: Scene) -> str:
    if scene.kind == "fire":
        return "fire in a fireplace" if scene.fireplace else "fire"
    if scene.kind == "object":
        o = scene.objects[0]
        pos = f" {o.position}" if o.position else ""
        return f"{_obj_phrase(o)}{pos} on a {scene.background} background"
    a, b = scene.objects
    return f"{_obj_phrase(a)} and {_obj_phrase(b)} on a {scene.background} background"


_C = "|".join(COLOURS)
_S = "|".join(SHAPES)
_OBJ_RE = rf"a (?:(small|large) )?({_C}) ({_S})"
_SINGLE_RE = re.compile(rf"^{_OBJ_RE}(?: (on the left|on the right|at the top|at the bottom))? on a ({_C}) background$")
_TWO_RE = re.compile(rf"^{_OBJ_RE} and {_OBJ_RE} on a ({_C}) background$")


def parse_caption(caption: str) -> Scene:
    """Parse a world caption back into its attributes (raises ValueError for anything else)."""
    text = " ".join(caption.strip().lower().split())
    if text == "fire":
        return Scene("fire", fireplace=False)
    if text == "fire in a fireplace":
        return Scene("fire", fireplace=True)
    m = _SINGLE_RE.match(text)
    if m:
        size, colour, shape, pos, bg = m.groups()
        return Scene("object", (Obj(colour, shape, size or "medium", pos),), bg)
    m = _TWO_RE.match(text)
    if m:
        s1, c1, h1, s2, c2, h2, bg = m.groups()
        return Scene("two", (Obj(c1, h1, s1 or "medium"), Obj(c2, h2, s2 or "medium")), bg)
    raise ValueError(f"not a world caption: {caption!r}")


# ----------------------------------------------------------------------------------------------- sampling scenes
def _pick_colour(rng: random.Random, exclude=()) -> str:
    return rng.choice([c for c in COLOURS if c not in exclude])


def _pick_obj_cs(rng: random.Random, bg: str, allow_held_out: bool) -> tuple[str, str]:
    while True:
        c, s = _pick_colour(rng, (bg,)), rng.choice(SHAPES)
        if allow_held_out or (c, s) not in HELD_OUT:
            return c, s


def sample_scene(rng: random.Random, allow_held_out: bool = False) -> Scene:
    r = rng.random()
    if r < 0.10:
        return Scene("fire", fireplace=rng.random() < 0.5, caption_override="fire")
    if r < 0.15:
        return Scene("fire", fireplace=True)
    bg = _pick_colour(rng)
    if r < 0.33:
        c1, s1 = _pick_obj_cs(rng, bg, allow_held_out)
        c2, s2 = _pick_obj_cs(rng, bg, allow_held_out)
        size1 = rng.choice(("small", "medium"))
        size2 = rng.choice(("small", "medium"))
        return Scene("two", (Obj(c1, s1, size1), Obj(c2, s2, size2)), bg)
    c, s = _pick_obj_cs(rng, bg, allow_held_out)
    size = rng.choice(SIZES)
    pos = rng.choice((None, None) + POSITIONS)
    return Scene("object", (Obj(c, s, size, pos),), bg)


# ---------------------------------------------------------------------------------------------------- drawing
def _shape_points(shape: str, cx: float, cy: float, h: float, rot: float = 0.0):
    if shape == "square":
        h = h * 0.88
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        pts = []
        for k in range(3):
            a = -math.pi / 2 + rot + k * 2 * math.pi / 3
            pts.append((cx + 1.12 * h * math.cos(a), cy + 0.25 * h + 1.12 * h * math.sin(a)))
        return pts
    if shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + rot + k * math.pi / 5
            r = 1.1 * h if k % 2 == 0 else 0.5 * h
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        return pts
    raise ValueError(shape)


def _draw_obj(d: ImageDraw.ImageDraw, o: Obj, cx: float, cy: float, h: float, S: int):
    col = PALETTE[o.colour]
    if o.shape == "circle":
        d.ellipse([(cx - h) * S, (cy - h) * S, (cx + h) * S, (cy + h) * S], fill=col)
    else:
        d.polygon([(x * S, y * S) for x, y in _shape_points(o.shape, cx, cy, h)], fill=col)


def _place(o: Obj, rng: random.Random) -> tuple[float, float, float]:
    h = _SIZE_HALF[o.size] * rng.uniform(0.9, 1.1)
    j = lambda: rng.uniform(-0.04, 0.04)  # noqa: E731
    off = max(0.25, h + 0.04)
    cx, cy = 0.5 + j(), 0.5 + j()
    if o.position == "on the left":
        cx = off + j() * 0.5
    elif o.position == "on the right":
        cx = 1 - off + j() * 0.5
    elif o.position == "at the top":
        cy = off + j() * 0.5
    elif o.position == "at the bottom":
        cy = 1 - off + j() * 0.5
    return cx, cy, h


def _flames(d: ImageDraw.ImageDraw, rng: random.Random, x0: float, x1: float, base: float, top: float, S: int):
    """Flame tongues rising from `base` (image fractions), red outside, orange, yellow core."""
    n = rng.randint(3, 5)
    width = (x1 - x0) / n
    for _layer, (col, shrink) in enumerate(
        ((PALETTE["red"], 1.0), (PALETTE["orange"], 0.72), (PALETTE["yellow"], 0.42))
    ):
        for k in range(n):
            cx = x0 + (k + 0.5) * width + rng.uniform(-0.15, 0.15) * width
            hw = width * 0.75 * shrink
            ht = (base - top) * rng.uniform(0.65, 1.0) * (0.6 + 0.4 * shrink)
            tip = (cx + rng.uniform(-0.3, 0.3) * width, base - ht)
            pts = [
                (cx - hw, base),
                (cx - hw * 0.8, base - ht * 0.35),
                tip,
                (cx + hw * 0.8, base - ht * 0.35),
                (cx + hw, base),
            ]
            d.polygon([(x * S, y * S) for x, y in pts], fill=col)
        # a solid glowing bed under the tongues
        d.rectangle([x0 * S, (base - 0.04 * shrink) * S, x1 * S, base * S], fill=col)


# The fireplace geometry shared by the training images and the crude drawing: frame and opening boxes in image
# fractions (x0, y0, x1, y1). FLAME_BOX is where evaluation looks for the fire.
FIREPLACE_FRAME = (0.12, 0.22, 0.88, 0.95)
FIREPLACE_OPENING = (0.26, 0.42, 0.74, 0.95)
FLAME_BOX = (0.30, 0.55, 0.70, 0.92)


def _draw_fire(img_d: ImageDraw.ImageDraw, rng: random.Random, fireplace: bool, S: int, W: int):
    dark = (rng.randint(10, 30), rng.randint(5, 15), rng.randint(0, 10))
    if not fireplace:
        img_d.rectangle([0, 0, W * S, W * S], fill=dark)
        _flames(img_d, rng, 0.08, 0.92, 1.0, rng.uniform(0.2, 0.4), S)
        return
    wall = rng.choice([PALETTE["white"], (230, 220, 200), (200, 200, 210), EXTRA_COLOURS["grey"], (160, 150, 120)])
    img_d.rectangle([0, 0, W * S, W * S], fill=wall)
    frame = EXTRA_COLOURS["brown"] if rng.random() < 0.5 else EXTRA_COLOURS["grey"]
    if frame == wall:
        frame = EXTRA_COLOURS["brown"]
    jf = [v + rng.uniform(-0.03, 0.03) for v in FIREPLACE_FRAME]
    jo = [v + rng.uniform(-0.02, 0.02) for v in FIREPLACE_OPENING]
    jf[3] = jo[3] = 1.0 if rng.random() < 0.5 else jf[3]
    img_d.rectangle([jf[0] * S * W, jf[1] * S * W, jf[2] * S * W, jf[3] * S * W], fill=frame)
    # mantel
    img_d.rectangle(
        [(jf[0] - 0.05) * S * W, (jf[1] - 0.05) * S * W, (jf[2] + 0.05) * S * W, (jf[1] + 0.03) * S * W], fill=frame
    )
    img_d.rectangle([jo[0] * S * W, jo[1] * S * W, jo[2] * S * W, jo[3] * S * W], fill=dark)
    fx0, fx1 = jo[0] + 0.02, jo[2] - 0.02
    _flames_abs(img_d, rng, fx0, fx1, jo[3] - 0.02, jo[1] + 0.06, S * W)


def _flames_abs(d, rng, x0, x1, base, top, scale):
    _flames(d, rng, x0, x1, base, top, scale)


def _fire_ground(rng: random.Random) -> tuple[int, int, int]:
    """What bare flames burn in front of: usually the dark of night, sometimes a light ground (paper, snow, sky).

    Flames only ever seen on near-black taught the first models that "fire" means "dark picture"; then img2img of
    a light drawing at strength 0.4 had nowhere to go (0/8 orange in the flame box). Real pictures of fire come on
    all grounds, and so do these.
    """
    if rng.random() < 0.6:
        return (rng.randint(10, 30), rng.randint(5, 15), rng.randint(0, 10))
    v = rng.randint(195, 250)
    return (v, v - rng.randint(0, 14), v - rng.randint(0, 30))


def render(scene: Scene, seed: int, size: int = NATIVE_SIZE) -> Image.Image:
    """Draw a scene deterministically for a seed (jitter of positions/sizes/flames comes from the seed)."""
    rng = random.Random(seed * 7919 + 17)
    S = _SS * size
    img = Image.new("RGB", (S, S), PALETTE[scene.background] if scene.background else (0, 0, 0))
    d = ImageDraw.Draw(img)
    if scene.kind == "fire":
        if scene.fireplace:
            _draw_fire(d, rng, True, _SS, size)
        else:
            d.rectangle([0, 0, S, S], fill=_fire_ground(rng))
            _flames(d, rng, 0.05, 0.95, 1.0, rng.uniform(0.15, 0.4), S)
    elif scene.kind == "object":
        o = scene.objects[0]
        cx, cy, h = _place(o, rng)
        _draw_obj(d, o, cx, cy, h, S)
    else:
        for o, x in zip(scene.objects, (0.28, 0.72), strict=False):
            h = min(_SIZE_HALF[o.size], 0.18) * rng.uniform(0.9, 1.1)
            _draw_obj(d, o, x + rng.uniform(-0.03, 0.03), 0.5 + rng.uniform(-0.08, 0.08), h, S)
    return img.resize((size, size), Image.Resampling.BOX)


def make_pair(seed: int, size: int = NATIVE_SIZE, allow_held_out: bool = False) -> tuple[str, Image.Image]:
    """The (caption, image) pair for a seed. Deterministic."""
    rng = random.Random(seed)
    scene = sample_scene(rng, allow_held_out)
    return scene.caption, render(scene, seed, size)


def training_pairs(start_seed: int = 0, size: int = NATIVE_SIZE):
    """Endless stream of training pairs (held-out combinations never appear)."""
    s = start_seed
    while True:
        yield make_pair(s, size)
        s += 1


def scene_objects(caption: str) -> list[tuple[str, str]]:
    sc = parse_caption(caption)
    return [(o.colour, o.shape) for o in sc.objects]


# ---------------------------------------------------------------------------------------------------- evaluation
def held_out_prompts() -> list[str]:
    """Evaluation prompts built only from held-out colour/shape combinations."""
    prompts = []
    for (c, s), bgs in (
        (("purple", "star"), ("white", "yellow", "black", "green")),
        (("green", "triangle"), ("white", "blue", "black", "orange")),
    ):
        for bg in bgs:
            prompts.append(f"a {c} {s} on a {bg} background")
    prompts += [
        "a purple star on the left on a white background",
        "a purple star at the top on a orange background",
        "a green triangle on the right on a yellow background",
        "a green triangle at the bottom on a white background",
        "a large purple star on a blue background",
        "a green triangle on a red background",
    ]
    return prompts


def colour_array() -> tuple[list[str], np.ndarray]:
    names = list(PALETTE) + list(EXTRA_COLOURS)
    return names, np.array([PALETTE.get(n) or EXTRA_COLOURS[n] for n in names], dtype=np.float32)


def classify_pixels(img: Image.Image) -> tuple[list[str], np.ndarray]:
    """Nearest-palette class index per pixel (names list, HxW int array)."""
    names, cols = colour_array()
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    d = ((a[:, :, None, :] - cols[None, None]) ** 2).sum(-1)
    return names, d.argmin(-1)


# ------------------------------------------------------------------------------------------------ crude drawing
def fire_drawing(size: int = NATIVE_SIZE) -> Image.Image:
    """A crude fireplace drawing, like a child's: paper background, brown/grey outline, a few orange/red strokes."""
    rng = random.Random(1234)
    S = _SS * size
    img = Image.new("RGB", (S, S), (240, 236, 226))
    d = ImageDraw.Draw(img)
    w = max(2, int(0.035 * S))
    fx0, fy0, fx1, fy1 = [v * S for v in FIREPLACE_FRAME]
    ox0, oy0, ox1, oy1 = [v * S for v in FIREPLACE_OPENING]

    def wobbly(pts, col):
        q = [(x + rng.uniform(-0.012, 0.012) * S, y + rng.uniform(-0.012, 0.012) * S) for x, y in pts]
        d.line(q, fill=col, width=w, joint="curve")

    brown, grey = EXTRA_COLOURS["brown"], (110, 110, 110)
    wobbly([(fx0, fy1), (fx0, fy0), (fx1, fy0), (fx1, fy1)], brown)  # frame
    wobbly([(fx0 - 0.05 * S, fy0), (fx1 + 0.05 * S, fy0)], brown)  # mantel
    wobbly([(ox0, oy1), (ox0, oy0), (ox1, oy0), (ox1, oy1)], grey)  # opening
    wobbly([(fx0 - 0.03 * S, fy1), (fx1 + 0.03 * S, fy1)], grey)  # hearth
    # a few flame strokes
    for k, col in enumerate([(230, 60, 30), (240, 140, 30), (230, 60, 30), (240, 140, 30), (220, 40, 30)]):
        x = ox0 + (k + 0.7) * (ox1 - ox0) / 5.5
        top = oy0 + (0.3 + 0.25 * rng.random()) * (oy1 - oy0)
        wobbly(
            [(x - 0.03 * S, oy1 - 0.02 * S), (x + rng.uniform(-0.03, 0.03) * S, top), (x + 0.03 * S, oy1 - 0.02 * S)],
            col,
        )
    return img.resize((size, size), Image.Resampling.BOX)


if __name__ == "__main__":  # pragma: no cover - writes the shipped drawing
    from pathlib import Path

    out = Path(__file__).with_name("fire-drawing.png")
    fire_drawing().save(out)
    print(out)
