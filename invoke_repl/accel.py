"""The GPU fast path: memory layout, fused attention projections and a compiled UNet, where they pay.

Only CUDA gets it. The measurements behind it are GPU ones (issue 7, H200, SD 1.5, 512², 50 steps: torch.compile
with channels_last took k_euler from 1.61 s to 1.12 s per image, after a 65 s compile). On this project's 2-core CPU
a compile takes minutes for an image that takes 0.4 s, so the CPU stays eager.

Interactive sessions (and ``--compile on``) compile; one-shot scripts do not, since their few images would only
compete with the compiler. The compiled UNet is built in a background thread for each exact (input shape, context
shape, dtype) the user generates at, while the eager UNet keeps serving: the first command at a new size never
waits for a compile, and a later one at the same size picks the compiled UNet up once it is ready. Dynamo guards
on shapes, so a compiled UNet is only ever called with the shapes it was built for (a mismatch would recompile
inside the user's command). Inductor's FX graph cache lives under the user's cache folder, so a restart reuses
earlier compiles.

On top of either UNet (eager or compiled), each exact shape gets a CUDA graph: issue 7 measured that at batch 1
the GPU mostly waits for kernel launches (batch 4 cost 1.73 s against 1.65 s for batch 1, stock, H200), and a graph
replays the whole UNet forward with one launch. It is captured in the thread that runs the command, on the first
step of the first command at that shape (two warm-up forwards and the capture: 0.13 s for SD 1.5 at 512² on an
H200, `python -m invoke_repl.bench gpu`), and replaced by a graph of the compiled UNet once that is ready. There it
took a 50-step image from 2.4 s (uncompiled, no graph) to 0.56 s, and with the compiled UNet to 0.36 s.
Inductor's own CUDA graphs ("reduce-overhead") are not used: they record per thread, and the compile runs in a
background thread.

``INVOKE_REPL_FAST_PATH=0`` turns all of it off (for comparisons and bug reports); ``INVOKE_REPL_COMPILE=0`` keeps
the layout changes and graphs but never compiles; ``INVOKE_REPL_CUDA_GRAPHS=0`` keeps the rest without graphs.
``INVOKE_REPL_COMPILE=regional`` compiles only the UNet's repeated transformer blocks (see `regional_compile`);
``INVOKE_REPL_COMPILE=staged`` builds that first and the full compile after it (see `compile_mode`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from invoke_repl.components import Components

ShapeKey = tuple[tuple[int, ...], tuple[int, ...], str]

# GPU work of the background compile (its warm-up calls: tracing, Inductor's autotuning, which synchronizes the
# whole device, the first runs) and a CUDA graph capture on the command thread must not overlap. A capture is
# invalidated by a device-wide synchronize from another thread, and while it runs the process's CUDA generator
# refuses other threads' random draws. The compile thread holds this lock through its warm-up; a capture only
# tries it, and when it is taken the step runs without a graph and the capture is tried again at the next one.
GPU_WORK = threading.Lock()


def fast_path_enabled(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get("INVOKE_REPL_FAST_PATH", "1") != "0"


def compile_enabled(device: torch.device) -> bool:
    return fast_path_enabled(device) and os.environ.get("INVOKE_REPL_COMPILE", "1") != "0"


def compile_mode() -> str:
    """Which compile the background thread builds (``INVOKE_REPL_COMPILE``): the whole UNet ("full", the one
    measured on a GPU so far), only its repeated blocks ("regional"), or the regional one first and then the full
    one, each serving as soon as it is ready ("staged": the regional compile's short warm-up with the full one's
    final speed)."""
    value = os.environ.get("INVOKE_REPL_COMPILE", "1").strip().lower()
    return value if value in ("regional", "staged") else "full"


def compile_stages(mode: str | None = None) -> tuple[tuple[str, Callable[[Any], Callable[..., Any]]], ...]:
    """(label, compile function) per stage of `mode`, in the order they are built; a later one replaces an earlier."""
    mode = mode or compile_mode()
    if mode == "regional":
        return (("regional", regional_compile),)
    if mode == "staged":
        return (("regional", _regional_only), ("full", _torch_compile))
    return (("full", _torch_compile),)


def graphs_enabled(device: torch.device) -> bool:
    return fast_path_enabled(device) and os.environ.get("INVOKE_REPL_CUDA_GRAPHS", "1") != "0"


def optimise_layout(components: Components, *, force: bool = False) -> list[str]:
    """channels_last for the convolution-heavy UNet and VAE, fused QKV projections in the UNet's attention.

    Idempotent (the steps done are kept in ``components.extras["fast_path"]``). `force` applies it on any device,
    which is how the tests check on the CPU that it leaves the numbers alone.
    """
    import torch

    done: list[str] = components.extras.setdefault("fast_path", [])
    if not (force or fast_path_enabled(components.device)):
        return done
    if "channels_last" not in done and os.environ.get("INVOKE_REPL_CHANNELS_LAST", "1") != "0":
        components.unet.to(memory_format=torch.channels_last)
        components.vae.to(memory_format=torch.channels_last)
        done.append("channels_last")
    if "fused_qkv" not in done:
        try:
            components.unet.fuse_qkv_projections()
        except (AttributeError, ValueError):  # older diffusers, or added-KV attention: plain projections stay
            pass
        else:
            done.append("fused_qkv")
    if "fused_qkv" in done:
        share_unfused_projections(components.unet)  # again after every move: `.to()` copies each tensor apart
    return done


def share_unfused_projections(unet: Any) -> None:
    """Point the projections that fusing left unused at slices of the fused weights, so they cost no memory.

    diffusers' `fuse_qkv_projections` keeps `to_q/to_k/to_v` beside the new `to_qkv` (and `to_k/to_v` beside
    `to_kv` in cross-attention), though its fused processor reads only the fused ones (and the cross-attention's
    `to_q`). For SD 1.5 that is about 47 M duplicated parameters, 0.09 GiB in fp16: the first GPU check (H200,
    2026-11-27) measured our peak allocation 0.05 GiB above stock's. Slices keep the same values, so any code that
    still reads the old projections gets the right numbers.
    """
    for module in unet.modules():
        if not getattr(module, "fused_projections", False):
            continue
        fused, parts = (
            (module.to_kv, (module.to_k, module.to_v))
            if getattr(module, "is_cross_attention", False)
            else (module.to_qkv, (module.to_q, module.to_k, module.to_v))
        )
        start = 0
        for part in parts:
            rows = part.weight.shape[0]
            part.weight.data = fused.weight.data[start : start + rows]
            if part.bias is not None and fused.bias is not None:
                part.bias.data = fused.bias.data[start : start + rows]
            start += rows


def shape_key(sample: torch.Tensor, context: torch.Tensor) -> ShapeKey:
    return tuple(sample.shape), tuple(context.shape), str(sample.dtype)


@dataclass
class _Entry:
    state: str = "compiling"  # compiling | ready | failed (ready: at least one stage serves)
    forward: Callable[..., Any] | None = None
    seconds: float = 0.0  # until the first stage served: the warm-up a user waits through at this shape
    error: str = ""
    stages: dict[str, float] = field(default_factory=dict)  # label → seconds of each stage that succeeded
    failures: dict[str, str] = field(default_factory=dict)  # label → why a stage failed or was skipped
    go: threading.Event = field(default_factory=threading.Event)  # set: the next stage may start (see release)
    gated: bool = False  # stages wait for `release` (CUDA graphs on)


@dataclass
class CompiledUNets:
    """Compiled UNets of one loaded model, keyed by exact input shapes; owns the background compile threads.

    `compile_fn` turns the UNet module into a callable (the tests pass a fake); without it the stages of
    `compile_mode()` run, one after the other in the same background thread, each taking over once it is ready.
    `stages` sets them explicitly, as (label, compile function) pairs. `notices` collects one line per finished
    stage, for the session to print between commands.
    """

    compile_fn: Callable[[Any], Callable[..., Any]] | None = None
    stages: tuple[tuple[str, Callable[[Any], Callable[..., Any]]], ...] = ()
    entries: dict[ShapeKey, _Entry] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)
    closed: bool = False  # set when the model moved or went away: running compiles publish nothing more

    def forward_for(
        self, unet: Any, sample: torch.Tensor, context: torch.Tensor, *, gated: bool = False
    ) -> Callable[..., Any]:
        """The compiled UNet for these shapes if it is ready, else `unet` itself (and a compile is started).

        `gated` (CUDA graphs on): each stage waits for `release(key)`, which the caller gives once the forward
        serving now is captured in a graph. The GPU is then free for the capture (see GPU_WORK) and the UNet
        keeps the speed of a graph while the next stage compiles, instead of running ungraphed until it is done.
        """
        key = shape_key(sample, context)
        with self.lock:
            entry = self.entries.get(key)
            if entry is None and not self.closed:
                entry = self.entries[key] = _Entry(gated=gated)
                if not gated:
                    entry.go.set()
                thread = threading.Thread(
                    target=self._compile, args=(unet, key, sample, context), name="invoke-compile", daemon=True
                )
                self.threads.append(thread)
                self.notices.append(f"compiling the UNet for {_describe(key)} in the background (uncompiled meanwhile)")
                thread.start()
            if entry is not None and entry.state == "ready" and entry.forward is not None:
                return entry.forward
        return unet

    def release(self, key: ShapeKey) -> None:
        """The forward serving `key` now has its graph (or graphs are off): the next stage may compile."""
        entry = self.entries.get(key)
        if entry is not None:
            entry.go.set()

    def held_back(self, key: ShapeKey) -> bool:
        entry = self.entries.get(key)
        return entry is not None and not entry.go.is_set()

    def close(self) -> None:
        """The UNet these compiles are for moved or went away: running compiles publish nothing, and stages not
        begun never begin (a compile cannot be interrupted, but its result is dropped)."""
        with self.lock:
            self.closed = True
            for entry in self.entries.values():
                entry.go.set()

    def take_notices(self) -> list[str]:
        with self.lock:
            out, self.notices = self.notices, []
        return out

    def wait(self, timeout: float | None = None) -> None:
        """Join the compile threads (benchmarks and tests; the REPL never waits)."""
        for thread in list(self.threads):
            thread.join(timeout)

    def wait_for_stage(self, label: str, timeout: float = 600.0) -> bool:
        """Block until some shape's `label` stage serves (True), or until it failed or was skipped, every compile
        thread ended, or `timeout` passed (False). For the benchmark and the tests, which time one stage before
        letting the next one start: a failed stage must not leave them waiting on a stage held back for it."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if any(label in entry.stages for entry in self.entries.values()):
                    return True
                if any(label in entry.failures for entry in self.entries.values()):
                    return False
            if time.monotonic() >= deadline or not any(thread.is_alive() for thread in self.threads):
                with self.lock:
                    return any(label in entry.stages for entry in self.entries.values())
            time.sleep(0.01)

    def _stages(self) -> tuple[tuple[str, Callable[[Any], Callable[..., Any]]], ...]:
        if self.stages:
            return self.stages
        if self.compile_fn is not None:
            return (("", self.compile_fn),)
        return compile_stages()

    def _compile(self, unet: Any, key: ShapeKey, sample: torch.Tensor, context: torch.Tensor) -> None:
        started = time.perf_counter()
        entry = self.entries[key]
        stages = self._stages()
        for number, (label, compile_fn) in enumerate(stages):
            entry.go.wait()
            if self.closed:
                return
            stage_started = time.perf_counter()
            more = number + 1 < len(stages)
            try:
                forward = _build(compile_fn, unet, sample, context)
            except _NotApplicable:
                with self.lock:
                    entry.failures[label] = "not applicable to this UNet"
                continue
            except Exception as exc:  # a compile failure must never reach the user's command: eager keeps serving
                error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                name = f"{label} compile" if label else "compile"
                with self.lock:
                    entry.error = entry.failures[label] = error
                    if entry.state == "ready":
                        staying = "keeping the one before"
                    else:
                        entry.state = "compiling" if more else "failed"
                        staying = "uncompiled meanwhile" if more else "staying uncompiled"
                    self.notices.append(f"{name} for {_describe(key)} failed, {staying} ({error})")
                continue
            now = time.perf_counter()
            with self.lock:
                if self.closed:
                    return
                if entry.state != "ready":
                    entry.seconds = now - started
                entry.state, entry.forward = "ready", forward
                entry.stages[label] = now - stage_started
                if more and entry.gated:
                    entry.go.clear()  # the next stage waits until this forward has its graph
                what = f"the UNet ({label})" if label else "the UNet"
                follows = f"; the {stages[number + 1][0]} compile follows" if more else ""
                self.notices.append(
                    f"compiled {what} for {_describe(key)} in {now - stage_started:.1f} s; next images use it{follows}"
                )
        if entry.state == "compiling":  # no stage applied to this UNet: nothing will ever serve
            with self.lock:
                entry.state, entry.error = "failed", entry.error or "no compile applies to this UNet"
                self.notices.append(f"compile for {_describe(key)} failed, staying uncompiled ({entry.error})")


