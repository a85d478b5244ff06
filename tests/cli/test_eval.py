"""``ldmctl eval`` and ``ldmctl train-classifier`` end to end on tiny images and models."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from ldmctl.cli import main
from ldmctl.device import resolve_device
from ldmctl.eval.classifier import ClassifierConfig, FeatureClassifier, load_classifier, save_classifier


def _write_images(root, classes, per_class, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Generated images in class sub-folders named as two of builtin:synthetic's classes."""
    return _write_images(tmp_path_factory.mktemp("gen"), ["circle", "square"], 3)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = FeatureClassifier(ClassifierConfig(size=16, width=8, num_classes=4, feature_dim=8, norm_groups=4))
    return save_classifier(model, tmp_path_factory.mktemp("cls") / "cls.safetensors")


def test_folder_offline_metrics_with_per_class_figures(images, classifier, tmp_path, isolated_torch_hub, run_cli):
    out = tmp_path / "report.json"
    args = ["--ref", "builtin:synthetic", "--ref-limit", "12", "--classifier", classifier, "--json", out]
    r = run_cli("eval", images, *args)
    assert "fid skipped" in r.output and "pt_inception-2015-12-05-6726825d.pth" in r.output
    report = json.loads(out.read_text())
    assert set(report["metrics"]) == {"fd_cls", "acc", "acc_reference"} and "fid" not in report["metrics"]
    assert report["n_samples"] == 6 and report["n_reference"] == 12 and report["size"] == 16
    assert [row["class"] for row in report["per_class"]] == ["circle", "square"]
    assert all(row["n"] == 3 for row in report["per_class"])
    assert "not FID" in report["descriptions"]["fd_cls"] and "FD_cls" in r.output


def test_fid_and_kid_of_a_folder_against_itself(fid_inception_weights, tmp_path, run_cli):
    folder = _write_images(tmp_path / "few", ["x"], 3, seed=1)
    out = tmp_path / "fid.json"
    args = ["--metrics", "fid,kid", "--inception-weights", fid_inception_weights, "--kid-subsets", "4", "--json", out]
    run_cli("eval", folder, "--ref", folder, *args)
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["fid"] == pytest.approx(0.0, abs=1e-6)
    assert set(metrics) == {"fid", "kid", "kid_std"}


def test_class_conditional_checkpoint(class_ldm, classifier, tmp_path, isolated_torch_hub, run_cli):
    out = tmp_path / "report.json"
    ref = ["--ref", "builtin:synthetic", "--ref-limit", "16", "--classifier", classifier]
    sampling = ["--n", "8", "--steps", "2", "--sampler", "dpmpp", "--out-dir", tmp_path / "samples"]
    run_cli("eval", class_ldm, *ref, *sampling, "--json", out)
    report = json.loads(out.read_text())
    assert report["n_samples"] == 8 and report["sampler"] == "dpmpp" and report["guidance"] == 3.0
    assert [row["class"] for row in report["per_class"]] == ["circle", "square", "triangle", "cross"]
    assert all(row["n"] == 2 for row in report["per_class"]) and 0.0 <= report["metrics"]["acc"] <= 1.0
    assert len(list((tmp_path / "samples").glob("*.png"))) == 8


def test_checkpoint_samples_fed_with_input(class_ldm, classifier, tmp_path, isolated_torch_hub, run_cli):
    """--input feeds the conditioners as in `ldmctl sample`: every sample is drawn for class 2."""
    out = tmp_path / "report.json"
    ref = ["--ref", "builtin:synthetic", "--ref-limit", "8", "--classifier", classifier]
    run_cli("eval", class_ldm, *ref, "--n", "3", "--steps", "1", "--input", "label=2", "--json", out)
    report = json.loads(out.read_text())
    assert report["inputs"] == {"label": ["2"]}
    assert [(row["class"], row["n"]) for row in report["per_class"]] == [("triangle", 3)]


@pytest.mark.parametrize(
    "args,match",
    [
        (
            ["--input", "caption=a cat"],
            "no conditioner of this model reads 'caption'; it reads: label (class: a class index 0..3)",
        ),
        (["--input", "label=9"], "the class conditioner cannot read --input label='9': class 9 is outside 0..3"),
        (["--input", "label"], "write KEY=VALUE"),
    ],
)
def test_checkpoint_input_errors(class_ldm, tmp_path, capsys, args, match):
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(class_ldm), "--ref", "builtin:synthetic", "--metrics", "fd-cls", *args])
    err = " ".join(capsys.readouterr().err.split())
    assert exc.value.code == 1 and "error:" in err and match in err and "Traceback" not in err


def test_input_is_refused_for_a_folder(images, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(images), "--ref", "builtin:synthetic", "--input", "label=1"])
    assert exc.value.code == 1 and "a folder of images has none to feed" in capsys.readouterr().err


