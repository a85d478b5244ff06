"""diffusers interop, proven on tiny random-weight models built with diffusers' own classes.

Equivalence: ``ldmctl sample CONVERTED --prompt P --seed S --sampler ddim --steps 10 --guidance 7.5
--save-tensor T`` equals ``StableDiffusionPipeline(P, generator=torch.Generator().manual_seed(S),
num_inference_steps=10, guidance_scale=7.5, output_type="pt")`` with the folder's DDIMScheduler, within
TOL (images in [0, 1]; fp32 on the CPU the two differ by float rounding only, ~1e-6); the same for
ldmctl's dpmpp against DPMSolverMultistepScheduler (its default timestep spacing). The round trip
convert -> export -> diffusers gives bit-identical weights and images.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ldmctl.convert import convert
from ldmctl.convert.export import export_diffusers
from ldmctl.diffusion.io import load_ldm
from ldmctl.errors import CheckpointError, ConfigError

diffusers = pytest.importorskip("diffusers")
TOL = 1e-4  # max abs difference of [0, 1] images, fp32, CPU


def _pipe(folder, scheduler: str = "ddim"):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    if scheduler == "dpmpp":
        cfg = pipe.scheduler.config
        pipe.scheduler = diffusers.DPMSolverMultistepScheduler(
            beta_schedule=cfg.beta_schedule,
            beta_start=cfg.beta_start,
            beta_end=cfg.beta_end,
            prediction_type=cfg.prediction_type,
        )
    return pipe


def _theirs(folder, prompt, seed, steps=10, scheduler="ddim", n=1, **kw):
    out = _pipe(folder, scheduler)(
        prompt,
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=steps,
        guidance_scale=7.5,
        num_images_per_prompt=n,
        output_type="pt",
        **kw,
    )
    return out.images


def _ours(run_cli, ckpt, tmp_path, prompt, seed, sampler="ddim", n=1, *extra):
    t = tmp_path / f"{sampler}-{seed}.pt"
    run_cli(
        "sample", ckpt, "--prompt", prompt, "--seed", seed, "--sampler", sampler, "--steps", 10, "--guidance", 7.5,
        "--n", n, "--save-tensor", t, "-o", tmp_path / "grid.png", *extra,
    )  # fmt: skip
    return (torch.load(t) / 2 + 0.5).clamp(0, 1)


@pytest.fixture(scope="module")
def converted(tiny_sd_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "sd.safetensors"
    convert(tiny_sd_folder, out)
    return out


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp"])
def test_sample_equals_diffusers_pipeline(run_cli, tiny_sd_folder, converted, tmp_path, sampler):
    theirs = _theirs(tiny_sd_folder, "a red circle", 3, scheduler=sampler, n=2)
    ours = _ours(run_cli, converted, tmp_path, "a red circle", 3, sampler, 2)
    assert ours.shape == theirs.shape == (2, 3, 16, 16)
    assert theirs.std() > 0.05  # a non-trivial image, so equality means something
    assert (ours - theirs).abs().max() < TOL


def test_negative_prompt_equals_diffusers(run_cli, tiny_sd_folder, converted, tmp_path):
    theirs = _theirs(tiny_sd_folder, "a cat", 5, negative_prompt="blue square")
    ours = _ours(run_cli, converted, tmp_path, "a cat", 5, "ddim", 1, "--negative-prompt", "blue square")
    plain = _ours(run_cli, converted, tmp_path, "a cat", 6, "ddim", 1)
    assert (ours - theirs).abs().max() < TOL
    assert (plain - theirs).abs().max() > 10 * TOL  # the negative prompt changed the image


def test_v_prediction_and_linear_projection(run_cli, tiny_sd_v_folder, tmp_path):
    ckpt = tmp_path / "v.safetensors"
    convert(tiny_sd_v_folder, ckpt)
    model = load_ldm(ckpt)
    assert model.config.diffusion.prediction == "v" and model.config.unet.linear_projection
    theirs = _theirs(tiny_sd_v_folder, "a blue square", 2)
    assert (_ours(run_cli, ckpt, tmp_path, "a blue square", 2) - theirs).abs().max() < TOL


def test_round_trip_convert_export_is_exact(tiny_sd_folder, converted, tmp_path):
    out = tmp_path / "exported"
    summary = export_diffusers(converted, out)
    assert summary["pipeline"]
    a, b = _pipe(tiny_sd_folder), _pipe(out)
    for part in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), part
    for part in ("unet", "vae"):
        ca, cb = (dict(getattr(p, part).config) for p in (a, b))
        public = {k for k in ca.keys() | cb.keys() if not k.startswith("_")}
        assert {k: ca.get(k) for k in public} == {k: cb.get(k) for k in public}, part
    ia = _theirs(tiny_sd_folder, "a photo of a cat", 1, steps=4)
    ib = _theirs(out, "a photo of a cat", 1, steps=4)
    assert torch.equal(ia, ib)


def test_export_refuses_a_non_empty_folder(converted, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty folder"):
        export_diffusers(converted, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_autoencoder_folder_converts_and_reconstructs(tiny_sd_folder, tmp_path):
    from ldmctl.checkpoint import load_autoencoder

    out = tmp_path / "vae.safetensors"
    assert convert(tiny_sd_folder / "vae", out)["kind"] == "autoencoder"
    ae = load_autoencoder(out)
    ref = diffusers.AutoencoderKL.from_pretrained(str(tiny_sd_folder / "vae")).eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z_ref = ref.encode(x).latent_dist.mode()
        assert torch.allclose(ae.encode(x), z_ref, atol=1e-5)
        assert torch.allclose(ae.decode(z_ref), ref.decode(z_ref).sample, atol=1e-5)
    assert float(ae.scale_factor) == pytest.approx(ref.config.scaling_factor)
    back = tmp_path / "vae-back"
    export_diffusers(out, back)
    again = diffusers.AutoencoderKL.from_pretrained(str(back)).eval()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in ref.state_dict().items())


def test_unet_folder_needs_its_vae_and_text_encoder(tiny_sd_folder, tmp_path, run_cli):
    with pytest.raises(ConfigError, match="a UNet alone") as err:
        convert(tiny_sd_folder / "unet", tmp_path / "u.safetensors")
    assert "--vae" in err.value.hint and "--text-encoder" in err.value.hint
    text = tmp_path / "clip"
    shutil.copytree(tiny_sd_folder / "text_encoder", text)
    for f in (tiny_sd_folder / "tokenizer").iterdir():
        shutil.copy(f, text / f.name)
    out = tmp_path / "u.safetensors"
    convert(tiny_sd_folder / "unet", out, vae=tiny_sd_folder / "vae", text_encoder=text)
    theirs = _theirs(tiny_sd_folder, "a red square", 4)
    assert (_ours(run_cli, out, tmp_path, "a red square", 4) - theirs).abs().max() < TOL


def _copy_with_config(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "unet" / "config.json").read_text())
    cfg.update(changes)
    (dst / "unet" / "config.json").write_text(json.dumps(cfg))
    return dst


def test_unsupported_features_are_named(tiny_sd_folder, tmp_path):
    folder = _copy_with_config(tiny_sd_folder, tmp_path / "x", class_embed_type="timestep")
    with pytest.raises(CheckpointError, match="class_embed_type='timestep'"):
        convert(folder, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_mismatched_weights_are_named(tiny_sd_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy_with_config(tiny_sd_folder, tmp_path / "y")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    tensors["conv_in.weight"] = torch.zeros(32, 4, 5, 5)
    del tensors["conv_out.bias"]
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError) as err:
        convert(folder, tmp_path / "y.safetensors")
    message = str(err.value)
    assert "missing (1): conv_out.bias" in message and "unexpected (1): extra.weight" in message
    assert "mis-shaped (1): conv_in.weight (32, 4, 5, 5) (expected (32, 4, 3, 3))" in message
    wider = _copy_with_config(tiny_sd_folder, tmp_path / "z", cross_attention_dim=48)
    with pytest.raises(CheckpointError, match="48-wide context, but the text encoder gives 32-wide"):
        convert(wider, tmp_path / "z.safetensors")


def test_not_a_model_is_a_clear_cli_error(tmp_path, capsys):
    from ldmctl.cli import main

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_:
        main(["convert", str(tmp_path / "empty"), str(tmp_path / "o.safetensors")])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.startswith("error:") and "not a diffusers folder" in err
    assert "Traceback" not in err and not (tmp_path / "o.safetensors").exists()


def test_non_sd_model_exports_as_model_classes(tmp_path, tiny_ae, tiny_ldm):
    from ldmctl.conditioning.base import Cond

    ae = tiny_ae(tmp_path)
    ckpt = tiny_ldm(tmp_path, ae, "--cond", "crossattn", data="builtin:shapes")
    out = tmp_path / "d"
    summary = export_diffusers(ckpt, out)
    assert not summary["pipeline"] and summary["conditioners"] == ["text-crossattn"]
    ours = load_ldm(ckpt)
    unet = diffusers.UNet2DConditionModel.from_pretrained(str(out / "unet")).eval()
    s = ours.config.latent_size
    z, t = torch.randn(2, ours.config.unet.in_channels, s, s), torch.tensor([3, 700])
    ctx = torch.randn(2, 5, ours.config.unet.context_dim)
    with torch.no_grad():
        assert torch.allclose(unet(z, t, ctx).sample, ours.unet(z, t, Cond(context=ctx)), atol=1e-5)


def _skip_embeds(folder, prompt):
    """Prompt embeddings as diffusers' ``clip_skip=1`` computes them (hidden_states[-2], then the final
    LayerNorm); its own ``clip_skip`` path assumes transformers 4's ``text_model`` level, gone in 5."""
    pipe = _pipe(folder)
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        enc = getattr(pipe.text_encoder, "text_model", pipe.text_encoder)
        return enc.final_layer_norm(hidden)


def test_clip_skip_equals_diffusers(run_cli, tiny_sd_folder, tmp_path):
    ckpt = tmp_path / "skip.safetensors"
    convert(tiny_sd_folder, ckpt, layer="penultimate")
    embeds = {"prompt_embeds": _skip_embeds(tiny_sd_folder, "a red cat")}
    theirs = _theirs(tiny_sd_folder, None, 8, negative_prompt_embeds=_skip_embeds(tiny_sd_folder, ""), **embeds)
    plain = _theirs(tiny_sd_folder, "a red cat", 8)
    ours = _ours(run_cli, ckpt, tmp_path, "a red cat", 8)
    assert (ours - theirs).abs().max() < TOL
    assert (plain - theirs).abs().max() > 10 * TOL