class _NotApplicable(Exception):
    """A stage that cannot apply to this UNet (regional compile without repeated blocks): skipped, not a failure."""


def _build(
    compile_fn: Callable[[Any], Callable[..., Any]], unet: Any, sample: torch.Tensor, context: torch.Tensor
) -> Callable[..., Any]:
    """`compile_fn(unet)`, finished: its two warm-up calls at these shapes run the compile before it may serve."""
    import torch

    # Drawn on the CPU: a draw from the CUDA generator raises while the command thread captures a graph.
    dummy_sample = torch.randn(sample.shape).to(device=sample.device, dtype=sample.dtype)
    dummy_context = torch.randn(context.shape).to(device=context.device, dtype=context.dtype)
    timestep = torch.tensor(999.0, device=sample.device)

    def forward(latents: Any, t: Any, **kwargs: Any) -> Any:
        # Timesteps come as int64 (DDIM, PLMS) or float (k-samplers); the UNet's embedding casts to float first
        # anyway, so one float graph serves both instead of two guarded recompiles. Dynamo guards on strides too,
        # so inputs are made contiguous as the warm-up's were (an expanded context has stride 0 at CFG 1).
        return compiled(latents.contiguous(), t.float(), **{k: _contiguous(v) for k, v in kwargs.items()})

    with GPU_WORK:  # no graph capture while this thread traces, autotunes and first runs the compiled code
        compiled = compile_fn(unet)
        with torch.no_grad():  # the grad mode the denoise loop runs in: Dynamo guards on it
            for _ in range(2):  # the second call runs the compiled code: the compile is finished after it
                forward(dummy_sample, timestep, encoder_hidden_states=dummy_context, return_dict=False)
        if sample.device.type == "cuda":
            torch.cuda.current_stream(sample.device).synchronize()
    return forward


