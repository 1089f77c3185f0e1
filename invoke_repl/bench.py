"""`python -m invoke_repl.bench`: invoke-repl against stock diffusers, side by side, same weights, same process.

Every scenario prints the device, both medians (of ≥ 3 timed runs after a warm-up) and the ratio stock/ours, so a
number > 1 means we are faster. `--json FILE` appends one JSON object per scenario so runs can be compared later.
Timings are reported, never asserted: tests must not flake on shared machines.

CPU scenarios use the embedded model (or `--model NAME` from the catalogue), on the CPU. GPU scenarios (named one by
one, all of them as `gpu`, or added to the CPU ones with `--gpu`; skipped without CUDA) build the SD 1.5
architecture with random weights from the local `configs/sd-1` configs — the same compute as real weights, no
download. A scenario that fails is a row that says why (`"status": "failed"` in the JSON line).
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
# Asked for by name only: minutes of compiling on a 2-core CPU, for a figure that is evidence, not a target.
OPT_IN_CPU_SCENARIOS = ("compile_modes",)
GPU_SCENARIOS = (
    "gpu_txt2img_k_lms",
    "gpu_txt2img_k_euler",
    "gpu_img2img_0.7",
    "gpu_n4",
    "gpu_load_fp16_folder",
    "gpu_switch",
    "gpu_peak_memory",
    "gpu_sync_audit",
    "gpu_compile_cache",
    "gpu_compile_regional",
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
    return timed(fn, repeats, warmup)[0]


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, Any]:
    """Median seconds of `repeats` calls after `warmup`, and the last call's result: the pixel comparisons reuse
    it instead of paying for one more image per scenario (about 8 s of a lent GPU's minutes, 2026-11-27)."""
    for _ in range(warmup):
        fn()
    times = []
    out = None
    for _ in range(repeats):
        seconds, out = _one_timing(fn)
        times.append(seconds)
    return statistics.median(times), out


def _one_timing(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds of one call, device work included, and its result."""
    start = time.perf_counter()
    out = fn()
    _sync()
    return time.perf_counter() - start, out


def _sync() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def process_seconds(args: list[str], stdin: str | None = None) -> float:
    """Wall time of one child process from start to exit (it must succeed): cold starts and whole scripts."""
    start = time.perf_counter()
    _run_child(args, input=stdin)
    return time.perf_counter() - start


def _run_child(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """A child that must succeed; its failure says what the child printed last (a lent GPU is not there to ask)."""
    done = subprocess.run(args, text=True, capture_output=True, **kwargs)
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout or "").strip().splitlines()[-3:])
        raise RuntimeError(f"child {' '.join(args[:3])} … exited {done.returncode}: {tail[-600:]}")
    return done


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
    """The CPU scenarios' model, on the CPU also where a GPU is present: they are the CPU figures."""
    from invoke_repl.models import ModelManager, open_catalogue

    manager = ModelManager(open_catalogue(None), device="cpu", precision="auto", max_loaded=1)
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
    ours_s, stock_s = paired_medians(ours(components, request, init), stock(components, request, init), repeats)
    return Result(scenario, device_name(), ours_s, stock_s, notes=f"{request.steps} steps, {components.name}")


def paired_medians(a: Callable[[], Any], b: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median seconds of `a` and of `b`, timed in alternation after one warm-up each.

    Alternating keeps the ratio honest on a shared machine: this project's VM changes speed by up to 40 % from one
    minute to the next (README, Measurements), and timing all of one side first would give that drift to the ratio.
    """
    return paired_values(lambda: _one_timing(a)[0], lambda: _one_timing(b)[0], repeats)


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


def stock_scheduler_class(spec: Any) -> type:
    """diffusers' own class under ours (CachedLMS…, ScheduledDDIM…, ScheduledPNDM…): comparing with our subclass
    made the ddim/plms rows ~1x by construction."""
    return next(c for c in spec.cls.__mro__ if c.__module__.startswith("diffusers."))


def _stock_overhead_ms(spec: Any, scheduler_config: dict, shape: tuple[int, ...]) -> float:
    import torch

    from invoke_repl.generator.samplers import step_kwargs

    cls = stock_scheduler_class(spec)
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
        try:
            while b"invoke>" not in seen:
                ready, _, _ = select.select([master], [], [], 30)
                chunk = os.read(master, 4096) if ready else b""
                if not chunk:  # 30 s of silence, or the child gone: no figure, not a 30 s one
                    raise RuntimeError(f"no invoke> prompt; the child printed {seen[-300:]!r}")
                seen += chunk
            return time.perf_counter() - start
        finally:
            proc.kill()
            proc.wait()
            os.close(master)

    from invoke_repl.paths import embedded_model_dir

    stock_script = (
        "import torch\nfrom diffusers import StableDiffusionPipeline\n"
        f"StableDiffusionPipeline.from_pretrained({str(embedded_model_dir())!r}, torch_dtype=torch.float32,"
        " safety_checker=None)\n"
    )

    def stock_once() -> float:
        return process_seconds([sys.executable, "-c", stock_script])

    ours_s, stock_s = paired_values(ours_once, stock_once, repeats)
    return Result(
        "prompt_latency",
        device_name(),
        ours_s,
        stock_s,
        notes="start → prompt drawn (the model still loading behind it) vs start → pipeline ready",
    )


def paired_values(a: Callable[[], float], b: Callable[[], float], repeats: int) -> tuple[float, float]:
    """`paired_medians` for measurements that time themselves (a child process from its start): one warm-up each
    (the page cache), then `repeats` of each in alternation, so the machine's drift is shared."""
    a()
    b()
    values: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        values[0].append(a())
        values[1].append(b())
    return statistics.median(values[0]), statistics.median(values[1])


def bench_scripted(lines: int = 20, repeats: int = 3) -> Result:
    """A 20-line scripted run through the real CLI, against a stock script doing the same 20 images.

    Both make the same requests (10 k_lms steps, CFG 2.5, 64²) and save 20 PNGs; ours also writes its metadata
    chunks and invoke_log.txt and fsyncs each file, which stock does not."""
    from invoke_repl.paths import embedded_model_dir

    prompts = [f"a red circle on a blue background --steps 10 --seed {k} -C 2.5" for k in range(lines)]
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp, "script.txt")
        script.write_text("\n".join(prompts) + "\n")
        runs = iter(range(10**6))

        def ours_once() -> float:
            folder = Path(tmp, f"ours{next(runs)}")
            seconds = process_seconds(
                [sys.executable, "-m", "invoke_repl", "--from-file", str(script), "--outdir", str(folder)]
                + ["--no-progress"]
            )
            made = len(list(folder.glob("*.png")))
            if made != lines:
                raise RuntimeError(f"our run made {made} images, not {lines}")
            return seconds

        stock_script = (
            "import torch\nfrom diffusers import StableDiffusionPipeline, LMSDiscreteScheduler\n"
            f"p = StableDiffusionPipeline.from_pretrained({str(embedded_model_dir())!r}, torch_dtype=torch.float32,"
            " safety_checker=None)\n"
            "p.scheduler = LMSDiscreteScheduler.from_config(p.scheduler.config)\n"
            "p.set_progress_bar_config(disable=True)\n"
            f"for k in range({lines}):\n"
            "    img = p('a red circle on a blue background', num_inference_steps=10, guidance_scale=2.5,"
            " generator=torch.Generator().manual_seed(k)).images[0]\n"
            f"    img.save({tmp!r} + f'/stock{{k}}.png')\n"
        )
        ours_s, stock_s = paired_values(
            ours_once, lambda: process_seconds([sys.executable, "-c", stock_script]), repeats
        )
    return Result(
        "scripted_20", device_name(), ours_s, stock_s, notes=f"{lines} lines, process start to exit, CFG 2.5, 64²"
    )


def bench_compile_modes(plan: GpuPlan | None = None) -> Result:
    """The first compile of SD 1.5's UNet, regional against full, on this machine's CPU with empty caches.

    No GPU has measured `INVOKE_REPL_COMPILE=regional` yet; this is what can be measured without one. Inductor's
    tracing and lowering are the same Python for both devices and only the code it generates differs (C++ here,
    Triton there), so the ratio is evidence about the GPU's warm-up, not a measurement of it. 128² (16×16 latents)
    keeps the forwards cheap: the kernels compiled do not depend on the size.
    """
    plan = plan or GpuPlan(device="cpu", dtype="float32", size=128)
    seconds: dict[str, float] = {}
    states: dict[str, str] = {}
    for mode in ("full", "regional"):
        with tempfile.TemporaryDirectory() as cold:
            states[mode], seconds[mode], _ = _compile_in_fresh_process(plan, mode, {"TORCHINDUCTOR_CACHE_DIR": cold})
    fraction = seconds["regional"] / seconds["full"] if seconds["full"] else None
    share = "-" if fraction is None else f"{fraction:.2f}"
    notes = (
        f"first compile, empty caches, {plan.dtype} {plan.size}², batch 2: regional {seconds['regional']:.1f} s"
        f" ({states['regional']}) against full {seconds['full']:.1f} s ({states['full']}), {share} of it"
    )
    extra = {"full_s": seconds["full"], "regional_s": seconds["regional"], "states": states}
    return Result("compile_modes", device_name(), seconds["regional"], None, notes=notes, extra=extra)


# ------------------------------------------------------------------------------------------- GPU scenarios
@dataclass
class GpuPlan:
    """What the GPU scenarios run on. The defaults are issue 7's: SD 1.5 architecture, fp16, 512², 50 steps, CUDA.

    The tests run the very same code on the CPU with a tiny model, 2 steps and fake compile/graph capture, so a
    lent GPU's few minutes are never spent finding a typo.
    """

    device: str = "cuda"
    dtype: str = "float16"
    size: int = 512
    steps: int = 50
    build: Callable[[], Any] | None = None  # Components on `device`; default: SD 1.5 with random weights
    compile_fn: Callable[[Any], Any] | None = None
    regional_fn: Callable[[Any], Any] | None = None  # default: accel.regional_compile
    capture_fn: Callable[..., Any] | None = None

    def components(self) -> Any:
        import torch

        return (self.build or (lambda: sd15_random_components(getattr(torch, self.dtype), self.device)))()


def sd15_random_components(dtype: Any, device: str = "cuda") -> Any:
    """SD 1.5's architecture from configs/sd-1 with random weights: real compute, nothing downloaded."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from invoke_repl.builtin import SD1_SCHEDULER_CONFIG, load_clip_tokenizer
    from invoke_repl.components import Components
    from invoke_repl.paths import configs_dir

    folder = configs_dir() / "sd-1"
    torch.manual_seed(0)
    with torch.device(device):  # initialised where they run: random init of 1 B parameters on the host takes long
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    parts = [m.to(device, dtype).eval().requires_grad_(False) for m in (unet, vae, text_encoder)]
    return Components("sd15-random", parts[0], parts[1], parts[2], load_clip_tokenizer(), dict(SD1_SCHEDULER_CONFIG))


def gpu_requests(plan: GpuPlan | None = None) -> dict[str, tuple[Any, Any]]:
    """The GPU generation scenarios' requests (SD 1.5 size: 512², 50 steps) and init images."""
    from PIL import Image

    from invoke_repl.paths import PACKAGE_DIR
    from invoke_repl.request import Request

    plan = plan or GpuPlan()
    size, steps = plan.size, plan.steps
    prompt = "a photo of a red circle on a blue background"
    txt = Request(prompt=prompt, steps=steps, seed=1, width=size, height=size)
    init = Image.open(PACKAGE_DIR / "embedded" / "fire-drawing.png").convert("RGB").resize((size, size))
    img = Request(prompt="fire", steps=steps, seed=1592514025, strength=0.7, init_img="x", width=size, height=size)
    return {
        "gpu_txt2img_k_lms": (txt, None),
        "gpu_txt2img_k_euler": (txt.replace(sampler="k_euler"), None),
        "gpu_img2img_0.7": (img, init),
        "gpu_n4": (txt.replace(iterations=4), None),
    }


def _pixels(images: list[Any]) -> Any:
    import numpy as np

    return np.stack([np.asarray(getattr(image, "image", image), dtype=np.int16) for image in images])


def _max_diff(a: list[Any], b: list[Any]) -> int:
    return int(abs(_pixels(a) - _pixels(b)).max())


def _peak_memory(device: str, fn: Callable[[], Any]) -> tuple[float, float]:
    """Peak device memory of one call, GiB: allocated (what tensors held) and reserved (what the allocator took)."""
    import gc

    import torch

    if not (device.startswith("cuda") and torch.cuda.is_available()):
        fn()
        return 0.0, 0.0
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30


def bench_gpu(
    scenarios: list[str], repeats: int, plan: GpuPlan | None = None, report: Callable[[list[Result]], None] = print
) -> list[Result]:
    """Stock first on untouched modules; then our fast path on the same weights, reported as each figure is known.

    Ours is measured three ways: eager (layout changes only), with CUDA graphs (what one-shot scripts and the
    first commands of a session run), and compiled with CUDA graphs (an interactive session once its background
    compile is done). The order matters: fused QKV projections and channels_last change the modules in place, and
    the stock pipeline must not profit from them. Results go to `report` one scenario at a time, so a run cut
    short by a lease still leaves every figure it got to.
    """
    from invoke_repl import accel

    plan = plan or GpuPlan()
    results: list[Result] = []

    def emit(*new: Result) -> None:
        report(list(new))
        results.extend(new)

    def guarded(scenario: str, measure: Callable[[], Any]) -> Any:
        """One late row failing (a lent GPU's one run) must not take the rows after it along: it becomes a row
        that says why, and the run goes on."""
        try:
            return measure()
        except Exception as exc:
            emit(failed_row(scenario, exc, device))
            return None
        finally:
            graphs_now = components.extras.get("cuda_graphs") if components is not None else None
            for notice in graphs_now.take_notices() if graphs_now else []:
                print(f"  {notice}", flush=True)  # a capture that failed here shows beside the row it affects

    device = device_name() if plan.device.startswith("cuda") else f"{plan.device} (dry run)"
    components = plan.components()
    generation = {k: v for k, v in gpu_requests(plan).items() if k in scenarios}
    stock_s: dict[str, float] = {}
    stock_images: dict[str, Any] = {}
    for scenario, (request, init) in generation.items():
        one = request.replace(iterations=1) if scenario == "gpu_n4" else request
        stock_s[scenario], stock_images[scenario] = timed(stock(components, one, init), repeats)
        print(f"  stock {scenario}: {stock_s[scenario]:.4f} s", flush=True)
    stock_peak = _peak_memory(plan.device, stock(components, gpu_requests(plan)["gpu_txt2img_k_euler"][0]))

    with tempfile.TemporaryDirectory() as tmp:
        folder, catalogue_file = _save_folder(components, Path(tmp))  # before the layout changes touch the modules
        layout = "+".join(accel.optimise_layout(components, force=True))
        components.extras["cuda_graphs"] = False
        eager = {k: timed(ours(components, r, i), repeats) for k, (r, i) in generation.items()}
        eager_s = {k: seconds for k, (seconds, _) in eager.items()}
        eager_images = {k: images for k, (_, images) in eager.items()}
        graphs = components.extras["cuda_graphs"] = accel.CudaGraphs(capture_fn=plan.capture_fn)
        if plan.capture_fn is None and not plan.device.startswith("cuda"):
            components.extras["cuda_graphs"] = False  # a CPU dry run without a fake: no graphs to capture
        graphed_s: dict[str, float] = {}
        for scenario, (request, init) in generation.items():
            per_image = 4 if scenario == "gpu_n4" else 1
            graphed_s[scenario], images = timed(ours(components, request, init), repeats)
            note = (
                f"{request.steps} steps {plan.size}², {plan.dtype}, {layout}, CUDA graphs; eager "
                f"{eager_s[scenario] / per_image:.4f} s; "
                f"max pixel diff vs eager {_max_diff(images, eager_images[scenario])}"
                + (f", vs stock {_max_diff(images, stock_images[scenario])}" if per_image == 1 else "")
                + (" (by design: stock samples the VAE posterior, ours takes its mean)" if init is not None else "")
                + (" (per image of -n 4 vs stock batch 1)" if per_image == 4 else "")
            )
            extra = {"eager_s": eager_s[scenario] / per_image, "variant": "graphs"}
            emit(Result(scenario, device, graphed_s[scenario] / per_image, stock_s[scenario], notes=note, extra=extra))
        for notice in graphs.take_notices():
            print(f"  {notice}", flush=True)
        if graphs:
            emit(
                Result(
                    "gpu_graph_capture",
                    device,
                    graphs.seconds / max(graphs.captures, 1),
                    None,
                    notes=f"mean per shape over {graphs.captures} captures (two warm-up forwards + the capture)",
                )
            )
        if "gpu_sync_audit" in scenarios:
            guarded("gpu_sync_audit", lambda: emit(bench_sync_audit(components, plan, device)))
        if "gpu_peak_memory" in scenarios:
            guarded("gpu_peak_memory", lambda: emit(bench_peak_memory(components, plan, device, stock_peak)))
        for scenario in ("gpu_switch", "gpu_load_fp16_folder"):
            if scenario in scenarios:
                guarded(
                    scenario,
                    lambda scenario=scenario: emit(
                        bench_gpu_loading(folder, catalogue_file, scenario, repeats, plan, device)
                    ),
                )
        if generation:
            compiled_images: dict[str, Any] = {}
            compiled = _bench_compiled(
                components, generation, repeats, plan, device, stock_s, graphed_s, emit, compiled_images, guarded
            )
            if "gpu_compile_cache" in scenarios:
                guarded("gpu_compile_cache", lambda: emit(bench_compile_cache(plan, device)))
            full = next((r for r in compiled if r.scenario == "gpu_txt2img_k_lms+compiled"), None)
            if "gpu_compile_regional" in scenarios and full is not None:
                request = generation["gpu_txt2img_k_lms"][0]
                reference = compiled_images["gpu_txt2img_k_lms"]
                guarded(
                    "gpu_txt2img_k_lms+regional",
                    lambda: emit(bench_regional_compile(components, request, repeats, plan, device, full, reference)),
                )
        if "gpu_cold_start" in scenarios:
            components = None
            guarded("gpu_cold_start", lambda: emit(bench_cold_start(folder, catalogue_file, plan, device)))
    return results


def bench_peak_memory(components: Any, plan: GpuPlan, device: str, stock_peak: tuple[float, float]) -> Result:
    """Peak memory of one k_euler image, twice: as a session has it after the other scenarios (a CUDA graph held
    for each shape they used), and as a fresh session has it (only this image's own graph). The first GPU check
    measured only the first, and its 0.6 GiB of extra reserved memory came from the graphs of other shapes."""
    from invoke_repl import accel

    request = gpu_requests(plan)["gpu_txt2img_k_euler"][0]
    held = accel.cuda_graphs(components)
    shapes = len(held.graphs) if held else 0
    session = _peak_memory(plan.device, ours(components, request))
    if held:
        held.graphs.clear()  # their static buffers and the pool they share go with them
        components.extras["cuda_graphs"] = accel.CudaGraphs(capture_fn=plan.capture_fn)
    ours(components, request)()  # captures this shape's graph: a fresh session's first image
    fresh = _peak_memory(plan.device, ours(components, request))
    return Result(
        "gpu_peak_memory",
        device,
        fresh[0],
        stock_peak[0],
        unit="GiB",
        notes=f"allocated, one graph held; reserved: ours {fresh[1]:.2f} GiB, stock {stock_peak[1]:.2f} GiB. With "
        f"the {shapes} graph(s) of the earlier scenarios held: allocated {session[0]:.2f}, "
        f"reserved {session[1]:.2f} GiB",
        extra={
            "ours_reserved": fresh[1],
            "stock_reserved": stock_peak[1],
            "session_allocated": session[0],
            "session_reserved": session[1],
            "session_graphs": shapes,
        },
    )


def bench_sync_audit(components: Any, plan: GpuPlan, device: str) -> Result:
    """Host-device synchronisations inside the denoise loop, for every sampler: CUDA's sync debug mode warns at
    each one, and the warnings raised from the loop's own lines (the scheduler's step, our sampler code, the
    loop in core.sample) are counted. Decoding's copy to the host is outside the loop and not counted."""
    import inspect
    import warnings

    import torch

    from invoke_repl.generator import core
    from invoke_repl.generator.samplers import SAMPLER_TABLE

    lines, first = inspect.getsourcelines(core.sample)
    loop_start = first + next(i for i, line in enumerate(lines) if "for i, t in enumerate" in line)
    loop = range(loop_start, first + len(lines))
    request = gpu_requests(plan)["gpu_txt2img_k_euler"][0].replace(steps=min(plan.steps, 10))
    counts: dict[str, int] = {}
    sites: dict[str, list[str]] = {}
    for name in SAMPLER_TABLE:
        run = ours(components, request.replace(sampler=name))
        run()  # graphs captured, caches filled: the audit looks at a steady-state command
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if plan.device.startswith("cuda"):
                torch.cuda.set_sync_debug_mode("warn")
            try:
                run()
            finally:
                if plan.device.startswith("cuda"):
                    torch.cuda.set_sync_debug_mode(0)
        in_loop = [
            w
            for w in caught
            if "synchroniz" in str(w.message)
            and (
                (w.filename.endswith("core.py") and w.lineno in loop)
                or "schedulers" in w.filename
                or w.filename.endswith("samplers.py")
            )
        ]
        counts[name] = len(in_loop)
        sites[name] = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in in_loop})
    total = sum(counts.values())
    notes = "syncs inside the loop, 10 steps: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    where = sorted({site for found in sites.values() for site in found})
    if where:
        notes += "; at " + ", ".join(where)
    return Result(
        "gpu_sync_audit",
        device,
        float(total),
        None,
        unit="syncs",
        notes=notes,
        extra={"counts": counts, "sites": sites},
    )


