"""The text encoder of a Stable Diffusion single file, as a transformers ``CLIPTextModel`` part.

SD 1.x files hold OpenAI's CLIP ViT-L/14 text tower in transformers' names
(``cond_stage_model.transformer.``; context = the last hidden state, ``quick_gelu``). SD 2.x
files hold OpenCLIP's ViT-H/14 text tower (``cond_stage_model.model.``; ``gelu``) and condition
on its *penultimate* residual block followed by the final LayerNorm: converted, as diffusers
does, by dropping the last block, so that the last hidden state of the 23-block model is exactly
that context. The number of heads is not in the weights: it comes from a ``config.json`` beside
the tokenizer (``--text-encoder DIR``), else from CLIP's 64-wide heads (logged).

Single files carry no tokenizer. ``--text-encoder DIR`` gives one (``vocab.json`` + ``merges.txt``
or ``tokenizer.json``, in DIR or DIR/tokenizer); otherwise the standard CLIP BPE tokenizer is built
from the merge list that ships with ``open_clip`` (the same 49,408 tokens: the 256 byte symbols,
the same with ``</w>``, the 48,894 merges joined, then ``<|startoftext|>`` and ``<|endoftext|>``).
SD 1.x pads prompts with ``<|endoftext|>``, SD 2.x with ``!`` (token 0), as each was trained.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ldmctl.convert.build import TextPart
from ldmctl.convert.common import read_json, shape_of
from ldmctl.convert.compvis_arch import indices
from ldmctl.convert.compvis_keys import Derived, openclip_names, view
from ldmctl.errors import CheckpointError, ConfigError, PackageError

log = logging.getLogger(__name__)
HF, OPENCLIP = "cond_stage_model.transformer.", "cond_stage_model.model."
OPENCLIP_UNUSED = ("text_projection", "logit_scale", "attn_mask", "visual.")  # not part of the context path
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # the merges CLIP uses from that list (its first line is a header)


def text_kind(keys: list[str], where: str) -> str:
    """``hf`` (SD 1.x) or ``openclip`` (SD 2.x); CheckpointError for any other conditioning model."""
    if any(k.startswith(HF) for k in keys):
        return "hf"
    if any(k.startswith(OPENCLIP) for k in keys):
        return "openclip"
    sample = [k for k in keys if k.startswith("cond_stage_model.")][:3]
    raise CheckpointError(
        f"{where}: no CLIP text encoder (cond_stage_model.transformer.* or cond_stage_model.model.*)"
        + (f"; found {sample}" if sample else "")
        + "; ldmctl converts Stable Diffusion 1.x / 2.x files"
    )


@functools.cache
def clip_prefix() -> str:
    """``text_model.`` where the installed transformers nests CLIPTextModel's weights under it
    (before 5.6), else ``""``: the names a TextPart's tensors must have."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny = CLIPTextConfig(
        vocab_size=8,
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    with torch.device("meta"):
        first = next(iter(CLIPTextModel(tiny).state_dict()))
    return "text_model." if first.startswith("text_model.") else ""


def clip_name(name: str) -> str:
    """A CLIPTextModel weight name (with or without ``text_model.``) as the installed transformers has it."""
    return clip_prefix() + name.removeprefix("text_model.")


def _hf_tensors(tensors: Mapping[str, Tensor], keys: list[str]) -> Mapping[str, Tensor]:
    names = {clip_name(k[len(HF) :]): k for k in keys if k.startswith(HF) and not k.endswith("position_ids")}
    return view(tensors, names)


def _openclip_tensors(tensors: Mapping[str, Tensor], keys: list[str], keep: int, where: str) -> Derived:
    """OpenCLIP's text tower as CLIPTextModel tensors, its first ``keep`` residual blocks."""
    recipe = {clip_name(k): (OPENCLIP + src, part, n) for k, (src, part, n) in openclip_names(keep).items()}
    used = {src for src, _, _ in recipe.values()}

    def unused(key: str) -> bool:  # outside the context path, or a block after the one SD conditions on
        rest = key[len(OPENCLIP) :]
        block = rest.split(".")[2] if rest.startswith("transformer.resblocks.") else ""
        return rest.startswith(OPENCLIP_UNUSED) or (block.isdigit() and int(block) >= keep)

    unknown = [k for k in keys if k.startswith(OPENCLIP) and k not in used and not unused(k)]
    if unknown:
        raise CheckpointError(f"{where}: unexpected OpenCLIP text tensors ({len(unknown)}): {', '.join(unknown[:4])}")
    missing = sorted(used - set(keys))
    if missing:
        raise CheckpointError(f"{where}: missing OpenCLIP text tensors ({len(missing)}): {', '.join(missing[:4])}")
    return Derived(tensors, recipe)


