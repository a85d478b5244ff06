"""The CompVis / Stable Diffusion single-file layouts, proven on tiny random-weight models.

Oracle: the tiny diffusers ``StableDiffusionPipeline`` of ``tiny_sd_folder`` (tests/convert/conftest.py)
is converted to ldmctl, written back as an SD 1.x single file by :func:`to_compvis`, and that file is
loaded by diffusers' own ``from_single_file``: its UNet, VAE and text encoder weights equal the
pipeline's exactly. Converting the single file again gives the same ldmctl weights and config, and
``ldmctl sample`` gives the same tensor (exactly). First stages (KL and VQ) written in the CompVis
layout from random ldmctl autoencoders convert to the same reconstructions (stated bound: atol 1e-6;
in practice exact). SD 2.x files (OpenCLIP text tower) are checked on the conditioning itself: the
converted encoder's last hidden state equals OpenCLIP's penultimate block through its final norm.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import shutil
from collections import OrderedDict

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from ldmctl.autoencoder import build_autoencoder
from ldmctl.checkpoint import load_autoencoder
from ldmctl.config import AutoencoderConfig, ConditionerSpec, LDMConfig, UNetConfig
from ldmctl.convert import compvis, convert
from ldmctl.convert.common import unfill
from ldmctl.convert.compvis_keys import first_stage_keymap
from ldmctl.convert.compvis_text import write_clip_tokenizer
from ldmctl.diffusion.io import load_ldm
from ldmctl.diffusion.ldm import LatentDiffusion
from ldmctl.errors import CheckpointError, ConfigError

diffusers = pytest.importorskip("diffusers")
ATOL = 1e-6  # first-stage reconstructions, fp32 CPU (the weights are copied exactly)
TEXT_ATOL = 1e-5  # OpenCLIP (nn.MultiheadAttention) vs transformers CLIP attention, fp32 CPU (measured: 0)


def _yaml(path, parameterization="eps", **unet_params):
    """A CompVis LDM YAML for the tiny pipeline: what the weights cannot tell, plus values they check."""
    params = {
        "parameterization": parameterization,
        "linear_start": 0.00085,
        "linear_end": 0.012,
        "timesteps": 1000,
        "image_size": 8,
        "scale_factor": 0.18215,
        "conditioning_key": "crossattn",
        "unet_config": {"params": {"num_heads": 8, "model_channels": 32, "channel_mult": [1, 2], **unet_params}},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {"embed_dim": 4}},
        "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"},
    }
    path.write_text(
        yaml.safe_dump({"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": params}})
    )
    return path


def _text_dir(folder, tmp_path):
    """--text-encoder DIR: the pipeline's tokenizer files and its text model's config.json (the heads)."""
    d = tmp_path / "text"
    if not d.exists():
        shutil.copytree(folder / "tokenizer", d)
        shutil.copy(folder / "text_encoder" / "config.json", d / "config.json")
    return d


def _single(folder, tmp):
    """(ldmctl checkpoint of the pipeline at ``folder``, its model, the single file written from it)."""
    convert(folder, tmp / "ldm.safetensors")
    model = load_ldm(tmp / "ldm.safetensors")
    save_file(compvis.to_compvis(model), str(tmp / "sd.safetensors"))
    return tmp / "ldm.safetensors", model, tmp / "sd.safetensors"


@pytest.fixture(scope="module")
def single_file(tiny_sd_folder, tmp_path_factory):
    """The eps pipeline with 1x1-conv transformer projections (SD 1.x) as a single file."""
    return _single(tiny_sd_folder, tmp_path_factory.mktemp("compvis"))


@pytest.fixture(scope="module")
def single_file_v(tiny_sd_v_folder, tmp_path_factory):
    """The v-prediction pipeline with linear projections (the SD 2.x choices) as a single file."""
    return _single(tiny_sd_v_folder, tmp_path_factory.mktemp("compvis-v"))


VARIANTS = {
    "sd1": ("tiny_sd_folder", "single_file", {}),
    "v-linear": ("tiny_sd_v_folder", "single_file_v", {"parameterization": "v", "use_linear_in_transformer": True}),
}  # variant -> (pipeline fixture, single-file fixture, YAML options)


def _variant(request, name):
    folder, files, options = VARIANTS[name]
    return request.getfixturevalue(folder), request.getfixturevalue(files), options


@pytest.mark.parametrize("variant", VARIANTS)
def test_single_file_loads_in_diffusers_with_identical_weights(variant, request):
    folder, files, _ = _variant(request, variant)
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    ours = diffusers.StableDiffusionPipeline.from_single_file(str(files[2]), config=str(folder), local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(theirs, name).state_dict(), getattr(ours, name).state_dict()
        assert a.keys() == b.keys(), name
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}.{k}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_single_file_converts_back_exactly(variant, request, tmp_path, run_cli):
    folder, (first, model, path), options = _variant(request, variant)
    out = tmp_path / "again.safetensors"
    yaml_path = _yaml(tmp_path / "sd.yaml", **options)
    convert(path, out, config=yaml_path, text_encoder=_text_dir(folder, tmp_path))
    again = load_ldm(out)
    for part in ("unet", "autoencoder", "conditioners"):
        a, b = getattr(model, part).state_dict(), getattr(again, part).state_dict()
        assert a.keys() == b.keys(), part
        assert all(torch.equal(a[k], b[k]) for k in a), part
    assert again.config == model.config
    images = []
    for ckpt in (first, out):
        t = tmp_path / f"{ckpt.stem}.pt"
        run_cli("sample", ckpt, "--prompt", "a red circle", "--seed", 3, "--sampler", "ddim", "--steps", 4, "--n", 2,
                "--guidance", 7.5, "--save-tensor", t, "-o", tmp_path / "grid.png")  # fmt: skip
        images.append(torch.load(t))
    assert torch.equal(images[0], images[1])


def test_ema_weights_are_preferred(tiny_sd_folder, single_file, tmp_path, caplog):
    _, model, path = single_file
    tensors = load_file(str(path))
    unet = {k: v for k, v in tensors.items() if k.startswith("model.diffusion_model.")}
    ema = {"model_ema." + k[len("model.") :].replace(".", ""): v + 1 for k, v in unet.items()}
    ema |= {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(7, dtype=torch.int32)}
    save_file(tensors | ema, str(tmp_path / "ema.safetensors"))
    with caplog.at_level(logging.WARNING):
        convert(tmp_path / "ema.safetensors", tmp_path / "out.safetensors", config=_yaml(tmp_path / "sd.yaml"),
                text_encoder=_text_dir(tiny_sd_folder, tmp_path))  # fmt: skip
    assert "EMA weights of the UNet" in caplog.text
    ours, theirs = load_ldm(tmp_path / "out.safetensors").unet.state_dict(), model.unet.state_dict()
    assert all(torch.equal(ours[k], theirs[k] + 1) for k in ours)


def test_yaml_must_agree_with_the_weights(single_file, tiny_sd_folder, tmp_path):
    _, _, path = single_file
    text = _text_dir(tiny_sd_folder, tmp_path)
    with pytest.raises(ConfigError, match="model_channels: 64 in the config, 32 in the weights"):
        convert(
            path, tmp_path / "x.safetensors", config=_yaml(tmp_path / "a.yaml", model_channels=64), text_encoder=text
        )
    with pytest.raises(ConfigError, match="use_scale_shift_norm"):
        convert(path, tmp_path / "x.safetensors", config=_yaml(tmp_path / "b.yaml", use_scale_shift_norm=True),
                text_encoder=text)  # fmt: skip
    with pytest.raises(ConfigError, match="attention heads cannot be read"):  # width 32 is no SD context
        convert(path, tmp_path / "x.safetensors", text_encoder=text)
    with pytest.raises(ConfigError, match="head count cannot be read"):  # nor 32 a CLIP width
        convert(path, tmp_path / "x.safetensors", config=_yaml(tmp_path / "c.yaml"))


def test_bad_files_are_named(single_file, tiny_sd_folder, tmp_path):
    _, _, path = single_file
    tensors = load_file(str(path))
    out_bias = "model.diffusion_model.out.2.bias"
    cases = {
        "missing": ({k: v for k, v in tensors.items() if k != out_bias}, r"missing \(1\): out.2.bias"),
        "unexpected": ({**tensors, "model.diffusion_model.extra.weight": torch.zeros(1)}, r"unexpected \(1\): extra"),
        "stray": ({**tensors, "something_else": torch.zeros(1)}, "unexpected tensors .* something_else"),
        "shape": ({**tensors, out_bias: torch.zeros(5)}, r"mis-shaped \(1\): out.2.bias \(5,\) \(expected \(4,\)\)"),
        "vae": (
            {k: v for k, v in tensors.items() if k != "first_stage_model.decoder.conv_in.bias"},
            r"first stage, first_stage_model.\*\).*missing \(1\): decoder.conv_in.bias",
        ),
    }
    yaml_path, text = _yaml(tmp_path / "sd.yaml"), _text_dir(tiny_sd_folder, tmp_path)
    for name, (broken, message) in cases.items():
        save_file(broken, str(tmp_path / f"{name}.safetensors"))
        with pytest.raises(CheckpointError, match=message):
            convert(tmp_path / f"{name}.safetensors", tmp_path / "x.safetensors", config=yaml_path, text_encoder=text)


def test_old_transformers_text_names(single_file, tiny_sd_folder, tmp_path):
    """SD 1.x files saved with old transformers lack the ``text_model.`` level under ``transformer.``."""
    _, model, path = single_file
    old = {k.replace("transformer.text_model.", "transformer."): v for k, v in load_file(str(path)).items()}
    save_file(old, str(tmp_path / "old.safetensors"))
    convert(tmp_path / "old.safetensors", tmp_path / "out.safetensors", config=_yaml(tmp_path / "sd.yaml"),
            text_encoder=_text_dir(tiny_sd_folder, tmp_path))  # fmt: skip
    ours, theirs = load_ldm(tmp_path / "out.safetensors").conditioners.state_dict(), model.conditioners.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_to_compvis_refuses_what_the_layout_cannot_hold():
    with pytest.raises(CheckpointError, match=r"unet.norm_eps = 1e-06 \(needs 1e-05\)"):
        compvis.to_compvis(_sd_model(768, 1, norm_eps=1e-6))


def test_unknown_layouts_are_refused(tiny_sd_folder, tmp_path):
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "foo.safetensors"))
    with pytest.raises(CheckpointError, match="neither a Stable Diffusion single file"):
        convert(tmp_path / "foo.safetensors", tmp_path / "x.safetensors")
    vae_keys = list(load_file(str(tiny_sd_folder / "vae" / "diffusion_pytorch_model.safetensors")))
    assert not compvis.is_first_stage(vae_keys)  # diffusers' names are not the CompVis layout


class Sneaky(OrderedDict):
    """An OrderedDict subclass: unpickling it means importing this module (running code)."""


class Boom:
    """Unpickling this would create MARKER: the proof that no code ran is that MARKER stays absent."""

    marker = pathlib.Path("never-created")

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("payload", ["subclass", "function", "reduce"])
def test_pickles_with_code_are_refused_without_running_it(tmp_path, payload):
    Boom.marker = tmp_path / "ran"
    weights = {"w": torch.zeros(2)}
    obj = {
        "subclass": {"state_dict": Sneaky(weights)},
        "function": {"state_dict": weights, "hook": print},
        "reduce": {"state_dict": weights, "callbacks": Boom()},
    }[payload]
    torch.save(obj, tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match="never unpickles code"):
        convert(tmp_path / "model.ckpt", tmp_path / "x.safetensors")
    assert not Boom.marker.exists()


def _first_stage_file(cfg: AutoencoderConfig, path, prefix="", extra=None):
    """A random ldmctl autoencoder written in the CompVis first-stage layout; returns the autoencoder."""
    torch.manual_seed(0)
    ae = build_autoencoder(cfg).eval()
    state = {k: v for k, v in ae.state_dict().items() if k != "scale_factor"}
    save_file(unfill(state, first_stage_keymap(cfg, prefix), {}) | (extra or {}), str(path))
    return ae


FIRST_STAGES = {
    "kl-f2": AutoencoderConfig(kind="kl", base_channels=32, channel_mult=(1, 2), num_res_blocks=1, z_channels=4),
    "kl-f4-attn": AutoencoderConfig(
        kind="kl", base_channels=32, channel_mult=(1, 1, 2), num_res_blocks=2, z_channels=3, embed_dim=3,
        attn_resolutions=(2,),
    ),
    "vq-f2-attn": AutoencoderConfig(
        kind="vq", base_channels=32, channel_mult=(1, 2), num_res_blocks=1, z_channels=3, embed_dim=3, n_embed=64,
        attn_resolutions=(0, 1),
    ),
    "vq-f4-noattn": AutoencoderConfig(
        kind="vq", base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, embed_dim=2, n_embed=32,
        mid_attention=False,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", FIRST_STAGES)
def test_first_stage_reconstructs_exactly(name, tmp_path, caplog):
    cfg = FIRST_STAGES[name]
    loss = {"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.ones(8, 3, 4, 4)}
    source = _first_stage_file(cfg, tmp_path / "fs.safetensors", extra=loss)
    with caplog.at_level(logging.WARNING):
        assert convert(tmp_path / "fs.safetensors", tmp_path / "ae.safetensors")["kind"] == "autoencoder"
    ae = load_autoencoder(tmp_path / "ae.safetensors").eval()
    assert ae.config == cfg
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ae.decode(ae.encode(x)), source.decode(source.encode(x)), rtol=0, atol=ATOL)
    assert float(ae.scale_factor) == 1.0  # VQ: CompVis' value; KL: unknown without a YAML, and said so
    assert ("no latent scale stored" in caplog.text) == (cfg.kind == "kl")


def test_first_stage_scale_rules():
    sd_vae = AutoencoderConfig(base_channels=128, channel_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=4)
    assert compvis._first_stage_scale(sd_vae, {}, None, "x") == 0.18215
    assert compvis._first_stage_scale(sd_vae, {"scale_factor": torch.tensor(0.5)}, None, "x") == 0.5
    ldm = {"params": {"scale_factor": 0.22765929}}
    assert compvis._first_stage_scale(sd_vae, {}, ldm, "x") == pytest.approx(0.22765929)


def test_first_stage_yaml(tmp_path):
    cfg = FIRST_STAGES["kl-f2"]
    _first_stage_file(cfg, tmp_path / "fs.safetensors", prefix="first_stage_model.")
    torch.save({"state_dict": load_file(str(tmp_path / "fs.safetensors")), "global_step": 5}, tmp_path / "fs.ckpt")
    dd = {"double_z": True, "z_channels": 4, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
          "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": []}  # fmt: skip
    first = {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {"embed_dim": 4, "ddconfig": dd}}
    ldm = {
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {"scale_factor": 0.3, "first_stage_config": first},
    }
    (tmp_path / "ldm.yaml").write_text(yaml.safe_dump({"model": ldm}))
    convert(tmp_path / "fs.ckpt", tmp_path / "ae.safetensors", config=tmp_path / "ldm.yaml")  # a Lightning .ckpt
    assert float(load_autoencoder(tmp_path / "ae.safetensors").scale_factor) == pytest.approx(0.3)
    wrong = {**first, "params": {"embed_dim": 4, "ddconfig": {**dd, "attn_resolutions": [8]}}}
    remap = {"target": "ldm.models.autoencoder.VQModel", "params": {"remap": "codes.npy", "ddconfig": dd}}
    for name, node, message in (("wrong", wrong, "attention levels"), ("remap", remap, "remaps its codebook")):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"model": node}))
        with pytest.raises(ConfigError, match=message):
            convert(tmp_path / "fs.safetensors", tmp_path / "x.safetensors", config=tmp_path / f"{name}.yaml")


def _sd_model(context: int, layers: int, act: str = "quick_gelu", **unet_options) -> LatentDiffusion:
    """A random SD-like ldmctl model whose CLIP text tower is ``context`` wide (SD's 768 or 1024)."""
    torch.manual_seed(0)
    text = {"hidden_size": context, "intermediate_size": 48, "num_hidden_layers": layers, "vocab_size": 99,
            "num_attention_heads": context // 64, "hidden_act": act, "bos_token_id": 97, "eos_token_id": 98}  # fmt: skip
    unet = UNetConfig(
        model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2,
        context_dim=context, norm_eps=1e-5, downsample_padding=1, linear_projection=context == 1024,
    )  # fmt: skip
    unet = dataclasses.replace(unet, **unet_options)
    cfg = LDMConfig(unet=unet, latent_size=8, conditioners=(ConditionerSpec("clip-text", {"text_config": text}),))
    ae = build_autoencoder(FIRST_STAGES["kl-f2"])
    return LatentDiffusion(cfg, ae).eval()


def test_sd1_rules_without_yaml_or_tokenizer(tmp_path, caplog):
    pytest.importorskip("open_clip")
    save_file(compvis.to_compvis(_sd_model(768, 1)), str(tmp_path / "sd1.safetensors"))
    with caplog.at_level(logging.WARNING):
        convert(tmp_path / "sd1.safetensors", tmp_path / "out.safetensors")
    assert "context width 768 (CLIP ViT-L/14, SD 1.x): 8 heads" in caplog.text
    model = load_ldm(tmp_path / "out.safetensors")
    assert (model.config.unet.num_heads, model.config.diffusion.prediction, model.config.latent_size) == (8, "eps", 64)
    clip = model.conditioners.items[0]
    assert (clip.model.config.num_attention_heads, clip.model.config.hidden_act) == (12, "quick_gelu")
    assert clip.tokenize(["a cat"])[0, :4].tolist() == [49406, 320, 2368, 49407]
    assert clip.tokenize(["a cat"])[0, -1].item() == 49407  # SD 1.x pads with <|endoftext|>


def _openclip_file(tmp_path, layers: int = 3):
    """An SD 2.x-like single file: the UNet and VAE of a random 1024-context model, and the text tower
    of a random open_clip CLIP (width 1024, 16 heads) under ``cond_stage_model.model.``, with the
    projection, logit scale and a visual tensor a CLIP state dict carries. Returns (open_clip model, path)."""
    open_clip = pytest.importorskip("open_clip")
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(1)
    text = CLIPTextCfg(context_length=77, vocab_size=99, width=1024, heads=16, layers=layers, mlp_ratio=0.125)
    vision = CLIPVisionCfg(layers=1, width=32, head_width=32, patch_size=8, image_size=16)
    oc = open_clip.CLIP(embed_dim=8, vision_cfg=vision, text_cfg=text).eval()
    tensors = {k: v for k, v in compvis.to_compvis(_sd_model(1024, 1, "gelu")).items() if not k.startswith("cond_")}
    for k, v in oc.state_dict().items():
        if not k.startswith("visual.") or k == "visual.conv1.weight":
            tensors[f"cond_stage_model.model.{k}"] = v.contiguous()
    save_file(tensors, str(tmp_path / "sd2.safetensors"))
    return oc, tmp_path / "sd2.safetensors"


def _penultimate(oc, ids):
    """SD 2.x's context: OpenCLIP's token + position embedding, all blocks but the last, final LayerNorm."""
    x = oc.token_embedding(ids) + oc.positional_embedding
    for block in oc.transformer.resblocks[:-1]:
        x = block(x, attn_mask=oc.attn_mask)
    return oc.ln_final(x)


def test_sd2_penultimate_layer_and_prediction(tmp_path):
    oc, path = _openclip_file(tmp_path)
    with pytest.raises(ConfigError, match="2.x file: whether it predicts"):
        convert(path, tmp_path / "x.safetensors")
    with pytest.raises(ConfigError, match="--clip-layer 'penultimate'"):
        convert(path, tmp_path / "x.safetensors", prediction="v", layer="penultimate")
    convert(path, tmp_path / "out.safetensors", prediction="v")
    model = load_ldm(tmp_path / "out.safetensors")
    unet = model.config.unet
    assert (unet.head_channels, unet.num_heads, unet.upcast_attention, unet.linear_projection) == (64, 0, True, True)
    assert (model.config.diffusion.prediction, model.config.latent_size) == ("v", 96)
    clip = model.conditioners.items[0]
    assert (clip.model.config.num_hidden_layers, clip.model.config.hidden_act) == (2, "gelu")
    ids = torch.tensor([[5, 7, 9, 98] + [0] * 73, [5, 11, 98] + [0] * 74])
    with torch.no_grad():
        torch.testing.assert_close(
            clip.model(input_ids=ids).last_hidden_state, _penultimate(oc, ids), rtol=0, atol=TEXT_ATOL
        )
    assert clip.tokenize(["a cat"])[0, -1].item() == 0  # SD 2.x pads with "!" (token 0), as OpenCLIP does


def test_sd2_prediction_from_yaml(tmp_path):
    _, path = _openclip_file(tmp_path, layers=2)
    cond = {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder", "params": {"layer": "penultimate"}}
    ldm = {"params": {"parameterization": "v", "linear_start": 0.00085, "linear_end": 0.012, "cond_stage_config": cond,
                      "unet_config": {"params": {"num_head_channels": 64, "use_linear_in_transformer": True}}}}  # fmt: skip
    (tmp_path / "v2.yaml").write_text(yaml.safe_dump({"model": ldm}))
    convert(path, tmp_path / "out.safetensors", config=tmp_path / "v2.yaml")
    model = load_ldm(tmp_path / "out.safetensors")
    assert model.config.diffusion.prediction == "v"
    assert model.conditioners.items[0].model.config.num_hidden_layers == 1


def test_clip_tokenizer_matches_open_clip(tmp_path):
    """The CLIP tokenizer built from open_clip's merge list gives open_clip's token ids (padding aside:
    SD 1.x pads with <|endoftext|>). With "!" as the pad token (SD 2.x), transformers splits a
    literal "!" out as that special token, as diffusers' SD 2 tokenizer does; prompts here have none."""
    open_clip = pytest.importorskip("open_clip")
    from transformers import CLIPTokenizer

    prompts = ["a photograph of an astronaut riding a horse", "", "Hello, world. It's 2024 -- naïve café, 3 cats"]
    for pad, pad_id in (("!", 0), ("<|endoftext|>", 49407)):
        folder = tmp_path / ("bang" if pad == "!" else "eot")
        folder.mkdir()
        write_clip_tokenizer(folder, pad)
        tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
        assert len(tok) == 49408
        ours = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
        ref = open_clip.tokenize(prompts)
        ref = torch.where((ref == 0) & (torch.arange(77) > 0), torch.full_like(ref, pad_id), ref)
        assert torch.equal(ours, ref), pad
