"""Schedules, conversions between parameterisations, the loss and its weights, EMA."""

from __future__ import annotations

import math

import pytest
import torch

from ldmctl.config import DiffusionConfig
from ldmctl.diffusion.ema import EMA
from ldmctl.diffusion.objective import Objective, min_snr_weights, vlb_weights
from ldmctl.errors import ConfigError
from ldmctl.schedule import Schedule, make_betas


def test_beta_schedules_against_their_definitions():
    torch.testing.assert_close(
        make_betas("linear", 5, 0.1, 0.5), torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    )
    sl = make_betas("sqrt_linear", 3, 0.01, 0.09)
    torch.testing.assert_close(sl, torch.tensor([0.01, 0.04, 0.09], dtype=torch.float64))
    cos = Schedule(make_betas("cosine", 1000))

    def f(t: int) -> float:  # the cosine schedule's alpha-bar before normalisation
        return math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    assert float(cos.alphas_cumprod[499]) == pytest.approx(f(500) / f(0), rel=1e-9)
    with pytest.raises(ValueError):
        make_betas("quadratic", 10)


def test_posterior_matches_bayes_rule(generator):
    """q(x_{t-1}|x_t,x_0) mean/variance equal the product-of-Gaussians closed form."""
    s = Schedule.make("linear", 100, 1e-4, 2e-2)
    t = torch.tensor([1, 50, 99])
    x0, xt = (
        torch.randn(3, 2, generator=generator, dtype=torch.float64),
        torch.randn(3, 2, generator=generator, dtype=torch.float64),
    )
    mean, var, _ = s.q_posterior(x0, xt, t)
    for i, ti in enumerate(t.tolist()):
        a_prev, beta = float(s.alphas_cumprod[ti - 1]), float(s.betas[ti])
        # prior x_{t-1} ~ N(sqrt(a_prev) x0, 1 - a_prev); likelihood x_t ~ N(sqrt(1-beta) x_{t-1}, beta)
        prec = 1 / (1 - a_prev) + (1 - beta) / beta
        m = (math.sqrt(a_prev) * x0[i] / (1 - a_prev) + math.sqrt(1 - beta) * xt[i] / beta) / prec
        torch.testing.assert_close(mean[i], m)
        assert float(var[i]) == pytest.approx(1 / prec, rel=1e-9)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_conversions_are_exact(prediction, generator):
    s = Schedule.make()
    x0 = torch.randn(4, 3, 2, 2, generator=generator, dtype=torch.float64)
    eps = torch.randn(4, 3, 2, 2, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 1, 500, 999])
    xt = s.q_sample(x0, t, eps)
    out = s.target(x0, eps, t, prediction)
    torch.testing.assert_close(s.to_x0(xt, t, out, prediction), x0)
    torch.testing.assert_close(s.to_eps(xt, t, out, prediction), eps)
    torch.testing.assert_close(s.to_v(xt, t, out, prediction), s.target(x0, eps, t, "v"))


def test_vlb_weights_turn_eps_error_into_the_kl_term():
    """w_t * ||eps - eps_hat||^2 == ||mu(x0) - mu(x0_hat)||^2 / (2 sigma_t^2) for every parameterisation."""
    s = Schedule.make("linear", 50, 1e-4, 2e-2)
    t = torch.tensor([5, 30])
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 4, generator=g, dtype=torch.float64), torch.randn(2, 4, generator=g, dtype=torch.float64)
    xt = s.q_sample(x0, t, eps)
    eps_hat = eps + 0.1 * torch.randn(2, 4, generator=g, dtype=torch.float64)
    x0_hat = s.to_x0(xt, t, eps_hat, "eps")
    mu, var, _ = s.q_posterior(x0, xt, t)
    mu_hat, _, _ = s.q_posterior(x0_hat, xt, t)
    kl = ((mu - mu_hat) ** 2).sum(1) / (2 * var[:, 0])
    for pred in ("eps", "x0", "v"):
        err = (
            (
                s.target(x0, eps, t, pred) - s.to_v(xt, t, eps_hat, "eps")
                if pred == "v"
                else s.target(x0, eps, t, pred) - (eps_hat if pred == "eps" else x0_hat)
            )
            ** 2
        ).sum(1)
        torch.testing.assert_close(vlb_weights(s, pred)[t] * err, kl)


def test_min_snr_weights():
    s = Schedule.make()
    t = torch.tensor([0, 999])
    snr = s.snr(t)
    torch.testing.assert_close(min_snr_weights(s, t, "eps", 5.0).double(), (snr.clamp(max=5) / snr).float().double())
    assert float(min_snr_weights(s, t, "x0", 5.0)[0]) == 5.0


def test_loss_falls_to_zero_for_the_true_target(generator):
    cfg = DiffusionConfig(vlb_weight=0.5)
    obj = Objective(cfg)
    z0 = torch.randn(4, 2, 3, 3, generator=generator)
    captured = {}

    def oracle(z_t, t):
        captured["t"] = t
        return (
            z_t - obj.schedule.sqrt_alphas_cumprod[t].float()[:, None, None, None] * z0
        ) / obj.schedule.sqrt_one_minus_alphas_cumprod[t].float()[:, None, None, None]

    loss, logs = obj(oracle, z0, generator)
    assert float(loss) < 1e-8 and set(logs) == {"loss", "simple", "vlb"}
    loss0, _ = obj(lambda z_t, t: torch.zeros_like(z_t), z0, generator)
    assert float(loss0) > 0.5


def test_ema_update_and_warmup():
    lin = torch.nn.Linear(2, 1, bias=False)
    lin.weight.data.fill_(0.0)
    ema = EMA(lin, decay=0.9, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    lin.weight.data.fill_(1.0)
    ema.update(lin)
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 0.9))
    for _ in range(200):
        ema.update(lin)
    assert ema.current_decay() == 0.9
    no_warm = EMA(torch.nn.Linear(2, 1, bias=False), decay=0.5, warmup=False)
    assert no_warm.current_decay() == 0.5


def test_timestep_bias_draws_a_share_of_the_batch_from_its_range():
    z0 = torch.zeros(4000, 1, 1, 1)
    plain = Objective(DiffusionConfig())
    t0, n0 = plain.draw(z0, torch.Generator().manual_seed(0))
    t_off, n_off = Objective(DiffusionConfig(timestep_bias_begin=10)).draw(z0, torch.Generator().manual_seed(0))
    assert torch.equal(t0, t_off) and torch.equal(n0, n_off)  # portion 0: the unbiased stream, untouched
    t_all, _ = Objective(DiffusionConfig(timestep_bias_portion=1.0, timestep_bias_begin=900)).draw(
        z0, torch.Generator().manual_seed(0)
    )
    assert int(t_all.min()) >= 900 and int(t_all.max()) == 999
    half = Objective(DiffusionConfig(timestep_bias_portion=0.5, timestep_bias_begin=100, timestep_bias_end=200))
    t_half, _ = half.draw(z0, torch.Generator().manual_seed(0))
    share = float(((t_half >= 100) & (t_half < 200)).float().mean())
    assert abs(share - (0.5 + 0.5 * 0.1)) < 0.03  # the biased half plus the uniform half's tenth
    assert half.bias_range == (100, 200)


@pytest.mark.parametrize("begin,end", [(900, 900), (500, 1001), (1000, 0)])
def test_timestep_bias_range_must_fit_the_schedule(begin, end):
    cfg = DiffusionConfig(timestep_bias_portion=0.3, timestep_bias_begin=begin, timestep_bias_end=end)
    with pytest.raises(ConfigError, match="timestep_bias"):
        Objective(cfg)
