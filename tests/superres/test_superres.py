"""Super-resolution end to end on tiny models: train --task superres, superres (sizes, modes,
folders, tiles), eval-sr, and the errors users hit."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ldmctl.cli import app, main
from ldmctl.diffusion.io import load_ldm
from ldmctl.superres.upscale import upscale

NO_UNET_ATTENTION = ["--set", "model.unet.attention_levels=[]", "--set", "model.unet.mid_attention=false"]


@pytest.fixture(scope="module")
def sr_model(tmp_path_factory, tiny_ae, tiny_ldm):
    root = tmp_path_factory.mktemp("sr")
    ae = tiny_ae(root, "--set", "model.channel_mult=[1,2]", "--set", "model.mid_attention=false")
    degrade = ["--set", "superres.blur=1.0", "--set", "superres.jpeg=50"]
    return tiny_ldm(root, ae, "--task", "superres", "--size", "32", *NO_UNET_ATTENTION, *degrade, steps=2)


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(xx / 5 + c) * np.cos(yy / 7) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def test_train_records_the_task(sr_model):
    model = load_ldm(sr_model)
    assert model.config.sr_scale == 4
    assert [s.name for s in model.config.conditioners] == ["concat"]
    assert model.config.conditioners[0].dropout == 0.0
    assert model.config.unet.concat_channels == 3


@pytest.mark.parametrize(
    "mode,size",
    [("RGB", (37, 23)), ("L", (20, 16)), ("RGBA", (16, 24)), ("LA", (9, 9)), ("P", (17, 12)), ("I;16", (12, 12))],
)
def test_any_size_and_mode_comes_back_x4_in_its_mode(sr_model, tmp_path, mode, size):
    rgb = Image.fromarray(_photo(size[1], size[0]))
    if mode == "RGBA" or mode == "LA":
        img = rgb.convert(mode)
        alpha = Image.fromarray(np.tile(np.linspace(0, 255, size[0], dtype=np.uint8), (size[1], 1)))
        img.putalpha(alpha)
    elif mode == "I;16":
        img = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).convert("I;16")
    else:
        img = rgb.convert(mode)
    src = tmp_path / "in.png"
    img.save(src)
    out = tmp_path / "out.png"
    r = CliRunner().invoke(app, ["superres", str(src), "-o", str(out), "--model", str(sr_model), "--steps", "2"])
    assert r.exit_code == 0, r.output
    res = Image.open(out)
    assert res.size == (4 * size[0], 4 * size[1])
    expected = {"P": "RGB", "I;16": "I;16"}.get(mode, mode)
    assert res.mode == expected
    if mode in ("RGBA", "LA"):  # alpha is upscaled on its own: the ramp survives
        a = np.asarray(res.getchannel("A"), dtype=float)
        assert a[:, 0].mean() < 20 and a[:, -1].mean() > 235


def test_folder_in_folder_out_and_seeds_reproduce(sr_model, tmp_path, run_cli):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(_photo(12, 16, i)).save(src / f"p{i}.png")
    for out in ("a", "b"):
        run_cli("superres", src, "--out-dir", tmp_path / out, "--model", sr_model, "--steps", "2", "--seed", "3")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["p0_x4.png", "p1_x4.png"]
    for n in names:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / n)), np.asarray(Image.open(tmp_path / "b" / n)))


def test_tiled_equals_whole_image_within_tolerance(sr_model):
    """Deterministic DDIM: per-step blended tiles vs one piece. GroupNorm normalises over what it
    sees, so a tile cannot equal its part of the whole exactly; the stated tolerance (on [-1, 1]
    images, this random-weight tiny model, tile 32 / overlap 16 latent cells) is 0.2 max and 0.02
    mean absolute difference (measured: 0.11 and 0.015). One tile is exact."""
    model = load_ldm(sr_model)
    lr = torch.from_numpy(_photo(24, 40)).permute(2, 0, 1).float() / 127.5 - 1
    whole = upscale(model, lr, steps=3, tile=256, overlap=0)
    assert whole.shape == (3, 96, 160)
    assert torch.equal(whole, upscale(model, lr, steps=3, tile=80, overlap=0))  # one tile covers 48 x 80: exact
    tiled = upscale(model, lr, steps=3, tile=32, overlap=16)
    diff = (whole - tiled).abs()
    assert float(diff.max()) < 0.2 and float(diff.mean()) < 0.02, (float(diff.max()), float(diff.mean()))


def test_progress_reaches_the_end(sr_model):
    model = load_ldm(sr_model)
    seen = []
    upscale(model, torch.zeros(3, 16, 16), steps=2, tile=8, overlap=4, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] and all(b >= a for (a, _), (b, _) in pairwise(seen))


def test_eval_sr_reports_model_and_bicubic(sr_model, tmp_path, run_cli):
    data = tmp_path / "hr"
    data.mkdir()
    for i in range(2):
        Image.fromarray(_photo(40, 48, i)).save(data / f"{i}.png")
    report_file = tmp_path / "r.json"
    run_cli("eval-sr", "--model", sr_model, "--data", data, "--size", "32", "--steps", "2", "--json", report_file)
    report = json.loads(report_file.read_text())
    assert report["n"] == 2 and report["scale"] == 4
    for key in ("model_psnr", "model_ssim", "bicubic_psnr", "bicubic_ssim"):
        assert np.isfinite(report["mean"][key])


@pytest.mark.parametrize(
    "setup,args,match",
    [
        (lambda d: None, ["missing.png"], "does not exist"),
        (lambda d: (d / "bad.png").write_text("not an image"), ["bad.png"], "cannot be decoded"),
        (lambda d: (d / "empty").mkdir(), ["empty"], "holds no image"),
        (
            lambda d: [Image.new("RGB", (8, 8)).save(d / f"{i}.png") for i in range(2)],
            ["0.png", "1.png", "-o", "x.png"],
            "need an output folder",
        ),
        (lambda d: Image.new("RGBA", (8, 8)).save(d / "a.png"), ["a.png", "-o", "a.jpg"], "JPEG cannot store"),
        (lambda d: Image.new("RGB", (8, 8)).save(d / "a.png"), ["a.png", "--tile", "5"], "--tile"),
        (lambda d: Image.new("RGB", (8, 8)).save(d / "a.png"), ["a.png", "--tile-px", "6"], "--tile-px 6"),
        (
            lambda d: Image.new("RGB", (8, 8)).save(d / "a.png"),
            ["a.png", "--tile-px", "16", "--overlap-px", "3"],
            "--overlap-px 3",
        ),
        (lambda d: Image.new("RGB", (8, 8)).save(d / "a.png"), ["a.png", "-o", "folder"], "--out-dir folder"),
        (
            lambda d: Image.new("RGB", (8, 8)).save(d / "a.png"),
            ["a.png", "--tile", "8", "--tile-px", "16"],
            "old spellings",
        ),
    ],
)
def test_bad_inputs_are_clear_errors(sr_model, tmp_path, monkeypatch, capsys, setup, args, match):
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["superres", *args, "--model", str(sr_model), "--steps", "1"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and match in err and "Traceback" not in err, err


def test_tiles_are_pixels_and_the_old_latent_cell_spellings_keep_their_meaning(sr_model, tmp_path):
    """--tile-px / --overlap-px count pixels of the upscaled image; the old --tile / --overlap
    counted latent cells (f = 2 px here) and still do; the old --out still takes a folder."""
    Image.fromarray(_photo(12, 16, 1)).save(tmp_path / "in.png")
    base = ["superres", str(tmp_path / "in.png"), "--model", str(sr_model), "--steps", "2"]
    runs = {
        "px": ["--tile-px", "16", "--overlap-px", "8", "-o", str(tmp_path / "px.png")],
        "cells": ["--tile", "8", "--overlap", "4", "--out", str(tmp_path / "cells.png")],
        "whole": ["--tile-px", "64", "--overlap-px", "0", "--out-file", str(tmp_path / "whole.png")],
        "folder": ["--tile", "8", "--overlap", "4", "--out", str(tmp_path / "folder")],
    }
    for args in runs.values():
        r = CliRunner().invoke(app, [*base, *args])
        assert r.exit_code == 0, r.output
    assert "--tile-px 16 --overlap-px 8" in r.stderr  # the notice names the new spelling
    pixels = {k: np.asarray(Image.open(tmp_path / f"{k}.png")) for k in ("px", "cells", "whole")}
    assert np.array_equal(pixels["px"], pixels["cells"]) and not np.array_equal(pixels["px"], pixels["whole"])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "folder" / "in_x4.png")), pixels["cells"])


def test_a_non_superres_model_is_refused(tmp_path, capsys, tiny_ae, tiny_ldm):
    tiny_ldm(tmp_path, tiny_ae(tmp_path))
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit):
        main(["superres", str(tmp_path / "a.png"), "--model", str(tmp_path / "ldm" / "ldm.safetensors")])
    assert "not a super-resolution model" in capsys.readouterr().err


def test_concat_latent_model_trains_and_upscales_in_tiles(sr_model, tmp_path, tiny_ldm):
    """With concat-latent the model derives the latent of the bicubic upscale itself (in tiles at
    inference); tiled and whole-image results agree as for the plain concat model."""
    cfg = tmp_path / "sr.toml"
    cfg.write_text(
        'task = "superres"\ncache_latents = false\n[[model.conditioners]]\nname = "concat"\ndropout = 0.0\n'
        '[[model.conditioners]]\nname = "concat-latent"\ndropout = 0.0\n'
    )
    ae = sr_model.parent.parent / "ae" / "ae.safetensors"
    tiny_ldm(tmp_path, ae, "--config", cfg, "--size", "32", "--sample-every", "2", *NO_UNET_ATTENTION, steps=2)
    model = load_ldm(tmp_path / "ldm" / "ldm.safetensors")
    assert model.config.unet.concat_channels == 3 + model.latent_shape[0]
    lr = torch.from_numpy(_photo(24, 40)).permute(2, 0, 1).float() / 127.5 - 1
    whole = upscale(model, lr, steps=3, tile=256, overlap=0)
    diff = (whole - upscale(model, lr, steps=3, tile=32, overlap=16)).abs()
    assert whole.shape == (3, 96, 160) and float(diff.mean()) < 0.02, (float(diff.max()), float(diff.mean()))


def test_strength_starts_from_the_noised_bicubic_latent(sr_model):
    model = load_ldm(sr_model)
    lr = torch.from_numpy(_photo(8, 12)).permute(2, 0, 1).float() / 127.5 - 1
    a = upscale(model, lr, steps=10, strength=0.3, seed=1)
    assert a.shape == (3, 32, 48) and torch.equal(a, upscale(model, lr, steps=10, strength=0.3, seed=1))
    assert not torch.equal(a, upscale(model, lr, steps=10, seed=1))
    from ldmctl.errors import ConfigError

    with pytest.raises(ConfigError, match="ddim"):
        upscale(model, lr, steps=10, strength=0.3, sampler="dpmpp")
    with pytest.raises(ConfigError, match="strength"):
        upscale(model, lr, steps=10, strength=0.0)


@pytest.fixture(scope="module")
def residual_model(tmp_path_factory, sr_model, tiny_ldm):
    """A residual SR model (x0 prediction) trained briefly, reusing sr_model's autoencoder."""
    root = tmp_path_factory.mktemp("sr-res")
    ae = sr_model.parent.parent / "ae" / "ae.safetensors"
    residual = ["--prediction", "x0", "--set", "model.residual=true"]
    return load_ldm(tiny_ldm(root, ae, "--task", "superres", "--size", "32", *residual, *NO_UNET_ATTENTION, steps=2))


