"""The sampler table: every name the user may type (`request.SAMPLERS`) → one diffusers scheduler.

Each scheduler is built with `Cls.from_config(model_scheduler_config, **overrides)`, so the model's own beta
schedule (SD 1.x: scaled_linear 0.00085→0.012 over 1000 steps) is kept whatever class the model shipped with.

| name          | diffusers class                                   | faithful?                                       |
|---------------|---------------------------------------------------|-------------------------------------------------|
| ddim          | ScheduledDDIMScheduler (DDIM subclass, eta 0)     | exact; steps to the schedule's next timestep    |
| plms          | ScheduledPNDMScheduler(skip_prk_steps=True)       | exact (LDM's PLMS: pseudo-improved-Euler start) |
| k_lms         | CachedLMSDiscreteScheduler (LMSDiscrete subclass) | exact, bit-identical to stock LMSDiscrete       |
| k_euler       | EulerDiscreteScheduler                            | exact                                           |
| k_euler_a     | EulerAncestralDiscreteScheduler                   | exact                                           |
| k_heun        | HeunDiscreteScheduler                             | exact                                           |
| k_dpm_2       | KDPM2DiscreteScheduler                            | exact                                           |
| k_dpm_2_a     | KDPM2AncestralDiscreteScheduler                   | exact                                           |
| k_dpmpp_2     | DPMSolverMultistep(dpmsolver++, order 2)          | exact (DPM++ 2M, what InvokeAI's k_dpmpp_2 ran) |
| k_dpmpp_2_a   | DPMSolverSinglestep(sde-dpmsolver++, order 2)     | SUBSTITUTE: DPM++ 2S a has no diffusers class   |
| *_karras      | same class, use_karras_sigmas=True                | exact (Karras et al. 2022 sigmas, rho 7)        |

"exact" means the same algorithm as k-diffusion's sampler of that name; schedules are diffusers' discretisation
(timestep spacing from the model config), so pixels still differ from InvokeAI 2.x's k-diffusion wrapper.
diffusers' own scheduler overview (huggingface.co/docs/diffusers/api/schedulers/overview) lists "DPM++ 2S a" as
N/A; k-diffusion's `sample_dpmpp_2s_ancestral` is a single-step second-order solver that injects fresh noise each
step. The closest diffusers has is DPMSolverSinglestep at order 2 with the SDE variant (also single-step, also
stochastic, noise from the image's seeded CPU generator), so that is what `k_dpmpp_2_a` runs, and
`sampler_substitution()` returns the sentence the session prints once.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from invoke_repl.request import SAMPLERS

# (sigmas bytes, order, step index, current order) → coefficient. Keyed by the schedule's exact float32 sigmas,
# so a schedule seen once (any scheduler instance, any command) never integrates again. ~10 entries per step at
# order 4; cleared wholesale past the bound rather than tracked LRU (entries are 100-ish bytes each).
_LMS_CACHE: dict[tuple[bytes, int, int, int], float] = {}
_LMS_CACHE_MAX = 200_000


class CachedLMSDiscreteScheduler(LMSDiscreteScheduler):
    """LMSDiscreteScheduler whose multistep coefficients are integrated once per schedule, then looked up.

    Stock `step()` calls `get_lms_coefficient` `order` times per step, each a `scipy.integrate.quad` over a
    Python closure indexing 0-d torch tensors. Measured on this 2-core CPU with `step_overhead_ms` below
    (`scale_model_input` + `step` on a (1, 4, 64, 64) latent, 50-step schedule, median of the 50 steps, torch 2.13,
    diffusers 0.42.1, shared machine): stock LMSDiscreteScheduler 5.8 ms/step, this class 0.2 ms/step on a schedule
    it has seen before (k_euler: 0.17 ms/step). The first use of a schedule pays the stock cost once. The cached
    value is the very float the stock code returns for the same sigmas, so txt2img images are bit-identical.

    img2img differs from stock on purpose: stock's first steps after a mid-schedule start use the wrong order (see
    `get_lms_coefficient`). On the embedded model (run 2), at 25 steps, it made strength 0.2 noisier than 0.3 (PSNR to
    the init 23.3 vs 24.3 dB), where k_euler and ddim fall monotonically (25.9 vs 25.4 dB).
    """

    def _sigmas_key(self) -> bytes:
        # self.sigmas is replaced (not mutated) by set_timesteps, so remember which tensor the key was made from.
        sigmas = self.sigmas
        cached = getattr(self, "_lms_key", None)
        if cached is None or cached[0] is not sigmas:
            cached = (sigmas, sigmas.detach().to("cpu", copy=False).numpy().tobytes())
            self._lms_key = cached
        return cached[1]

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        # Stock `step()` takes order = min(step_index + 1, 4). Started mid-schedule (img2img, set_begin_index), that
        # is 4 at the first step, when one derivative exists: it weighs that derivative with the 4th-order
        # coefficient, which is 1.8–2.2× an Euler step on SD's 25-step schedule at strengths 0.8–0.2 (measured
        # with stock get_lms_coefficient), and drops the other terms. k-diffusion's sample_lms, which InvokeAI's
        # k_lms ran, counts the steps taken instead (diffusers issue #5630). So the order is capped by the
        # derivatives collected. From the start of a schedule the two agree: txt2img stays bit-identical to stock.
        order = min(order, max(1, len(self.derivatives)))
        if current_order >= order:
            return 0.0  # a term `step()` has no derivative for; its zip drops it
        key = (self._sigmas_key(), order, t, current_order)
        value = _LMS_CACHE.get(key)
        if value is None:
            value = super().get_lms_coefficient(order, t, current_order)
            if len(_LMS_CACHE) >= _LMS_CACHE_MAX:
                _LMS_CACHE.clear()
            _LMS_CACHE[key] = value
        return value


def _stride_for(train: int, gap: int) -> int | None:
    """A step count n whose stock stride `train // n` is `gap` (the largest such n), or None when none is.

    n = train // gap is the largest n with gap·n ≤ train; its stride is gap unless the interval of such n is empty,
    which needs gap·(gap + 1) > train (gap ≥ 32 on 1000 timesteps, far above any fallback schedule's ~17)."""
    if gap <= 0:
        return None
    n = train // gap
    return n if n >= 1 and train // n == gap else None


class _SchedulePrevious:
    """DDIM's and PLMS's `step` go from t to t − ⌊T/N⌋, right only for evenly spaced ("leading") timesteps.

    On the "trailing" schedules that stand in where leading spacing breaks (core._broken_spacing: N = 59, 63, …,
    and most N above 100) the gaps alternate (⌊T/N⌋ and ⌈T/N⌉), so every step landed on the wrong noise level:
    at N = 600 the image kept visible noise, 18 levels off k_euler's on average (audit 2026-12-03); diffusers
    issues #9261 and #12633 report it. Each step here goes to the schedule's next timestep instead, by giving the
    stock step, for that one call, a step count whose stride is that gap: the stock arithmetic runs unchanged, so
    on an evenly spaced schedule (where the next timestep is t − ⌊T/N⌋) every image stays bit-identical to stock.
    """

    timesteps: Any
    num_inference_steps: int | None
    config: Any

    def _steps_to(self, timestep: Any, previous: int) -> int:
        """The step count whose stride takes `timestep` to `previous` (−1: the final step, to the final alpha)."""
        if previous < 0:
            return 1  # stride T > t: the stock step reads the final alpha, as it does after the last timestep
        return self._steps_for_gap(int(timestep) - previous)

    def _steps_for_gap(self, gap: int) -> int:
        steps = _stride_for(int(self.config.num_train_timesteps), gap)
        if steps is None:  # check_strides refuses such schedules before the loop; never guess a stride
            raise ValueError(f"no step count has a stride of {gap} timesteps")
        return steps

    def _next_lower(self, timestep: Any) -> int:
        """The schedule's next timestep below `timestep`, or −1 after the last (cached per timesteps tensor)."""
        cached = getattr(self, "_lower_cache", None)
        if cached is None or cached[0] is not self.timesteps:
            values = _distinct_descending(self.timesteps)
            cached = (self.timesteps, {a: b for a, b in zip(values, values[1:] + [-1], strict=True)})
            self._lower_cache = cached
        return cached[1][int(timestep)]

    def _with_stride(self, steps: int, call: Any) -> Any:
        kept = self.num_inference_steps
        self.num_inference_steps = steps
        try:
            return call()
        finally:
            self.num_inference_steps = kept


def _distinct_descending(timesteps: Any) -> list[int]:
    """A schedule's timesteps once each, highest first (PLMS lists its second one twice)."""
    return sorted({int(v) for v in timesteps.tolist()}, reverse=True)


def check_strides(scheduler: SchedulerMixin) -> bool:
    """Whether every step of a DDIM/PLMS schedule has a stride `_SchedulePrevious` can give (True for others)."""
    if not isinstance(scheduler, _SchedulePrevious):
        return True
    train = int(scheduler.config.num_train_timesteps)
    values = _distinct_descending(scheduler.timesteps)
    return all(_stride_for(train, a - b) is not None for a, b in zip(values, values[1:], strict=False))


class ScheduledDDIMScheduler(_SchedulePrevious, DDIMScheduler):
    """DDIMScheduler whose steps go to the schedule's own next timestep (see `_SchedulePrevious`)."""

    def step(self, model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
        steps = self._steps_to(timestep, self._next_lower(timestep))
        return self._with_stride(steps, lambda: super(ScheduledDDIMScheduler, self).step(
            model_output, timestep, sample, *args, **kwargs))  # fmt: skip


class ScheduledPNDMScheduler(_SchedulePrevious, PNDMScheduler):
    """PNDMScheduler (PLMS) likewise. Its second call re-evaluates the first step (the schedule starts
    [T0, T1, T1, …]) and reads T0 back as T1 + stride, so that call's gap is T0 − T1 too."""

    def step_plms(self, model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
        if self.counter == 1:
            steps = self._steps_for_gap(int(self.timesteps[0]) - int(timestep))
        else:
            steps = self._steps_to(timestep, self._next_lower(timestep))
        return self._with_stride(steps, lambda: super(ScheduledPNDMScheduler, self).step_plms(
            model_output, timestep, sample, *args, **kwargs))  # fmt: skip


@dataclass(frozen=True)
class SamplerSpec:
    cls: type[SchedulerMixin]
    overrides: dict[str, Any] = field(default_factory=dict)
    substitute: str | None = None  # None: faithful; else the sentence telling the user what runs instead


_DPMPP_2_A_NOTE = (
    "k_dpmpp_2_a (DPM++ 2S ancestral) has no diffusers equivalent; using DPMSolverSinglestepScheduler "
    "(second-order single-step, SDE noise per step), so images differ from InvokeAI's k_dpmpp_2_a"
)

_BASE: dict[str, SamplerSpec] = {
    "ddim": SamplerSpec(ScheduledDDIMScheduler),
    "plms": SamplerSpec(ScheduledPNDMScheduler, {"skip_prk_steps": True}),
    "k_lms": SamplerSpec(CachedLMSDiscreteScheduler),
    "k_euler": SamplerSpec(EulerDiscreteScheduler),
    "k_euler_a": SamplerSpec(EulerAncestralDiscreteScheduler),
    "k_heun": SamplerSpec(HeunDiscreteScheduler),
    "k_dpm_2": SamplerSpec(KDPM2DiscreteScheduler),
    "k_dpm_2_a": SamplerSpec(KDPM2AncestralDiscreteScheduler),
    "k_dpmpp_2": SamplerSpec(DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "k_dpmpp_2_a": SamplerSpec(
        DPMSolverSinglestepScheduler,
        # lower_order_final=True: diffusers otherwise switches it on itself (with a warning) for odd step counts.
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "lower_order_final": True},
        substitute=_DPMPP_2_A_NOTE,
    ),
}


def _table() -> dict[str, SamplerSpec]:
    table = dict(_BASE)
    for name in SAMPLERS:
        if name.endswith("_karras"):
            base = table[name.removesuffix("_karras")]
            note = base.substitute and base.substitute.replace("k_dpmpp_2_a", name) + " (with Karras sigmas)"
            table[name] = SamplerSpec(base.cls, {**base.overrides, "use_karras_sigmas": True}, note)
    missing = set(SAMPLERS) - set(table)
    assert not missing, f"sampler table lacks {missing}"
    return table


SAMPLER_TABLE: dict[str, SamplerSpec] = _table()


# Constructed schedulers, copied per use. KDPM2 and KDPM2-ancestral run `set_timesteps(1000)` in their
# constructor, a Python loop of 1000 `_sigma_to_t` calls: ~1.1 s per construction on this 2-core CPU (cProfile of
# one 10-step k_dpm_2 image: 1012 calls, 1.12 s of 1.35 s), against ~1 ms for a deepcopy of the built one.
_PROTOTYPES: dict[tuple[Any, ...], SchedulerMixin] = {}


def make_scheduler(name: str, scheduler_config: dict[str, Any]) -> SchedulerMixin:
    """A fresh scheduler for `name` on the model's own beta schedule (fresh: schedulers carry per-run state)."""
    spec = SAMPLER_TABLE[name]
    key = (
        spec.cls,
        json.dumps(spec.overrides, sort_keys=True),
        json.dumps(dict(scheduler_config), sort_keys=True, default=repr),
    )
    prototype = _PROTOTYPES.get(key)
    if prototype is None:
        if len(_PROTOTYPES) >= 64:
            _PROTOTYPES.clear()
        overrides = {**_plain_sigmas(spec.cls), **spec.overrides}
        prototype = _PROTOTYPES[key] = spec.cls.from_config(scheduler_config, **overrides)
    return copy.deepcopy(prototype)


# Sigma-spacing switches a model's own scheduler config may set (one saved from a "DPM++ 2M Karras" pipeline has
# use_karras_sigmas: true). The model's config is read for its beta schedule; these belong to the sampler the user
# names, so every sampler sets them: off, and on only in the `_karras` variants. Left to the config, k_euler on
# such a model ran k_euler_karras's schedule (pixel for pixel, audit 2026-11-28) under k_euler's name.
_SIGMA_SPACINGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")


def _plain_sigmas(cls: type[SchedulerMixin]) -> dict[str, bool]:
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    return {key: False for key in _SIGMA_SPACINGS if key in accepted}


def sampler_substitution(name: str) -> str | None:
    """The one-line note to print when `name` runs a stand-in scheduler, else None."""
    return SAMPLER_TABLE[name].substitute


def step_overhead_ms(
    name: str, scheduler_config: dict[str, Any], steps: int = 50, shape: tuple[int, ...] = (1, 4, 64, 64)
) -> float:
    """Median host time of one `scheduler.step` (plus its `scale_model_input`) for `name`, in milliseconds.

    The UNet is left out (a fixed random model output stands in), so this is the per-step cost a sampler adds on
    top of the model: the number issue 7 asks the benchmark to report for every sampler. The schedule is run
    twice and the second run is timed, so cached work (k_lms's coefficients) counts as cached.
    """
    import statistics
    import time

    import torch

    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(shape, generator=gen)
    times: list[float] = []
    for _ in range(2):
        scheduler = make_scheduler(name, scheduler_config)
        scheduler.set_timesteps(steps)
        sample = torch.randn(shape, generator=gen) * scheduler.init_noise_sigma
        times = []
        for t in scheduler.timesteps:
            start = time.perf_counter()
            model_input = scheduler.scale_model_input(sample, t)
            del model_input
            sample = scheduler.step(eps, t, sample, return_dict=False, **step_kwargs(scheduler, gen))[0]
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def step_kwargs(scheduler: SchedulerMixin, generator: object) -> dict[str, Any]:
    """`generator=` for the schedulers whose step draws noise (ancestral, SDE); the others don't accept it."""
    import inspect

    return {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
