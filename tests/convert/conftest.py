"""A tiny random-weight Stable Diffusion pipeline built with diffusers' and transformers' own classes
and saved with ``save_pretrained``: the oracle of the conversion tests (no weights can be downloaded).

Its CLIP tokenizer is written here: a byte-level BPE vocabulary (the 256 byte characters, the same
with the end-of-word marker ``</w>``, a few merges and CLIP's two special tokens)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

WORDS = ("a", "red", "blue", "circle", "square", "cat", "photo", "of", "the", "on")


def byte_chars() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for the bytes 0..255."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_clip_tokenizer(folder: Path, pad: str = "<|endoftext|>") -> Path:
    """vocab.json, merges.txt and tokenizer_config.json of a small CLIP tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_chars()
    vocab = chars + [c + "</w>" for c in chars]
    merges = []
    for word in WORDS:  # merge each word left to right into one token
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            if parts[0] not in vocab:
                vocab.append(parts[0])
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def tiny_pipeline(folder: Path, prediction: str = "epsilon", linear_projection: bool = False):
    """Build, save and return a tiny StableDiffusionPipeline (UNet f=2 latent 8x8 -> 16x16 images)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
        use_linear_projection=linear_projection,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=16,
    )
    tok_dir = write_clip_tokenizer(folder.parent / f"{folder.name}-tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction,
    )
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))
    return pipe


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory) -> Path:
    """A saved tiny StableDiffusionPipeline folder (eps prediction, 1x1-conv transformer projections)."""
    folder = tmp_path_factory.mktemp("sd") / "tiny-sd"
    tiny_pipeline(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sd_v_folder(tmp_path_factory) -> Path:
    """The same with v prediction and linear projections (the SD 2.x choices)."""
    folder = tmp_path_factory.mktemp("sd") / "tiny-sd-v"
    tiny_pipeline(folder, prediction="v_prediction", linear_projection=True)
    return folder