def test_residual_scale_is_measured_and_stored(residual_model):
    assert residual_model.config.residual and residual_model.config.residual_scale > 0
    assert residual_model.config.residual_scale != 1.0


def test_a_zero_residual_gives_bicubic_exactly_with_detail_transfer(residual_model):
    """With the UNet's (zero-init) output layer zeroed, an x0 model predicts a zero residual, so the
    latent is the bicubic upscale's (up to the sampler's last-step noise, sqrt(1 - alpha_bar_0) ~ 0.03
    of it); detail transfer then returns the bicubic upscale, without it the autoencoder's output."""
    from ldmctl.superres.task import upscale_image

    torch.nn.init.zeros_(residual_model.unet.conv_out.weight)
    torch.nn.init.zeros_(residual_model.unet.conv_out.bias)
    lr = torch.rand(3, 12, 20) * 2 - 1
    out = upscale(residual_model, lr, sampler="ddim", steps=2, tile=4, overlap=2)
    assert out.shape == (3, 48, 80)
    bicubic = upscale_image(lr[None], (48, 80))[0]
    plain = upscale(residual_model, lr, sampler="ddim", steps=2, detail_transfer=False)
    err, err_plain = (out - bicubic).abs().mean(), (plain - bicubic).abs().mean()
    assert err < 0.02 and err_plain > 5 * err


