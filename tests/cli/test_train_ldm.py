"""End-to-end CLI: train-ae -> train-ldm -> sample with the tiny presets."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ldmctl.cli import app, main


@pytest.fixture(scope="module")
def ldm_run(tmp_path_factory, tiny_ae, tiny_ldm):
    root = tmp_path_factory.mktemp("ldm")
    ae = tiny_ae(root, steps=2)
    tiny_ldm(root, ae, "--sample-every", "2", "--prediction", "v", steps=4)
    return root


def test_train_ldm_writes_checkpoint_and_grids(ldm_run):
    assert (ldm_run / "ldm" / "ldm.safetensors").is_file()
    assert (ldm_run / "ldm" / "samples" / "samples_0000002.png").is_file()


@pytest.mark.parametrize("sampler", ["ddim", "plms", "ddpm", "dpmpp"])
def test_sample_every_sampler_is_seeded(ldm_run, tmp_path, sampler, run_cli):
    ckpt = str(ldm_run / "ldm" / "ldm.safetensors")
    args = ["sample", ckpt, "--n", "3", "--steps", "3", "--sampler", sampler, "--seed", "7"]
    run_cli(*args, "--out-file", tmp_path / "a.png", "--save-tensor", tmp_path / "a.pt")
    run_cli(*args, "-o", tmp_path / "b.png", "--out-dir", tmp_path / "each", "--save-tensor", tmp_path / "b.pt")
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    assert a.shape == (3, 3, 16, 16) and torch.equal(a, torch.load(tmp_path / "b.pt", weights_only=True))
    assert len(list((tmp_path / "each").glob("*.png"))) == 3
    assert Image.open(tmp_path / "a.png").size[0] > 16


@pytest.mark.parametrize(
    "args,match",
    [
        (["--steps", "0"], "must be positive"),
        (["--eta", "nan"], "eta"),
        (["--out-file", "/nonexistent/dir/x.png"], "does not exist"),
    ],
)
def test_sample_user_errors(ldm_run, capsys, args, match):
    with pytest.raises(SystemExit) as exc:
        main(["sample", str(ldm_run / "ldm" / "ldm.safetensors"), "--n", "1", "--steps", "2", *args])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "error:" in err and match in err and "Traceback" not in err


@pytest.mark.parametrize("option,bad,choice", [("--sampler", "euler", "'dpmpp'"), ("--weights", "both", "'raw'")])
def test_sample_refuses_a_value_off_the_list_naming_the_choices(ldm_run, capsys, option, bad, choice):
    """A value that is not one of the listed choices is a usage error (exit 2) naming them."""
    with pytest.raises(SystemExit) as exc:
        main(["sample", str(ldm_run / "ldm" / "ldm.safetensors"), "--n", "1", "--steps", "2", option, bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert option in err and f"'{bad}'" in err and choice in err and "Traceback" not in err


def test_sample_rejects_an_autoencoder_checkpoint(ldm_run, capsys):
    with pytest.raises(SystemExit):
        main(["sample", str(ldm_run / "ae" / "ae.safetensors")])
    assert "autoencoder checkpoint" in capsys.readouterr().err


def test_train_ae_config_file_data_source_is_not_overridden(tmp_path, run_cli):
    """Regression: --data's default must not replace [data] source from --config."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nsource = "builtin:synthetic"\nsize = 16\n')
    args = ["train-ae", "--preset", "tiny", "--config", cfg, "--perceptual", "none", "--max-steps", "1"]
    run_cli(*args, "--out-dir", tmp_path / "ae")
    assert '"source": "builtin:synthetic"' in (tmp_path / "ae" / "config.json").read_text()


def test_class_conditional_train_and_sample_with_guidance(tmp_path, monkeypatch, capsys, run_cli, tiny_ae, tiny_ldm):
    ckpt = tiny_ldm(tmp_path, tiny_ae(tmp_path), "--cond", "class", steps=2)
    from ldmctl.checkpoint import read_checkpoint

    meta = read_checkpoint(ckpt).config
    assert meta["plugins"]["class"]["package"] == "ldmctl"
    assert meta["ldm"]["unet"]["add_dim"] > 0 and meta["ldm"]["conditioners"][0]["options"]["num_classes"] >= 2
    out = ["--out-file", tmp_path / "s.png", "--save-tensor", tmp_path / "s.pt"]
    for extra in (["--label", "1", "--guidance", "2"], []):
        run_cli("sample", ckpt, "--n", "2", "--steps", "2", *extra, *out)
    # the same checkpoint where its plugin is not installed: a clear error naming the package
    from ldmctl.conditioning import registry

    monkeypatch.setattr(registry, "conditioners", lambda pm=None: {})
    with pytest.raises(SystemExit):
        main(["sample", str(ckpt), "--n", "1", "--steps", "1"])
    err = capsys.readouterr().err
    assert "no conditioner named 'class'" in err and "pip install ldmctl" in err


def test_text_conditional_on_shapes_with_prompt_and_negative_prompt(tmp_path, run_cli, tiny_ae, tiny_ldm):
    vocab = tmp_path / "vocab.txt"
    words = "a red blue green yellow purple cyan circle square triangle to the left right of above below".split()
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    cfg = tmp_path / "text.toml"
    cfg.write_text(
        f'[[model.conditioners]]\nname = "tokens"\n[model.conditioners.options]\nwidth = 16\ndepth = 1\n'
        f'heads = 2\nvocab = "{vocab}"\n'
    )
    ae = tiny_ae(tmp_path, data="builtin:shapes")
    ckpt = str(tiny_ldm(tmp_path, ae, "--config", cfg, "--set", "cache_latents=false", data="builtin:shapes", steps=2))
    prompts = ["--prompt", "a red circle", "--negative-prompt", "a blue square", "--guidance", "3"]
    run_cli("sample", ckpt, "--n", "2", "--steps", "2", *prompts, "--out-file", tmp_path / "p.png")
    r = CliRunner().invoke(app, ["sample", ckpt, "--n", "1", "--steps", "2", "--out-file", str(tmp_path / "q.png")])
    assert r.exit_code == 1 and "--prompt" in str(r.exception)
