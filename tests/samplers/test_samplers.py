"""The four samplers against diffusers' schedulers as a step-by-step oracle, plus their contract.

How the oracle is made exact: diffusers builds betas and alpha_bar in float32, which differ from
our float64 schedule by up to ~5e-7. :func:`oracle` checks that agreement, then swaps our float64
alpha_bar into the diffusers scheduler, and both sides run on float64 samples. What remains is
floating-point rounding, so DDPM, DDIM and PLMS must agree to 1e-12 (observed: below 5e-15).
DPM-Solver is the exception: ``DPMSolverMultistepScheduler.step`` casts the sample to float32
on every step, whatever its dtype, so it carries float32 rounding of x (observed: 2e-7); it gets
atol 1e-6, still four orders of magnitude below any change of solver order (~1e-2).
:func:`test_float32_against_stock_diffusers` then runs both sides as they ship, in float32.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ldmctl.errors import ConfigError
from ldmctl.samplers import SAMPLERS, ddim, ddpm, dpmpp, get_sampler, plms, sampler_timesteps, spacing
from ldmctl.schedule import Schedule

diffusers = pytest.importorskip("diffusers")
# DPMSolverMultistepScheduler.set_timesteps calls np.array on a tensor, which numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

T = 1000
# ours -> (diffusers beta_schedule, beta_start, beta_end)
BETAS = {
    "sqrt_linear": ("scaled_linear", 0.00085, 0.012),
    "linear": ("linear", 1e-4, 2e-2),
    "cosine": ("squaredcos_cap_v2", 1e-4, 2e-2),
}
DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SHAPE = (2, 3, 4, 4)
CASES = [("sqrt_linear", 10), ("sqrt_linear", 25), ("cosine", 10), ("linear", 25)]
EXACT = 1e-12  # float64 on both sides, identical constants: only rounding order differs


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors of 96 numbers gain nothing from threads; on a busy CPU each threaded op waits ~10 ms."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_model(schedule: Schedule, prediction: str):
    """A deterministic stand-in for a network that depends on x and t, in ``prediction`` form.

    It predicts x0 = 0.9 tanh(x) + 0.1 roll(x) + t / 1000 and states it as eps, x0 or v. Anchoring
    on a bounded x0 keeps every sample O(1), so an absolute tolerance means something: a raw
    ``eps = tanh(x)`` makes x0 = (x - sigma eps) / alpha reach ~1e5 under the cosine schedule.
    """

    def model_fn(x: Tensor, t: Tensor) -> Tensor:
        x0 = 0.9 * torch.tanh(x) + 0.1 * x.roll(1, -1) + t.to(x.dtype)[:, None, None, None] / 1000
        ac = schedule.alphas_cumprod[t].to(x.dtype)[:, None, None, None]
        a, s = ac.sqrt(), (1 - ac).sqrt()
        eps = (x - a * x0) / s
        return {"eps": eps, "x0": x0, "v": a * eps - s * x0}[prediction]

    return model_fn


def x_T(dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=dtype)


def oracle(cls, kind: str, prediction: str, *, exact: bool = True, **config):
    """A diffusers scheduler and our Schedule built from the same betas."""
    name, start, end = BETAS[kind]
    sched = cls(
        num_train_timesteps=T,
        beta_schedule=name,
        beta_start=start,
        beta_end=end,
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        **config,
    )
    ours = Schedule.make(kind, T, start, end)
    assert torch.allclose(sched.alphas_cumprod.double(), ours.alphas_cumprod, rtol=0, atol=1e-6)
    if exact:  # the same alpha_bar, in float64, on both sides
        sched.alphas_cumprod = ours.alphas_cumprod.clone()
        sched.final_alpha_cumprod = ours.alphas_cumprod[0]  # DDIM / PNDM, set_alpha_to_one=False
        sched.one = torch.tensor(1.0, dtype=torch.float64)  # DDPM's alpha_bar after the last step
    return sched, ours


def run_oracle(sched, model_fn, x: Tensor, step_kwargs=lambda i: {}) -> Tensor:
    """The hand-written diffusers sampling loop: one model call and one ``step`` per timestep."""
    for i, t in enumerate(sched.timesteps):
        out = model_fn(x, t.expand(x.shape[0]))
        x = sched.step(out, t, x, **step_kwargs(i)).prev_sample
    return x


def ddpm_oracle(kind, prediction, steps, seed, *, exact=True):
    sched, ours = oracle(
        diffusers.DDPMScheduler, kind, prediction, exact=exact, clip_sample=False, variance_type="fixed_small"
    )
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    return sched, ours, lambda model_fn, x: run_oracle(sched, model_fn, x, lambda i: {"generator": gen})


def ddim_scheduler(kind, prediction, steps, *, exact=True):
    sched, ours = oracle(
        diffusers.DDIMScheduler,
        kind,
        prediction,
        exact=exact,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )
    sched.set_timesteps(steps)
    return sched, ours


def pndm_scheduler(kind, steps, *, exact=True):
    # always in eps mode: see test_plms_matches_diffusers for v and x0
    sched, ours = oracle(
        diffusers.PNDMScheduler, kind, "eps", exact=exact, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1
    )
    sched.set_timesteps(steps)
    return sched, ours


def dpm_scheduler(kind, prediction, steps, *, exact=True):
    sched, ours = oracle(
        diffusers.DPMSolverMultistepScheduler,
        kind,
        prediction,
        exact=exact,
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing="linspace",
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    sched.set_timesteps(steps)
    if exact:  # set_timesteps stores its sigmas in float32; recompute them from float64 alpha_bar
        ac = ours.alphas_cumprod
        sigmas = ((1 - ac) / ac).sqrt()[sched.timesteps]
        sched.sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sched, ours


# ---- equivalence with diffusers -------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize(("kind", "steps"), CASES)
def test_ddpm_matches_diffusers(kind, steps, prediction):
    # Same seed on both sides: our sampler draws one randn(x.shape, generator=...) per step,
    # the last excepted, exactly as DDPMScheduler.step does, so the draws coincide.
    _, ours, run = ddpm_oracle(kind, prediction, steps, seed=1)
    model_fn = toy_model(ours, prediction)
    got = ddpm(model_fn, ours, x_T(), steps=steps, prediction=prediction, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, run(model_fn, x_T()), rtol=0, atol=EXACT)


def test_ddpm_full_chain_matches_diffusers():
    _, ours, run = ddpm_oracle("sqrt_linear", "eps", T, seed=2)
    model_fn = toy_model(ours, "eps")
    got = ddpm(model_fn, ours, x_T(), steps=T, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(got, run(model_fn, x_T()), rtol=0, atol=EXACT)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize(("kind", "steps"), CASES)
def test_ddim_matches_diffusers(kind, steps, prediction):
    sched, ours = ddim_scheduler(kind, prediction, steps)
    model_fn = toy_model(ours, prediction)
    got = ddim(model_fn, ours, x_T(), steps=steps, prediction=prediction)
    torch.testing.assert_close(got, run_oracle(sched, model_fn, x_T()), rtol=0, atol=EXACT)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_eta_matches_diffusers_given_the_same_noise(eta):
    # DDIMScheduler.step takes the noise as variance_noise. Our sampler draws one
    # randn(x.shape) per step, the last included, so a generator seeded alike yields the same
    # list; feeding it explicitly keeps the comparison independent of diffusers' own drawing.
    steps = 10
    sched, ours = ddim_scheduler("sqrt_linear", "eps", steps)
    model_fn = toy_model(ours, "eps")
    gen = torch.Generator().manual_seed(3)
    noises = [torch.randn(SHAPE, generator=gen, dtype=torch.float64) for _ in range(steps)]
    want = run_oracle(sched, model_fn, x_T(), lambda i: {"eta": eta, "variance_noise": noises[i]})
    got = ddim(model_fn, ours, x_T(), steps=steps, eta=eta, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, want, rtol=0, atol=EXACT)
    assert not torch.allclose(got, ddim(model_fn, ours, x_T(), steps=steps))  # the noise mattered


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize(("kind", "steps"), CASES)
def test_plms_matches_diffusers(kind, steps, prediction):
    # The oracle runs PNDMScheduler in eps mode on the model's output converted to eps at the x
    # and t it was computed at. That is our (and LDM's) PLMS for every parameterisation.
    # PNDMScheduler's own v mode combines raw v outputs across steps and converts the sum
    # once (huggingface/diffusers#14816); it has no x0 mode at all.
    sched, ours = pndm_scheduler(kind, steps)
    model_fn = toy_model(ours, prediction)

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        return ours.to_eps(x, t, model_fn(x, t), prediction)

    got = plms(model_fn, ours, x_T(), steps=steps, prediction=prediction)
    torch.testing.assert_close(got, run_oracle(sched, eps_fn, x_T()), rtol=0, atol=EXACT)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_plms_warm_up_matches_diffusers(steps):
    # The Heun first step and the repeated timestep, at the step counts where they dominate.
    sched, ours = pndm_scheduler("sqrt_linear", steps)
    calls: list[int] = []

    def model_fn(x: Tensor, t: Tensor) -> Tensor:
        calls.append(int(t[0]))
        return toy_model(ours, "eps")(x, t)

    got = plms(model_fn, ours, x_T(), steps=steps)
    assert calls == sched.timesteps.tolist()  # steps + 1 calls (1 for one step), same timesteps
    torch.testing.assert_close(got, run_oracle(sched, toy_model(ours, "eps"), x_T()), rtol=0, atol=EXACT)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize(("kind", "steps"), [*CASES, ("sqrt_linear", 1), ("sqrt_linear", 2)])
def test_dpmpp_matches_diffusers(kind, steps, prediction):
    sched, ours = dpm_scheduler(kind, prediction, steps)
    model_fn = toy_model(ours, prediction)
    got = dpmpp(model_fn, ours, x_T(), steps=steps, prediction=prediction)
    # atol 1e-6, not EXACT: DPMSolverMultistepScheduler.step rounds the sample to float32
    torch.testing.assert_close(got, run_oracle(sched, model_fn, x_T()), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_float32_against_stock_diffusers(name):
    # Both sides as they ship: diffusers with its float32 betas, ours with float64 constants
    # applied to float32 samples. Observed differences are below 5e-6.
    steps, kind = 25, "sqrt_linear"
    if name == "ddpm":
        sched, ours, run = ddpm_oracle(kind, "eps", steps, seed=4, exact=False)
        want = run(toy_model(ours, "eps"), x_T(torch.float32))
    else:
        make = {
            "ddim": lambda: ddim_scheduler(kind, "eps", steps, exact=False),
            "plms": lambda: pndm_scheduler(kind, steps, exact=False),
            "dpmpp": lambda: dpm_scheduler(kind, "eps", steps, exact=False),
        }[name]
        sched, ours = make()
        want = run_oracle(sched, toy_model(ours, "eps"), x_T(torch.float32))
    got = SAMPLERS[name](
        toy_model(ours, "eps"), ours, x_T(torch.float32), steps=steps, generator=torch.Generator().manual_seed(4)
    )
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)


def test_spacing_matches_diffusers_timesteps():
    ddpm_s = diffusers.DDPMScheduler(num_train_timesteps=T)
    ddim_s = diffusers.DDIMScheduler(num_train_timesteps=T, steps_offset=1)
    for n in range(1, T):
        ddpm_s.set_timesteps(n)
        ddim_s.set_timesteps(n)
        assert spacing(T, n, "leading").tolist() == ddpm_s.timesteps.tolist()
        assert spacing(T, n, "leading", offset=1).tolist() == ddim_s.timesteps.tolist()
    # linspace rounds .5 ties the numpy way (n = 26, 30, 46, 52, 58 of 1000 have them);
    # a subset of counts, as DPMSolver's set_timesteps is slow
    dpm_s = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T)
    for n in [*range(1, 61), 100, 250, 500, 998, 999]:
        dpm_s.set_timesteps(n)
        assert spacing(T, n, "linspace").tolist() == dpm_s.timesteps.tolist()
    assert spacing(T, T, "leading").tolist() == list(range(T - 1, -1, -1))


# ---- the contract ----------------------------------------------------------------------------

SCHEDULE = Schedule.make("sqrt_linear", 100)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_once_per_step_in_order(name):
    calls: list[tuple[int, int, tuple[int, ...]]] = []
    out = get_sampler(name)(
        toy_model(SCHEDULE, "eps"),
        SCHEDULE,
        x_T(torch.float32),
        steps=7,
        callback=lambda i, n, x: calls.append((i, n, tuple(x.shape))),
    )
    assert calls == [(i, 7, SHAPE) for i in range(7)]
    assert out.shape == SHAPE and out.dtype == torch.float32


def test_ddpm_seed_reproducibility():
    model_fn = toy_model(SCHEDULE, "eps")

    def run(seed: int) -> Tensor:
        return ddpm(model_fn, SCHEDULE, x_T(), steps=20, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))


def test_deterministic_samplers_ignore_generator():
    model_fn = toy_model(SCHEDULE, "v")
    for sampler in (ddim, plms, dpmpp):
        a, b = (
            sampler(model_fn, SCHEDULE, x_T(), steps=5, prediction="v", generator=torch.Generator().manual_seed(seed))
            for seed in (0, 1)
        )
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["ddim", "plms", "dpmpp"])
def test_parameterisation_does_not_change_the_sample(name):
    # One denoiser stated as eps, x0 or v must give the same deterministic sample. (diffusers'
    # PNDMScheduler in v mode misses this by 5e-2 at 10 steps: huggingface/diffusers#14816.)
    eps, x0, v = (
        SAMPLERS[name](toy_model(SCHEDULE, p), SCHEDULE, x_T(), steps=10, prediction=p) for p in ("eps", "x0", "v")
    )
    torch.testing.assert_close(x0, eps, rtol=0, atol=EXACT)
    torch.testing.assert_close(v, eps, rtol=0, atol=EXACT)


def test_get_sampler_unknown_name():
    assert get_sampler("ddim") is ddim
    with pytest.raises(ConfigError, match="unknown sampler 'euler'.*ddpm, ddim, plms, dpmpp"):
        get_sampler("euler")


@pytest.mark.parametrize(
    ("sampler", "kwargs", "match"),
    [
        (ddim, {"steps": 100}, "steps=100 does not fit"),  # offset 1 would need timestep 100
        (ddpm, {"steps": 101}, "steps=101 does not fit"),
        (dpmpp, {"steps": 0}, "steps=0 does not fit"),
        (plms, {"prediction": "epsilon"}, "unknown prediction 'epsilon'"),
        (ddim, {"eta": 1.5}, "eta=1.5"),
    ],
)
def test_user_errors_are_config_errors(sampler, kwargs, match):
    with pytest.raises(ConfigError, match=match) as err:
        sampler(toy_model(SCHEDULE, "eps"), SCHEDULE, x_T(), **{"steps": 10, **kwargs})
    assert err.value.hint


# ---- starting late (img2img) and blending (inpainting) ---------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_start_at_or_above_the_first_timestep_changes_nothing(name):
    model_fn, fn = toy_model(SCHEDULE, "eps"), SAMPLERS[name]
    first = sampler_timesteps(name, SCHEDULE.num_timesteps, 7)[0]
    plain = fn(model_fn, SCHEDULE, x_T(), steps=7, generator=torch.Generator().manual_seed(0))
    for start in (first, SCHEDULE.num_timesteps):
        late = fn(model_fn, SCHEDULE, x_T(), steps=7, generator=torch.Generator().manual_seed(0), start=start)
        assert torch.equal(late, plain)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_start_runs_the_timesteps_at_or_below_it(name):
    seen: list[int] = []

    def model_fn(x: Tensor, t: Tensor) -> Tensor:
        seen.append(int(t[0]))
        return toy_model(SCHEDULE, "eps")(x, t)

    calls: list[tuple[int, int]] = []
    SAMPLERS[name](
        model_fn,
        SCHEDULE,
        x_T(),
        steps=10,
        start=45,
        generator=torch.Generator().manual_seed(0),
        callback=lambda i, n, x: calls.append((i, n)),
    )
    kept = [t for t in sampler_timesteps(name, SCHEDULE.num_timesteps, 10) if t <= 45]
    assert kept == sampler_timesteps(name, SCHEDULE.num_timesteps, 10, start=45)
    assert calls == [(i, len(kept)) for i in range(len(kept))]
    warm_up = [kept[1]] if name == "plms" else []  # PLMS's Heun step evaluates the next timestep too
    assert seen == [kept[0], *warm_up, *kept[1:]]


def run_late(sched, model_fn, x: Tensor, start: int, step_kwargs) -> Tensor:
    """diffusers' img2img loop: the timesteps of ``set_timesteps`` that are <= start (the scheduler
    told where it begins), one model call and one ``step`` each."""
    keep = int((sched.timesteps > start).sum())
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(keep)
    for t in sched.timesteps[keep:]:
        x = sched.step(model_fn(x, t.expand(x.shape[0])), t, x, **step_kwargs()).prev_sample
    return x


@pytest.mark.parametrize("name", ["ddim", "ddpm", "dpmpp"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_start_matches_diffusers_img2img(name, prediction):
    steps, start = 10, 500
    gen = torch.Generator().manual_seed(5)
    if name == "ddim":
        sched, ours = ddim_scheduler("sqrt_linear", prediction, steps)
        kwargs = dict
    elif name == "ddpm":
        sched, ours, _ = ddpm_oracle("sqrt_linear", prediction, steps, seed=5)
        kwargs = lambda: {"generator": gen}  # noqa: E731
    else:
        sched, ours = dpm_scheduler("sqrt_linear", prediction, steps)
        kwargs = dict
    model_fn = toy_model(ours, prediction)
    want = run_late(sched, model_fn, x_T(), start, kwargs)
    got = SAMPLERS[name](
        model_fn,
        ours,
        x_T(),
        steps=steps,
        prediction=prediction,
        start=start,
        generator=torch.Generator().manual_seed(5),
    )
    torch.testing.assert_close(got, want, rtol=0, atol=EXACT if name != "dpmpp" else 1e-6)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_start_below_every_timestep_is_a_config_error(name):
    with pytest.raises(ConfigError, match="below every timestep") as err:
        SAMPLERS[name](toy_model(SCHEDULE, "eps"), SCHEDULE, x_T(), steps=5, start=0 if name != "ddpm" else -1)
    assert err.value.hint


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_blend_rewrites_the_sample_before_each_step(name):
    model_fn, fn = toy_model(SCHEDULE, "eps"), SAMPLERS[name]
    seen: list[int] = []

    def same(x: Tensor, t: int) -> Tensor:
        seen.append(t)
        return x

    kw = {"steps": 6, "start": 60}
    plain = fn(model_fn, SCHEDULE, x_T(), generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(
        fn(model_fn, SCHEDULE, x_T(), generator=torch.Generator().manual_seed(0), blend=same, **kw), plain
    )
    assert seen == sampler_timesteps(name, SCHEDULE.num_timesteps, 6, start=60)
    # a blend that pins half of the sample to a value: the model sees that value there at every step
    pinned: list[bool] = []

    def pin(x: Tensor, t: int) -> Tensor:
        x = x.clone()
        x[..., :2] = 0.25
        return x

    def watching(x: Tensor, t: Tensor) -> Tensor:
        pinned.append(bool((x[..., :2] == 0.25).all()))
        return model_fn(x, t)

    fn(watching, SCHEDULE, x_T(), generator=torch.Generator().manual_seed(0), blend=pin, **kw)
    first_calls = pinned if name != "plms" else [pinned[0], *pinned[2:]]  # PLMS's warm-up call sees a moved x
    assert all(first_calls) and len(first_calls) == len(seen)
