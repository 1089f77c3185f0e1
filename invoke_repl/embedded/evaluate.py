"""Evaluate the embedded model on held-out prompts: ``python -m invoke_repl.embedded.evaluate``.

Checks (each over held-out prompts x 8 seeds unless noted):
  object colour  the named colour covers >= 5 % of pixels and is the most common colour other than the background
  background     the most common palette colour is the named background colour
  shape          a small classifier trained only on the procedural world (on the object-colour mask) agrees
  position       (prompts with a position) the object's centroid lies in the named part of the image
  img2img        PSNR to the init image at strengths 0.2..0.8 (should fall monotonically; >= 22 dB at 0.3)
  fire           ``fire`` on the crude fireplace drawing at strengths 0.4 / 0.7: orange+yellow dominate FLAME_BOX
  speed          seconds for a 10-step txt2img at native size with CFG

The image maker is ``render`` below -- the single function to swap for the project's own generator.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from . import world

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE / "model"
DEFAULT_WORK = HERE.parent.parent / ".train"
SEEDS = tuple(range(8))

# ------------------------------------------------------------------------------------------------- generation
_PIPES: dict = {}


def _pipes(model_dir):
    key = str(model_dir)
    if key not in _PIPES:
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

        t2i = StableDiffusionPipeline.from_pretrained(key, torch_dtype=torch.float32, safety_checker=None)
        t2i.set_progress_bar_config(disable=True)
        i2i = StableDiffusionImg2ImgPipeline(**t2i.components)
        i2i.set_progress_bar_config(disable=True)
        _PIPES[key] = (t2i, i2i)
    return _PIPES[key]


def _scheduler_for(sampler: str, config):
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        HeunDiscreteScheduler,
        LMSDiscreteScheduler,
        PNDMScheduler,
    )

    table = {
        "ddim": DDIMScheduler,
        "plms": PNDMScheduler,
        "k_lms": LMSDiscreteScheduler,
        "k_euler": EulerDiscreteScheduler,
        "k_euler_a": EulerAncestralDiscreteScheduler,
        "k_heun": HeunDiscreteScheduler,
        "k_dpmpp_2": DPMSolverMultistepScheduler,
    }
    return table[sampler].from_config(config)


def render(
    model_dir,
    prompt: str,
    seed: int,
    steps: int,
    init_image: Image.Image | None = None,
    strength: float | None = None,
    sampler: str = "k_lms",
    cfg_scale: float = 7.5,
) -> Image.Image:
    """Make one image. This is the pluggable generation function (diffusers pipelines for now)."""
    t2i, i2i = _pipes(model_dir)
    pipe = t2i if init_image is None else i2i
    pipe.scheduler = _scheduler_for(sampler, t2i.scheduler.config)
    g = torch.Generator().manual_seed(seed)
    if init_image is None:
        factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        size = pipe.unet.config.sample_size * factor
        return pipe(
            prompt, num_inference_steps=steps, guidance_scale=cfg_scale, height=size, width=size, generator=g
        ).images[0]
    return pipe(
        prompt, image=init_image, strength=strength, num_inference_steps=steps, guidance_scale=cfg_scale, generator=g
    ).images[0]


# ---------------------------------------------------------------------------------------------- measurements
def colour_stats(img: Image.Image) -> tuple[list[str], np.ndarray, np.ndarray]:
    names, cls = world.classify_pixels(img)
    frac = np.bincount(cls.ravel(), minlength=len(names)) / cls.size
    return names, cls, frac


def check_colours(img: Image.Image, obj_colour: str, bg: str) -> tuple[bool, bool]:
    names, _, frac = colour_stats(img)
    bg_ok = names[int(frac.argmax())] == bg
    rest = frac.copy()
    rest[names.index(bg)] = -1
    obj_ok = frac[names.index(obj_colour)] >= 0.05 and names[int(rest.argmax())] == obj_colour
    return obj_ok, bg_ok


def object_mask(img: Image.Image, colour: str) -> np.ndarray:
    names, cls = world.classify_pixels(img)
    return cls == names.index(colour)


def mask_to_input(mask: np.ndarray, size: int = 32) -> np.ndarray:
    """Crop a mask to its (robust) bounding box, pad to square, resize: position- and scale-invariant input."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 4:
        return np.zeros((size, size), np.float32)
    x0, x1 = np.percentile(xs, [1, 99]).astype(int)
    y0, y1 = np.percentile(ys, [1, 99]).astype(int)
    side = max(x1 - x0, y1 - y0) + 3
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    big = np.zeros((mask.shape[0] + 2 * side, mask.shape[1] + 2 * side), np.uint8)
    big[side : side + mask.shape[0], side : side + mask.shape[1]] = mask
    bx0, by0 = int(round(cx - side / 2)) + side, int(round(cy - side / 2)) + side
    crop = big[by0 : by0 + side, bx0 : bx0 + side] * 255
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR), np.float32) / 255


class ShapeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.c3 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, len(world.SHAPES))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        x = F.max_pool2d(F.relu(self.c3(x)), 2)
        return self.fc(x.flatten(1))


def _classifier_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    import random

    r = random.Random(seed)
    xs, ys = [], []
    for i in range(n):
        bg = r.choice(world.COLOURS)
        c = r.choice([k for k in world.COLOURS if k != bg])
        s = r.randrange(len(world.SHAPES))
        scene = world.Scene(
            "object", (world.Obj(c, world.SHAPES[s], r.choice(world.SIZES), r.choice((None,) + world.POSITIONS)),), bg
        )
        img = world.render(scene, 10_000_000 + i)
        # degrade like a generated image: noise, blur
        a = np.asarray(img, np.float32) + rng.normal(0, r.uniform(0, 40), (64, 64, 3))
        img = Image.fromarray(a.clip(0, 255).astype(np.uint8))
        if r.random() < 0.5:
            from PIL import ImageFilter

            img = img.filter(ImageFilter.GaussianBlur(r.uniform(0.3, 1.2)))
        xs.append(mask_to_input(object_mask(img, c)))
        ys.append(s)
    return torch.tensor(np.stack(xs))[:, None], torch.tensor(ys)


def shape_classifier(work: Path = DEFAULT_WORK) -> ShapeNet:
    """The shape classifier, trained only on the procedural world (~1 min, cached under the work folder)."""
    path = Path(work) / "shape_classifier.pt"
    net = ShapeNet()
    if path.exists():
        net.load_state_dict(torch.load(path))
        return net.eval()
    torch.manual_seed(0)
    x, y = _classifier_data(6000, 0)
    xv, yv = _classifier_data(800, 1)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for _epoch in range(8):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            b = perm[i : i + 64]
            loss = F.cross_entropy(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(xv).argmax(1) == yv).float().mean().item()
    print(f"shape classifier: validation accuracy on world renders {acc:.3f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return net


def classify_shape(net: ShapeNet, img: Image.Image, colour: str) -> str | None:
    """The shape of the `colour` region, or None when that colour covers under 1 % of the image (counts wrong)."""
    mask = object_mask(img, colour)
    if mask.mean() < 0.01:
        return None
    x = torch.tensor(mask_to_input(mask))[None, None]
    with torch.no_grad():
        return world.SHAPES[int(net(x).argmax())]


def check_position(img: Image.Image, colour: str, position: str | None) -> bool:
    m = object_mask(img, colour)
    if m.sum() < 8:
        return False
    ys, xs = np.nonzero(m)
    cx, cy = xs.mean() / m.shape[1], ys.mean() / m.shape[0]
    return {
        None: abs(cx - 0.5) < 0.12 and abs(cy - 0.5) < 0.12,
        "on the left": cx < 0.42,
        "on the right": cx > 0.58,
        "at the top": cy < 0.42,
        "at the bottom": cy > 0.58,
    }[position]


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), np.float64)
    y = np.asarray(b.convert("RGB").resize(a.size), np.float64)
    mse = ((x - y) ** 2).mean()
    return 99.0 if mse == 0 else 10 * math.log10(255**2 / mse)