def test_clip_score_of_captioned_images(tiny_clip_folder, tmp_path, isolated_torch_hub, run_cli):
    folder = _write_images(tmp_path / "cap", ["."], 2)
    for png in folder.glob("*.png"):
        png.with_suffix(".txt").write_text("a red circle")  # captions beside the images
    out = tmp_path / "clip.json"
    run_cli("eval", folder, "--ref", folder, "--clip-weights", tiny_clip_folder, "--json", out)
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == {"clip_score"} and 0.0 <= metrics["clip_score"] <= 100.0


def test_text_conditional_checkpoint_samples_the_reference_captions(
    tiny_clip_folder, tmp_path, run_cli, tiny_ae, tiny_ldm
):
    vocab = tmp_path / "vocab.txt"
    words = "a red blue circle square to the left of".split()
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    cfg = tmp_path / "text.toml"
    cfg.write_text(
        f'[[model.conditioners]]\nname = "tokens"\n[model.conditioners.options]\nwidth = 16\n'
        f'depth = 1\nheads = 2\nvocab = "{vocab}"\n'
    )
    ae = tiny_ae(tmp_path, data="builtin:shapes")
    ckpt = tiny_ldm(tmp_path, ae, "--config", cfg, "--set", "cache_latents=false", data="builtin:shapes")
    out = tmp_path / "r.json"
    args = ["--ref", "builtin:shapes", "--ref-limit", "3", "--n", "3", "--steps", "1", "--metrics", "clip"]
    run_cli("eval", ckpt, *args, "--clip-weights", tiny_clip_folder, "--json", out)
    report = json.loads(out.read_text())
    assert report["n_samples"] == 3 and 0.0 <= report["metrics"]["clip_score"] <= 100.0
    assert report["device"] == str(resolve_device("auto")) and report["precision"] == "fp32"


def test_missing_clip_weights_name_the_file(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.delenv("LDMCTL_CLIP", raising=False)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    flat = _write_images(tmp_path / "flat", ["."], 2)
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(flat), "--ref", str(flat), "--metrics", "clip", "--prompt", "a cat"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "error:" in err and "Traceback" not in err
    assert "open_clip_model.safetensors" in err and "--clip-weights" in err


@pytest.mark.parametrize(
    "args,match",
    [
        (["--metrics", "fid"], "pt_inception-2015-12-05-6726825d.pth"),
        ([], "no metric can be computed"),
        (["--metrics", "fid,inception-score"], "unknown"),
        (["--metrics", "acc", "--classifier", "{classifier}"], "class-labelled"),
        (["--metrics", "clip"], "prompts"),
    ],
)
def test_user_errors(tmp_path, classifier, capsys, isolated_torch_hub, monkeypatch, args, match):
    monkeypatch.delenv("LDMCTL_INCEPTION", raising=False)
    flat = _write_images(tmp_path / "flat", ["."], 2)
    args = [a.replace("{classifier}", str(classifier)) for a in args]
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(flat), "--ref", str(flat), *args])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "error:" in err and match in err and "Traceback" not in err


def test_source_must_exist(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(tmp_path / "nope"), "--ref", "builtin:synthetic"])
    assert exc.value.code == 1 and "neither a checkpoint" in capsys.readouterr().err


def test_train_classifier_reports_held_out_accuracy(tmp_path, run_cli):
    data = _write_images(tmp_path / "data", ["cats", "dogs"], 5)
    out = tmp_path / "cls.safetensors"
    args = ["--steps", "2", "--batch-size", "4", "--size", "16", "--width", "8", "--feature-dim", "8"]
    r = run_cli("train-classifier", "--data", data, "--out-file", out, *args, "--json", tmp_path / "cls.json")
    assert "held-out accuracy" in r.output and "every 10th image" in r.output
    model = load_classifier(out)
    assert model.config.num_classes == 2 and model.config.size == 16
    report = json.loads((tmp_path / "cls.json").read_text())
    assert report["checkpoint"] == str(out) and report["class_names"] == ["cats", "dogs"]
    assert 0.0 <= report["holdout_accuracy"] <= 1.0 and report["holdout_images"] >= 1


def test_train_classifier_user_errors(tmp_path, capsys):
    data = _write_images(tmp_path / "data", ["cats", "dogs"], 2)
    other = _write_images(tmp_path / "other", ["cars", "dogs"], 1)
    for args, match in (
        [["--data", str(other / "cars")], "classes"],
        [["--data", str(data), "--holdout", str(other)], "held-out set"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(["train-classifier", *args, "-o", str(tmp_path / "c.safetensors"), "--steps", "1"])
        assert exc.value.code == 1
        err = capsys.readouterr().err
        assert "error:" in err and match in err and "Traceback" not in err