def test_residual_needs_the_superres_task(sr_model, capsys):
    args = ["train-ldm", "--preset", "tiny", "--ae", str(sr_model.parent.parent / "ae" / "ae.safetensors")]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--data", "builtin:synthetic", "--max-steps", "1", "--set", "model.residual=true"])
    assert exc.value.code == 1
    assert "superres" in capsys.readouterr().err


def test_self_ensemble_transforms_invert_and_average(residual_model):
    from ldmctl.superres.upscale import _DIHEDRAL, _forward, _inverse

    x = torch.arange(2 * 3 * 5, dtype=torch.float32).view(2, 3, 5)
    outs = {tuple(_forward(x, t).flatten().tolist()) for t in _DIHEDRAL}
    assert len(outs) == 8  # eight distinct orientations
    assert all(torch.equal(_inverse(_forward(x, t), t), x) for t in _DIHEDRAL)
    lr = torch.rand(3, 12, 20) * 2 - 1
    one = upscale(residual_model, lr, sampler="ddim", steps=2)
    four = upscale(residual_model, lr, sampler="ddim", steps=2, ensemble=4)
    assert four.shape == one.shape == (3, 48, 80)
    with pytest.raises(Exception, match="ensemble"):
        upscale(residual_model, lr, ensemble=3)