def _text_config(
    tensors: Mapping[str, Tensor], layers: int, act: str, folder: Path | None, where: str
) -> dict[str, Any]:
    """The CLIPTextConfig of the weights; heads from DIR/config.json or CLIP's 64-wide heads."""
    vocab, width = shape_of(tensors, clip_name("embeddings.token_embedding.weight"))
    found = {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": shape_of(tensors, clip_name("encoder.layers.0.mlp.fc1.weight"))[0],
        "num_hidden_layers": layers,
        "max_position_embeddings": shape_of(tensors, clip_name("embeddings.position_embedding.weight"))[0],
    }
    given = _config_json(folder) or {}
    wrong = {k: (given[k], v) for k, v in found.items() if k in given and given[k] != v}
    if wrong:
        raise ConfigError(f"{where}: the text encoder config.json does not describe the weights: {wrong}")
    if "num_attention_heads" in given:
        return {**given, **found}
    if width % 64:
        raise ConfigError(
            f"{where}: the text encoder's head count cannot be read from its weights (width {width})",
            hint="pass --text-encoder DIR holding the CLIP text model's config.json and its tokenizer files",
        )
    log.warning("%s: text encoder heads not stored; using CLIP's 64-wide heads (%d heads)", where, width // 64)
    return {**found, "num_attention_heads": width // 64, "hidden_act": act, "layer_norm_eps": 1e-5}


def _config_json(folder: Path | None) -> dict[str, Any] | None:
    for candidate in (folder / "config.json", folder / "text_encoder" / "config.json") if folder else ():
        if candidate.is_file():
            config = read_json(candidate)
            return config.get("text_config", config) if config.get("model_type") == "clip" else config
    return None


def read_text(
    tensors: Mapping[str, Tensor], where: str, *, folder: Path | None, layer: str, cond: dict[str, Any] | None
) -> tuple[TextPart, str]:
    """The text encoder of a single file and its kind (``hf`` / ``openclip``). ``cond``: the YAML's
    cond_stage_config (its ``layer``), ``folder``: ``--text-encoder DIR`` (tokenizer, maybe config.json)."""
    keys = list(tensors)
    kind = text_kind(keys, where)
    _check_cond(cond, kind, where)
    if kind == "hf":
        part = _hf_tensors(tensors, keys)
        layers = len(indices(set(part), clip_name("encoder.layers.")))
        config = _text_config(part, layers, "quick_gelu", folder, where)
        return TextPart(
            config=config, tensors=part, tokenizer=tokenizer_files(folder, "<|endoftext|>"), layer=layer
        ), kind
    wanted = str(((cond or {}).get("params") or {}).get("layer", "penultimate"))
    if layer != "last":
        raise ConfigError(
            f"{where}: --clip-layer {layer!r} for a Stable Diffusion 2.x file: its text encoder is converted "
            "to end at the layer SD 2 was trained on (OpenCLIP's penultimate), so keep the default (last)"
        )
    total = len(indices({k[len(OPENCLIP) :] for k in keys if k.startswith(OPENCLIP)}, "transformer.resblocks."))
    keep = total - 1 if wanted == "penultimate" else total
    part = _openclip_tensors(tensors, keys, keep, where)
    config = _text_config(part, keep, "gelu", folder, where)
    return TextPart(config=config, tensors=part, tokenizer=tokenizer_files(folder, "!"), layer="last"), kind


def _check_cond(cond: dict[str, Any] | None, kind: str, where: str) -> None:
    if not cond:
        return
    target, params = str(cond.get("target", "")), cond.get("params") or {}
    expected = {"hf": "FrozenCLIPEmbedder", "openclip": "FrozenOpenCLIPEmbedder"}[kind]
    if target and not target.endswith(expected):
        raise ConfigError(f"{where}: the config's text encoder is {target!r}, but the weights hold a {expected}")
    allowed = {"hf": ("last",), "openclip": ("last", "penultimate")}[kind]
    if str(params.get("layer", allowed[-1])) not in allowed:
        raise ConfigError(f"{where}: cond_stage_config layer {params['layer']!r}; ldmctl converts {allowed}")


def tokenizer_files(folder: Path | None, pad: str) -> Tensor:
    """The packed tokenizer: from ``folder`` (or its ``tokenizer/``), else the standard CLIP BPE."""
    from ldmctl_conditioners.clip import load_clip_tokenizer, pack_tokenizer

    if folder is not None:
        found = [
            d
            for d in (folder, folder / "tokenizer")
            if (d / "tokenizer.json").is_file() or (d / "vocab.json").is_file()
        ]
        if not found:
            raise ConfigError(
                f"--text-encoder {str(folder)!r} holds no tokenizer (vocab.json + merges.txt or tokenizer.json)"
            )
        load_clip_tokenizer(found[0])  # fails clearly now rather than at the first prompt
        return pack_tokenizer(found[0])
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(Path(tmp), pad)
        load_clip_tokenizer(tmp)
        return pack_tokenizer(tmp)


def byte_symbols() -> list[str]:
    """CLIP's (GPT-2's) printable stand-in for each byte, in vocabulary order: the bytes that print
    as themselves first, then the others mapped to code points from 256 up."""
    shown = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    hidden = [b for b in range(256) if b not in shown]
    return [chr(b) for b in shown] + [chr(256 + i) for i in range(len(hidden))]


def write_clip_tokenizer(folder: Path, pad: str) -> None:
    """Write the standard CLIP tokenizer (vocab.json, merges.txt and configs) built from open_clip's
    packaged BPE merge list; ``pad`` is the padding token (``<|endoftext|>`` or ``!``)."""
    spec = importlib.util.find_spec("open_clip")
    source = Path(spec.origin).parent / BPE_FILE if spec and spec.origin else None
    if source is None or not source.is_file():
        raise PackageError(
            "a single file holds no tokenizer, and open_clip (whose CLIP BPE merge list ldmctl builds it from) "
            "is not installed",
            hint="pass --text-encoder DIR (a folder with the CLIP tokenizer's vocab.json and merges.txt), "
            "or pip install open_clip_torch",
        )
    merges = gzip.open(source).read().decode("utf-8").split("\n")[1 : N_MERGES + 1]
    symbols = byte_symbols()
    vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m.split()) for m in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad,
    }
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=1), encoding="utf-8")


__all__ = ["byte_symbols", "read_text", "text_kind", "tokenizer_files", "write_clip_tokenizer"]
