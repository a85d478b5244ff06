"""The models that ship inside the package load, are small, and do their job in one short call."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ldmctl.cli import app
from ldmctl.diffusion.io import load_ldm
from ldmctl.models import SHIPPED

MAX_BYTES = 16 * 2**20


def test_every_shipped_model_is_installed_small_and_fp16():
    from safetensors import safe_open

    for model in SHIPPED.values():
        assert model.path.is_file(), f"{model.file} is missing from ldmctl/models"
        assert model.path.stat().st_size < MAX_BYTES
        with safe_open(str(model.path), "pt") as fh:
            dtypes = {fh.get_slice(k).get_dtype() for k in fh.keys()}
        assert "F32" not in dtypes


def test_sample_without_a_checkpoint_uses_the_shapes_model(tmp_path):
    model = load_ldm(SHIPPED["shapes"].path)
    assert [s.name for s in model.config.conditioners] == ["crossattn"]
    r = CliRunner().invoke(
        app,
        [
            "sample",
            "--prompt",
            "a red circle",
            "--n",
            "1",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "s.png"),
            "--save-tensor",
            str(tmp_path / "s.pt"),
        ],
    )
    assert r.exit_code == 0, r.output
    x = torch.load(tmp_path / "s.pt", weights_only=True)
    assert x.shape == (1, 3, 32, 32) and torch.isfinite(x).all()


def test_superres_without_a_model_uses_the_shipped_one(tmp_path):
    assert load_ldm(SHIPPED["superres"].path).config.sr_scale == 4
    Image.new("RGB", (10, 6), (200, 30, 30)).save(tmp_path / "in.png")
    r = CliRunner().invoke(app, ["superres", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--steps", "1"])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "out.png").size == (40, 24)


def _smooth_photo(size: int = 64) -> Image.Image:
    """A smooth synthetic "photo": colour gradients and a soft disc (no test data needed)."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    disc = torch.exp(-((x - 0.6) ** 2 + (y - 0.4) ** 2) / 0.05)
    rgb = torch.stack([0.2 + 0.6 * x, 0.3 + 0.5 * y * (1 - disc), 0.4 + 0.5 * disc], -1)
    return Image.fromarray((rgb.clamp(0, 1) * 255).round().byte().numpy())


def test_builtin_photo_autoencoder_reconstructs_a_photo(tmp_path):
    _smooth_photo().save(tmp_path / "p.png")
    r = CliRunner().invoke(
        app, ["reconstruct", "builtin:photo-f4", str(tmp_path / "p.png"), "--out", str(tmp_path / "rec")]
    )
    assert r.exit_code == 0, r.output
    a = torch.tensor(list(Image.open(tmp_path / "p.png").getdata()), dtype=torch.float32)
    b = torch.tensor(list(Image.open(tmp_path / "rec" / "p.png").getdata()), dtype=torch.float32)
    psnr = 10 * torch.log10(255**2 / (a - b).square().mean())
    assert psnr > 30, psnr


def test_train_ldm_on_the_builtin_photo_autoencoder(tiny_ldm, tmp_path):
    ckpt = tiny_ldm(tmp_path, "builtin:photo-f4", "--size", "16", "--set", "cache_latents=false")
    assert load_ldm(ckpt).config.latent_size == 4  # 16 px through the f = 4 first stage


def test_an_unknown_builtin_model_is_a_clear_error(capsys):
    from ldmctl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["reconstruct", "builtin:photo-f8", "x.png"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "no built-in model 'photo-f8'" in err and "builtin:photo-f4" in err and "Traceback" not in err


def test_train_ae_fine_tunes_the_builtin_photo_autoencoder(run_cli, tmp_path):
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "docs" / "recipes" / "ae-photo-f4-finish.toml"
    args = ["train-ae", "--config", recipe, "--init", "builtin:photo-f4", "--data", "builtin:synthetic", "--size", "16"]
    run_cli(*args, "--max-steps", "1", "--batch-size", "2", "--sample-every", "1", "--out-dir", tmp_path / "ft")
    assert (tmp_path / "ft" / "ae.safetensors").is_file()
