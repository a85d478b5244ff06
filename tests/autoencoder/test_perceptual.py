"""LPIPS loading: linear heads from the lpips package, backbone from a local torchvision file."""

from __future__ import annotations

from pathlib import Path

import lpips
import pytest
import torch
from torchvision import models as tvm

from ldmctl.autoencoder import build_perceptual, default_backbone_path
from ldmctl.errors import ConfigError, WeightsError


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    state = tvm.alexnet(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "alexnet.pth"
    torch.save(state, path)
    return path, state


def test_default_paths_are_torchvision_cache_names():
    names = {net: default_backbone_path(net).name for net in ("alex", "vgg", "squeeze")}
    assert names == {
        "alex": "alexnet-owt-7be5be79.pth",
        "vgg": "vgg16-397923af.pth",
        "squeeze": "squeezenet1_1-b8a52dc0.pth",
    }
    assert default_backbone_path().parent == Path(torch.hub.get_dir()) / "checkpoints"


def test_random_backbone_distance_is_frozen_and_differentiable():
    lp = build_perceptual("alex", random_backbone=True)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1).requires_grad_(True)
    d = lp(x, y)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(lp(x, x), torch.zeros(2), rtol=0, atol=1e-6)
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lp.parameters())
    lp.train()
    assert not lp.training and not lp.model.lin0.training  # dropout stays off


def test_linear_heads_come_from_the_lpips_package():
    lp = build_perceptual("squeeze", random_backbone=True)
    path = Path(lpips.__file__).parent / "weights" / "v0.1" / "squeeze.pth"
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    own = lp.model.state_dict()
    for key, value in shipped.items():
        assert torch.equal(own[key], value), key


def test_backbone_is_loaded_from_a_torchvision_state_dict(alexnet_file):
    path, state = alexnet_file
    lp = build_perceptual("alex", weights=path)
    backbone = lp.model.net.state_dict()
    assert len(backbone) == 10  # five conv layers, weight + bias
    for key, value in backbone.items():  # "slice2.3.weight" is torchvision "features.3.weight"
        assert torch.equal(value, state["features." + key.split(".", 1)[1]]), key


def test_default_location_is_the_torch_hub_cache(tmp_path, monkeypatch, alexnet_file):
    hub = tmp_path / "hub"  # patched (and restored) here so no other test sees this file
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    with pytest.raises(WeightsError, match="LPIPS backbone weights not found") as err:
        build_perceptual("alex")
    assert "--perceptual none" in err.value.hint and "--lpips-weights" in err.value.hint
    target = default_backbone_path("alex")
    assert target == hub / "checkpoints" / "alexnet-owt-7be5be79.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(alexnet_file[0].read_bytes())
    lp = build_perceptual("alex")
    assert torch.equal(lp.model.net.slice1[0].weight, alexnet_file[1]["features.0.weight"])


def test_missing_corrupt_and_wrong_files_are_weights_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        build_perceptual("alex", weights=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(WeightsError, match="could not be read"):
        build_perceptual("alex", weights=junk)
    wrong = tmp_path / "squeeze.pth"
    torch.save(tvm.squeezenet1_1(weights=None).state_dict(), wrong)
    with pytest.raises(WeightsError, match="not a torchvision alexnet"):
        build_perceptual("alex", weights=wrong)
    not_tensors = tmp_path / "list.pth"
    torch.save({"features.0.weight": [1, 2]}, not_tensors)
    with pytest.raises(WeightsError):
        build_perceptual("alex", weights=not_tensors)


def test_squeezenet_backbone_mapping(tmp_path):
    state = tvm.squeezenet1_1(weights=None).state_dict()
    path = tmp_path / "sq.pth"
    torch.save(state, path)
    lp = build_perceptual("squeeze", weights=path)
    for key, value in lp.model.net.state_dict().items():
        assert torch.equal(value, state["features." + key.split(".", 1)[1]]), key


def test_unknown_net_is_a_config_error():
    with pytest.raises(ConfigError, match="resnet"):
        build_perceptual("resnet", random_backbone=True)
