"""``ldmctl compare samplers`` and ``ldmctl compare train`` end to end on tiny models, and their errors."""

from __future__ import annotations

import json

import pytest
import torch

from ldmctl.cli import main
from ldmctl.device import resolve_device
from ldmctl.eval.classifier import ClassifierConfig, FeatureClassifier, save_classifier

pytest.importorskip("matplotlib")

CLASS_TOML = '[[model.conditioners]]\nname = "class"\n[data]\nsource = "builtin:synthetic"\n'


@pytest.fixture(scope="module")
def tiny(class_ldm):
    """The folder of conftest's tiny autoencoder + class-conditional LDM, plus a random 4-class classifier."""
    root = class_ldm.parent.parent
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = FeatureClassifier(ClassifierConfig(size=16, width=8, num_classes=4, feature_dim=8, norm_groups=4))
    save_classifier(model, root / "cls.safetensors")
    return root


def _judge_args(tiny) -> list[str]:
    ref = ["--ref", "builtin:synthetic", "--ref-limit", "8", "--classifier", str(tiny / "cls.safetensors")]
    return [*ref, "--n", "4", "--bootstrap", "3", "--batch-size", "2"]


def _compare_train(tiny) -> list[str]:
    """``ldmctl compare train --preset tiny`` on conftest's tiny autoencoder (the start of a command line)."""
    return ["compare", "train", "--preset", "tiny", "--ae", str(tiny / "ae" / "ae.safetensors")]


def test_compare_samplers_end_to_end(tiny, tmp_path, run_cli):
    out = tmp_path / "report"
    settings = ["--samplers", "ddim,dpmpp", "--steps", "1,2", "--reference", "ddim-2"]
    ldm = tiny / "ldm" / "ldm.safetensors"
    r = run_cli(
        "compare", "samplers", ldm, *settings, *_judge_args(tiny), "--out-dir", out, "--json", tmp_path / "r.json"
    )
    results = json.loads((out / "results.json").read_text())
    assert json.loads((tmp_path / "r.json").read_text()) == results and str(tmp_path / "r.json") in r.stdout
    assert results["metrics"] == ["fd-cls", "acc"] and results["guidance"] == 3.0  # auto, class-conditional
    assert results["device"] == str(resolve_device("auto")) and results["precision"] == "fp32"  # where it sampled
    assert len(results["settings"]) == 4 and set(results["match"]["steps"]) == {"ddim", "dpmpp"}
    assert all(s["seconds_per_image"] > 0 for s in results["settings"])
    report = (out / "report.md").read_text()
    assert report.splitlines()[3].startswith("ldmctl compare samplers ") and "--samplers ddim,dpmpp" in report
    for png in ("quality-vs-steps.png", "quality-vs-time.png", "grids/overview.png", "grids/dpmpp-1.png"):
        assert (out / png).is_file(), png
    assert str(out / "report.md") in r.stdout


def test_compare_train_end_to_end(tiny, tmp_path, run_cli):
    for name, lr in (("a", "1e-3"), ("b", "1e-4")):
        (tmp_path / f"{name}.toml").write_text(CLASS_TOML + f"[train]\nlr = {lr}\n")
    out = tmp_path / "cmp"
    configs = ["--config", tmp_path / "a.toml", "--config", tmp_path / "b.toml"]
    schedule = ["--max-steps", "2", "--eval-every", "1", "--sample-steps", "1"]
    metrics = ["--metrics", "fd-cls", "--metrics", "acc"]
    run_cli(*_compare_train(tiny), *configs, *schedule, *_judge_args(tiny), *metrics, "--out-dir", out)
    results = json.loads((out / "results.json").read_text())
    assert [v["name"] for v in results["variants"]] == ["a", "b"] and results["metrics"] == ["fd-cls", "acc"]
    assert results["device"] == str(resolve_device("auto")) and results["precision"] == "fp32"
    for v in results["variants"]:
        assert v["train_device"] == results["device"] and v["train_precision"] == "fp32"
        assert [p["step"] for p in v["points"]] == [1, 2] and (out / v["name"] / "ldm.safetensors").is_file()
        assert v["points"][0]["train_seconds"] <= v["points"][1]["train_seconds"]
    for png in (
        "quality-vs-train-steps.png",
        "quality-vs-wall-time.png",
        "grids/overview.png",
        "grids/b-step0000002.png",
    ):
        assert (out / png).is_file(), png
    report = (out / "report.md").read_text()
    assert "--config" in report.splitlines()[3] and "| a | 2 |" in report
    assert "--metrics fd-cls --metrics acc" in report.splitlines()[3]


