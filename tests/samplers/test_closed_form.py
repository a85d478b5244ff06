"""Sampling with the analytically optimal denoiser of Gaussian data recovers that Gaussian.

For x0 ~ N(mu, s^2) (per dimension) and x_t = sqrt(a) x0 + sqrt(1 - a) eps, the Bayes-optimal
x0 prediction is E[x0 | x_t] = mu + sqrt(a) s^2 / (a s^2 + 1 - a) * (x_t - sqrt(a) mu). Every sampler
driven by it, started from the exact marginal q(x_t) at its first timestep t, must return samples
whose mean and standard deviation are mu and s. (Started from N(0, I) instead, the deterministic
samplers carry the prior mismatch sqrt(a_T) mu ~ 0.07 mu of LDM's schedule into the result.)
"""

from __future__ import annotations

import pytest
import torch

from ldmctl.samplers import SAMPLERS, sampler_timesteps
from ldmctl.schedule import Schedule, extract

MU = torch.tensor([1.5, -0.5, 0.0]).view(1, 3, 1, 1).double()
STD = torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1, 1).double()


def optimal_denoiser(schedule: Schedule, prediction: str):
    def model_fn(x, t):
        a = extract(schedule.alphas_cumprod, t, x)
        x0 = MU + a.sqrt() * STD**2 / (a * STD**2 + 1 - a) * (x - a.sqrt() * MU)
        eps = schedule.to_eps(x, t, x0, "x0")
        return {"x0": x0, "eps": eps, "v": schedule.to_v(x, t, x0, "x0")}[prediction]

    return model_fn


# Step counts are high enough for the discretisation error to vanish: at few steps every sampler
# ends on E[x0 | x_t_last], whose variance s^2 * a s^2 / (a s^2 + 1 - a) is below s^2 when t_last is
# far from 0 (DPM-Solver++ at 20 steps ends from t = 50: std 0.459 for s = 0.5; the same in diffusers).
# A ``start`` (img2img) begins at the sampler's first timestep <= start, from the marginal there.
@pytest.mark.parametrize(
    "name,steps,prediction,start",
    [
        ("ddim", 200, "eps", None),
        ("dpmpp", 100, "v", None),
        ("plms", 50, "eps", None),
        ("ddpm", 1000, "x0", None),
        ("ddim", 200, "v", 600),
        ("dpmpp", 100, "eps", 500),
        ("plms", 50, "x0", 400),
        ("ddpm", 500, "eps", 300),
    ],
)
def test_optimal_denoiser_recovers_data_mean_and_std(name, steps, prediction, start):
    schedule = Schedule.make("sqrt_linear", 1000)
    g = torch.Generator().manual_seed(0)
    a = schedule.alphas_cumprod[sampler_timesteps(name, 1000, steps, start)[0]]
    noise = torch.randn(4000, 3, 2, 2, generator=g, dtype=torch.float64)
    noise = a.sqrt() * MU + (a * STD**2 + 1 - a).sqrt() * noise  # x_t ~ q(x_t), exactly
    x = SAMPLERS[name](
        optimal_denoiser(schedule, prediction),
        schedule,
        noise,
        steps=steps,
        prediction=prediction,
        generator=g,
        start=start,
    )
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    # 16,000 values per channel: the standard error of the mean is s / 126 and of the std about s / 179;
    # the sampler's discretisation error must stay below a few percent on top of that
    torch.testing.assert_close(mean, MU.flatten(), atol=0.05, rtol=0)
    torch.testing.assert_close(std, STD.flatten(), atol=0.0, rtol=0.04)
