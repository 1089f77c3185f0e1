"""The benchmark's GPU scenarios, dry-run on the CPU: a tiny model, 2 steps, fake compile and graph capture.

A lent GPU gives a session minutes, not hours; this runs every line of the GPU check first, so those minutes are
spent measuring. The timings themselves are never asserted (they would flake on shared machines).
"""

from __future__ import annotations

import json

import pytest

from invoke_repl import bench
from invoke_repl.builtin import build_tiny_random


def identity_compile(unet):
    return unet


def passthrough_capture(forward, latents, t, context):
    return forward


def eager_regional_compile(unet):
    """The real regional twin, traced by Dynamo with its eager backend (no C++ compile on 2 cores)."""
    from invoke_repl import accel

    return accel.regional_compile(unet, backend="eager")


def dry_run_plan() -> bench.GpuPlan:
    """The GPU check on the CPU: the tiny model, 2 steps at 32², fake compile and capture, Dynamo's eager backend."""
    return bench.GpuPlan(
        device="cpu",
        dtype="float32",
        size=32,
        steps=2,
        build=build_tiny_random,
        compile_fn=identity_compile,
        regional_fn=eager_regional_compile,
        capture_fn=passthrough_capture,
    )


def test_every_gpu_scenario_runs_end_to_end_on_a_dry_run(tmp_path, capsys):
    plan = dry_run_plan()
    reported: list[str] = []
    results = bench.bench_gpu(
        list(bench.GPU_SCENARIOS), 1, plan, report=lambda new: reported.extend(r.scenario for r in new)
    )
    by_name = {r.scenario: r for r in results}
    assert reported == [r.scenario for r in results]  # each figure reported as soon as it is known
    generation = ("gpu_txt2img_k_lms", "gpu_txt2img_k_euler", "gpu_img2img_0.7", "gpu_n4")
    assert set(by_name) == {
        *generation,
        *(s + "+compiled" for s in generation),
        "gpu_compile",
        "gpu_peak_memory",
        "gpu_graph_capture",
        "gpu_sync_audit",
        "gpu_compile_cache",
        "gpu_txt2img_k_lms+regional",
        "gpu_switch",
        "gpu_load_fp16_folder",
        "gpu_cold_start",
    }
    for name in generation:
        result = by_name[name]
        assert result.ours_s > 0 and result.stock_s > 0 and result.extra["eager_s"] > 0
        assert "max pixel diff vs eager 0" in result.notes  # graphs (here passthrough) change no pixel
        assert "compile failed" not in by_name[name + "+compiled"].notes
    # Same seed, same sampler: stock's pixels, up to rounding. channels_last convolutions round differently from
    # contiguous ones on some CPUs (oneDNN picks its kernels by CPU features): 1 level in 255 on 2026-11-28's
    # machine, 0 on earlier ones and with INVOKE_REPL_CHANNELS_LAST=0. A wrong seed or sampler differs by far more.
    assert int(by_name["gpu_txt2img_k_euler"].notes.rsplit("vs stock ", 1)[1]) <= 1
    assert by_name["gpu_cold_start"].ours_s > 0 and by_name["gpu_cold_start"].stock_s > 0
    assert by_name["gpu_switch"].ours_s >= 0 and by_name["gpu_load_fp16_folder"].stock_s > 0
    assert "disk cache warm, other weights of the same architecture: ready" in by_name["gpu_compile_cache"].notes
    peak = by_name["gpu_peak_memory"]
    held = peak.extra["session_graphs"]
    assert held >= 1 and f"With the {held} graph(s) of the earlier scenarios held" in peak.notes
    regional = by_name["gpu_txt2img_k_lms+regional"]
    assert "with cold caches (ready)" in regional.notes  # the fresh process's compile finished
    assert "; max pixel diff vs full compiled 0;" in regional.notes  # same weights, same pixels
    assert regional.notes.endswith("max pixel diff vs full compiled 0")  # … after the staged hand-over as well
    assert regional.extra["staged_final_s"] > 0
    assert regional.extra["compile_s"] >= 0 and regional.stock_s == by_name["gpu_txt2img_k_lms"].stock_s
    assert by_name["gpu_sync_audit"].extra["counts"].keys() >= {"k_lms", "k_euler", "ddim"}
    assert all(r.device == "cpu (dry run)" for r in results)


def test_gpu_results_reach_the_json_file_one_line_each(tmp_path):
    out = tmp_path / "runs.jsonl"
    result = bench.Result("gpu_switch", "cpu", 0.01, None, notes="x")
    bench._report([result], out)
    bench._report([result], out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["scenario"] for line in lines] == ["gpu_switch", "gpu_switch"]
    assert lines[0]["ratio"] is None and lines[0]["ours_s"] == 0.01


def test_a_failing_gpu_row_is_reported_and_the_rows_after_it_still_run(monkeypatch):
    """A lent GPU runs the check once: a late row's failure must not take the finished rows or the later ones."""

    def broken(plan, device):
        raise RuntimeError("inductor ran out of shared memory")

    monkeypatch.setattr(bench, "bench_compile_cache", broken)
    plan = dry_run_plan()
    reported: list[str] = []
    scenarios = ["gpu_txt2img_k_lms", "gpu_compile_cache", "gpu_cold_start"]
    results = bench.bench_gpu(scenarios, 1, plan, report=lambda new: reported.extend(r.scenario for r in new))
    by_name = {r.scenario: r for r in results}
    assert by_name["gpu_compile_cache"].notes == "failed: RuntimeError: inductor ran out of shared memory"
    assert reported.index("gpu_txt2img_k_lms+compiled") < reported.index("gpu_compile_cache")
    assert by_name["gpu_cold_start"].ours_s > 0  # after the failed row