def _contiguous(value: Any) -> Any:
    return value.contiguous() if hasattr(value, "contiguous") else value


def _describe(key: ShapeKey) -> str:
    (batch, _channels, h, w), (_b, tokens, _width), dtype = key
    return f"latents {w}×{h} batch {batch}, {tokens} tokens, {dtype.removeprefix('torch.')}"


def _torch_compile(unet: Any) -> Callable[..., Any]:
    import torch

    _prepare_compiler()
    # Plain inductor: CUDA graphs ("reduce-overhead") record per thread and would re-record in the thread that
    # serves the REPL; max-autotune had not finished after 6 minutes in issue 7's measurement.
    return torch.compile(unet, fullgraph=False, dynamic=False)


# Dynamo keeps its compiled code per Python function, for every wrapper of it: with its default limit of 8 entries
# (torch 2.13), a session's ninth UNet shape, or with regional compilation its third (four block shapes each at
# 512²), fell back to eager with only a logged warning, which `_prepare_compiler` silences, so the session would
# have announced a compile it never used. 64 shapes is more than a session meets; past it the compile fails, and
# the session says so in one line.
RECOMPILE_LIMIT = 64


def _prepare_compiler() -> None:
    import logging

    import torch._dynamo.config as dynamo_config

    _use_disk_cache()
    if getattr(dynamo_config, "recompile_limit", RECOMPILE_LIMIT) < RECOMPILE_LIMIT:
        dynamo_config.recompile_limit = RECOMPILE_LIMIT
    if hasattr(dynamo_config, "fail_on_recompile_limit_hit"):
        dynamo_config.fail_on_recompile_limit_hit = True
    # Dynamo and Inductor log graph breaks and autotuning as warnings; from a background thread they would print
    # over the prompt. A failure still reaches the user as one line, from `CompiledUNets._compile`.
    for name in ("torch._dynamo", "torch._inductor"):
        logging.getLogger(name).setLevel(logging.ERROR)


