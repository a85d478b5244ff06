"""ldmctl sample --expert: a high-noise expert LDM for the steps at t >= --expert-from (ldmctl.sampling)."""

from __future__ import annotations

import pytest
import torch

from ldmctl.diffusion.io import load_ldm
from ldmctl.errors import ConfigError
from ldmctl.sampling import check_expert, switched


@pytest.fixture(scope="module")
def text_ldms(tmp_path_factory, tiny_ae, tiny_ldm):
    """Two tiny text-conditional LDMs on one autoencoder (different seeds) and one on another autoencoder."""
    root = tmp_path_factory.mktemp("expert")
    ae = tiny_ae(root)
    a = tiny_ldm(root, ae, "--cond", "crossattn", name="a")
    b = tiny_ldm(root, ae, "--cond", "crossattn", "--seed", "1", name="b")
    other = tiny_ldm(root, tiny_ae(root / "other", "--seed", "5"), "--cond", "crossattn", name="c")
    return a, b, other


def test_switched_calls_the_expert_from_its_timestep_on():
    calls = []
    fn = switched(lambda z, t: calls.append("high") or z, lambda z, t: calls.append("low") or z, 700)
    for t in (999, 700, 699, 0):
        fn(torch.zeros(2), torch.full((2,), t))
    assert calls == ["high", "high", "low", "low"]


def test_sampling_with_itself_as_expert_changes_nothing_and_another_expert_does(run_cli, text_ldms, tmp_path):
    a, b, _ = text_ldms
    common = ["sample", a, "--n", "2", "--steps", "4", "--prompt", "a red circle", "--sampler", "dpmpp"]
    run_cli(*common, "--out-file", tmp_path / "plain.png", "--save-tensor", tmp_path / "plain.pt")
    run_cli(*common, "--expert", a, "--out-file", tmp_path / "self.png", "--save-tensor", tmp_path / "self.pt")
    run_cli(*common, "--expert", b, "--out-file", tmp_path / "b.png", "--save-tensor", tmp_path / "b.pt")
    plain, own, other = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("plain", "self", "b"))
    assert torch.equal(plain, own)
    assert not torch.equal(plain, other)


def test_check_expert_refuses_what_cannot_share_the_chain(text_ldms):
    a, b, other = (load_ldm(p) for p in text_ldms)
    check_expert(a, b, 700, {"caption"})
    with pytest.raises(ConfigError, match="conditional"):
        check_expert(a, b, 700, {})
    with pytest.raises(ConfigError, match="expert-from"):
        check_expert(a, b, 0, {"caption"})
    with pytest.raises(ConfigError, match="autoencoder"):
        check_expert(a, other, 700, {"caption"})
