"""End-to-end CLI tests of train-ae, reconstruct and eval-ae with the tiny preset."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ldmctl.checkpoint import load_autoencoder, read_checkpoint
from ldmctl.cli import app, main

TINY = ["--preset", "tiny", "--data", "builtin:synthetic", "--perceptual", "none"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("run") / "ae"
    result = CliRunner().invoke(
        app, ["train-ae", *TINY, "--max-steps", "4", "--out-dir", str(out), "--sample-every", "2", "--save-every", "2"]
    )
    assert result.exit_code == 0, result.output
    return out


def test_train_ae_writes_checkpoint_grid_and_summary(trained):
    ckpt = trained / "ae.safetensors"
    meta = read_checkpoint(ckpt, expect_kind="autoencoder")
    assert meta.config["base_channels"] == 8 and meta.extra["step"] == 4
    ae = load_autoencoder(ckpt)
    assert 0 < float(ae.scale_factor) < 1e4 and float(ae.scale_factor) != 1.0
    assert (trained / "samples" / "recon_0000002.png").is_file()
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["steps"] == 4
    lines = (trained / "log.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 4
    assert len(list((trained / "checkpoints").glob("*.safetensors"))) <= 2


def test_reconstruct_any_size(trained, tmp_path):
    img_path = tmp_path / "odd.png"
    Image.new("RGB", (19, 13), (200, 30, 30)).save(img_path)
    gray = tmp_path / "gray.jpg"
    Image.new("L", (24, 24), 128).save(gray)
    result = CliRunner().invoke(
        app,
        ["reconstruct", str(trained / "ae.safetensors"), str(img_path), str(gray), "--out-dir", str(tmp_path / "rec")],
    )
    assert result.exit_code == 0, result.output
    out = Image.open(tmp_path / "rec" / "odd.png")
    assert out.size == (19, 13) and out.mode == "RGB"
    assert Image.open(tmp_path / "rec" / "gray.png").size == (24, 24)


def test_reconstruct_large_image_in_tiles(trained, tmp_path, capsys):
    img_path = tmp_path / "wide.png"
    arr = (torch.rand(30, 41, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    Image.fromarray(arr).save(img_path)
    ckpt = str(trained / "ae.safetensors")
    for tile in ("16", "0"):  # tiled (2 x 3 tiles of 16 px) and whole
        result = CliRunner().invoke(
            app,
            [
                "reconstruct",
                ckpt,
                str(img_path),
                "--tile-px",
                tile,
                "--overlap-px",
                "4",
                "--out-dir",
                str(tmp_path / f"rec{tile}"),
            ],
        )
        assert result.exit_code == 0, result.output
        assert Image.open(tmp_path / f"rec{tile}" / "wide.png").size == (41, 30)
    # the old spellings (--tile / --overlap / --out, in pixels too) give the same file
    result = CliRunner().invoke(
        app, ["reconstruct", ckpt, str(img_path), "--tile", "16", "--overlap", "4", "--out", str(tmp_path / "old")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "old" / "wide.png").read_bytes() == (tmp_path / "rec16" / "wide.png").read_bytes()
    assert (tmp_path / "rec16" / "wide.png").read_bytes() != (tmp_path / "rec0" / "wide.png").read_bytes()
    code, err = _run_main(
        ["reconstruct", ckpt, str(img_path), "--tile-px", "10", "--out-dir", str(tmp_path / "bad")], capsys
    )
    assert code == 1 and "--tile-px 10" in err and "multiple of f=" in err and "Traceback" not in err


def test_eval_ae_table_and_json(trained, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        arr = (torch.rand(20, 20, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(folder / f"{i}.png")
    report = tmp_path / "r.json"
    result = CliRunner().invoke(
        app, ["eval-ae", str(trained / "ae.safetensors"), "--data", str(folder), "--size", "16", "--json", str(report)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["n"] == 2 and {"model_psnr", "model_ssim", "bicubic_psnr"} <= set(data["mean"])
    assert "mean" in result.output


def test_eval_ae_metrics_are_chosen_comma_separated_or_repeated(trained, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(
        (torch.rand(20, 20, 3, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8).numpy()
    ).save(folder / "0.png")
    base = ["eval-ae", str(trained / "ae.safetensors"), "--data", str(folder), "--size", "16"]
    reports = []
    for metrics in (["--metrics", "psnr,ssim"], ["--metrics", "psnr", "--metrics", "ssim"], ["--metrics", "psnr"]):
        out = tmp_path / f"r{len(reports)}.json"
        result = CliRunner().invoke(app, [*base, *metrics, "--json", str(out)])
        assert result.exit_code == 0, result.output
        reports.append(json.loads(out.read_text()))
    assert reports[0]["metrics"] == reports[1]["metrics"] == ["psnr", "ssim"]
    assert set(reports[0]["mean"]) == {"model_psnr", "model_ssim", "bicubic_psnr", "bicubic_ssim"}
    assert reports[0]["mean"] == reports[1]["mean"]
    assert set(reports[2]["mean"]) == {"model_psnr", "bicubic_psnr"} and "model_ssim" not in reports[2]["rows"][0]
    code, err = _run_main([*base, "--metrics", "psnr,fid"], capsys)
    assert code == 1 and "unknown ['fid']" in err and "lpips" in err and "Traceback" not in err


def test_resume_continues_to_new_max_steps(trained, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    result = CliRunner().invoke(app, ["train-ae", *TINY, "--max-steps", "6", "--out-dir", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert read_checkpoint(out / "ae.safetensors").extra["step"] == 6


def _run_main(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.err


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    code, err = _run_main(
        ["train-ae", *TINY, "--data", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "o")], capsys
    )
    assert code == 1 and "error:" in err and "Traceback" not in err
    code, err = _run_main(["reconstruct", str(tmp_path / "missing.safetensors"), "x.png"], capsys)
    assert code == 1 and "does not exist" in err and "Traceback" not in err
    code, err = _run_main(["train-ae", "--preset", "nope", "--out-dir", str(tmp_path / "o2")], capsys)
    assert code == 2 and "'nope'" in err and "'tiny'" in err and "'base'" in err and "Traceback" not in err
    code, err = _run_main(["train-ae", *TINY, "--f", "3", "--out-dir", str(tmp_path / "o3")], capsys)
    assert code == 1 and "--f 3" in err


def test_existing_run_needs_resume(trained, capsys):
    code, err = _run_main(["train-ae", *TINY, "--out-dir", str(trained)], capsys)
    assert code == 1 and "already holds a run" in err and "--resume" in err


def test_missing_lpips_weights_stop_at_once(tmp_path, capsys, isolated_torch_hub):
    argv = ["train-ae", "--preset", "tiny", "--data", "builtin:synthetic", "--out-dir", str(tmp_path / "o")]
    code, err = _run_main(argv, capsys)
    assert code == 1 and "LPIPS" in err and "--perceptual none" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_wrong_kind_of_checkpoint(tmp_path, capsys):
    from ldmctl.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "x.safetensors", {"w": torch.ones(1)}, kind="ldm", config={})
    code, err = _run_main(["eval-ae", str(path), "--data", "builtin:synthetic"], capsys)
    assert code == 1 and "is a ldm checkpoint" in err


@pytest.mark.parametrize("extra", [["--kind", "vq"], ["--f", "8"]])
def test_train_ae_variants(tmp_path, extra):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train-ae", *TINY, *extra, "--max-steps", "2", "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    ae = load_autoencoder(out / "ae.safetensors")
    if "--f" in extra:
        assert ae.config.downsample_factor == 8
    else:
        assert ae.config.kind == "vq"


def test_bad_image_in_folder_is_skipped_and_counted(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (40 * i, 90, 200)).save(folder / f"ok{i}.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "fake.jpg").write_text("not an image")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "train-ae",
            "--preset",
            "tiny",
            "--perceptual",
            "none",
            "--data",
            str(folder),
            "--max-steps",
            "2",
            "--out-dir",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["skipped_files"]) == 2


def test_resume_uses_the_stored_perceptual_setting(tmp_path, isolated_torch_hub):
    """A run trained with --perceptual none resumes without repeating the flag, even where the
    LPIPS weights are absent (the stored config is read before the LPIPS network would be built)."""
    args = ["train-ae", "--preset", "tiny", "--data", "builtin:synthetic", "--out-dir", str(tmp_path / "run")]
    r = CliRunner().invoke(app, [*args, "--perceptual", "none", "--max-steps", "2", "--save-every", "2"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, [*args, "--max-steps", "4", "--resume"])
    assert r.exit_code == 0, r.output
