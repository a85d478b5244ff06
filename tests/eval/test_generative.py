"""Generative-eval plumbing: metric choice, feature collection, the report and per-class figures."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ldmctl.errors import ConfigError, WeightsError
from ldmctl.eval.classifier import ClassifierConfig, FeatureClassifier
from ldmctl.eval.frechet import frechet_distance_features
from ldmctl.eval.generative import (
    Batch,
    Collected,
    Extractors,
    choose_metrics,
    collect,
    generative_report,
    pick_indices,
)
from ldmctl.eval.kid import kernel_inception_distance

TINY = ClassifierConfig(size=16, width=8, num_classes=3, feature_dim=8, dropout=0.0, norm_groups=4)


class MeanColour(nn.Module):
    """A stand-in feature extractor: per-channel means and standard deviations (6 features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def _classifier() -> FeatureClassifier:
    with torch.random.fork_rng(devices=[]):  # nn init draws from the global RNG
        torch.manual_seed(0)
        return FeatureClassifier(TINY).eval()


def _batches(generator, n=8, labels=True, prompts=None):
    for _ in range(2):
        images = torch.rand(n, 3, 16, 16, generator=generator) * 2 - 1
        yield Batch(images, torch.arange(n) % 3 if labels else None, prompts)


def test_choose_metrics_auto_and_explicit():
    missing = WeightsError("Inception (FID) weights not found: /x/pt_inception-2015-12-05-6726825d.pth")
    problems = {"fid": missing, "kid": missing, "clip": ConfigError("no prompts"), "fd-cls": None, "acc": None}
    chosen, skipped = choose_metrics("auto", problems)
    assert chosen == ["fd-cls", "acc"] and set(skipped) == {"fid", "kid", "clip"}
    assert choose_metrics("fd-cls", problems) == (["fd-cls"], {})
    with pytest.raises(WeightsError, match="pt_inception"):
        choose_metrics("fid,fd-cls", problems)
    with pytest.raises(ConfigError, match="unknown"):
        choose_metrics("fid,is", problems)
    with pytest.raises(ConfigError, match="no metric can be computed"):
        choose_metrics("auto", {**problems, "fd-cls": ConfigError("x"), "acc": ConfigError("y")})


def test_collect_and_report(generator):
    ex = Extractors(inception=MeanColour(), classifier=_classifier())
    samples = collect(_batches(generator), ex)
    reference = collect(_batches(generator), ex)
    assert samples.n == 16 and samples.inception.shape == (16, 6) and samples.classifier.shape == (16, 8)
    assert samples.labels.tolist() == (torch.arange(8) % 3).tolist() * 2 and samples.clip is None
    report = generative_report(
        samples, reference, ["fid", "kid", "fd-cls", "acc"], class_names=["a", "b", "c"], kid_subsets=3, seed=5
    )
    m = report["metrics"]
    assert m["fid"] == pytest.approx(frechet_distance_features(samples.inception, reference.inception))
    assert m["fd_cls"] == pytest.approx(frechet_distance_features(samples.classifier, reference.classifier))
    g = torch.Generator().manual_seed(5)
    assert (m["kid"], m["kid_std"]) == kernel_inception_distance(
        samples.inception, reference.inception, subsets=3, generator=g
    )
    assert m["acc"] == pytest.approx(float((samples.predicted == samples.labels).double().mean()))
    assert "acc_reference" in m and "not FID" in report["descriptions"]["fd_cls"]
    rows = report["per_class"]
    assert [r["class"] for r in rows] == ["a", "b", "c"] and [r["n"] for r in rows] == [6, 6, 4]
    mine, theirs = samples.labels == 1, reference.labels == 1
    assert rows[1]["fd_cls"] == pytest.approx(
        frechet_distance_features(samples.classifier[mine], reference.classifier[theirs])
    )
    assert rows[1]["acc"] == pytest.approx(float((samples.predicted[mine] == 1).double().mean()))


def test_fid_of_a_set_with_itself_is_zero(generator):
    c = collect(_batches(generator), Extractors(inception=MeanColour()))
    assert generative_report(c, c, ["fid"])["metrics"]["fid"] == pytest.approx(0.0, abs=1e-9)


def test_unlabelled_sets_and_tiny_classes(generator):
    ex = Extractors(classifier=_classifier())
    unlabelled = collect(_batches(generator, labels=False), ex)
    assert unlabelled.labels is None
    report = generative_report(unlabelled, unlabelled, ["fd-cls"])
    assert "per_class" not in report and report["metrics"]["fd_cls"] == pytest.approx(0.0, abs=1e-9)
    one_each = Collected(
        n=3,
        classifier=torch.randn(3, 8, generator=generator),
        predicted=torch.tensor([0, 1, 2]),
        labels=torch.tensor([0, 1, 2]),
    )
    rows = generative_report(one_each, unlabelled, ["fd-cls", "acc"])["per_class"]
    assert all(math.isnan(r["fd_cls"]) for r in rows) and all(r["acc"] == 1.0 for r in rows)


def test_clip_needs_a_prompt_per_image(generator):
    scorer = lambda images, prompts: torch.full((images.shape[0],), 30.0)  # noqa: E731
    ex = Extractors(clip=scorer)
    c = collect(_batches(generator, n=2, prompts=["a", "b"]), ex, clip=True)
    assert c.clip.tolist() == [30.0] * 4 and c.prompts == ["a", "b", "a", "b"]
    assert generative_report(c, c, ["clip"])["metrics"]["clip_score"] == 30.0
    with pytest.raises(ConfigError, match="prompt"):
        collect(_batches(generator, n=2, prompts=None), ex, clip=True)


def test_pick_indices_is_seeded_and_sorted():
    assert pick_indices(5, 0, seed=0) == [0, 1, 2, 3, 4]
    a, b = pick_indices(100, 10, seed=3), pick_indices(100, 10, seed=3)
    assert a == b == sorted(a) and len(set(a)) == 10 and a != pick_indices(100, 10, seed=4)


def test_too_few_images():
    one = Collected(n=1, classifier=torch.zeros(1, 8))
    with pytest.raises(ConfigError, match="at least 2"):
        generative_report(one, one, ["fd-cls"])


def test_labels_beyond_the_classifier_are_refused(generator):
    ex = Extractors(classifier=_classifier())  # 3 classes
    batch = Batch(torch.rand(2, 3, 16, 16, generator=generator) * 2 - 1, torch.tensor([0, 5]))
    with pytest.raises(ConfigError, match="knows 3 classes"):
        collect([batch], ex)