def regional_compile(unet: Any, backend: str | Callable[..., Any] = "inductor") -> Callable[..., Any]:
    """A twin of `unet` whose repeated blocks are compiled, sharing every parameter and buffer with it.

    Regional compilation (diffusers' `compile_repeated_blocks`; PyTorch's regional-compilation recipe) compiles one
    transformer block per distinct input shape and reuses the code for every block of that shape, instead of
    tracing the whole UNet: the aim is issue 7's warm-up target (a full compile of SD 1.5 at 512² took 60.5 s on an
    H200, the target is 30 s). Resnets and convolutions stay eager; the CUDA graph around the forward still removes
    their launch overhead. It works on a twin because compiling a block in place would also change the eager UNet
    that keeps serving (and would compile inside the user's command). The twin shares the Parameter objects, so it
    costs no weight memory and sees the same values.
    """
    if not has_repeated_blocks(unet):  # older diffusers, or a UNet class naming no repeated blocks
        return _torch_compile(unet)
    return _regional_twin(unet, backend)


def has_repeated_blocks(unet: Any) -> bool:
    """Whether diffusers can compile this UNet regionally: it names its repeated block classes and has some."""
    names = getattr(unet, "_repeated_blocks", None)
    if not names or not callable(getattr(unet, "compile_repeated_blocks", None)):
        return False
    return any(type(module).__name__ in names for module in unet.modules())


