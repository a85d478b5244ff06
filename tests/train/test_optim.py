"""The optimizers of train-ae: Muon for weight matrices, Adam for everything else."""

import torch
from torch import nn

from ldmctl.train.optim import MuonWithAdam, build_optimizer, muon_eligible, orthogonalize


def test_orthogonalize_returns_the_polar_factor_for_wide_and_tall_batches():
    g = torch.Generator().manual_seed(0)
    for shape in [(3, 8, 20), (2, 20, 8)]:
        m = torch.randn(*shape, generator=g)
        o = orthogonalize(m)
        u, _, vh = torch.linalg.svd(m, full_matrices=False)
        torch.testing.assert_close(o, u @ vh, atol=1e-4, rtol=1e-4)


def test_orthogonalize_does_not_blow_up_null_directions():
    m = torch.zeros(1, 4, 6)
    m[0, 0, 0] = 1.0  # rank one: three singular values are exactly zero
    o = orthogonalize(m)
    assert torch.isfinite(o).all()
    assert torch.linalg.matrix_norm(o, ord=2) <= 1.0 + 1e-5
    torch.testing.assert_close(o[0, 0, 0], torch.tensor(1.0), atol=1e-5, rtol=0)
    # a zero gradient (the deep path before its zero-initialised output layer learns) stays zero
    assert torch.equal(orthogonalize(torch.zeros(2, 4, 6)), torch.zeros(2, 4, 6))


def test_muon_takes_kernels_and_matrices_not_biases_norms_or_thin_layers():
    net = nn.Sequential(nn.Conv2d(3, 32, 3), nn.GroupNorm(4, 32), nn.Conv2d(32, 32, 3), nn.Conv2d(32, 4, 1))
    chosen = {n for n, p in net.named_parameters() if muon_eligible(n, p)}
    assert chosen == {"0.weight", "2.weight"}  # 32x27 and 32x288; 4x32 is too thin
    assert not muon_eligible("quantize.embedding.weight", torch.zeros(512, 32))  # a VQ codebook


def test_adam_groups_match_torch_adam_exactly():
    torch.manual_seed(0)
    a, b = nn.Linear(5, 3), nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    ours = MuonWithAdam([dict(params=list(a.parameters()), muon=False)], lr=1e-2, betas=(0.9, 0.99))
    ref = torch.optim.Adam(b.parameters(), lr=1e-2, betas=(0.9, 0.99))
    for _ in range(4):
        x = torch.randn(7, 5)
        for net, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            net(x).pow(2).sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_muon_step_has_the_size_of_an_adam_step_and_follows_the_polar_factor():
    w = nn.Parameter(torch.zeros(16, 64))
    opt = MuonWithAdam([dict(params=[w], muon=True)], lr=1e-3, momentum=0.0)
    g = torch.randn(16, 64)
    w.grad = g.clone()
    opt.step()
    expected = -1e-3 * 0.2 * 64**0.5 * orthogonalize(g[None])[0]
    torch.testing.assert_close(w.detach(), expected)
    rms = w.detach().pow(2).mean().sqrt()
    assert abs(rms.item() - 0.2 * 1e-3) < 1e-5  # the RMS of an Adam step of lr 1e-3 is at most 1e-3


def test_muon_lowers_a_loss_and_its_state_survives_a_round_trip():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 3, 3, padding=1))
    opt = build_optimizer("muon", net.named_parameters(), lr=3e-3, betas=(0.9, 0.99))
    x = torch.randn(4, 3, 8, 8)

    def step():
        opt.zero_grad()
        loss = (net(x) - x).abs().mean()
        loss.backward()
        opt.step()
        return loss.item()

    first = step()
    for _ in range(30):
        last = step()
    assert last < 0.7 * first
    state = opt.state_dict()
    clone = build_optimizer("muon", net.named_parameters(), lr=3e-3, betas=(0.9, 0.99))
    clone.load_state_dict(state)
    assert [g["muon"] for g in clone.param_groups] == [True, False]
    p = next(net.parameters())
    torch.testing.assert_close(clone.state[p]["momentum"], opt.state[p]["momentum"])
