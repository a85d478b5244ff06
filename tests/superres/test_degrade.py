"""Low-res inputs for super-resolution: resize, degrade and the paired data set (generated data)."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.data import Dataset

from ldmctl.config import DegradationConfig
from ldmctl.errors import ConfigError, DataError
from ldmctl.superres.degrade import SuperresDataset, degrade, resize


def _image(h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """A smooth random (3, h, w) image in [-1, 1] with some fine detail."""
    torch.manual_seed(seed)
    coarse = torch.rand(1, 3, h // 4, w // 4) * 2 - 1
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    return (0.8 * smooth + 0.2 * (torch.rand(3, h, w) * 2 - 1)).clamp(-1, 1)


class TinyData(Dataset):
    """A minimal ldmctl-style data set: random images whose crop depends on the epoch."""

    def __init__(self, n: int = 5, size: int = 16) -> None:
        self.n, self.size, self.epoch = n, size, 0
        self.name = "tiny"
        self.skipped = [("bad.png", "empty file (0 bytes)")]
        self.class_names = ["a", "b"]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {
            "image": _image(self.size, self.size, seed=1000 * self.epoch + i),
            "label": i % 2,
            "caption": f"item {i}",
            "path": f"{i}.png",
        }

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def summary(self) -> str:
        return f"{self.n} tiny images"


class NamelessData(Dataset):
    """A data set without name, skipped, set_epoch or summary."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> dict:
        return {"image": _image(8, 8, seed=i), "label": 0, "caption": "", "path": ""}


ALL_ON = DegradationConfig(scale=4, blur=2.0, noise=0.05, jpeg=30)


def test_resize_shapes_and_no_clamp():
    x = _image(32, 24)
    assert resize(x, (8, 6)).shape == (3, 8, 6)
    assert resize(x[None].repeat(2, 1, 1, 1), (64, 48)).shape == (2, 3, 64, 48)
    assert resize(x, (32, 24)) is x
    step = torch.zeros(1, 16, 16)
    step[:, :, 8:] = 1.0
    up = resize(step, (64, 64))
    assert up.max() > 1.0 and up.min() < 0.0  # bicubic overshoot is kept: callers clamp


def test_resize_antialiases_when_shrinking():
    stripes = torch.zeros(1, 48, 48)
    stripes[:, :, ::2] = 1.0  # 1-px stripes: point sampling at 1/3 size aliases them to 0/1 columns
    small = resize(stripes, (16, 16))[:, :, 2:-2]  # away from the border, where edge handling shows
    aliased = torch.nn.functional.interpolate(stripes[None], size=(16, 16), mode="bicubic", align_corners=False)
    assert (aliased[0, :, :, 2:-2] - 0.5).abs().max() > 0.4  # what no antialiasing would give
    assert (small - 0.5).abs().max() < 0.1


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_degrade_shape_and_range(scale):
    lr = degrade(_image(32, 48), DegradationConfig(scale=scale, blur=1.0, noise=0.1, jpeg=50), random.Random(0))
    assert lr.shape == (3, 32 // scale, 48 // scale) and lr.dtype == torch.float32
    assert lr.min() >= -1 and lr.max() <= 1


def test_all_off_is_clamped_resize():
    hr = _image(32, 32)
    lr = degrade(hr, DegradationConfig(scale=4), random.Random(0))
    assert torch.equal(lr, resize(hr, (8, 8)).clamp(-1, 1))


def test_degrade_deterministic_given_rng_state():
    hr = _image()
    a = degrade(hr, ALL_ON, random.Random("x"))
    b = degrade(hr, ALL_ON, random.Random("x"))
    c = degrade(hr, ALL_ON, random.Random("y"))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    "cfg",
    [DegradationConfig(scale=4, blur=3.0), DegradationConfig(scale=4, noise=0.1), DegradationConfig(scale=4, jpeg=10)],
    ids=["blur", "noise", "jpeg"],
)
def test_each_option_changes_the_output(cfg):
    hr = _image(64, 64)
    plain = degrade(hr, DegradationConfig(scale=4), random.Random(0))
    # several draws, so a tiny sigma/std drawn once cannot make the test flaky
    diffs = [(degrade(hr, cfg, random.Random(k)) - plain).abs().mean().item() for k in range(4)]
    assert max(diffs) > 0.01