def _bench_compiled(
    components: Any,
    generation: dict[str, tuple[Any, Any]],
    repeats: int,
    plan: GpuPlan,
    device: str,
    stock_s: dict[str, float],
    graphed_s: dict[str, float],
    emit: Callable[..., None],
    images: dict[str, Any],
    guarded: Callable[[str, Callable[[], Any]], Any],
) -> list[Result]:
    """The compiled UNet (built in the background as in a session) under CUDA graphs, then the compile's cost, each
    row emitted as soon as it is measured; `images` gets each scenario's last timed images (the regional row
    compares against them)."""
    from invoke_repl import accel

    registry = components.extras["compiled_unets"] = accel.CompiledUNets(compile_fn=plan.compile_fn)
    mode = accel.compile_mode()  # what a session compiles (INVOKE_REPL_COMPILE); the warm-up is its first stage
    compile_s: dict[str, float] = {}
    results: list[Result] = []

    def one(scenario: str, request: Any, init: Any) -> None:
        known = set(registry.entries)
        ours(components, request, init)()  # starts the compile for this shape (the graphed eager UNet serves)
        registry.wait()
        compile_s[scenario] = sum(e.seconds for k, e in registry.entries.items() if k not in known)
        per_image = 4 if scenario == "gpu_n4" else 1
        compiled, images[scenario] = timed(ours(components, request, init), repeats)
        failed = [e.error for k, e in registry.entries.items() if k not in known and e.state == "failed"]
        note = (
            f"compile failed: {failed[0]}"
            if failed
            else f"compiled ({mode}) + CUDA graphs; graphs alone {graphed_s[scenario] / per_image:.4f} s"
        )
        extra = {"variant": "compiled+graphs", "compile_s": compile_s[scenario]}
        row = Result(scenario + "+compiled", device, compiled / per_image, stock_s[scenario], notes=note, extra=extra)
        results.append(row)
        emit(row)
        for notice in registry.take_notices():
            print(f"  {notice}", flush=True)

    for scenario, (request, init) in generation.items():
        guarded(scenario + "+compiled", lambda s=scenario, r=request, i=init: one(s, r, i))
    if compile_s:
        emit(
            Result(
                "gpu_compile",
                device,
                max(compile_s.values()),
                None,
                notes="longest compile of one shape (background thread); per scenario: "
                + ", ".join(f"{k} {v:.1f} s" for k, v in compile_s.items()),
            )
        )
    return results


