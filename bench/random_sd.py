"""A random-weight Stable Diffusion pipeline, saved as a diffusers folder: the stand-in for a
downloaded model wherever no weights can be downloaded (the conversion tests, the README's
walk-through, the SD-1.5-size benchmark).

    python bench/random_sd.py tiny OUT_FOLDER            # seconds, a few MB: 16x16 images
    python bench/random_sd.py sd15 OUT_FOLDER            # SD-1.5's architecture: 1.07 B parameters, 4.3 GB
    python bench/random_sd.py tiny OUT --prediction v_prediction --linear-projection   # the SD 2.x choices

The models are diffusers' ``UNet2DConditionModel`` and ``AutoencoderKL`` and transformers'
``CLIPTextModel``, built with ``torch.manual_seed(0)`` and saved with ``save_pretrained``, with SD's
DDIM scheduler. Their CLIP tokenizer is written here: a byte-level BPE vocabulary (the 256 byte
characters, the same with the end-of-word marker ``</w>``, one merge chain per word of ``WORDS``
and CLIP's two special tokens); at the SD-1.5 size the text encoder keeps CLIP ViT-L/14's 49,408
rows (token ids do not change the cost: it always reads 77 positions).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ldmctl.convert.compvis_text import byte_symbols

WORDS = ("a", "red", "blue", "circle", "square", "cat", "photo", "of", "the", "on")
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {  # UNet f=2 latent 8x8 -> 16x16 images
        "unet": {"sample_size": 8, "block_out_channels": (32, 64), "layers_per_block": 1, "cross_attention_dim": 32},
        "unet_blocks": (("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D")),
        "vae": {"block_out_channels": (32, 64), "sample_size": 16, "layers_per_block": 1},
        "text": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37},
    },
    "sd15": {  # Stable Diffusion 1.5: 860 M UNet, 84 M VAE, 123 M text encoder; 512x512 images
        "unet": {"sample_size": 64, "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2}
        | {"cross_attention_dim": 768},
        "unet_blocks": (("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
        "vae": {"block_out_channels": (128, 256, 512, 512), "sample_size": 512, "layers_per_block": 2},
        "text": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
        | {"vocab_size": 49408, "hidden_act": "quick_gelu", "projection_dim": 768},
    },
}


def write_clip_tokenizer(folder: Path, pad: str = "<|endoftext|>") -> Path:
    """vocab.json, merges.txt and tokenizer_config.json of a small CLIP tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_symbols()
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
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "pad_token": pad, "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config | special))
    return folder


def _models(size: str, tokenizer: Any, prediction: str, linear_projection: bool) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = SIZES[size]
    down, up = spec["unet_blocks"]
    unet = UNet2DConditionModel(
        **spec["unet"],
        in_channels=4,
        out_channels=4,
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=8,
        use_linear_projection=linear_projection,
    )
    n = len(spec["vae"]["block_out_channels"])
    vae = AutoencoderKL(
        **spec["vae"],
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        latent_channels=4,
        scaling_factor=0.18215,
    )
    text_cfg = {"vocab_size": len(tokenizer), "max_position_embeddings": 77} | spec["text"]
    ids = {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    text = CLIPTextModel(CLIPTextConfig(**text_cfg, **ids))
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction,
    )
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text.eval(), "scheduler": scheduler}


def build_pipeline(
    folder: Path, size: str = "tiny", prediction: str = "epsilon", linear_projection: bool = False
) -> Any:
    """Build a random ``StableDiffusionPipeline`` of ``size`` (seed 0), save it to ``folder``, return it."""
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(folder.parent / f"{folder.name}-tokenizer")))
    pipe = StableDiffusionPipeline(
        **_models(size, tokenizer, prediction, linear_projection),
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))
    return pipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("size", choices=sorted(SIZES))
    ap.add_argument("out", type=Path, help="the folder to write (model_index.json, unet/, vae/, ...)")
    ap.add_argument("--prediction", default="epsilon", choices=["epsilon", "v_prediction"])
    ap.add_argument("--linear-projection", action="store_true", help="SD 2.x's linear transformer projections")
    args = ap.parse_args()
    if (args.out / "model_index.json").exists():
        raise SystemExit(f"error: {args.out} already holds a pipeline")
    pipe = build_pipeline(args.out, args.size, args.prediction, args.linear_projection)
    counts = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "vae", "text_encoder")
    }
    print(f"{args.out}: random {args.size} pipeline, parameters {counts}")


if __name__ == "__main__":
    main()
