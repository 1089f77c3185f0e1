"""The GPU fast path's logic, checked on the CPU: layout changes keep the numbers, compiles never block a command.

The real torch.compile is not run here (minutes on 2 cores); a fake compiler stands in, so what is tested is the
orchestration: eager serves while the compile runs, the compiled UNet is used only for the shapes it was built
for, a failed compile is reported and ignored. The speed itself is measured by ``python -m invoke_repl.bench --gpu``.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from invoke_repl import accel
from invoke_repl.builtin import build_tiny_random
from invoke_repl.generator import generate
from invoke_repl.request import Request


def unet_output(components, sample, context):
    with torch.no_grad():
        return components.unet(sample, torch.tensor(500.0), encoder_hidden_states=context, return_dict=False)[0]


def test_layout_changes_keep_the_unet_output():
    components = build_tiny_random()
    torch.manual_seed(0)
    sample = torch.randn(2, 4, 16, 16)
    context = torch.randn(2, 77, components.text_encoder.config.hidden_size)
    before = unet_output(components, sample, context)
    done = accel.optimise_layout(components, force=True)
    assert done == ["channels_last", "fused_qkv"]
    assert components.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert any(getattr(m, "fused_projections", False) for m in components.unet.modules())
    after = unet_output(components, sample, context)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert accel.optimise_layout(components, force=True) == done  # idempotent


def _unique_bytes(module):
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in module.parameters()}
    return sum(storages.values())


def test_fusing_keeps_no_second_copy_of_the_attention_weights():
    from invoke_repl.models import _move

    components = build_tiny_random()
    originals = {n: p.detach().clone() for n, p in components.unet.named_parameters() if ".to_" in n}
    unfused_bytes = _unique_bytes(components.unet)
    accel.optimise_layout(components, force=True)
    assert _unique_bytes(components.unet) == unfused_bytes  # the fused weights took the old ones' place
    _move(components, torch.device("cpu"), torch.float64, pin=False)  # a move copies every tensor apart
    accel.optimise_layout(components, force=True)  # … and the layout step shares them again
    assert _unique_bytes(components.unet) == 2 * unfused_bytes  # float64: twice the bytes, still one copy
    params = dict(components.unet.named_parameters())
    for name, value in originals.items():  # the old projections still read the same numbers
        torch.testing.assert_close(params[name], value.double(), rtol=0, atol=0)


def test_cpu_models_stay_eager_and_unchanged(components):
    assert accel.optimise_layout(components) == []
    assert not any(getattr(m, "fused_projections", False) for m in components.unet.modules())
    assert accel.compiled_unets(components) is None
    sample, context = torch.zeros(1, 4, 8, 8), torch.zeros(1, 77, 32)
    assert accel.unet_forward(components, sample, context) is components.unet


class FakeCompiler:
    """Wraps the UNet, records every shape its compiled form is called with; can block or fail on demand."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.release = threading.Event()
        self.release.set()
        self.calls: list[tuple] = []
        self.modes: set[tuple[bool, bool]] = set()  # grad / inference mode seen: Dynamo guards on them
        self.built = 0

    def __call__(self, unet):
        self.release.wait(30)
        if self.fail:
            raise RuntimeError("inductor exploded\nsecond line")
        self.built += 1

        def compiled(sample, t, **kwargs):
            self.calls.append((tuple(sample.shape), t.dtype, tuple(kwargs["encoder_hidden_states"].shape)))
            self.modes.add((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
            return unet(sample, t, **kwargs)

        return compiled


def one_image(components, **fields):
    request = Request(prompt="a red circle", steps=fields.pop("steps", 4), seed=fields.pop("seed", 7), **fields)
    (result,) = generate(components, request, progress=False)
    return np.asarray(result.image)


def test_eager_serves_while_compiling_then_the_compiled_unet_takes_over():
    components = build_tiny_random()
    plain = one_image(components, sampler="ddim")
    fake = FakeCompiler()
    fake.release.clear()  # hold the compile: the first command must not wait for it
    registry = components.extras["compiled_unets"] = accel.CompiledUNets(compile_fn=fake)
    first = one_image(components, sampler="ddim")
    assert fake.calls == [] and fake.built == 0
    assert np.array_equal(first, plain)
    fake.release.set()
    registry.wait(30)
    notices = registry.take_notices()
    assert notices[0].startswith("compiling the UNet for latents 16×16 batch 2, 77 tokens")
    assert (
        notices[1].startswith("compiled the UNet for latents 16×16 batch 2") and " s; next images use it" in notices[1]
    )
    warmup = len(fake.calls)
    second = one_image(components, sampler="ddim")
    assert np.array_equal(second, plain)  # same function, so the same pixels
    used = fake.calls[warmup:]
    assert len(used) == 4  # every step of the second command went through the compiled UNet
    # int64 DDIM timesteps arrive as float: one graph for every sampler
    assert set(used) == {((2, 4, 16, 16), torch.float32, (2, 77, 32))}
    assert fake.modes == {(False, False)}  # warm-up and serving in the same mode: no recompile in a command


def test_a_new_shape_gets_its_own_compile_and_never_the_old_one():
    components = build_tiny_random()
    fake = FakeCompiler()
    registry = components.extras["compiled_unets"] = accel.CompiledUNets(compile_fn=fake)
    one_image(components)
    registry.wait(30)
    one_image(components, width=48, height=32)  # a new size starts a second compile, runs eager meanwhile
    registry.wait(30)
    one_image(components, width=48, height=32)
    one_image(components, cfg_scale=1.0)  # unguided: batch 1, a third key
    registry.wait(30)
    assert fake.built == 3
    keys = set(registry.entries)
    assert {k[0] for k in keys} == {(2, 4, 16, 16), (2, 4, 8, 12), (1, 4, 16, 16)}
    for sample_shape, _dtype, context_shape in fake.calls:
        assert (sample_shape, context_shape) in {(k[0], k[1]) for k in keys}


def test_failed_compile_is_reported_once_and_eager_keeps_working():
    components = build_tiny_random()
    plain = one_image(components)
    registry = components.extras["compiled_unets"] = accel.CompiledUNets(compile_fn=FakeCompiler(fail=True))
    one_image(components)
    registry.wait(30)
    notices = registry.take_notices()
    assert notices[-1] == (
        "compile for latents 16×16 batch 2, 77 tokens, float32 failed, staying uncompiled "
        "(RuntimeError: inductor exploded)"
    )
    assert np.array_equal(one_image(components), plain)
    assert registry.take_notices() == []  # not retried for the same shapes


def test_moving_a_model_forgets_its_compiled_unets():
    from invoke_repl.models import _move

    components = build_tiny_random()
    components.extras["compiled_unets"] = accel.CompiledUNets(compile_fn=FakeCompiler())
    _move(components, torch.device("cpu"), None, pin=False)
    assert "compiled_unets" not in components.extras


def test_regional_compile_shares_the_weights_keeps_the_output_and_leaves_the_served_unet_eager():
    """Dynamo traces each transformer block with fullgraph=True here (backend "eager": no C++ compile on 2 cores),
    so a graph break in a block fails this test before it could fail a GPU user's background compile."""
    components = build_tiny_random()
    accel.optimise_layout(components, force=True)  # fused QKV, shared slices: what a GPU model has
    torch.manual_seed(0)
    sample = torch.randn(2, 4, 16, 16)
    context = torch.randn(2, 77, components.text_encoder.config.hidden_size)
    expected = unet_output(components, sample, context)
    twin = accel.regional_compile(components.unet, backend="eager")
    blocks = [m for m in twin.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert blocks and all(m._compiled_call_impl is not None for m in blocks)
    assert not any(getattr(m, "_compiled_call_impl", None) for m in components.unet.modules())
    served = {p.data_ptr() for p in components.unet.parameters()}
    assert {p.data_ptr() for p in twin.parameters()} <= served  # no weight was copied
    with torch.no_grad():
        got = twin(sample, torch.tensor(500.0), encoder_hidden_states=context, return_dict=False)[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with torch.no_grad():  # the twin follows the served weights: they are the same tensors
        components.unet.conv_in.bias.add_(1.0)
    torch.testing.assert_close(twin.conv_in.bias, components.unet.conv_in.bias, rtol=0, atol=0)


def _recording(label, compile_fn, served, gate=None):
    """`compile_fn` whose compiled UNet notes `label` in `served` on every call; its build waits for `gate`."""

    def build(unet):
        if gate is not None:
            assert gate.wait(60)
        compiled = compile_fn(unet)

        def call(*args, **kwargs):
            served.append(label)
            return compiled(*args, **kwargs)

        return call

    return build


def test_staged_compile_serves_the_regional_unet_first_then_the_full_one():
    """The real thing on both stages, with Dynamo's eager backend: the regional twin serves as soon as its blocks
    are traced, then the whole UNet traced in the same thread takes over, and neither changes a pixel."""
    components = build_tiny_random()
    accel.optimise_layout(components, force=True)
    plain = one_image(components, sampler="ddim")
    served: list[str] = []
    full_may_start = threading.Event()
    registry = components.extras["compiled_unets"] = accel.CompiledUNets(
        stages=(
            ("regional", _recording("regional", lambda u: accel.regional_compile(u, backend="eager"), served)),
            (
                "full",
                _recording("full", lambda u: torch.compile(u, backend="eager", dynamic=False), served, full_may_start),
            ),
        )
    )
    assert np.array_equal(one_image(components, sampler="ddim"), plain)  # eager while nothing is compiled
    assert registry.wait_for_stage("regional", 60)
    served.clear()
    assert np.array_equal(one_image(components, sampler="ddim"), plain)
    assert served == ["regional"] * 4
    assert not registry.wait_for_stage("full", 0.2)  # held by the gate: the regional stage keeps serving
    full_may_start.set()
    assert registry.wait_for_stage("full", 120)
    registry.wait(30)
    served.clear()
    assert np.array_equal(one_image(components, sampler="ddim"), plain)
    assert served == ["full"] * 4
    (entry,) = registry.entries.values()
    assert entry.state == "ready" and set(entry.stages) == {"regional", "full"}
    assert entry.seconds == pytest.approx(entry.stages["regional"], abs=0.5)  # warm-up: until the first stage served
    notices = [n for n in registry.take_notices() if n.startswith("compiled")]
    assert notices[0].startswith("compiled the UNet (regional) for latents 16×16 batch 2")
    assert notices[0].endswith("next images use it; the full compile follows")
    assert notices[1].startswith("compiled the UNet (full) for latents 16×16 batch 2")
    assert notices[1].endswith("next images use it")


@pytest.mark.parametrize(
    ("failing", "serving", "meanwhile"),
    [("regional", "full", "uncompiled meanwhile"), ("full", "regional", "keeping the one before")],
)
def test_a_failed_stage_leaves_the_other_one_serving(failing, serving, meanwhile):
    components = build_tiny_random()
    compilers = {label: FakeCompiler(fail=label == failing) for label in ("regional", "full")}
    registry = components.extras["compiled_unets"] = accel.CompiledUNets(
        stages=(("regional", compilers["regional"]), ("full", compilers["full"]))
    )
    one_image(components)
    registry.wait(30)
    notices = registry.take_notices()
    assert (
        f"{failing} compile for latents 16×16 batch 2, 77 tokens, float32 failed, {meanwhile} "
        "(RuntimeError: inductor exploded)"
    ) in notices
    assert any(n.startswith(f"compiled the UNet ({serving}) for latents 16×16") for n in notices)
    (entry,) = registry.entries.values()
    assert entry.state == "ready" and list(entry.stages) == [serving]
    assert entry.failures == {failing: "RuntimeError: inductor exploded"}
    warmup = len(compilers[serving].calls)
    one_image(components)
    assert len(compilers[serving].calls) == warmup + 4


def test_waiting_for_a_failed_stage_returns_at_once_while_the_next_one_is_held_back():
    """The benchmark holds the full stage until the regional one is timed; had the regional one failed, waiting
    for it until the compile thread ends would have waited on that hold (600 s of a lent GPU's minutes)."""
    import time

    components = build_tiny_random()
    release = threading.Event()
    held = _recording("full", FakeCompiler(), [], gate=release)
    registry = components.extras["compiled_unets"] = accel.CompiledUNets(
        stages=(("regional", FakeCompiler(fail=True)), ("full", held))
    )
    one_image(components)
    started = time.monotonic()
    assert registry.wait_for_stage("regional", 30) is False
    assert time.monotonic() - started < 10
    (entry,) = registry.entries.values()
    assert entry.failures == {"regional": "RuntimeError: inductor exploded"} and entry.state == "compiling"
    release.set()
    assert registry.wait_for_stage("full", 30) is True
    registry.wait(30)


def test_staged_mode_skips_the_regional_stage_for_a_unet_without_repeated_blocks():
    components = build_tiny_random()
    assert accel.has_repeated_blocks(components.unet)
    components.unet._repeated_blocks = []  # as a UNet class that names none
    assert not accel.has_repeated_blocks(components.unet)
    full = FakeCompiler()
    registry = components.extras["compiled_unets"] = accel.CompiledUNets(
        stages=(("regional", accel._regional_only), ("full", full))
    )
    one_image(components)
    registry.wait(30)
    notices = registry.take_notices()
    assert len(notices) == 2 and notices[1].startswith("compiled the UNet (full)")  # no failure line
    assert full.built == 1
    assert [label for label, _ in accel.compile_stages("staged")] == ["regional", "full"]
    assert [label for label, _ in accel.compile_stages("full")] == ["full"]


def test_compiles_past_dynamos_default_limit_of_eight_shapes_still_compile(monkeypatch, tmp_path):
    """Dynamo keys compiled code on the function, across wrappers; at its default limit of 8 a ninth shape ran
    eager with only a log line, so a long session would have announced compiles it never used."""
    import torch._dynamo.config as dynamo_config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # _prepare_compiler only sets it when unset
    traced: list[tuple[int, ...]] = []

    def backend(graph, example_inputs):
        traced.append(tuple(example_inputs[0].shape))
        return graph.forward

    def step(x):
        return torch.sin(x) + 1

    # config.patch, not monkeypatch: a config module's entries are not plain attributes, and monkeypatch's undo
    # would delete them
    with dynamo_config.patch(recompile_limit=8, fail_on_recompile_limit_hit=False):
        accel._prepare_compiler()
        assert dynamo_config.fail_on_recompile_limit_hit  # past the raised limit: a reported failure, not eager
        torch._dynamo.reset()
        try:
            for n in range(1, 13):  # one fresh wrapper per shape, as `CompiledUNets` makes one per shape
                torch.compile(step, backend=backend, dynamic=False)(torch.randn(n, 3))
        finally:
            torch._dynamo.reset()
    assert traced == [(n, 3) for n in range(1, 13)]


@pytest.mark.parametrize(
    ("value", "mode"), [("regional", "regional"), (" Regional ", "regional"), ("staged", "staged"), ("1", "full")]
)
def test_compile_mode_follows_the_switch(monkeypatch, value, mode):
    monkeypatch.setenv("INVOKE_REPL_COMPILE", value)
    assert accel.compile_mode() == mode
    assert accel.compile_enabled(torch.device("cuda"))


@pytest.mark.parametrize(("env", "value"), [("INVOKE_REPL_FAST_PATH", "0"), ("INVOKE_REPL_COMPILE", "0")])
def test_switches_turn_the_fast_path_off(monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    cuda = torch.device("cuda")
    assert not accel.compile_enabled(cuda)
    assert accel.fast_path_enabled(cuda) == (env != "INVOKE_REPL_FAST_PATH")


def test_session_prints_when_a_compile_starts_and_what_it_cost(tmp_path):
    import io

    from invoke_repl.models import ModelManager, open_catalogue
    from invoke_repl.session import Session
    from tests.clirun import tiny_catalogue

    manager = ModelManager(open_catalogue(tiny_catalogue(tmp_path)), device="cpu")
    components = manager.get()
    registry = components.extras["compiled_unets"] = accel.CompiledUNets(compile_fn=FakeCompiler())
    err = io.StringIO()
    session = Session(lambda: manager, outdir=tmp_path / "out", out=io.StringIO(), err=err, progress=False)
    assert session.run_line('"a red circle" --steps 2 --seed 1').ok
    registry.wait(30)
    assert session.run_line('"a red circle" --steps 2 --seed 2').ok
    lines = err.getvalue().splitlines()
    started = [k for k, line in enumerate(lines) if line.startswith("compiling the UNet for latents 16×16")]
    finished = [k for k, line in enumerate(lines) if line.startswith("compiled the UNet for latents 16×16")]
    assert len(started) == 1 and len(finished) == 1 and started[0] < finished[0], lines


def test_session_reports_a_failed_graph_capture_once_and_keeps_generating(tmp_path):
    import io

    from invoke_repl.models import ModelManager, open_catalogue
    from invoke_repl.session import Session
    from tests.clirun import tiny_catalogue

    manager = ModelManager(open_catalogue(tiny_catalogue(tmp_path)), device="cpu")
    manager.get().extras["cuda_graphs"] = accel.CudaGraphs(capture_fn=FakeGraphs(fail=True))
    err = io.StringIO()
    session = Session(lambda: manager, outdir=tmp_path / "out", out=io.StringIO(), err=err, progress=False)
    assert session.run_line('"a red circle" --steps 2 --seed 1').ok
    assert session.run_line('"a red circle" --steps 2 --seed 2').ok
    failures = [line for line in err.getvalue().splitlines() if line.startswith("CUDA graph for latents 16×16")]
    assert len(failures) == 1 and failures[0].endswith(
        "(RuntimeError: operation not permitted when stream is capturing)"
    )
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


def test_cpu_session_never_creates_a_compile_registry(tmp_path):
    import io

    from invoke_repl.models import ModelManager, open_catalogue
    from invoke_repl.session import Session
    from tests.clirun import tiny_catalogue

    manager = ModelManager(open_catalogue(tiny_catalogue(tmp_path)), device="cpu")
    err = io.StringIO()
    session = Session(lambda: manager, outdir=tmp_path, out=io.StringIO(), err=err, progress=False, compile_unet=True)
    assert session.run_line('"a red circle" --steps 2 --seed 1').ok
    assert "compiled_unets" not in manager.get().extras and "compil" not in err.getvalue()
    assert "cuda_graphs" not in manager.get().extras


def test_compile_flag_defaults_to_auto():
    from invoke_repl.cli import build_parser

    assert build_parser().parse_args([]).compile == "auto"
    assert build_parser().parse_args(["--compile", "on"]).compile == "on"


class FakeGraphs:
    """Stands in for CUDA graph capture: records each capture; its replay runs the captured forward through static
    buffers the way a real graph does (inputs copied in, one output buffer overwritten by every replay)."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.captured: list[tuple] = []
        self.replays = 0

    def __call__(self, forward, latents, t, context):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captured.append((forward, tuple(latents.shape), tuple(context.shape)))
        static_x, static_t, static_ctx = latents.clone(), t.clone(), context.clone()
        static_out = torch.empty_like(latents)

        def replay(sample, timestep, *, encoder_hidden_states, return_dict=False):
            static_x.copy_(sample)
            static_t.copy_(timestep)
            static_ctx.copy_(encoder_hidden_states)
            static_out.copy_(forward(static_x, static_t, encoder_hidden_states=static_ctx, return_dict=False)[0])
            self.replays += 1
            return (static_out.clone(),)

        return replay


def test_a_cuda_graph_is_captured_once_per_shape_and_replays_every_step_with_the_same_pixels():
    components = build_tiny_random()
    plain = one_image(components, sampler="k_lms")
    plain_ancestral = one_image(components, sampler="k_euler_a", seed=9)
    fake = FakeGraphs()
    graphs = components.extras["cuda_graphs"] = accel.CudaGraphs(capture_fn=fake)
    assert np.array_equal(one_image(components, sampler="k_lms"), plain)
    assert np.array_equal(one_image(components, sampler="k_euler_a", seed=9), plain_ancestral)
    assert [c[1:] for c in fake.captured] == [((2, 4, 16, 16), (2, 77, 32))]  # one capture, two commands
    assert fake.replays == 8  # 4 steps each, all replayed
    one_image(components, width=48, height=32)
    one_image(components, cfg_scale=1.0)
    assert [c[1:] for c in fake.captured][1:] == [((2, 4, 8, 12), (2, 77, 32)), ((1, 4, 16, 16), (1, 77, 32))]
    assert graphs.captures == 3 and graphs.take_notices() == []


def test_every_real_capture_of_a_model_shares_one_memory_pool(monkeypatch):
    """One pool per model: graphs of other shapes, and the compiled UNet's graph replacing the eager one, reuse
    the same activation blocks instead of each keeping its own (run 1 of the GPU check: +0.6 GiB reserved)."""
    pools: list[object] = []
    captured: list[tuple[object, object]] = []

    def new_pool():
        pools.append(object())
        return pools[-1]

    def capture(forward, latents, t, context, pool):
        captured.append((forward, pool))
        return forward

    monkeypatch.setattr(accel, "_new_graph_pool", new_pool)
    monkeypatch.setattr(accel, "_capture_cuda_graph", capture)
    components = build_tiny_random()
    graphs = components.extras["cuda_graphs"] = accel.CudaGraphs()
    registry = components.extras["compiled_unets"] = accel.CompiledUNets(compile_fn=FakeCompiler())
    one_image(components)
    registry.wait(30)
    one_image(components)  # the compiled UNet's graph replaces the eager one's
    one_image(components, width=48, height=32)  # another shape (its eager graph)
    assert len(captured) == 3 and len(pools) == 1
    assert {pool for _, pool in captured} == {pools[0]}
    assert captured[0][0] is components.unet and captured[1][0] is not components.unet
    assert len(graphs.graphs) == 2  # the replaced eager graph is gone; the pool stays held by the others
    graphs.graphs.clear()  # nothing holds the pool now: PyTorch may free it, so the next capture gets a new one
    one_image(components, width=32, height=48)
    assert len(pools) == 2 and captured[-1][1] is pools[1]


def test_a_failed_real_capture_turns_graphs_off_for_the_model(monkeypatch):
    """CUDA leaves a failed capture's allocator routing and generator state behind, so no later capture is tried."""
    calls: list[object] = []

    def capture(forward, latents, t, context, pool):
        calls.append(pool)
        raise RuntimeError("capture failed")

    monkeypatch.setattr(accel, "_new_graph_pool", object)
    monkeypatch.setattr(accel, "_capture_cuda_graph", capture)
    components = build_tiny_random()
    plain = one_image(components, steps=2)
    graphs = components.extras["cuda_graphs"] = accel.CudaGraphs()
    assert np.array_equal(one_image(components, steps=2), plain)  # the failed capture's step ran ungraphed
    (notice,) = graphs.take_notices()
    assert notice.startswith("CUDA graph for latents 16×16 batch 2") and notice.endswith(
        "failed, so graphs are off for this model (RuntimeError: capture failed)"
    )
    one_image(components, steps=2, width=48, height=32)  # another shape: not even tried
    assert len(calls) == 1 and not graphs.graphs and graphs.take_notices() == []
    assert not accel.GPU_WORK.locked()


def test_a_capture_waits_for_a_compile_using_the_gpu_and_an_older_graph_serves_meanwhile(monkeypatch):
    captured: list[object] = []

    def capture(forward, latents, t, context, pool):
        captured.append(forward)
        return forward

    monkeypatch.setattr(accel, "_new_graph_pool", object)
    monkeypatch.setattr(accel, "_capture_cuda_graph", capture)
    components = build_tiny_random()
    plain = one_image(components, steps=2)
    graphs = components.extras["cuda_graphs"] = accel.CudaGraphs()
    with accel.GPU_WORK:  # a compile thread is tracing/autotuning: no capture may start
        assert np.array_equal(one_image(components, steps=2), plain)
        assert captured == [] and graphs.take_notices() == []  # not a failure: tried again later
    assert np.array_equal(one_image(components, steps=2), plain)
    assert captured == [components.unet]
    served: list[str] = []

    def newer(*args, **kwargs):
        served.append("newer")
        return components.unet(*args, **kwargs)

    sample, context = torch.zeros(2, 4, 16, 16), torch.zeros(2, 77, 32)
    with accel.GPU_WORK:  # a newer forward of this shape cannot be captured yet: the older graph keeps serving
        replay = graphs.forward_for(newer, sample, context)
        replay(sample, torch.tensor(10.0), encoder_hidden_states=context, return_dict=False)
    assert served == [] and captured == [components.unet]


def test_the_compiled_unet_gets_its_own_graph_which_replaces_the_eager_one():
    components = build_tiny_random()
    fake = FakeGraphs()
    graphs = components.extras["cuda_graphs"] = accel.CudaGraphs(capture_fn=fake)
    registry = components.extras["compiled_unets"] = accel.CompiledUNets(compile_fn=FakeCompiler())
    plain = one_image(components)  # eager graph; the compile starts
    registry.wait(30)
    assert np.array_equal(one_image(components), plain)
    assert [c[0] is components.unet for c in fake.captured] == [True, False]
    assert len(graphs.graphs) == 1  # the eager graph of that shape was dropped, its memory with it
    one_image(components)
    assert len(fake.captured) == 2


def test_graphs_beyond_the_limit_are_dropped_least_recently_used_first():
    components = build_tiny_random()
    graphs = components.extras["cuda_graphs"] = accel.CudaGraphs(capture_fn=FakeGraphs(), limit=2)
    for width in (32, 48, 32, 64):
        one_image(components, width=width, steps=1)
    kept = [key[0][3] * components.vae_scale_factor for key in graphs.graphs]
    assert kept == [32, 64]  # 48 wide was used least recently


def test_each_compile_stage_waits_until_the_forward_serving_now_has_its_graph():
    """With graphs on, a stage starts only once the forward before it is captured: the capture then has the GPU
    to itself (see GPU_WORK), and that graph serves while the stage compiles."""
    components = build_tiny_random()
    order: list[str] = []
    fake_graphs = FakeGraphs()

    def capture(forward, latents, t, context):
        order.append("capture " + ("eager" if forward is components.unet else "regional"))
        return fake_graphs(forward, latents, t, context)

    def stage(label):
        def build(unet):
            order.append("compile " + label)
            return lambda *args, **kwargs: unet(*args, **kwargs)

        return build

    components.extras["cuda_graphs"] = accel.CudaGraphs(capture_fn=capture)
    registry = components.extras["compiled_unets"] = accel.CompiledUNets(
        stages=(("regional", stage("regional")), ("full", stage("full")))
    )
    one_image(components, steps=2)
    assert registry.wait_for_stage("regional", 30)
    assert not registry.wait_for_stage("full", 0.3)  # held until the regional forward has its graph
    one_image(components, steps=2)
    assert registry.wait_for_stage("full", 30)
    assert order == ["capture eager", "compile regional", "capture regional", "compile full"]


def test_a_stage_finishing_mid_batch_does_not_let_the_next_one_start_on_the_old_graph():
    """The batch's forward is chosen once; a stage published during the batch must get its own graph (next
    command) before the stage after it may take the GPU, however many more steps the old forward runs."""
    import types

    order: list[str] = []

    def unet(x, t, encoder_hidden_states=None, return_dict=False):
        return (x * 1.0,)

    def capture(forward, latents, t, context):
        order.append("capture " + ("eager" if forward is unet else "regional"))
        return lambda s, ts, *, encoder_hidden_states, return_dict=False: forward(
            s, ts, encoder_hidden_states=encoder_hidden_states
        )

    def stage(label):
        def build(u):
            order.append("compile " + label)
            return lambda *a, **k: u(*a, **k)

        return build

    components = types.SimpleNamespace(extras={}, unet=unet, device=torch.device("cpu"))
    components.extras["cuda_graphs"] = accel.CudaGraphs(capture_fn=capture)
    registry = components.extras["compiled_unets"] = accel.CompiledUNets(
        stages=(("regional", stage("regional")), ("full", stage("full")))
    )
    x, context = torch.zeros(2, 4, 8, 8), torch.zeros(2, 77, 32)
    batch = accel.unet_forward(components, x, context)  # one batch: its forward is fixed
    batch(x, torch.tensor(1.0), encoder_hidden_states=context, return_dict=False)  # captures eager, releases
    assert registry.wait_for_stage("regional", 10)
    batch(x, torch.tensor(1.0), encoder_hidden_states=context, return_dict=False)  # same batch, the old forward
    assert not registry.wait_for_stage("full", 0.3)
    nxt = accel.unet_forward(components, x, context)  # the next command: the regional forward, captured
    nxt(x, torch.tensor(1.0), encoder_hidden_states=context, return_dict=False)
    assert registry.wait_for_stage("full", 10)
    assert order == ["capture eager", "compile regional", "capture regional", "compile full"]


def test_a_compile_of_a_model_that_moved_publishes_nothing():
    components = build_tiny_random()
    fake = FakeCompiler()
    fake.release.clear()
    registry = components.extras["compiled_unets"] = accel.CompiledUNets(compile_fn=fake)
    one_image(components, steps=2)
    accel.forget_compiled(components)  # the model moved while its compile ran
    fake.release.set()
    registry.wait(30)
    (entry,) = registry.entries.values()
    assert entry.state == "compiling" and entry.forward is None
    assert not [n for n in registry.take_notices() if n.startswith("compiled")]


def test_cfg_one_batches_reach_the_compiled_unet_contiguous():
    """At CFG 1 the context is an expanded view (stride 0); Dynamo guards on strides, so the compiled UNet built
    on contiguous inputs would recompile inside the user's command. Real Dynamo, recording each compile."""
    components = build_tiny_random()
    compiles: list[str] = []

    def backend(graph_module, example_inputs):
        compiles.append(threading.current_thread().name)
        return graph_module.forward

    registry = components.extras["compiled_unets"] = accel.CompiledUNets(
        stages=(("full", lambda unet: torch.compile(unet, backend=backend, dynamic=False)),)
    )
    request = Request(prompt="x", steps=2, seed=1, iterations=2, cfg_scale=1.0)
    list(generate(components, request, progress=False, batch_size=2))
    registry.wait(120)
    assert compiles and set(compiles) == {"invoke-compile"}
    list(generate(components, request, progress=False, batch_size=2))
    assert set(compiles) == {"invoke-compile"}  # nothing compiled on the command's thread


def test_failed_capture_is_reported_once_and_the_unet_keeps_serving(tmp_path):
    components = build_tiny_random()
    plain = one_image(components)
    graphs = components.extras["cuda_graphs"] = accel.CudaGraphs(capture_fn=FakeGraphs(fail=True))
    assert np.array_equal(one_image(components), plain)
    assert graphs.take_notices() == [
        "CUDA graph for latents 16×16 batch 2, 77 tokens, float32 failed, staying without "
        "(RuntimeError: operation not permitted when stream is capturing)"
    ]
    assert np.array_equal(one_image(components), plain)
    assert graphs.take_notices() == []  # not retried for the same shapes


def test_graphs_are_off_on_the_cpu_by_switch_and_per_model(monkeypatch, components):
    assert accel.cuda_graphs(components) is None and "cuda_graphs" not in components.extras
    cuda = torch.device("cuda")
    assert accel.graphs_enabled(cuda)
    monkeypatch.setenv("INVOKE_REPL_CUDA_GRAPHS", "0")
    assert not accel.graphs_enabled(cuda) and accel.fast_path_enabled(cuda)
    tiny = build_tiny_random()
    tiny.extras["cuda_graphs"] = False
    sample, context = torch.zeros(2, 4, 16, 16), torch.zeros(2, 77, 32)
    assert accel.unet_forward(tiny, sample, context) is tiny.unet


def test_moving_a_model_forgets_its_graphs():
    from invoke_repl.models import _move

    components = build_tiny_random()
    components.extras["cuda_graphs"] = accel.CudaGraphs(capture_fn=FakeGraphs())
    _move(components, torch.device("cpu"), None, pin=False)
    assert "cuda_graphs" not in components.extras


def test_a_graph_first_captured_for_int_timesteps_still_serves_fractional_ones():
    components = build_tiny_random()
    plain = one_image(components, sampler="k_lms", steps=7)  # 999, 832.5, …: fractional timesteps
    components.extras["cuda_graphs"] = accel.CudaGraphs(capture_fn=FakeGraphs())
    one_image(components, sampler="ddim")  # int64 timesteps reach the capture first
    assert np.array_equal(one_image(components, sampler="k_lms", steps=7), plain)