@pytest.mark.parametrize(
    "args,match",
    [
        (["--samplers", "ddim,euler"], "unknown sampler 'euler'"),
        (["--metrics", "fd-cls,inception-score"], "unknown ['inception-score']"),
        (["--metric", "fd-cls", "--classifier", None], "--classifier"),  # the old spelling still works
        (["--steps", "10,x"], "comma-separated whole numbers"),
        (["--reference", "ddim"], "SAMPLER-STEPS"),
        (["--input", "caption=a cat"], "no conditioner of this model reads 'caption'; it reads: label (class:"),
        (["--input", "label=7"], "the class conditioner cannot read --input label='7': class 7 is outside 0..3"),
    ],
)
def test_compare_samplers_user_errors(tiny, tmp_path, capsys, args, match):
    base = dict(zip(_judge_args(tiny)[::2], _judge_args(tiny)[1::2], strict=True))
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = [x for k, v in base.items() if v is not None for x in (k, v)]
    with pytest.raises(SystemExit) as exc:
        main(["compare", "samplers", str(tiny / "ldm" / "ldm.safetensors"), *argv, "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "error:" in err and match in err and "Traceback" not in err


def test_compare_samplers_feeds_input_to_every_setting(tiny, tmp_path, run_cli):
    out = tmp_path / "report"
    settings = ["--samplers", "ddim", "--steps", "1", "--reference", "ddim-1"]
    ldm = tiny / "ldm" / "ldm.safetensors"
    run_cli("compare", "samplers", ldm, *settings, *_judge_args(tiny), "--input", "label=1", "--out-dir", out)
    rows = json.loads((out / "results.json").read_text())["settings"][0]["per_class"]
    assert [(row["class"], row["n"]) for row in rows] == [("square", 4)]  # every sample drawn for class 1


def test_compare_train_refuses_an_input_its_variants_do_not_read(tiny, tmp_path, capsys):
    (tmp_path / "a.toml").write_text(CLASS_TOML)
    config, out = ["--config", str(tmp_path / "a.toml")], ["--out-dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exc:
        main([*_compare_train(tiny), *config, *_judge_args(tiny), "--input", "palette=warm", *out])
    err = " ".join(capsys.readouterr().err.split())
    assert exc.value.code == 1 and "no conditioner of this model reads 'palette'; it reads: label (class)" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()  # refused before anything is written


def test_compare_train_refuses_variants_with_one_name(tiny, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    for folder in (tmp_path, tmp_path / "x"):
        (folder / "same.toml").write_text(CLASS_TOML)
    configs = ["--config", str(tmp_path / "same.toml"), "--config", str(tmp_path / "x" / "same.toml")]
    with pytest.raises(SystemExit) as exc:
        main([*_compare_train(tiny), *configs, "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "names repeat" in err and "Traceback" not in err


def test_compare_train_conditioners_with_the_shapes_checker(tiny, tmp_path, run_cli):
    """The conditioner comparison in small: a text variant, measured by the builtin:shapes checker."""
    for name in ("crossattn",):
        (tmp_path / f"t-{name}.toml").write_text(
            f'[[model.conditioners]]\nname = "{name}"\n[model.conditioners.options]\nwidth = 16\ndepth = 1\n'
            'heads = 2\nmax_length = 16\n[data]\nsource = "builtin:shapes"\n'
        )
    out = tmp_path / "cmp"
    settings = "--max-steps 1 --set cache_latents=false --n 4 --sample-steps 1 --bootstrap 3".split()
    run_cli(*_compare_train(tiny), "--config", tmp_path / "t-crossattn.toml", *settings, "--out-dir", out)
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"] == ["shapes"]  # auto for text-conditional variants
    assert [v["name"] for v in results["variants"]] == ["t-crossattn"]
    assert all(0.0 <= v["points"][-1]["values"]["shapes_match"] <= 1.0 for v in results["variants"])


def test_compare_train_refuses_an_out_folder_that_holds_a_run(tiny, tmp_path, capsys):
    (tmp_path / "a.toml").write_text(CLASS_TOML)
    (tmp_path / "o" / "a").mkdir(parents=True)
    (tmp_path / "o" / "a" / "config.json").write_text("{}")
    config = ["--config", str(tmp_path / "a.toml")]
    with pytest.raises(SystemExit) as exc:
        main([*_compare_train(tiny), *config, *_judge_args(tiny), "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "already holds a run" in err and "Traceback" not in err
