"""`ldmctl demo` runs its whole pipeline (here on tiny stand-ins for its two recipes)."""

from __future__ import annotations

import json

from PIL import Image

from ldmctl.cli import demo, main
from ldmctl.config import load_file


def test_demo_recipes_are_valid_configs():
    ae, ldm = load_file(demo.RECIPES / "demo-ae.toml"), load_file(demo.RECIPES / "demo-ldm.toml")
    assert ae["data"]["source"] == ldm["data"]["source"] == "builtin:shapes"
    assert ldm["model"]["conditioners"][0]["name"] == "crossattn"


def test_demo_end_to_end_on_tiny_recipes(tmp_path, monkeypatch, capsys):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "demo-ae.toml").write_text(
        "[model]\nbase_channels = 8\nchannel_mult = [1, 2, 2]\nnum_res_blocks = 1\nnorm_groups = 4\n"
        '[loss]\nperceptual = "none"\ndisc_start = 1000000\n[data]\nsource = "builtin:shapes"\nsize = 16\n'
        "[train]\nbatch_size = 2\nmax_steps = 2\nsample_every = 2\nsave_every = 2\nscale_samples = 4\n"
    )
    (recipes / "demo-ldm.toml").write_text(
        'cache_latents = false\n[[model.conditioners]]\nname = "crossattn"\n[model.conditioners.options]\nwidth = 16\ndepth = 1\n'
        "heads = 2\n[model.unet]\nmodel_channels = 16\nchannel_mult = [1, 2]\nattention_levels = [1]\n"
        'num_res_blocks = 1\nhead_channels = 8\nnorm_groups = 4\n[data]\nsource = "builtin:shapes"\nsize = 16\n'
        "[train]\nbatch_size = 2\nmax_steps = 2\nsample_every = 100\nsave_every = 2\n"
    )
    monkeypatch.setattr(demo, "RECIPES", recipes)
    try:
        main(
            [
                "demo",
                "--out-dir",
                str(tmp_path / "run"),
                "--samples-per-prompt",
                "2",
                "--json",
                str(tmp_path / "d.json"),
            ]
        )
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr()
    grid = tmp_path / "run" / "demo.png"
    assert grid.is_file() and str(grid) in out.out
    assert "match their prompt" in out.err
    w, h = Image.open(grid).size
    assert w > 2 * 16 and h > 4 * 16  # 2 samples per prompt, 4 prompt rows
    figures = json.loads((tmp_path / "d.json").read_text())
    assert figures["grid"] == str(grid) and figures["samples"] == 8 and figures["seconds"] > 0
    assert 0.0 <= figures["sample_match"] <= 1.0 and 0.0 <= figures["reconstruction_match"] <= 1.0