def test_blur_removes_detail_before_downscaling():
    hr = _image(64, 64)
    plain = degrade(hr, DegradationConfig(scale=2), random.Random(0))
    blurred = degrade(hr, DegradationConfig(scale=2, blur=4.0), random.Random(0))

    def detail(t):
        return (t[:, :, 1:] - t[:, :, :-1]).abs().mean()

    assert detail(blurred) < detail(plain)


def test_noise_std_is_in_zero_one_units():
    hr = torch.zeros(3, 256, 256)
    cfg = DegradationConfig(scale=1, noise=0.1)
    rng = random.Random(3)
    std = random.Random(3).uniform(0.0, 0.1)
    lr = degrade(hr, cfg, rng)
    assert abs(lr.std().item() - 2 * std) < 0.1 * 2 * std


def test_bad_image_size_is_a_data_error():
    with pytest.raises(DataError, match="30x32"):
        degrade(_image(30, 32), DegradationConfig(scale=4), random.Random(0))
    with pytest.raises(DataError, match="shape"):
        degrade(torch.zeros(1, 8, 8), DegradationConfig(scale=4), random.Random(0))


@pytest.mark.parametrize(
    "cfg",
    [
        DegradationConfig(scale=0),
        DegradationConfig(scale=2.5),  # type: ignore[arg-type]
        DegradationConfig(blur=-1.0),
        DegradationConfig(noise=-0.1),
        DegradationConfig(noise=float("nan")),
        DegradationConfig(jpeg=96),
        DegradationConfig(jpeg=-1),
    ],
)
def test_bad_config_is_a_config_error(cfg):
    with pytest.raises(ConfigError):
        degrade(_image(16, 16), cfg, random.Random(0))
    with pytest.raises(ConfigError):
        SuperresDataset(TinyData(), cfg)


def test_dataset_pairs_are_deterministic_per_seed_epoch_index():
    ds = SuperresDataset(TinyData(), ALL_ON, seed=7)
    item = ds[3]
    assert item["cond_image"].shape == (3, 4, 4) and item["image"].shape == (3, 16, 16)
    assert item["label"] == 1 and item["caption"] == "item 3" and item["path"] == "3.png"
    again = SuperresDataset(TinyData(), ALL_ON, seed=7)[3]
    assert torch.equal(item["cond_image"], again["cond_image"])
    other_seed = SuperresDataset(TinyData(), ALL_ON, seed=8)[3]
    assert not torch.equal(item["cond_image"], other_seed["cond_image"])
    ds.set_epoch(1)
    assert ds.base.epoch == 1  # forwarded: the base draws new crops too
    next_epoch = ds[3]
    assert not torch.equal(item["cond_image"], next_epoch["cond_image"])
    ds.set_epoch(0)
    assert torch.equal(ds[3]["cond_image"], item["cond_image"])


def test_dataset_degradation_rng_is_independent_of_the_image():
    base = TinyData()
    ds = SuperresDataset(base, DegradationConfig(scale=4, noise=0.1), seed=0)
    ds.set_epoch(1)
    base.set_epoch(0)  # same image as epoch 0, but the degradation is drawn for epoch 1
    noisy_e1 = ds[0]["cond_image"]
    ds.epoch = 0
    assert not torch.equal(noisy_e1, ds[0]["cond_image"])


def test_dataset_forwards_attributes():
    base = TinyData()
    ds = SuperresDataset(base, ALL_ON)
    assert len(ds) == 5 and ds.name == "tiny" and ds.class_names == ["a", "b"]
    assert ds.skipped is base.skipped
    assert ds.summary() == (
        "5 tiny images -> low-res x4 pairs (bicubic, blur sigma<=2 px, noise std<=0.05, JPEG quality 30-95)"
    )
    plain = SuperresDataset(NamelessData(), DegradationConfig(scale=2))
    assert getattr(plain, "name", None) is None
    assert plain.skipped == [] and plain.class_names == []
    plain.set_epoch(3)  # the base has no set_epoch: still fine
    assert plain.summary() == "2 images -> low-res x2 pairs (bicubic, no blur/noise/JPEG)"
    assert plain[1]["cond_image"].shape == (3, 4, 4)


def test_dataset_size_not_multiple_of_scale_is_a_config_error():
    with pytest.raises(ConfigError, match="multiple of superres.scale=3") as err:
        SuperresDataset(TinyData(size=16), DegradationConfig(scale=3))
    assert err.value.hint and "15" in err.value.hint
