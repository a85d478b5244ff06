"""LPIPS perceptual distance (Zhang et al. 2018) with offline, explicit weight loading.

The calibrated linear heads ship inside the ``lpips`` package (``lpips/weights/v0.1``) and are
always loaded from there. The ImageNet backbone (AlexNet, VGG16 or SqueezeNet 1.1) is *not*
downloaded: it is read from ``weights`` or from the torch hub cache file that torchvision would
have written (``$TORCH_HOME/hub/checkpoints/<torchvision file name>``), and a missing or
unusable file is a :class:`WeightsError` with a hint, never a network call.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Literal

import lpips
import torch
from einops import rearrange
from torch import Tensor, nn
from torchvision import models as tvm

from ldmctl.errors import ConfigError, WeightsError

PerceptualNet = Literal["alex", "vgg", "squeeze"]

# lpips net name -> (torchvision architecture, its ImageNet weights enum entry)
_BACKBONES: dict[str, tuple[str, Any]] = {
    "alex": ("alexnet", tvm.AlexNet_Weights.IMAGENET1K_V1),
    "vgg": ("vgg16", tvm.VGG16_Weights.IMAGENET1K_V1),
    "squeeze": ("squeezenet1_1", tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1),
}
_HINT = (
    "put the torchvision ImageNet weights there, pass --lpips-weights PATH, "
    "or train without the perceptual term with --perceptual none"
)
_LOAD_ERRORS = (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile)


class LPIPSDistance(nn.Module):
    """Frozen LPIPS: ``forward(x, y)`` with x, y (B, 3, H, W) in [-1, 1] returns (B,) distances.

    Gradients flow to the inputs but never to the weights, and the module stays in eval mode
    (LPIPS heads contain dropout) even when a parent module calls ``.train()``.
    """

    def __init__(self, model: lpips.LPIPS, net: str) -> None:
        super().__init__()
        self.net = net
        self.model = model
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPSDistance:  # noqa: ARG002 (always eval)
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        d = self.model(x, y, normalize=False)  # (B, 1, 1, 1)
        return rearrange(d, "b 1 1 1 -> b")


def default_backbone_path(net: str = "alex") -> Path:
    """Where torchvision caches the ImageNet weights of ``net``'s backbone."""
    _, weights = _backbone(net)
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def build_perceptual(
    net: str = "alex", *, weights: str | Path | None = None, random_backbone: bool = False
) -> LPIPSDistance:
    """Build a frozen LPIPS distance for ``net`` ("alex", "vgg" or "squeeze").

    Args:
        weights: a torchvision ImageNet state_dict for the backbone; defaults to
            :func:`default_backbone_path`.
        random_backbone: keep the randomly initialised backbone (tests only; no file is read
            except the linear heads inside the lpips package).
    """
    _backbone(net)  # validates the name
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=`
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
    _load_linear_heads(model, net)
    if not random_backbone:
        path = Path(weights) if weights is not None else default_backbone_path(net)
        _load_backbone(model.net, _read_state_dict(path), net, path)
    return LPIPSDistance(model, net)


def _backbone(net: str) -> tuple[str, Any]:
    if net not in _BACKBONES:
        raise ConfigError(f"perceptual net {net!r} is not one of {sorted(_BACKBONES)}")
    return _BACKBONES[net]


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """torch.load a state_dict safely, turning every failure into WeightsError."""
    if not path.is_file():
        raise WeightsError(f"LPIPS backbone weights not found: {path}", hint=_HINT)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as err:
        raise WeightsError(f"LPIPS backbone weights {path} could not be read: {err}", hint=_HINT) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"LPIPS backbone weights {path} are not a state_dict of tensors", hint=_HINT)
    return state


def _load_linear_heads(model: lpips.LPIPS, net: str) -> None:
    """Load the calibrated 1x1 heads shipped with lpips, checking every key (lpips does not)."""
    path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    result = model.load_state_dict(state, strict=False)
    # lpips registers each head twice (lin0 and lins.0): check the lin<i> names
    heads = [k for k in model.state_dict() if re.match(r"lin\d", k)]
    if result.unexpected_keys or any(k in result.missing_keys for k in heads):
        raise WeightsError(
            f"the lpips package's {path} does not match its model (unexpected {result.unexpected_keys})",
            hint="reinstall lpips",
        )


def _load_backbone(backbone: nn.Module, state: dict[str, Tensor], net: str, path: Path) -> None:
    """Copy torchvision ``features.<i>.*`` tensors into lpips' ``slice<k>.<i>.*`` modules.

    lpips splits torchvision's ``features`` Sequential into slices but keeps each module's
    index as its name, so ``slice2.3.weight`` is ``features.3.weight``.
    """
    arch, _ = _BACKBONES[net]
    mapped: dict[str, Tensor] = {}
    bad: list[str] = []
    for key, param in backbone.state_dict().items():
        src = "features." + key.split(".", 1)[1]
        if src not in state or state[src].shape != param.shape:
            bad.append(src)
        else:
            mapped[key] = state[src]
    if bad:
        raise WeightsError(
            f"LPIPS backbone weights {path} are not a torchvision {arch} state_dict: missing or mis-shaped {bad[:4]}",
            hint=_HINT,
        )
    backbone.load_state_dict(mapped, strict=True)


__all__ = ["LPIPSDistance", "PerceptualNet", "build_perceptual", "default_backbone_path"]