def test_back_projection_makes_the_result_consistent_with_its_input():
    """Downscaled again, a back-projected result gives back the low-res input far more closely;
    0 rounds leave it untouched; what the input already agrees with is kept."""
    from ldmctl.superres.degrade import resize
    from ldmctl.superres.upscale import back_projection

    g = torch.Generator().manual_seed(0)
    hr = (torch.rand(3, 64, 48, generator=g) * 1.6 - 0.8).clamp(-1, 1)
    lr = resize(hr, (16, 12))
    guess = (resize(lr, (64, 48)) + 0.1).clamp(-1, 1)  # bicubic upscale with a brightness drift

    def error(y):
        return (resize(y, (16, 12)) - lr).abs().mean().item()

    assert torch.equal(back_projection(guess, lr, 0), guess)
    fixed = back_projection(guess, lr, 4)
    assert error(fixed) < 0.1 * error(guess)
    assert (fixed - hr).pow(2).mean() < (guess - hr).pow(2).mean()  # closer to the original too
    assert torch.allclose(back_projection(fixed, lr, 4), fixed, atol=0.02)  # a fixed point, nearly


def test_back_project_option_reaches_the_result(residual_model, tmp_path):
    lr = torch.rand(3, 12, 20) * 2 - 1
    plain = upscale(residual_model, lr, sampler="ddim", steps=2)
    projected = upscale(residual_model, lr, sampler="ddim", steps=2, back_project=3)
    assert not torch.equal(plain, projected)
    with pytest.raises(Exception, match="back-project"):
        upscale(residual_model, lr, back_project=-1)