def bench_compile_cache(plan: GpuPlan, device: str) -> Result:
    """The compile of the 512² batch-2 UNet again, in a fresh process: what a restarted session pays once the
    first compile has filled Inductor's disk cache (accel keeps it under the user's cache folder).

    The fresh process compiles a UNet with other weights, as a user's second checkpoint of the same architecture
    would be: Inductor's cache keys on the graph, not on parameter values (on this project's CPU, SD 1.5's UNet
    at 16×16 latents: 109.7 s cold, then 17.4 s with other weights and 19.3 s with the same ones, 2026-12-03).
    """
    state, seconds, total = _compile_in_fresh_process(plan, "full", weights_seed=1)
    return Result(
        "gpu_compile_cache",
        device,
        seconds,
        None,
        notes=f"compile in a fresh process with the disk cache warm, other weights of the same architecture: {state};"
        f" process start → compiled {total:.1f} s",
    )


def bench_regional_compile(
    components: Any, request: Any, repeats: int, plan: GpuPlan, device: str, full: Result, reference: list[Any]
) -> Result:
    """Regional compilation (`INVOKE_REPL_COMPILE=regional`) against the full compile, for k_lms at 512²; and the
    staged mode's hand-over from the one to the other.

    Its first compile runs in a fresh process with empty Inductor and Triton caches, so the kernels the full
    compile already built in this process and on disk cannot flatter it; its speed (compiled blocks under the CUDA
    graph) is measured here on the same modules as every other row. Here the two stages of the staged mode run,
    the full one held back until the regional one is timed; this process compiled the full UNet for this shape
    already, so that stage costs a cache lookup, and what is checked is that it takes over (new CUDA graph, the
    full compile's speed and pixels).
    """
    import threading

    from invoke_repl import accel

    with tempfile.TemporaryDirectory() as cold:
        state, cold_s, _ = _compile_in_fresh_process(
            plan, "regional", {"TORCHINDUCTOR_CACHE_DIR": cold, "TRITON_CACHE_DIR": str(Path(cold) / "triton")}
        )
    full_may_start = threading.Event()

    def full_after_regional(unet: Any) -> Any:
        full_may_start.wait(600)
        return (plan.compile_fn or accel._torch_compile)(unet)

    registry = components.extras["compiled_unets"] = accel.CompiledUNets(
        stages=(("regional", plan.regional_fn or accel.regional_compile), ("full", full_after_regional))
    )
    ours(components, request)()  # starts the staged compile (the graphed eager UNet serves meanwhile)
    regional_ready = registry.wait_for_stage("regional")
    speed, images = timed(ours(components, request), repeats)
    full_may_start.set()
    registry.wait()
    failed = [e.error for e in registry.entries.values() if e.error]
    staged, staged_images = timed(ours(components, request), repeats)
    for notice in registry.take_notices():
        print(f"  {notice}", flush=True)
    note = (
        f"regional compile failed: {failed[0] if failed else 'not ready within 600 s'}"
        if not regional_ready
        else f"regional compile {cold_s:.1f} s with cold caches ({state}), full compile {full.extra['compile_s']:.1f}"
        f" s; full compiled + graphs {full.ours_s:.4f} s; max pixel diff vs full compiled "
        f"{_max_diff(images, reference)}; staged, once the full stage took over: {staged:.4f} s, max pixel diff vs "
        f"full compiled {_max_diff(staged_images, reference)}" + (f"; {failed[0]}" if failed else "")
    )
    extra = {
        "variant": "regional+graphs",
        "compile_s": cold_s,
        "full_compile_s": full.extra["compile_s"],
        "staged_final_s": staged,
    }
    return Result("gpu_txt2img_k_lms+regional", device, speed, full.stock_s, notes=note, extra=extra)


