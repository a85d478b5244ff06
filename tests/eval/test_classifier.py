from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch.utils.data import Dataset

from ldmctl.checkpoint import save_checkpoint
from ldmctl.errors import CheckpointError, ConfigError
from ldmctl.eval.classifier import (
    ClassifierConfig,
    FeatureClassifier,
    class_predictions,
    evaluate_accuracy,
    extract_features,
    load_classifier,
    save_classifier,
)
from ldmctl.train.classifier import random_translate, train_classifier
from ldmctl.train.loop import Callbacks

TINY = ClassifierConfig(size=16, width=8, num_classes=2, feature_dim=16, dropout=0.0, norm_groups=4)


class SquaresDataset(Dataset):
    """Class 0: a bright square in the left half; class 1: in the right half. 16x16, in [-1, 1]."""

    class_names: ClassVar[list[str]] = ["left", "right"]

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.full((n, 3, 16, 16), -1.0)
        self.labels = torch.arange(n) % 2
        for i in range(n):
            top = int(torch.randint(0, 11, (), generator=g))
            left = int(torch.randint(0, 3, (), generator=g)) + (10 if self.labels[i] else 0)
            self.images[i, :, top : top + 5, left : left + 4] = 0.5 + 0.5 * torch.rand((), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {
            "image": self.images[index],
            "label": int(self.labels[index]),
            "caption": self.class_names[int(self.labels[index])],
            "path": f"squares#{index}",
        }


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # these convolutions are tiny: on a busy 2-core machine, two intra-op threads make them
    # several times slower than one
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(one_thread) -> FeatureClassifier:
    return train_classifier(SquaresDataset(), TINY, steps=30, batch_size=16, lr=3e-3, seed=0)


def test_learns_tiny_dataset(trained):
    assert not trained.training
    assert evaluate_accuracy(trained, SquaresDataset(seed=1), batch_size=20) > 0.9


def test_features_shape_and_resizing(trained):
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    feats = extract_features(trained, x, batch_size=2)
    assert feats.shape == (5, 16) and feats.dtype == torch.float32
    assert trained(x).shape == (5, 2)
    # another size is resized inside features; an iterable of single images gives the same result
    assert extract_features(trained, torch.rand(3, 3, 24, 24)).shape == (3, 16)
    assert torch.allclose(extract_features(trained, list(x), batch_size=3), feats, atol=1e-6)
    assert class_predictions(trained, x).dtype == torch.int64


def test_save_load_round_trip(trained, tmp_path):
    path = save_classifier(trained, tmp_path / "cls.safetensors", extra={"steps": 30})
    loaded = load_classifier(path)
    assert loaded.config == TINY and not loaded.training
    x = SquaresDataset(n=8, seed=2).images
    assert torch.equal(extract_features(loaded, x), extract_features(trained, x))


def test_load_rejects_other_kinds(tmp_path):
    path = save_checkpoint(tmp_path / "ae.safetensors", {"w": torch.zeros(1)}, kind="autoencoder", config={})
    with pytest.raises(CheckpointError, match="classifier"):
        load_classifier(path)


def test_deterministic_for_a_seed():
    steps = []
    cb = Callbacks(on_step=lambda step, logs: steps.append((step, logs["loss"])))
    a = train_classifier(SquaresDataset(n=16), TINY, steps=3, batch_size=8, seed=3, callbacks=cb)
    b = train_classifier(SquaresDataset(n=16), TINY, steps=3, batch_size=8, seed=3)
    c = train_classifier(SquaresDataset(n=16), TINY, steps=3, batch_size=8, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert [s for s, _ in steps] == [1, 2, 3]


def test_global_rng_untouched():
    before = torch.get_rng_state()
    train_classifier(SquaresDataset(n=8), TINY, steps=1, batch_size=4, seed=0)
    assert torch.equal(torch.get_rng_state(), before)


def test_random_translate_shifts_by_at_most_two(generator):
    x = torch.full((4, 1, 8, 8), -1.0)
    x[:, :, 3, 3] = 1.0
    y = random_translate(x, 2, generator)
    assert y.shape == x.shape
    for img in y:
        r, c = (img[0] == 1.0).nonzero()[0].tolist()
        assert abs(r - 3) <= 2 and abs(c - 3) <= 2


def test_config_errors():
    with pytest.raises(ConfigError, match="multiple of 8"):
        FeatureClassifier(ClassifierConfig(size=20))
    with pytest.raises(ConfigError, match="num_classes"):
        train_classifier(
            SquaresDataset(n=8), ClassifierConfig(num_classes=1, size=16, width=8, norm_groups=4), steps=1, batch_size=4
        )
