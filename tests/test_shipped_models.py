"""The models that ship inside the package load, are small, and do their job in one short call."""

from __future__ import annotations

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
