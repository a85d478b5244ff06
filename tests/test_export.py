"""ldmctl export: EMA-only fp16 checkpoints with a pruned vocabulary sample like their source."""

from __future__ import annotations

import logging

import pytest
import torch
from typer.testing import CliRunner

from ldmctl.checkpoint import read_checkpoint
from ldmctl.cli import app, main
from ldmctl.diffusion.io import load_ldm


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_ae, tiny_ldm):
    root = tmp_path_factory.mktemp("export")
    cfg = root / "text.toml"
    cfg.write_text(
        '[[model.conditioners]]\nname = "crossattn"\n[model.conditioners.options]\n'
        "width = 16\ndepth = 1\nheads = 2\nmax_length = 16\n"
    )
    ae = tiny_ae(root, data="builtin:shapes", out_option="--out")
    extra = ["--config", cfg, "--lr", "1e-2", "--set", "cache_latents=false"]
    return tiny_ldm(root, ae, *extra, data="builtin:shapes", steps=3, out_option="--out")


def _eps(model, prompts):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(len(prompts), *model.latent_shape, generator=g)
    with torch.no_grad():
        return model.model_fn(model.cond({"caption": prompts}))(z, torch.full((len(prompts),), 500))


def test_export_prunes_vocab_and_keeps_the_model(text_run, tmp_path, caplog):
    out = tmp_path / "small.safetensors"
    r = CliRunner().invoke(app, ["export", str(text_run), str(out), "--prune-vocab"])
    assert r.exit_code == 0, r.output
    ckpt = read_checkpoint(out)
    assert all(
        v.dtype in (torch.float16, torch.long, torch.int64) for v in ckpt.tensors.values() if v.is_floating_point()
    ) and not any(k.startswith("unet.") for k in ckpt.tensors)
    keep = ckpt.config["ldm"]["conditioners"][0]["options"]["keep_tokens"]
    assert 10 < len(keep) < 60  # the shapes caption language plus the special tokens, not 30,522 rows
    assert out.stat().st_size < text_run.stat().st_size / 3
    src, small = load_ldm(text_run), load_ldm(out)
    prompts = ["a red circle to the left of a blue square", "a cyan triangle"]
    ref = _eps(src, prompts)
    torch.testing.assert_close(_eps(small, prompts), ref, atol=2e-2 * float(ref.abs().max()), rtol=0)
    with caplog.at_level(logging.WARNING):
        unknown = _eps(small, ["a red banana"])
    assert "banana" in caplog.text
    assert torch.isfinite(unknown).all()


def test_exported_checkpoint_has_no_raw_weights(text_run, tmp_path, capsys):
    out = tmp_path / "e.safetensors"
    main_args = ["export", str(text_run), str(out), "--fp32"]
    assert CliRunner().invoke(app, main_args).exit_code == 0
    with pytest.raises(SystemExit):
        main(["sample", str(out), "--weights", "raw", "--prompt", "a red circle", "--n", "1", "--steps", "1"])
    assert "EMA weights only" in capsys.readouterr().err


def test_export_refuses_to_overwrite_its_source(text_run, capsys):
    with pytest.raises(SystemExit):
        main(["export", str(text_run), str(text_run)])
    assert "overwrite" in capsys.readouterr().err


def test_sample_without_checkpoint_uses_the_shipped_model_or_says_it_is_missing(tmp_path, monkeypatch, capsys):
    from ldmctl import models

    monkeypatch.setattr(models, "MODELS_DIR", tmp_path)
    with pytest.raises(SystemExit):
        main(["sample", "--prompt", "a red circle", "--n", "1", "--steps", "1", "--out", str(tmp_path / "s.png")])
    assert "missing from this install" in capsys.readouterr().err


def test_export_of_an_autoencoder_halves_it_and_keeps_what_it_does(tiny_ae, tmp_path, run_cli, capsys):
    from ldmctl.checkpoint import load_autoencoder

    src = tiny_ae(tmp_path, steps=2)
    out = tmp_path / "ae16.safetensors"
    run_cli("export", src, out)
    ckpt = read_checkpoint(out, expect_kind="autoencoder")
    assert {v.dtype for v in ckpt.tensors.values()} == {torch.float16}
    assert ckpt.extra["exported_from"] == src.name and out.stat().st_size < 0.6 * src.stat().st_size
    a, b = load_autoencoder(src), load_autoencoder(out)
    assert b.scale_factor.dtype == torch.float32  # loads back as fp32
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(b.decode(b.encode(x)), a.decode(a.encode(x)), atol=2e-2, rtol=0)
    with pytest.raises(SystemExit) as exc:
        main(["export", str(src), str(tmp_path / "x.safetensors"), "--prune-vocab"])
    assert exc.value.code == 1 and "apply to LDM checkpoints" in capsys.readouterr().err