def fire_fraction(img: Image.Image) -> tuple[float, bool]:
    """Fraction of FLAME_BOX pixels that are orange or yellow, and whether orange+yellow dominate the box."""
    names, cls = world.classify_pixels(img)
    w, h = img.size
    x0, y0, x1, y1 = world.FLAME_BOX
    box = cls[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)]
    frac = np.bincount(box.ravel(), minlength=len(names)) / box.size
    oy = frac[names.index("orange")] + frac[names.index("yellow")]
    others = [frac[i] for i, n in enumerate(names) if n not in ("orange", "yellow")]
    return float(oy), bool(oy >= 0.3 and oy > max(others))


# ---------------------------------------------------------------------------------------------------- driver
def evaluate(
    model_dir=DEFAULT_MODEL,
    steps: int = 25,
    seeds=SEEDS,
    sampler: str = "k_lms",
    out_dir: Path | None = None,
    work: Path = DEFAULT_WORK,
    cfg_scale: float = 7.5,
) -> dict:
    net = shape_classifier(work)
    rows = []
    grid = []
    for prompt in world.held_out_prompts():
        sc = world.parse_caption(prompt)
        o = sc.objects[0]
        res = {"prompt": prompt, "obj": 0, "bg": 0, "shape": 0, "pos": 0, "n": 0, "pos_n": 0}
        for seed in seeds:
            img = render(model_dir, prompt, seed, steps, sampler=sampler, cfg_scale=cfg_scale)
            grid.append(img)
            obj_ok, bg_ok = check_colours(img, o.colour, sc.background)
            res["obj"] += obj_ok
            res["bg"] += bg_ok
            res["shape"] += classify_shape(net, img, o.colour) == o.shape
            if o.position:
                res["pos"] += check_position(img, o.colour, o.position)
                res["pos_n"] += 1
            res["n"] += 1
        rows.append(res)
        print(
            f"{prompt:55s} obj {res['obj']}/{res['n']} bg {res['bg']}/{res['n']} shape {res['shape']}/{res['n']}"
            + (f" pos {res['pos']}/{res['pos_n']}" if res["pos_n"] else ""),
            flush=True,
        )
    tot = {k: sum(r[k] for r in rows) for k in ("obj", "bg", "shape", "pos", "n", "pos_n")}

    # img2img: PSNR to init, world renders of held-out prompts as init images
    strengths = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    inits = [(p, world.render(world.parse_caption(p), 500 + k)) for k, p in enumerate(world.held_out_prompts()[::4])]
    ps = {s: [] for s in strengths}
    for p, init in inits:
        for s in strengths:
            for seed in seeds[:2]:
                ps[s].append(
                    psnr(
                        init,
                        render(
                            model_dir, p, seed, steps, init_image=init, strength=s, sampler=sampler, cfg_scale=cfg_scale
                        ),
                    )
                )
    psnr_mean = {s: float(np.mean(v)) for s, v in ps.items()}
    vals = [psnr_mean[s] for s in strengths]
    monotone = all(a > b for a, b in zip(vals, vals[1:], strict=False))

    # fire on the crude drawing
    drawing = world.fire_drawing()
    fire = {}
    fire_imgs = []
    for s in (0.4, 0.7):
        fr = [
            fire_fraction(im)
            for im in (
                render(
                    model_dir, "fire", seed, steps, init_image=drawing, strength=s, sampler=sampler, cfg_scale=cfg_scale
                )
                for seed in seeds
            )
        ]
        fire[s] = {
            "orange_yellow_frac": float(np.mean([f for f, _ in fr])),
            "dominated": sum(ok for _, ok in fr),
            "n": len(fr),
        }

    for seed in seeds[:4]:
        for s in (0.4, 0.7):
            fire_imgs.append(
                render(
                    model_dir, "fire", seed, steps, init_image=drawing, strength=s, sampler=sampler, cfg_scale=cfg_scale
                )
            )
    # speed: 10-step txt2img at native size with CFG
    render(model_dir, "a red circle on a blue background", 0, 10, sampler=sampler)
    times = []
    for k in range(5):
        t = time.perf_counter()
        render(model_dir, "a red circle on a blue background", k, 10, sampler=sampler)
        times.append(time.perf_counter() - t)

    summary = {
        "steps": steps,
        "sampler": sampler,
        "cfg_scale": cfg_scale,
        "seeds": len(seeds),
        "threads": torch.get_num_threads(),
        "object_colour": tot["obj"] / tot["n"],
        "background_colour": tot["bg"] / tot["n"],
        "shape": tot["shape"] / tot["n"],
        "position": tot["pos"] / max(1, tot["pos_n"]),
        "n_images": tot["n"],
        "n_position_images": tot["pos_n"],
        "img2img_psnr": {str(s): round(v, 2) for s, v in psnr_mean.items()},
        "img2img_monotone": monotone,
        "fire": {str(s): v for s, v in fire.items()},
        "txt2img_10step_seconds_median": float(np.median(times)),
        "rows": rows,
    }
    if out_dir:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        n = len(seeds)
        g = Image.new("RGB", (64 * n, 64 * (len(grid) // n)))
        for i, im in enumerate(grid):
            g.paste(im.resize((64, 64)), ((i % n) * 64, (i // n) * 64))
        g.save(out_dir / "held_out_grid.png")
        f = Image.new("RGB", (64 * (len(fire_imgs) + 1), 64))
        f.paste(drawing, (0, 0))
        for i, im in enumerate(fire_imgs):
            f.paste(im.resize((64, 64)), (64 * (i + 1), 0))
        f.save(out_dir / "fire_img2img.png")
        (out_dir / "evaluation.json").write_text(json.dumps(summary, indent=2, default=_plain))
    return summary


def _plain(o):
    return o.item() if hasattr(o, "item") else str(o)


def print_table(s: dict) -> None:
    def row(name, val, target, ok):
        print(f"| {name:42s} | {val:>14s} | {target:>10s} | {'pass' if ok else 'FAIL':4s} |")

    print(
        f"\nheld-out prompts x {s['seeds']} seeds = {s['n_images']} images, {s['steps']} steps {s['sampler']}, "
        f"CFG {s['cfg_scale']}"
    )
    print(f"| {'check':42s} | {'measured':>14s} | {'target':>10s} | ok   |")
    print(f"|{'-' * 44}|{'-' * 16}|{'-' * 12}|------|")
    row("object colour right", f"{s['object_colour']:.1%}", ">= 90%", s["object_colour"] >= 0.9)
    row("background colour right", f"{s['background_colour']:.1%}", ">= 90%", s["background_colour"] >= 0.9)
    row("shape right (world-trained classifier)", f"{s['shape']:.1%}", ">= 70%", s["shape"] >= 0.7)
    row(f"position right ({s['n_position_images']} images)", f"{s['position']:.1%}", ">= 80%", s["position"] >= 0.8)
    p = s["img2img_psnr"]
    row("img2img PSNR monotone 0.2->0.8", " > ".join(f"{v:.1f}" for v in p.values()), "falling", s["img2img_monotone"])
    row("img2img PSNR at strength 0.3", f"{p['0.3']:.2f} dB", ">= 22 dB", p["0.3"] >= 22)
    for k, v in s["fire"].items():
        row(
            f"fire on drawing @{k}: orange+yellow dominate",
            f"{v['dominated']}/{v['n']} ({v['orange_yellow_frac']:.0%})",
            "majority",
            v["dominated"] * 2 > v["n"],
        )
    row(
        "10-step txt2img with CFG, seconds",
        f"{s['txt2img_10step_seconds_median']:.3f}",
        "<= 0.5",
        s["txt2img_10step_seconds_median"] <= 0.5,
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--sampler", default="k_lms")
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--out", type=Path, default=DEFAULT_WORK / "eval")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = evaluate(args.model, args.steps, tuple(range(args.seeds)), args.sampler, args.out, cfg_scale=args.cfg)
    print_table(s)
    print(f"(images and evaluation.json under {args.out})")


if __name__ == "__main__":
    main()