def _compile_in_fresh_process(
    plan: GpuPlan, mode: str, env: dict[str, str] | None = None, weights_seed: int = 0
) -> tuple[str, float, float]:
    """State and seconds of one background compile in a new Python process, and that process's whole run time."""
    fake = plan.compile_fn is not None  # the CPU dry run: a fake compile, a tiny model
    args = f"{plan.size}, {plan.dtype!r}, {plan.device!r}, {fake}, {mode!r}, {weights_seed}"
    code = f"from invoke_repl.bench import _compile_once; _compile_once({args})"
    started = time.perf_counter()
    done = _run_child([sys.executable, "-c", code], env=os.environ | (env or {}))
    total = time.perf_counter() - started
    state, seconds = done.stdout.split()[-2:]
    return state, float(seconds), total


def _compile_once(size: int, dtype: str, device: str, fake: bool, mode: str = "full", weights_seed: int = 0) -> None:
    """One background compile for the batch-2 shape at `size`, as a session would start it; prints state, seconds.

    `weights_seed` other than 0 moves every UNet weight by seeded noise: the same architecture, other values."""
    import torch

    from invoke_repl import accel
    from invoke_repl.builtin import build_tiny_random

    components = build_tiny_random() if fake else sd15_random_components(getattr(torch, dtype), device)
    if weights_seed:
        perturb_weights(components.unet, weights_seed)
    accel.optimise_layout(components, force=True)
    if fake:
        registry = accel.CompiledUNets(compile_fn=lambda unet: unet)
    else:  # the named mode, whatever INVOKE_REPL_COMPILE says
        registry = accel.CompiledUNets(stages=accel.compile_stages(mode))
    scale = components.vae_scale_factor
    sample = torch.randn(2, components.latent_channels, size // scale, size // scale, device=device)
    width = components.text_encoder.config.hidden_size
    context = torch.randn(2, 77, width, device=device)
    registry.forward_for(components.unet, sample.to(components.dtype), context.to(components.dtype))
    registry.wait()
    entry = next(iter(registry.entries.values()))
    print(entry.state, f"{entry.seconds:.2f}")


def perturb_weights(module: Any, seed: int, scale: float = 0.02) -> None:
    """Add seeded noise to every parameter in place: another checkpoint of the same architecture."""
    import torch

    generators: dict[Any, Any] = {}
    with torch.no_grad():
        for parameter in module.parameters():
            device = parameter.device
            generator = generators.setdefault(device, torch.Generator(device).manual_seed(seed))
            noise = torch.randn(parameter.shape, generator=generator, device=device)
            parameter.add_(noise.to(parameter.dtype), alpha=scale)


def _save_folder(components: Any, tmp: Path) -> tuple[Path, Path]:
    """The model as a diffusers folder in its dtype, and a two-entry catalogue naming it twice (for switches)."""
    from diffusers import StableDiffusionPipeline

    folder = tmp / "sd15"
    StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=stock_pipeline(components, "k_lms").scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder)
    catalogue_file = tmp / "models.yaml"
    catalogue_file.write_text(
        f"a:\n  format: diffusers\n  path: {folder}\n  default: true\nb:\n  format: diffusers\n  path: {folder}\n"
    )
    return folder, catalogue_file