def test_a_failed_child_process_says_what_it_printed():
    import sys

    with pytest.raises(RuntimeError, match=r"exited 3: .*no CUDA here"):
        bench._run_child([sys.executable, "-c", "import sys; print('no CUDA here', file=sys.stderr); sys.exit(3)"])


def test_compile_modes_compiles_each_mode_in_its_own_fresh_process_with_empty_caches(monkeypatch):
    """Regional against full on the CPU: a cache one mode filled would make the other's first compile look cheap."""
    from pathlib import Path

    calls = []

    def fake_child(plan, mode, env=None):
        cache = Path(env["TORCHINDUCTOR_CACHE_DIR"])
        calls.append((mode, cache, list(cache.iterdir())))
        (cache / "kernel.so").write_text("x")  # what a compile leaves behind
        return "ready", {"full": 100.0, "regional": 40.0}[mode], 0.0

    monkeypatch.setattr(bench, "_compile_in_fresh_process", fake_child)
    result = bench.bench_compile_modes()
    assert [mode for mode, _, _ in calls] == ["full", "regional"]
    assert calls[0][1] != calls[1][1] and all(contents == [] for _, _, contents in calls)
    assert result.ours_s == 40.0 and result.extra["full_s"] == 100.0
    assert "regional 40.0 s (ready) against full 100.0 s (ready), 0.40 of it" in result.notes


def test_compile_modes_runs_only_when_named(monkeypatch):
    """Minutes of compiling on 2 cores: a plain `python -m invoke_repl.bench` must not start them."""
    ran: list[str] = []

    def fake(name, *, rows=False):
        def run(*args, **kwargs):
            ran.append(name)
            result = bench.Result(name, "cpu", 1.0, None)
            return [result] if rows else result

        return run

    for function in ("bench_generation", "bench_prompt_latency", "bench_scripted", "bench_compile_modes"):
        monkeypatch.setattr(bench, function, fake(function))
    monkeypatch.setattr(bench, "bench_sampler_overhead", fake("bench_sampler_overhead", rows=True))
    monkeypatch.setattr(bench, "load_model", lambda name: None)
    assert bench.main([]) == 0 and "bench_compile_modes" not in ran and "bench_scripted" in ran
    ran.clear()
    assert bench.main(["compile_modes"]) == 0 and ran == ["bench_compile_modes"]


def test_perturbed_weights_are_another_checkpoint_of_the_same_architecture():
    """The warm-cache row compiles other weights, so that it times a user's second checkpoint, not a rerun."""
    import torch

    before = build_tiny_random().unet.state_dict()
    first, second = build_tiny_random().unet, build_tiny_random().unet
    bench.perturb_weights(first, seed=1)
    bench.perturb_weights(second, seed=1)
    after = first.state_dict()
    assert after.keys() == before.keys()
    for name, value in after.items():
        if name in dict(first.named_parameters()):
            assert value.shape == before[name].shape and not torch.equal(value, before[name]), name
            assert torch.equal(value, second.state_dict()[name]), name  # seeded: the same "checkpoint" each time


def test_stock_overhead_is_timed_on_diffusers_own_classes_never_ours():
    from invoke_repl.generator.samplers import SAMPLER_TABLE

    for name, spec in SAMPLER_TABLE.items():
        cls = bench.stock_scheduler_class(spec)
        assert cls.__module__.startswith("diffusers."), (name, cls)
    assert bench.stock_scheduler_class(SAMPLER_TABLE["ddim"]).__name__ == "DDIMScheduler"
    assert bench.stock_scheduler_class(SAMPLER_TABLE["k_lms"]).__name__ == "LMSDiscreteScheduler"


def test_a_failing_cpu_scenario_is_a_strict_json_row_and_the_next_still_runs(tmp_path, monkeypatch):
    out = tmp_path / "bench.jsonl"
    monkeypatch.setattr(bench, "bench_prompt_latency", lambda repeats: bench.Result("prompt_latency", "cpu", 0.3, 9.0))
    assert bench.main(["txt2img_k_lms", "prompt_latency", "--model", "nosuch", "--json", str(out)]) == 0

    def strict(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    rows = [json.loads(line, parse_constant=strict) for line in out.read_text().splitlines()]
    assert [r["scenario"] for r in rows] == ["txt2img_k_lms", "prompt_latency"]
    assert rows[0]["status"] == "failed" and rows[0]["ours_s"] is None and "nosuch" in rows[0]["notes"]
    assert rows[1]["status"] == "ok" and rows[1]["ratio"] == 30.0 and rows[1]["versions"]["torch"]
    failed_gpu = bench.failed_row("gpu_n4", RuntimeError("boom"), "H200")
    bench._report([bench.Result("x", "cpu", float("nan"), None), failed_gpu], out)
    tail = [json.loads(line, parse_constant=strict) for line in out.read_text().splitlines()[2:]]
    assert tail[0]["ours_s"] is None and tail[1]["notes"] == "failed: RuntimeError: boom"


def test_repeats_below_one_is_a_usage_error():
    with pytest.raises(SystemExit) as info:
        bench.main(["prompt_latency", "--repeats", "0"])
    assert info.value.code == 2


def test_self_timed_pairs_warm_up_then_alternate():
    order: list[str] = []

    def side(name: str, value: float):
        return lambda: order.append(name) or value

    assert bench.paired_values(side("a", 1.0), side("b", 2.0), 3) == (1.0, 2.0)
    assert order == ["a", "b"] * 4  # one warm-up each, then three in alternation