def _regional_only(unet: Any) -> Callable[..., Any]:
    """The staged mode's first stage: regional or nothing (its second stage is the full compile already)."""
    if not has_repeated_blocks(unet):
        raise _NotApplicable
    return _regional_twin(unet, "inductor")


def _regional_twin(unet: Any, backend: str | Callable[..., Any]) -> Any:
    import copy
    import itertools

    _prepare_compiler()
    shared = {id(t): t for t in itertools.chain(unet.parameters(), unet.buffers())}
    twin = copy.deepcopy(unet, shared)
    twin.compile_repeated_blocks(fullgraph=True, dynamic=False, backend=backend)
    return twin


def _use_disk_cache() -> None:
    """Inductor's caches under ~/.cache/invoke-repl/inductor (XDG), so restarts reuse earlier compiles."""
    from invoke_repl.catalogue import user_cache_dir

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(user_cache_dir() / "inductor"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


def compiled_unets(components: Components) -> CompiledUNets | None:
    """The model's compile registry when compiling is on for its device (created on first use), else None."""
    if not compile_enabled(components.device):
        return None
    registry = components.extras.get("compiled_unets")
    if registry is None:
        registry = components.extras["compiled_unets"] = CompiledUNets()
    return registry


def unet_forward(components: Components, sample: torch.Tensor, context: torch.Tensor) -> Callable[..., Any]:
    """What the denoise loop calls for these shapes: a CUDA graph of the compiled UNet when ready, else of the module
    (or the bare module where graphs are off: the CPU, or ``INVOKE_REPL_CUDA_GRAPHS=0``)."""
    registry = components.extras.get("compiled_unets")  # the session creates it when it wants compiles
    graphs = cuda_graphs(components)
    if registry is None:
        forward = components.unet
    else:  # with graphs, each compile stage waits until the forward serving now has its graph (see GPU_WORK)
        forward = registry.forward_for(components.unet, sample, context, gated=graphs is not None)
    if graphs is None:
        return forward
    graphed = graphs.forward_for(forward, sample, context)
    key = shape_key(sample, context)
    if registry is None or not registry.held_back(key):
        return graphed

    def capture_then_compile(latents: Any, t: Any, **kwargs: Any) -> Any:
        out = graphed(latents, t, **kwargs)  # captures the graph when the GPU is free (else tried next step)
        # Only while this forward is still the newest: a stage that finished during this batch published another
        # one, and the stage after it must wait for that one's graph, not this one's.
        entry = registry.entries.get(key)
        if entry is not None and entry.forward in (None, forward) and graphs.serves(key, forward):
            registry.release(key)
        return out

    return capture_then_compile


def cuda_graphs(components: Components) -> CudaGraphs | None:
    """The model's CUDA graph cache (created on first use where graphs are on); a test may plant one with a fake
    capture, and ``extras["cuda_graphs"] = False`` turns graphs off for one model (the benchmark's eager rows)."""
    graphs = components.extras.get("cuda_graphs")
    if graphs is None and graphs_enabled(components.device):
        graphs = components.extras["cuda_graphs"] = CudaGraphs()
    return graphs or None


def forget_compiled(components: Components) -> None:
    """Drop compiled UNets and graphs (the model moved device or dtype: their guards and buffers no longer fit)."""
    registry = components.extras.pop("compiled_unets", None)
    if registry is not None:
        registry.close()  # a compile still running for the old placement publishes nothing
    if components.extras.get("cuda_graphs") is not False:
        components.extras.pop("cuda_graphs", None)


Replay = Callable[..., Any]


@dataclass
class CudaGraphs:
    """CUDA graphs of one model's UNet forward, one per exact (input shape, context shape, dtype).

    A graph is captured on the first call for its shape, from that call's own inputs, and replayed from then on:
    inputs are copied into the graph's static buffers, the output is cloned out of its static one (the next replay
    overwrites it). A graph remembers which forward it captured (eager or compiled); a different one for the same
    shape replaces it. At most `limit` graphs are kept (each holds a forward's worth of activation memory),
    least recently used dropped first. `capture_fn(forward, sample, t, context) -> replay` stands in for the real
    capture (the tests pass a fake). A capture that fails is reported once and that shape stays ungraphed for that
    forward (the compiled UNet, when it comes, still gets its try).

    All real captures of one model share one memory pool. Each graph keeps the blocks its forward used as its
    own, and a private pool per graph held one forward's activations per shape, plus those of a replaced or
    dropped graph until `torch.cuda.empty_cache()`. The first GPU check measured 0.6 GiB more reserved memory than
    stock with two shapes' graphs held (README, Measurements). A shared pool holds the largest instead of the sum.
    PyTorch allows sharing a pool between graphs that never replay concurrently: these replay one at a time on
    the thread that runs the command. Each keeps its static output alive, so no graph can take another's output,
    and inputs are copied into buffers allocated outside the pool.
    """

    capture_fn: Callable[..., Replay] | None = None
    limit: int = 4
    pool: Any = None  # the real captures' shared memory pool, made on the first one
    graphs: dict[ShapeKey, tuple[Callable[..., Any], Replay]] = field(default_factory=dict)
    failed: dict[tuple[ShapeKey, int], str] = field(default_factory=dict)  # (shapes, id of the forward)
    notices: list[str] = field(default_factory=list)
    captures: int = 0
    seconds: float = 0.0
    off: str = ""  # why graphs were turned off for this model (a capture failed), else ""

    def forward_for(self, forward: Callable[..., Any], sample: torch.Tensor, context: torch.Tensor) -> Replay:
        key = shape_key(sample, context)
        if self.off or (key, id(forward)) in self.failed:
            return forward
        held = self.graphs.get(key)
        if held is not None and held[0] is forward:
            self.graphs[key] = self.graphs.pop(key)  # most recently used last
            return held[1]

        def first_call(latents: Any, t: Any, **kwargs: Any) -> Any:
            held = self.graphs.get(key)
            if held is None or held[0] is not forward:
                if self.off or (key, id(forward)) in self.failed:
                    return forward(latents, t, **kwargs)
                if self._capture(key, forward, latents, t, kwargs) is None:
                    # The GPU is busy with a compile: an older graph of this shape (the same function, from an
                    # earlier forward) still serves, else the forward itself; the capture is tried next step.
                    return (held[1] if held is not None else forward)(latents, t, **kwargs)
                held = self.graphs.get(key)
            return (held[1] if held is not None else forward)(latents, t, **kwargs)

        return first_call

    def serves(self, key: ShapeKey, forward: Callable[..., Any]) -> bool:
        """Whether `forward` is settled for `key`: graphed, or never to be (its capture failed, graphs are off)."""
        held = self.graphs.get(key)
        return bool(self.off) or (key, id(forward)) in self.failed or (held is not None and held[0] is forward)

    def take_notices(self) -> list[str]:
        out, self.notices = self.notices, []
        return out

    def _capture(self, key: ShapeKey, forward: Callable[..., Any], latents: Any, t: Any, kwargs: dict) -> bool | None:
        """Capture `forward` for `key`: True when captured, False when it failed, None when a compile holds the GPU
        (try again later). A real capture that fails turns graphs off for this model: CUDA leaves the failed
        capture's allocator routing and generator state behind, and the next capture would inherit them."""
        if set(kwargs) - {"encoder_hidden_states", "return_dict"} or kwargs.get("return_dict", True):
            self.failed[key, id(forward)] = "not the denoise loop's call"  # only that signature is graphed
            return False
        real = self.capture_fn is None
        if real and not GPU_WORK.acquire(blocking=False):
            return None
        # An older graph of this shape (of the eager UNet) stays held until this capture is done: the new graph
        # reuses its activation blocks through the shared pool anyway, and while a graph holds the pool it cannot
        # be released under the capture.
        started = time.perf_counter()
        try:
            # Float timesteps in the static buffer: DDIM's int64 ones embed identically, while k-samplers' fractional
            # ones would be truncated by a buffer captured as int64.
            if self.capture_fn is not None:
                replay = self.capture_fn(forward, latents, t.float(), kwargs["encoder_hidden_states"])
            else:
                if self.pool is None or not self.graphs:  # a pool no graph holds any more may be freed already
                    self.pool = _new_graph_pool()
                replay = _capture_cuda_graph(forward, latents, t.float(), kwargs["encoder_hidden_states"], self.pool)
        except Exception as exc:  # a failed capture must never reach the user's command: ungraphed keeps serving
            error = self.failed[key, id(forward)] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            if real:
                self.off = error
                self.graphs.clear()
                self.notices.append(
                    f"CUDA graph for {_describe(key)} failed, so graphs are off for this model ({error})"
                )
            else:
                self.notices.append(f"CUDA graph for {_describe(key)} failed, staying without ({error})")
                self.graphs.pop(key, None)
            return False
        finally:
            if real:
                GPU_WORK.release()
        self.captures += 1
        self.seconds += time.perf_counter() - started
        self.graphs.pop(key, None)
        self.graphs[key] = (forward, replay)
        while len(self.graphs) > self.limit:
            self.graphs.pop(next(iter(self.graphs)))
        return True


def _new_graph_pool() -> Any:
    import torch

    return torch.cuda.graph_pool_handle()


def _capture_cuda_graph(forward: Callable[..., Any], latents: Any, t: Any, context: Any, pool: Any = None) -> Replay:
    """Capture `forward` for these shapes; the replay copies inputs in and clones the output out.

    Two warm-up calls on a side stream first (PyTorch's recipe: lazy initialisation, cuDNN's algorithm choice and
    the allocator's first blocks must not happen inside the capture). ``thread_local`` capture lets a background
    compile keep launching work on its own thread meanwhile.
    """
    import torch

    static_x, static_t, static_ctx = latents.clone(), t.clone(), context.clone()
    device = static_x.device
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(2):
            forward(static_x, static_t, encoder_hidden_states=static_ctx, return_dict=False)
    here = torch.cuda.current_stream(device)
    here.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # The outer stream context puts this thread back on its own stream even when the capture fails: torch.cuda.graph
    # ends the capture before it leaves its capture stream, so an error there would leave the thread on that stream.
    with torch.cuda.stream(here):
        with torch.no_grad(), torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            static_out = forward(static_x, static_t, encoder_hidden_states=static_ctx, return_dict=False)[0]

    def replay(sample: Any, timestep: Any, *, encoder_hidden_states: Any, return_dict: bool = False) -> Any:
        static_x.copy_(sample)
        static_t.copy_(timestep)
        static_ctx.copy_(encoder_hidden_states)
        graph.replay()
        return (static_out.clone(),)

    return replay
