"""`python -m invoke_repl.bench`: invoke-repl against stock diffusers, side by side, same weights, same process.

Every scenario prints the device, both medians (of ≥ 3 timed runs after a warm-up) and the ratio stock/ours, so a
number > 1 means we are faster. `--json FILE` appends one JSON object per scenario so runs can be compared later.
Timings are reported, never asserted: tests must not flake on shared machines.

CPU scenarios use the embedded model (or `--model NAME` from the catalogue). GPU scenarios (run only when CUDA is
present, or with `--gpu`) build the SD 1.5 architecture with random weights from the local `configs/sd-1` configs —
the same compute as real weights, no download.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CPU_SCENARIOS = (
    "txt2img_k_lms",
    "txt2img_k_euler",
    "img2img_0.7",
    "sampler_overhead",
    "prompt_latency",
    "scripted_20",
)
GPU_SCENARIOS = (
    "gpu_txt2img_k_lms",
    "gpu_txt2img_k_euler",
    "gpu_img2img_0.7",
    "gpu_n4",
    "gpu_load_fp16_folder",
    "gpu_switch",
    "gpu_peak_memory",
    "gpu_cold_start",
)


@dataclass
class Result:
    scenario: str
    device: str
    ours_s: float | None
    stock_s: float | None
    unit: str = "s"
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.ours_s and self.stock_s:
            return self.stock_s / self.ours_s
        return None

    def line(self) -> str:
        ours = "-" if self.ours_s is None else f"{self.ours_s:.4f}"
        stock = "-" if self.stock_s is None else f"{self.stock_s:.4f}"
        ratio = "-" if self.ratio is None else f"{self.ratio:.2f}x"
        unit = self.unit
        head = f"{self.scenario:<26} {self.device:<30}"
        return f"{head} ours {ours:>9} {unit}  stock {stock:>9} {unit}  {ratio:>7}  {self.notes}"


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sync() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def process_seconds(args: list[str], stdin: str | None = None) -> float:
    """Wall time of one child process from start to exit (it must succeed): cold starts and whole scripts."""
    start = time.perf_counter()
    subprocess.run(args, input=stdin, text=True, check=True, capture_output=True)
    return time.perf_counter() - start


def device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu {platform.machine()} x{os.cpu_count()} ({torch.get_num_threads()} threads)"


# ------------------------------------------------------------------------------------------- the two stacks
def stock_pipeline(components: Any, sampler: str, img2img: bool = False) -> Any:
    """diffusers' own pipeline over the very same modules, with the stock scheduler class for `sampler`."""
    from diffusers import (
        EulerDiscreteScheduler,
        LMSDiscreteScheduler,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionPipeline,
    )

    scheduler_cls = {"k_lms": LMSDiscreteScheduler, "k_euler": EulerDiscreteScheduler}[sampler]
    cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
    pipe = cls(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=scheduler_cls.from_config(components.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ours(components: Any, line_request: Any, init_image: Any = None) -> Callable[[], Any]:
    from invoke_repl.generator import generate

    def run() -> Any:
        return list(generate(components, line_request, init_image=init_image, progress=False))

    return run


def stock(components: Any, request: Any, init_image: Any = None) -> Callable[[], Any]:
    import torch

    pipe = stock_pipeline(components, request.sampler, img2img=init_image is not None)
    width, height = components.native_size
    kwargs: dict[str, Any] = dict(
        prompt=request.prompt,
        num_inference_steps=request.steps,
        guidance_scale=request.cfg_scale if request.cfg_scale is not None else components.default_cfg,
        output_type="pil",
    )
    if init_image is None:
        kwargs.update(width=request.width or width, height=request.height or height)
    else:
        kwargs.update(image=init_image, strength=request.strength)

    def run() -> Any:
        return pipe(generator=torch.Generator().manual_seed(request.seed or 0), **kwargs).images

    return run


# ------------------------------------------------------------------------------------------- CPU scenarios
def load_model(name: str | None) -> Any:
    from invoke_repl.models import ModelManager, open_catalogue

    manager = ModelManager(open_catalogue(None), device="auto", precision="auto", max_loaded=1)
    return manager.get(name)


def bench_generation(components: Any, scenario: str, repeats: int) -> Result:
    from PIL import Image

    from invoke_repl.paths import PACKAGE_DIR
    from invoke_repl.request import Request

    steps = 10
    if scenario.startswith("img2img") or scenario.startswith("gpu_img2img"):
        init = Image.open(PACKAGE_DIR / "embedded" / "fire-drawing.png").convert("RGB").resize(components.native_size)
        request = Request(prompt="fire", steps=steps, seed=1592514025, sampler="k_lms", strength=0.7, init_img="x")
    else:
        init = None
        sampler = "k_euler" if scenario.endswith("k_euler") else "k_lms"
        request = Request(prompt="a red circle on a blue background", steps=steps, seed=1, sampler=sampler)
    if scenario.startswith("gpu_"):
        request = request.replace(steps=50, width=512, height=512)
        if init is not None:
            init = init.resize((512, 512))
    ours_s = median_time(ours(components, request, init), repeats)
    stock_s = median_time(stock(components, request, init), repeats)
    return Result(scenario, device_name(), ours_s, stock_s, notes=f"{request.steps} steps, {components.name}")


def bench_sampler_overhead(components: Any) -> list[Result]:
    """Per-step host overhead of every sampler (UNet left out): ours vs the stock diffusers class."""
    from invoke_repl.generator.samplers import SAMPLER_TABLE, step_overhead_ms

    results = []
    shape = (1, components.latent_channels, *(s // components.vae_scale_factor for s in components.native_size))
    for name, spec in SAMPLER_TABLE.items():
        ours_ms = step_overhead_ms(name, components.scheduler_config, steps=50, shape=shape)
        stock_ms = _stock_overhead_ms(spec, components.scheduler_config, shape)
        results.append(
            Result(f"step_overhead_{name}", device_name(), ours_ms, stock_ms, unit="ms", notes="per step, no UNet")
        )
    return results


def _stock_overhead_ms(spec: Any, scheduler_config: dict, shape: tuple[int, ...]) -> float:
    import torch
    from diffusers import LMSDiscreteScheduler

    from invoke_repl.generator.samplers import CachedLMSDiscreteScheduler, step_kwargs

    cls = LMSDiscreteScheduler if spec.cls is CachedLMSDiscreteScheduler else spec.cls
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(shape, generator=gen)
    scheduler = cls.from_config(scheduler_config, **spec.overrides)
    scheduler.set_timesteps(50)
    sample = torch.randn(shape, generator=gen) * scheduler.init_noise_sigma
    times = []
    for t in scheduler.timesteps:
        start = time.perf_counter()
        scheduler.scale_model_input(sample, t)
        sample = scheduler.step(eps, t, sample, return_dict=False, **step_kwargs(scheduler, gen))[0]
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def bench_prompt_latency(repeats: int) -> Result:
    """Process start → the `invoke>` prompt drawn, against a stock script's start → pipeline ready for a prompt."""
    import pty
    import select

    def ours_once() -> float:
        master, slave = pty.openpty()
        env = dict(os.environ, PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm")  # warm-up thread on, as a user runs it
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "invoke_repl", "--history-file", os.devnull],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
        )
        os.close(slave)
        seen = b""
        while b"invoke>" not in seen:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            seen += os.read(master, 4096)
        elapsed = time.perf_counter() - start
        proc.kill()
        proc.wait()
        os.close(master)
        return elapsed

    from invoke_repl.paths import embedded_model_dir

    stock_script = (
        "import torch\nfrom diffusers import StableDiffusionPipeline\n"
        f"StableDiffusionPipeline.from_pretrained({str(embedded_model_dir())!r}, torch_dtype=torch.float32,"
        " safety_checker=None)\n"
    )

    def stock_once() -> float:
        return process_seconds([sys.executable, "-c", stock_script])

    ours_s = statistics.median(ours_once() for _ in range(repeats))
    stock_s = statistics.median(stock_once() for _ in range(repeats))
    return Result("prompt_latency", device_name(), ours_s, stock_s, notes="start → prompt vs start → pipeline ready")


def bench_scripted(lines: int = 20) -> Result:
    """A 20-line scripted run through the real CLI, against a stock script doing the same 20 images."""
    prompts = [f"a red circle on a blue background --steps 10 --seed {k}" for k in range(lines)]
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp, "script.txt")
        script.write_text("\n".join(prompts) + "\n")
        ours_s = process_seconds(
            [sys.executable, "-m", "invoke_repl", "--from-file", str(script), "--outdir", tmp, "--no-progress"]
        )
        from invoke_repl.paths import embedded_model_dir

        stock_script = (
            "import torch\nfrom diffusers import StableDiffusionPipeline, LMSDiscreteScheduler\n"
            f"p = StableDiffusionPipeline.from_pretrained({str(embedded_model_dir())!r}, torch_dtype=torch.float32,"
            " safety_checker=None)\n"
            "p.scheduler = LMSDiscreteScheduler.from_config(p.scheduler.config)\n"
            "p.set_progress_bar_config(disable=True)\n"
            f"for k in range({lines}):\n"
            "    img = p('a red circle on a blue background', num_inference_steps=10,"
            " generator=torch.Generator().manual_seed(k)).images[0]\n"
            f"    img.save({tmp!r} + f'/stock{{k}}.png')\n"
        )
        stock_s = process_seconds([sys.executable, "-c", stock_script])
    return Result("scripted_20", device_name(), ours_s, stock_s, notes=f"{lines} lines, process start to exit")


# ------------------------------------------------------------------------------------------- GPU scenarios
def sd15_random_components(dtype: Any) -> Any:
    """SD 1.5's architecture from configs/sd-1 with random weights: real compute, nothing downloaded."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from invoke_repl.builtin import SD1_SCHEDULER_CONFIG, load_clip_tokenizer
    from invoke_repl.components import Components
    from invoke_repl.paths import configs_dir

    folder = configs_dir() / "sd-1"
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    parts = [m.to("cuda", dtype).eval().requires_grad_(False) for m in (unet, vae, text_encoder)]
    return Components("sd15-random", parts[0], parts[1], parts[2], load_clip_tokenizer(), dict(SD1_SCHEDULER_CONFIG))


def gpu_requests() -> dict[str, tuple[Any, Any]]:
    """The GPU generation scenarios' requests (SD 1.5 size: 512², 50 steps) and init images."""
    from PIL import Image

    from invoke_repl.paths import PACKAGE_DIR
    from invoke_repl.request import Request

    txt = Request(prompt="a photo of a red circle on a blue background", steps=50, seed=1, width=512, height=512)
    init = Image.open(PACKAGE_DIR / "embedded" / "fire-drawing.png").convert("RGB").resize((512, 512))
    img = Request(prompt="fire", steps=50, seed=1592514025, strength=0.7, init_img="x", width=512, height=512)
    return {
        "gpu_txt2img_k_lms": (txt, None),
        "gpu_txt2img_k_euler": (txt.replace(sampler="k_euler"), None),
        "gpu_img2img_0.7": (img, init),
        "gpu_n4": (txt.replace(iterations=4), None),
    }


def bench_gpu(scenarios: list[str], repeats: int) -> list[Result]:
    """Stock first on untouched modules; then our fast path (layout, then compiled UNets) on the same weights.

    The order matters: fused QKV projections and channels_last change the modules in place, and the stock pipeline
    must not profit from them.
    """
    import torch

    from invoke_repl import accel

    results = []
    components = sd15_random_components(torch.float16)
    generation = {k: v for k, v in gpu_requests().items() if k in scenarios}
    stock_s: dict[str, float] = {}
    for scenario, (request, init) in generation.items():
        if scenario == "gpu_n4":
            stock_s[scenario] = median_time(stock(components, request.replace(iterations=1), init), repeats)
        else:
            stock_s[scenario] = median_time(stock(components, request, init), repeats)
    if "gpu_peak_memory" in scenarios:
        request = gpu_requests()["gpu_txt2img_k_euler"][0]
        torch.cuda.reset_peak_memory_stats()
        stock(components, request)()
        stock_peak = torch.cuda.max_memory_allocated() / 2**30

    with_layout = accel.optimise_layout(components, force=True)
    eager_s = {k: median_time(ours(components, r, i), repeats) for k, (r, i) in generation.items()}
    compile_s: dict[str, float] = {}
    compiled_s: dict[str, float] = {}
    if generation:
        registry = components.extras["compiled_unets"] = accel.CompiledUNets()
        for scenario, (request, init) in generation.items():
            known = set(registry.entries)
            ours(components, request, init)()  # starts the compile for this shape (eager serves this run)
            registry.wait()
            compile_s[scenario] = sum(e.seconds for k, e in registry.entries.items() if k not in known)
            compiled_s[scenario] = median_time(ours(components, request, init), repeats)
        failed = [e.error for e in registry.entries.values() if e.state == "failed"]
        for notice in registry.take_notices():
            print(f"  {notice}", flush=True)
        compile_note = f"compile failed: {failed[0]}" if failed else ""

    layout = "+".join(with_layout)
    for scenario, (request, _init) in generation.items():
        per_image = 4 if scenario == "gpu_n4" else 1
        ours_s = compiled_s[scenario] / per_image
        note = f"{request.steps} steps 512², fp16, {layout}, compiled; eager {eager_s[scenario] / per_image:.3f} s" + (
            " per image of -n 4 vs stock batch 1" if scenario == "gpu_n4" else ""
        )
        results.append(
            Result(
                scenario,
                device_name(),
                ours_s,
                stock_s[scenario],
                notes=compile_note or note,
                extra={"eager_s": eager_s[scenario] / per_image},
            )
        )
    if compile_s:
        results.append(
            Result(
                "gpu_compile",
                device_name(),
                max(compile_s.values()),
                None,
                notes="longest compile of one shape (background thread); per scenario: "
                + ", ".join(f"{k} {v:.1f} s" for k, v in compile_s.items()),
            )
        )
    if "gpu_peak_memory" in scenarios:
        request = gpu_requests()["gpu_txt2img_k_euler"][0]
        torch.cuda.reset_peak_memory_stats()
        ours(components, request)()
        results.append(
            Result("gpu_peak_memory", device_name(), torch.cuda.max_memory_allocated() / 2**30, stock_peak, unit="GiB")
        )
    for scenario in ("gpu_load_fp16_folder", "gpu_switch", "gpu_cold_start"):
        if scenario in scenarios:
            results.append(bench_gpu_loading(sd15_random_components(torch.float16), scenario, repeats))
    return results


def bench_gpu_loading(components: Any, scenario: str, repeats: int) -> Result:
    import torch
    from diffusers import StableDiffusionPipeline

    from invoke_repl.catalogue import Catalogue
    from invoke_repl.models import ModelManager

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "sd15")
        pipe = StableDiffusionPipeline(
            vae=components.vae,
            text_encoder=components.text_encoder,
            tokenizer=components.tokenizer,
            unet=components.unet,
            scheduler=stock_pipeline(components, "k_lms").scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(folder)
        catalogue_file = Path(tmp, "models.yaml")
        catalogue_file.write_text(
            f"a:\n  format: diffusers\n  path: {folder}\n  default: true\nb:\n  format: diffusers\n  path: {folder}\n"
        )
        if scenario == "gpu_load_fp16_folder":

            def ours_load() -> None:
                ModelManager(Catalogue.load(catalogue_file), device="cuda", precision="float16").get("a")

            def stock_load() -> None:
                StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float16, safety_checker=None).to(
                    "cuda"
                )

            return Result(scenario, device_name(), median_time(ours_load, repeats), median_time(stock_load, repeats))
        if scenario == "gpu_cold_start":
            return bench_cold_start(folder, catalogue_file)
        manager = ModelManager(Catalogue.load(catalogue_file), device="cuda", precision="float16", max_loaded=2)
        manager.get("a")
        manager.get("b")
        names = iter(["a", "b"] * 100)
        switch = median_time(lambda: manager.switch(next(names)), max(repeats, 10))
        return Result(scenario, device_name(), switch, None, notes="switch between two resident models")


def bench_cold_start(folder: Path, catalogue_file: Path) -> Result:
    """Process start → first 512² 50-step image on disk: our CLI against a stock script, same saved fp16 folder."""
    line = "a photo of a red circle on a blue background --steps 50 --seed 1 -W 512 -H 512 --sampler k_euler\n"
    with tempfile.TemporaryDirectory() as tmp:
        ours_s = process_seconds(
            [sys.executable, "-m", "invoke_repl", "--models", str(catalogue_file), "--outdir", tmp, "--no-progress"],
            stdin=line,
        )
        stock_script = (
            "import torch\nfrom diffusers import StableDiffusionPipeline, EulerDiscreteScheduler\n"
            f"p = StableDiffusionPipeline.from_pretrained({str(folder)!r}, torch_dtype=torch.float16,"
            " safety_checker=None).to('cuda')\n"
            "p.scheduler = EulerDiscreteScheduler.from_config(p.scheduler.config)\n"
            "p('a photo of a red circle on a blue background', num_inference_steps=50,"
            f" generator=torch.Generator().manual_seed(1)).images[0].save({tmp!r} + '/stock.png')\n"
        )
        stock_s = process_seconds([sys.executable, "-c", stock_script])
    return Result("gpu_cold_start", device_name(), ours_s, stock_s, notes="process start → first image saved")


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m invoke_repl.bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "scenarios", nargs="*", help=f"default: all CPU ones ({', '.join(CPU_SCENARIOS)}); `gpu`: every GPU one"
    )
    parser.add_argument("--model", default=None, help="catalogue model for the CPU scenarios (default: default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="append results as JSON lines to this file")
    parser.add_argument("--gpu", action="store_true", help="run the GPU scenarios too")
    args = parser.parse_args(argv)
    scenarios = args.scenarios or list(CPU_SCENARIOS) + (list(GPU_SCENARIOS) if args.gpu else [])
    if "gpu" in scenarios:  # the whole GPU check (`.ci/gpu-check` runs this on a lent GPU machine)
        scenarios = [s for s in scenarios if s != "gpu"] + list(GPU_SCENARIOS)
    unknown = [s for s in scenarios if s not in CPU_SCENARIOS + GPU_SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    results: list[Result] = []
    components = None
    for scenario in [s for s in scenarios if s in CPU_SCENARIOS]:
        if scenario in ("txt2img_k_lms", "txt2img_k_euler", "img2img_0.7", "sampler_overhead"):
            components = components or load_model(args.model)
        if scenario == "sampler_overhead":
            new = bench_sampler_overhead(components)
        elif scenario == "prompt_latency":
            new = [bench_prompt_latency(args.repeats)]
        elif scenario == "scripted_20":
            new = [bench_scripted()]
        else:
            new = [bench_generation(components, scenario, args.repeats)]
        _report(new, args.json)
        results += new
    gpu = [s for s in scenarios if s in GPU_SCENARIOS]
    if gpu:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: GPU scenarios skipped", file=sys.stderr)
        else:
            new = bench_gpu(gpu, args.repeats)
            _report(new, args.json)
    return 0


def _report(results: list[Result], json_file: Path | None) -> None:
    for result in results:
        print(result.line(), flush=True)
        if json_file is not None:
            record = asdict(result) | {"ratio": result.ratio, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            with open(json_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
