"""CLIP score (Hessel et al. 2021) with open_clip, from CLIP weights already on this machine.

CLIP score = 100 * max(cos(E_image, E_text), 0), averaged over image-prompt pairs: the formula
torchmetrics documents for ``CLIPScore`` (Hessel et al. use w = 2.5 instead of 100). torchmetrics'
code clamps the mean rather than each pair; the two agree whenever every cosine is positive, as
it is for trained CLIP models.

The model is ``--clip-model NAME[:TAG]`` (default ``ViT-B-32:openai``, an open_clip
architecture name and pretrained tag). Its weights are never downloaded; they come, in order,
from:

1. ``--clip-weights PATH`` or the ``LDMCTL_CLIP`` environment variable: either a **folder** in
   open_clip's Hugging Face layout (``open_clip_config.json`` + ``open_clip_model.safetensors``
   or ``open_clip_pytorch_model.bin``; the architecture comes from the JSON), or a **file**
   (``.safetensors``, or ``.bin``/``.pt``/``.pth`` read with ``torch.load(weights_only=True)``)
   holding an open_clip state dict of architecture NAME;
2. the Hugging Face cache (``$HF_HOME/hub``), where open_clip itself stores the tag's weights
   (``timm/vit_base_patch32_clip_224.openai`` for the default), looked up without any network
   call.

A missing or unusable file is a :class:`WeightsError` naming the file and where to put it.
Images in [-1, 1] are preprocessed as open_clip does for the tag, on tensors: shortest side
resized to the model's input size (bicubic, antialiased), center crop, mean/std normalisation.
open_clip itself does this on PIL images, so scores can differ in the last digits.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import Tensor, nn

from ldmctl.errors import ConfigError, WeightsError

DEFAULT_MODEL = "ViT-B-32:openai"
ENV_VAR = "LDMCTL_CLIP"
CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_LOAD_ERRORS = (
    OSError,
    RuntimeError,
    ValueError,
    KeyError,
    TypeError,
    EOFError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    SafetensorError,
)


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise WeightsError(
            "CLIP score needs the open_clip package", hint="pip install 'ldmctl[clip]' (or pip install open_clip_torch)"
        ) from None
    return open_clip


class ClipScorer(nn.Module):
    """``forward(images, prompts)``: per-pair CLIP score (N,) of images (N, 3, H, W) in [-1, 1]."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[[list[str]], Tensor],
        *,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.size = size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ClipScorer:  # noqa: ARG002 (always eval)
        return super().train(False)

    def preprocess(self, x: Tensor) -> Tensor:
        """[-1, 1] images -> the model's normalised (N, 3, size, size) input."""
        x = ((x.float().to(self.mean.device) + 1) / 2).clamp(0, 1)
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        new = (max(self.size, round(h * scale)), max(self.size, round(w * scale)))
        if new != (h, w):
            x = F.interpolate(x, size=new, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (new[0] - self.size) // 2, (new[1] - self.size) // 2
        x = x[..., top : top + self.size, left : left + self.size]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def image_embeddings(self, x: Tensor) -> Tensor:
        """Unit-norm image embeddings (N, E)."""
        return F.normalize(self.model.encode_image(self.preprocess(x)).float(), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> Tensor:
        """Unit-norm text embeddings (N, E); prompts longer than the context are truncated."""
        tokens = self.tokenizer(list(prompts)).to(self.mean.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def forward(self, images: Tensor, prompts: list[str]) -> Tensor:
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        cos = (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(-1)
        return 100 * cos.clamp(min=0)


def clip_score(scorer: ClipScorer, images: Tensor, prompts: list[str]) -> float:
    """Mean CLIP score of image-prompt pairs."""
    return float(scorer(images, prompts).mean())


def split_model_name(name: str) -> tuple[str, str]:
    """``"ViT-B-32:openai"`` -> ``("ViT-B-32", "openai")``; the tag may be empty."""
    arch, _, tag = name.partition(":")
    if not arch:
        raise ConfigError(f"--clip-model {name!r}: expected NAME or NAME:TAG, e.g. {DEFAULT_MODEL}")
    return arch, tag


def _cache_location(arch: str, tag: str) -> tuple[str, Path | None]:
    """(Hugging Face repo id of the tag's weights, the cached weights file if present)."""
    cfg = _open_clip().get_pretrained_cfg(arch, tag) if tag else {}
    repo = (cfg or {}).get("hf_hub", "").strip("/")
    if not repo:
        return "", None
    repo, _, filename = repo.rpartition("/") if repo.count("/") > 1 else (repo, "", "")
    from huggingface_hub import try_to_load_from_cache

    for name in [filename] if filename else list(WEIGHT_FILES):
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str) and Path(found).is_file():
            return repo, Path(found)
    return repo, None


def resolve_clip_weights(weights: str | Path | None, model: str = DEFAULT_MODEL) -> Path:
    """The CLIP weights file or folder to load (see the module docstring for the order)."""
    if weights is None and os.environ.get(ENV_VAR):
        weights = os.environ[ENV_VAR]
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.exists():
            raise WeightsError(f"CLIP weights not found: {path}", hint=_hint(model))
        return path
    arch, tag = split_model_name(model)
    repo, found = _cache_location(arch, tag)
    if found is None:
        from huggingface_hub.constants import HF_HUB_CACHE

        where = (
            f"{Path(HF_HUB_CACHE) / ('models--' + repo.replace('/', '--'))}/snapshots/<revision>/{WEIGHT_FILES[0]}"
            if repo
            else f"no known cache location for {model!r}"
        )
        raise WeightsError(f"CLIP weights for {model} not found: {where}", hint=_hint(model, repo))
    return found


def _hint(model: str, repo: str = "") -> str:
    source = f"the Hugging Face repo {repo}" if repo else f"open_clip's weights of {model}"
    return (
        f"copy {WEIGHT_FILES[0]} (and {CONFIG_FILE}) of {source} to this machine and pass "
        f"--clip-weights FILE_OR_FOLDER or set {ENV_VAR}"
    )


def load_clip(weights: str | Path | None = None, model: str = DEFAULT_MODEL) -> ClipScorer:
    """Build a :class:`ClipScorer` from local weights only (see :func:`resolve_clip_weights`)."""
    path = resolve_clip_weights(weights, model)
    oc = _open_clip()
    try:
        if path.is_dir():
            net, name, preprocess = _load_folder(oc, path)
        else:
            net, name, preprocess = _load_file(oc, path, model)
        tokenizer = oc.get_tokenizer(name)
    except _LOAD_ERRORS as err:
        what = "" if path.is_dir() else f" as {split_model_name(model)[0]}"
        raise WeightsError(f"CLIP weights {path} could not be loaded{what}: {err}", hint=_hint(model)) from None
    size = preprocess["size"]
    size = size if isinstance(size, int) else min(size)
    return ClipScorer(net, tokenizer, size=size, mean=preprocess["mean"], std=preprocess["std"])


def _load_folder(oc: Any, folder: Path) -> tuple[nn.Module, str, dict[str, Any]]:
    """An open_clip model from a folder in its Hugging Face layout (``local-dir:``)."""
    config = folder / CONFIG_FILE
    if not config.is_file():
        raise WeightsError(f"CLIP weights folder {folder} has no {CONFIG_FILE}", hint=_hint("this model"))
    json.loads(config.read_text())  # a broken JSON is a ValueError -> WeightsError
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise WeightsError(f"CLIP weights folder {folder} holds none of {list(WEIGHT_FILES)}", hint=_hint("this model"))
    name = f"local-dir:{folder}"
    net = oc.create_model(name, require_pretrained=True, weights_only=True)
    return net.eval(), name, net.visual.preprocess_cfg


def _load_file(oc: Any, path: Path, model: str) -> tuple[nn.Module, str, dict[str, Any]]:
    """Architecture ``NAME`` from open_clip's configs, weights from one state-dict file."""
    arch, tag = split_model_name(model)
    if oc.get_model_config(arch) is None:
        raise ConfigError(
            f"--clip-model {arch!r} is not an open_clip architecture", hint="see open_clip.list_models(), e.g. ViT-B-32"
        )
    tag_cfg = (oc.get_pretrained_cfg(arch, tag) if tag else None) or {}
    net = oc.create_model(
        arch,
        pretrained=str(path),
        require_pretrained=True,
        weights_only=True,
        force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
    )
    preprocess = dict(net.visual.preprocess_cfg)
    preprocess.update({k: tag_cfg[k] for k in ("mean", "std") if k in tag_cfg})
    return net.eval(), arch, preprocess


__all__ = [
    "DEFAULT_MODEL",
    "ENV_VAR",
    "ClipScorer",
    "clip_score",
    "load_clip",
    "resolve_clip_weights",
    "split_model_name",
]
