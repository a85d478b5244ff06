"""The FID Inception: loading from files the tests write, the FID graph, missing-weights errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ldmctl.errors import WeightsError
from ldmctl.eval.frechet import frechet_distance_features
from ldmctl.eval.inception import (
    ENV_VAR,
    FID_WEIGHTS_FILE,
    InceptionFeatures,
    default_weights_path,
    load_inception,
    resolve_weights_path,
)


@pytest.fixture(scope="module")
def fid_state(fid_inception_weights) -> dict[str, torch.Tensor]:
    """The random FID-layout state dict that conftest wrote (random_fid_inception_state)."""
    return torch.load(fid_inception_weights, weights_only=True)


@pytest.fixture(scope="module")
def weights_file(fid_inception_weights):
    return fid_inception_weights


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_loads_the_file_and_gives_pool_features(weights_file, fid_state, images):
    model = load_inception(weights_file)
    assert isinstance(model, InceptionFeatures) and not model.training
    assert torch.equal(model.net.Mixed_7c.branch_pool.conv.weight, fid_state["Mixed_7c.branch_pool.conv.weight"])
    feats = model(images)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all() and feats.abs().max() > 1e-3
    model.train()
    assert not model.training  # stays in eval mode (BatchNorm statistics must not move)


def test_features_equal_pytorch_fid(weights_file, fid_state, images, monkeypatch):
    """The reference implementation, pytorch-fid, fed the same weights gives the same features."""
    pfid = pytest.importorskip("pytorch_fid.inception")
    monkeypatch.setattr(pfid, "load_state_dict_from_url", lambda *a, **k: dict(fid_state))
    reference = pfid.InceptionV3([pfid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    with torch.no_grad():
        expected = reference((images + 1) / 2)[0].flatten(1)  # pytorch-fid takes [0, 1] images
    got = load_inception(weights_file)(images)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_fid_of_a_set_with_itself_is_zero(weights_file, images):
    model = load_inception(weights_file)
    feats = model(images)
    assert frechet_distance_features(feats, feats) == pytest.approx(0.0, abs=1e-6)
    other = model(torch.flip(images, dims=[1]) * 0.5)
    assert frechet_distance_features(feats, other) > 1e-3


def test_safetensors_and_missing_step_counters(fid_state, tmp_path, images):
    state = {k: v.contiguous() for k, v in fid_state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "fid.safetensors"
    save_file(state, str(path))
    assert load_inception(path)(images[:1]).shape == (1, 2048)


def test_missing_weights_name_the_file_and_where_it_goes(isolated_torch_hub, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    expected = isolated_torch_hub / "checkpoints" / FID_WEIGHTS_FILE
    assert default_weights_path() == expected
    with pytest.raises(WeightsError) as err:
        load_inception()
    assert str(expected) in str(err.value) and "--inception-weights" in err.value.hint


def test_weights_path_order(tmp_path, monkeypatch, isolated_torch_hub):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env.pth"))
    assert resolve_weights_path() == tmp_path / "env.pth"
    assert resolve_weights_path(tmp_path / "flag.pth") == tmp_path / "flag.pth"
    with pytest.raises(WeightsError, match="env.pth"):
        load_inception()


def test_rejects_torchvision_classification_weights(tmp_path):
    path = tmp_path / "inception_v3_google-0cc3c7bd.pth"
    torch.save({"AuxLogits.fc.weight": torch.zeros(1000, 768), "fc.weight": torch.zeros(1000, 2048)}, path)
    with pytest.raises(WeightsError, match="not the FID Inception"):
        load_inception(path)


@pytest.mark.parametrize("content", [b"not a torch file", None])
def test_unusable_files(tmp_path, content):
    path = tmp_path / "w.pth"
    if content is None:
        torch.save({"conv.weight": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match="could not be read|not the FID Inception"):
        load_inception(path)