def bench_gpu_loading(
    folder: Path, catalogue_file: Path, scenario: str, repeats: int, plan: GpuPlan, device: str
) -> Result:
    import torch
    from diffusers import StableDiffusionPipeline

    from invoke_repl.catalogue import Catalogue
    from invoke_repl.models import ModelManager

    dtype = getattr(torch, plan.dtype)
    if scenario == "gpu_load_fp16_folder":

        def ours_load() -> None:
            ModelManager(Catalogue.load(catalogue_file), device=plan.device, precision=plan.dtype).get("a")

        def stock_load() -> None:
            StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, safety_checker=None).to(plan.device)

        return Result(
            scenario, device, median_time(ours_load, repeats), median_time(stock_load, repeats), notes="folder → device"
        )
    manager = ModelManager(Catalogue.load(catalogue_file), device=plan.device, precision=plan.dtype, max_loaded=2)
    manager.get("a")
    manager.get("b")
    names = iter(["a", "b"] * 100)
    switch = median_time(lambda: manager.switch(next(names)), max(repeats, 10))
    return Result(scenario, device, switch, None, notes="switch between two resident models")


def bench_cold_start(folder: Path, catalogue_file: Path, plan: GpuPlan | None = None, device: str = "") -> Result:
    """Process start → first image on disk: our CLI against a stock script, same saved folder, same dtype."""
    plan = plan or GpuPlan()
    size = plan.size
    prompt = "a photo of a red circle on a blue background"
    line = f"{prompt} --steps {plan.steps} --seed 1 -W {size} -H {size} --sampler k_euler\n"
    with tempfile.TemporaryDirectory() as tmp:
        ours_s = process_seconds(
            [sys.executable, "-m", "invoke_repl", "--models", str(catalogue_file), "--outdir", tmp, "--no-progress"]
            + ["--device", plan.device, "--precision", plan.dtype],
            stdin=line,
        )
        stock_script = (
            "import torch\nfrom diffusers import StableDiffusionPipeline, EulerDiscreteScheduler\n"
            f"p = StableDiffusionPipeline.from_pretrained({str(folder)!r}, torch_dtype=torch.{plan.dtype},"
            f" safety_checker=None).to({plan.device!r})\n"
            "p.scheduler = EulerDiscreteScheduler.from_config(p.scheduler.config)\n"
            f"p({prompt!r}, num_inference_steps={plan.steps}, width={size}, height={size},"
            f" generator=torch.Generator().manual_seed(1)).images[0].save({tmp!r} + '/stock.png')\n"
        )
        stock_s = process_seconds([sys.executable, "-c", stock_script])
    return Result("gpu_cold_start", device or device_name(), ours_s, stock_s, notes="process start → first image saved")


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m invoke_repl.bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "scenarios",
        nargs="*",
        help=f"default: all CPU ones ({', '.join(CPU_SCENARIOS)}); `gpu`: every GPU one; by name only: "
        + ", ".join(OPT_IN_CPU_SCENARIOS),
    )
    parser.add_argument("--model", default=None, help="catalogue model for the CPU scenarios (default: default)")
    parser.add_argument("--repeats", type=_at_least_one, default=3, help="timed runs per side (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="append results as JSON lines to this file")
    parser.add_argument("--gpu", action="store_true", help="run the GPU scenarios too")
    args = parser.parse_args(argv)
    scenarios = args.scenarios or list(CPU_SCENARIOS) + (list(GPU_SCENARIOS) if args.gpu else [])
    if "gpu" in scenarios:  # the whole GPU check (`.ci/gpu-check` runs this on a lent GPU machine)
        scenarios = [s for s in scenarios if s != "gpu"] + list(GPU_SCENARIOS)
    cpu_scenarios = CPU_SCENARIOS + OPT_IN_CPU_SCENARIOS
    unknown = [s for s in scenarios if s not in cpu_scenarios + GPU_SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    results: list[Result] = []
    components = None
    for scenario in [s for s in scenarios if s in cpu_scenarios]:
        try:
            if scenario in ("txt2img_k_lms", "txt2img_k_euler", "img2img_0.7", "sampler_overhead"):
                components = components or load_model(args.model)
            if scenario == "sampler_overhead":
                new = bench_sampler_overhead(components)
            elif scenario == "prompt_latency":
                new = [bench_prompt_latency(args.repeats)]
            elif scenario == "scripted_20":
                new = [bench_scripted(repeats=args.repeats)]
            elif scenario == "compile_modes":
                new = [bench_compile_modes()]
            else:
                new = [bench_generation(components, scenario, args.repeats)]
        except Exception as exc:  # one scenario failing must not take the others' rows along, nor leave none
            new = [failed_row(scenario, exc)]
        _report(new, args.json)
        results += new
    gpu = [s for s in scenarios if s in GPU_SCENARIOS]
    if gpu:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: GPU scenarios skipped", file=sys.stderr)
        else:
            try:
                bench_gpu(gpu, args.repeats, report=lambda new: _report(new, args.json))
            except Exception as exc:  # before or between the guarded rows: the rows so far are written already
                _report([failed_row("gpu", exc)], args.json)
    return 0


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")  # 0 ended in "no median for empty data"
    return value


def failed_row(scenario: str, exc: BaseException, device: str | None = None) -> Result:
    """A row that says why a scenario has no figures: a run on a lent GPU cannot be asked again."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
    try:
        device = device or device_name()
    except Exception:
        device = "?"
    return Result(scenario, device, None, None, notes=f"failed: {text}", extra={"status": "failed"})


def _versions() -> dict[str, str]:
    """What the figures were measured with, so JSON lines from different runs can be compared."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("invoke-repl", "torch", "diffusers", "transformers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "?"
    return found


def _report(results: list[Result], json_file: Path | None) -> None:
    for result in results:
        print(result.line(), flush=True)
        if json_file is not None:
            record = asdict(result) | {
                "ratio": result.ratio,
                "status": result.extra.get("status", "ok"),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "versions": _versions(),
            }
            # Strict JSON: a NaN (a failed row's timing) is not JSON, and strict readers refused the whole line.
            record = {k: (None if isinstance(v, float) and v != v else v) for k, v in record.items()}
            with open(json_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, allow_nan=False, default=str) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
