"""``ldmctl compare`` library: the match rule, the judge (values, bootstrap, paired differences) and
the report files, on synthetic numbers and stand-in sample streams (no LDM)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from ldmctl.compare.report import samplers_markdown
from ldmctl.compare.run import (
    SamplersConfig,
    Setting,
    compare_samplers,
    matching_steps,
    parse_setting,
    validate_samplers,
)
from ldmctl.config import DataConfig
from ldmctl.data.shapes import ShapesDataset
from ldmctl.errors import ConfigError, PackageError
from ldmctl.eval.classifier import ClassifierConfig, FeatureClassifier
from ldmctl.eval.generative import Extractors, collect, dataset_batches
from ldmctl.eval.judge import METRICS, Judge, JudgeConfig, resolve_metrics

TINY = ClassifierConfig(size=16, width=8, num_classes=3, feature_dim=8, dropout=0.0, norm_groups=4)


def _row(sampler, steps, value, std=1.0, seed=0, key="fd_cls"):
    return {"sampler": sampler, "steps": steps, "seed": seed, "values": {key: value}, "std": {key: std}}


def test_matching_steps_lower_is_better():
    rows = [
        _row("ddim", 10, 14.0),
        _row("ddim", 20, 11.5),
        _row("ddim", 50, 10.0, std=0.5),
        _row("dpmpp", 10, 11.2),
        _row("dpmpp", 20, 10.4),
        _row("dpmpp", 50, 9.0),
        _row("plms", 10, 30.0),
        _row("plms", 20, 25.0),
        _row("dpmpp", 5, 10.1, seed=1),
    ]  # another seed never counts
    match = matching_steps(rows, Setting("ddim", 50), METRICS["fd-cls"], sigmas=2.0)
    assert match["tolerance"] == pytest.approx(1.0) and match["threshold"] == pytest.approx(11.0)
    assert match["steps"] == {"ddim": 50, "dpmpp": 20, "plms": None}
    loose = matching_steps(rows, Setting("ddim", 50), METRICS["fd-cls"], sigmas=3.0)  # threshold 11.5
    assert loose["steps"] == {"ddim": 20, "dpmpp": 10, "plms": None}


def test_matching_steps_higher_is_better_and_better_always_matches():
    rows = [
        _row("ddim", 50, 0.80, std=0.01, key="acc"),
        _row("dpmpp", 5, 0.70, key="acc"),
        _row("dpmpp", 10, 0.95, key="acc"),
        _row("dpmpp", 20, 0.79, key="acc"),
    ]
    match = matching_steps(rows, Setting("ddim", 50), METRICS["acc"], sigmas=2.0)
    assert match["threshold"] == pytest.approx(0.78) and match["steps"]["dpmpp"] == 10


def test_matching_steps_without_a_noise_estimate_compares_exactly():
    rows = [_row("ddim", 50, 10.0, std=math.nan), _row("dpmpp", 10, 10.0), _row("dpmpp", 5, 10.01)]
    match = matching_steps(rows, Setting("ddim", 50), METRICS["fd-cls"], sigmas=2.0)
    assert match["tolerance"] == 0.0 and match["steps"]["dpmpp"] == 10
    with pytest.raises(ConfigError, match="ddim-20 was not measured"):
        matching_steps(rows, Setting("ddim", 20), METRICS["fd-cls"], sigmas=2.0)


def test_settings_and_their_validation():
    assert parse_setting("ddim-50") == Setting("ddim", 50) and parse_setting("dpmpp:20") == Setting("dpmpp", 20)
    cfg = SamplersConfig(samplers=("dpmpp",), steps=(20, 10, 10), reference="ddim-50", seed=3)
    assert [s.name for s in cfg.settings()] == ["dpmpp-10", "dpmpp-20", "ddim-50"]
    assert {s.seed for s in cfg.settings()} == {3}
    for bad, match in [
        (SamplersConfig(samplers=("euler",)), "unknown sampler"),
        (SamplersConfig(steps=(0, 10)), "positive"),
        (SamplersConfig(reference="ddim"), "SAMPLER-STEPS"),
        (SamplersConfig(repeat_seed=0), "differ"),
        (SamplersConfig(match_sigmas=float("nan")), "match-sigmas"),
    ]:
        with pytest.raises(ConfigError, match=match):
            validate_samplers(bad)


def test_resolve_metrics():
    assert resolve_metrics("auto", keys={"caption"}, classifier=False) == ("shapes",)
    assert resolve_metrics("auto", keys={"label"}, classifier=True) == ("fd-cls", "acc")
    assert resolve_metrics("auto", keys=set(), classifier=True) == ("fd-cls",)
    assert resolve_metrics("auto", keys=set(), classifier=False) == ("fid",)
    assert resolve_metrics(" acc, fd-cls ,acc", keys=set(), classifier=True) == ("acc", "fd-cls")
    with pytest.raises(ConfigError, match="unknown \\['kid'\\]"):
        resolve_metrics("fd-cls,kid", keys=set(), classifier=True)


@pytest.mark.parametrize(
    "cfg,keys,match",
    [
        (JudgeConfig(metrics=("fd-cls",), ref="builtin:synthetic"), {"label"}, "--classifier"),
        (JudgeConfig(metrics=("acc",), classifier="c.safetensors"), set(), "class-conditional"),
        (JudgeConfig(metrics=("fd-cls",), classifier="c.safetensors"), set(), "--ref"),
        (JudgeConfig(metrics=("shapes",)), {"label"}, "text-conditional"),
    ],
)
def test_judge_refuses_metrics_it_cannot_compute(cfg, keys, match):
    with pytest.raises(ConfigError, match=match):
        Judge.build(cfg, keys=keys, size=16, n=4)


def _classifier() -> FeatureClassifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return FeatureClassifier(TINY).eval()


def _judge(bootstrap=20, metrics=("fd-cls", "acc")) -> Judge:
    ex = Extractors(classifier=_classifier())
    ref_images = torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    from ldmctl.eval.generative import Batch

    reference = collect([Batch(ref_images, torch.arange(24) % 3)], ex)
    return Judge(
        JudgeConfig(metrics=metrics, bootstrap=bootstrap, grid_count=6),
        extractors=ex,
        reference=reference,
        class_names=["a", "b", "c"],
    )


def _stream(seed: int, n: int = 12, blur: float = 0.0):
    """Two batches of random images with class labels; ``blur`` mixes in a constant grey."""
    g = torch.Generator().manual_seed(seed)
    for start in (0, n // 2):
        images = (torch.rand(n // 2, 3, 16, 16, generator=g) * 2 - 1) * (1 - blur)
        yield images, {"label": torch.arange(start, start + n // 2) % 3}


def test_judge_measures_values_noise_and_paired_differences():
    judge = _judge()
    a, again = judge.measure(_stream(0)), judge.measure(_stream(0))
    assert a.n == 12 and a.values == again.values and a.std == again.std  # deterministic
    assert set(a.values) == {"fd_cls", "acc"} and a.std["fd_cls"] > 0 and 0 <= a.values["acc"] <= 1
    assert a.images.shape == (6, 3, 16, 16) and a.seconds >= 0 and [r["class"] for r in a.per_class] == ["a", "b", "c"]
    # samples are rounded to 8 bits as a PNG stores them
    assert torch.allclose(a.images, torch.round((a.images + 1) * 127.5) / 127.5 - 1, atol=1e-6)
    same = judge.paired(a, again)
    assert same["fd_cls"] == {"difference": 0.0, "std": 0.0}
    b = judge.measure(_stream(0, blur=0.5))
    diff = judge.paired(b, a)["fd_cls"]
    assert diff["difference"] == pytest.approx(b.values["fd_cls"] - a.values["fd_cls"]) and diff["std"] > 0
    assert json.dumps(a.to_dict())  # JSON-able without the images and features


def test_shapes_metric_scores_real_shapes_as_matches():
    items = ShapesDataset(DataConfig(source="builtin:shapes", size=32), seed=3, length=8)
    batch = next(iter(dataset_batches(items, list(range(8)))))
    judge = Judge(JudgeConfig(metrics=("shapes",), bootstrap=5), extractors=Extractors())
    m = judge.measure([(batch.images, {"caption": batch.prompts})])
    assert m.values["shapes_match"] >= 0.75 and not math.isnan(m.std["shapes_match"])
    flipped = judge.measure([(-batch.images, {"caption": batch.prompts})])  # inverted colours: no match
    assert flipped.values["shapes_match"] < m.values["shapes_match"]


def test_compare_samplers_writes_report_plots_grids_and_json(tmp_path):
    pytest.importorskip("matplotlib")
    judge = _judge(bootstrap=10)
    blur = {("ddim", 1): 0.6, ("ddim", 2): 0.1, ("dpmpp", 1): 0.1, ("dpmpp", 2): 0.1}

    def draw(model, setting):
        assert model == "model"
        return _stream(setting.seed, blur=blur[(setting.sampler, setting.steps)] if setting.seed == 0 else 0.1)

    cfg = SamplersConfig(samplers=("ddim", "dpmpp"), steps=(1, 2), reference="ddim-2", repeat_seed=1, match_sigmas=0.0)
    results = compare_samplers(
        "model", cfg, judge, draw, tmp_path / "out", about={"command": "ldmctl compare samplers x.safetensors", "n": 12}
    )
    out = tmp_path / "out"
    for name in (
        "report.md",
        "results.json",
        "quality-vs-steps.png",
        "quality-vs-time.png",
        "grids/overview.png",
        "grids/ddim-1.png",
        "grids/dpmpp-2.png",
        "grids/ddim-2-seed1.png",
    ):
        assert (out / name).is_file(), name
    stored = json.loads((out / "results.json").read_text())
    assert [(r["sampler"], r["steps"]) for r in stored["settings"]] == [
        ("ddim", 1),
        ("ddim", 2),
        ("dpmpp", 1),
        ("dpmpp", 2),
    ]
    assert stored["match"]["reference"] == "ddim-2" and stored["match"]["steps"] == {"ddim": 2, "dpmpp": 1}
    assert stored["repeat"]["seed"] == 1 and "fd_cls" in stored["repeat"]["difference"]
    assert stored["settings"][1]["paired"]["fd_cls"]["difference"] == 0.0
    report = (out / "report.md").read_text()
    assert report.index("ldmctl compare samplers x.safetensors") < report.index("## Answer")
    assert "DPM-Solver++" in report and "Noise check" in report and "![overview](grids/overview.png)" in report
    assert samplers_markdown(stored) == report == samplers_markdown(results)  # the JSON rebuilds the report
    assert all((out / p).stat().st_size < 300_000 for p in ("quality-vs-steps.png", "grids/overview.png"))


def test_missing_matplotlib_names_the_extra(monkeypatch):
    from ldmctl.eval.plots import require_matplotlib

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PackageError, match="matplotlib") as exc:
        require_matplotlib()
    assert "ldmctl[report]" in exc.value.hint
