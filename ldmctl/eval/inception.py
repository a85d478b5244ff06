"""Inception-v3 pool features for FID and KID, from the FID Inception weights on this machine.

FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018) are defined on the 2048-d pool3
features of the TensorFlow Inception graph ``2015-12-05``. Its PyTorch port, the file
``pt_inception-2015-12-05-6726825d.pth`` of pytorch-fid (GitHub release ``fid_weights``),
is the one supported weights file: a state dict of torchvision's ``Inception3`` with 1008
classes and no auxiliary head. Its graph differs from torchvision's classification Inception
in three ways, reproduced here by :func:`_mixed_a` / :func:`_mixed_c` / :func:`_mixed_e`
(the torchvision modules hold the weights; only the pooling in the forward pass changes):

* the average pools of the A, C and first E blocks exclude the padding from the mean
  (``count_include_pad=False``);
* the last E block (``Mixed_7c``) max-pools in its pool branch instead of averaging.

torchvision's own ImageNet weights (``inception_v3_google-0cc3c7bd.pth``) are rejected with a
clear message: they give numbers that are *not* FID.

Preprocessing, as pytorch-fid: images in [-1, 1] (equivalently [0, 1] scaled by 2x - 1, what
the TF graph expects) are resized to 299 x 299 with bilinear interpolation
(``align_corners=False``, no antialiasing). With the same weights the features equal
pytorch-fid's (a test checks it). torch-fidelity and clean-fid feed uint8 images and resize
with other kernels (TF1-style bilinear; PIL bicubic), which moves FID slightly.

The weights are never downloaded. They are read, in this order, from ``weights`` (the
``--inception-weights`` option), the ``LDMCTL_INCEPTION`` environment variable, or the torch hub
cache file ``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth`` (where
pytorch-fid itself caches it). ``.pth`` files are read with ``torch.load(weights_only=True)``;
``.safetensors`` files with safetensors. A missing or unusable file is a :class:`WeightsError`
that names the file and where to put it.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import inception_v3

from ldmctl.errors import WeightsError

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
TORCHVISION_WEIGHTS_FILE = "inception_v3_google-0cc3c7bd.pth"
ENV_VAR = "LDMCTL_INCEPTION"
FEATURE_DIM = 2048
INPUT_SIZE = 299
NUM_CLASSES = 1008  # the TF graph's 1001 classes padded to 1008; the head is never used

_HINT = (
    f"copy pytorch-fid's {FID_WEIGHTS_FILE} (GitHub release 'fid_weights') there, "
    f"pass --inception-weights PATH or set {ENV_VAR}; without it, use the offline FD_cls "
    "(ldmctl train-classifier, then ldmctl eval --classifier CKPT)"
)
_LOAD_ERRORS = (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile)


def default_weights_path() -> Path:
    """The torch hub cache file of the FID Inception weights (pytorch-fid's own cache path)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE


def resolve_weights_path(weights: str | Path | None = None) -> Path:
    """``weights`` if given, else ``$LDMCTL_INCEPTION``, else :func:`default_weights_path`."""
    if weights is not None:
        return Path(weights).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else default_weights_path()


def _mixed_a(m: nn.Module, x: Tensor) -> Tensor:
    """Mixed_5b/c/d: torchvision's InceptionA with a padding-excluding average pool."""
    pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    return torch.cat(
        [
            m.branch1x1(x),
            m.branch5x5_2(m.branch5x5_1(x)),
            m.branch3x3dbl_3(m.branch3x3dbl_2(m.branch3x3dbl_1(x))),
            m.branch_pool(pool),
        ],
        1,
    )


def _mixed_c(m: nn.Module, x: Tensor) -> Tensor:
    """Mixed_6b-e: torchvision's InceptionC with a padding-excluding average pool."""
    pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    b7 = m.branch7x7_3(m.branch7x7_2(m.branch7x7_1(x)))
    d7 = m.branch7x7dbl_1(x)
    for layer in (m.branch7x7dbl_2, m.branch7x7dbl_3, m.branch7x7dbl_4, m.branch7x7dbl_5):
        d7 = layer(d7)
    return torch.cat([m.branch1x1(x), b7, d7, m.branch_pool(pool)], 1)


def _mixed_e(m: nn.Module, x: Tensor, *, max_pool: bool) -> Tensor:
    """Mixed_7b (padding-excluding average pool) and Mixed_7c (max pool) of the FID graph."""
    if max_pool:
        pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    else:
        pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    b3 = m.branch3x3_1(x)
    d3 = m.branch3x3dbl_2(m.branch3x3dbl_1(x))
    return torch.cat(
        [
            m.branch1x1(x),
            torch.cat([m.branch3x3_2a(b3), m.branch3x3_2b(b3)], 1),
            torch.cat([m.branch3x3dbl_3a(d3), m.branch3x3dbl_3b(d3)], 1),
            m.branch_pool(pool),
        ],
        1,
    )


class InceptionFeatures(nn.Module):
    """The FID Inception graph up to its pool: ``forward(x)`` (N, 3, H, W) in [-1, 1] -> (N, 2048).

    Holds a torchvision ``Inception3`` (its state dict is the weights file's) and runs the FID
    variant of its forward pass. Always in eval mode; no gradients.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=NUM_CLASSES)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionFeatures:  # noqa: ARG002 (always eval)
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (N, 3, H, W), got {tuple(x.shape)}")
        n = self.net
        x = x.to(dtype=n.fc.weight.dtype, device=n.fc.weight.device)
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147)
        x = n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(n.maxpool1(x)))  # (N, 192, 71, 71)
        x = n.maxpool2(x)  # (N, 192, 35, 35)
        for block in (n.Mixed_5b, n.Mixed_5c, n.Mixed_5d):
            x = _mixed_a(block, x)  # (N, 288, 35, 35)
        x = n.Mixed_6a(x)  # (N, 768, 17, 17)
        for block in (n.Mixed_6b, n.Mixed_6c, n.Mixed_6d, n.Mixed_6e):
            x = _mixed_c(block, x)
        x = n.Mixed_7a(x)  # (N, 1280, 8, 8)
        x = _mixed_e(n.Mixed_7b, x, max_pool=False)
        x = _mixed_e(n.Mixed_7c, x, max_pool=True)  # (N, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # (N, 2048): the pool3 features


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """The state dict in ``path`` (.safetensors, or a torch file read with weights_only=True)."""
    if not path.is_file():
        where = "" if path.name == FID_WEIGHTS_FILE else f" (expected pytorch-fid's {FID_WEIGHTS_FILE})"
        raise WeightsError(f"Inception (FID) weights not found: {path}{where}", hint=_HINT)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as err:
        raise WeightsError(f"Inception weights {path} could not be read: {err}", hint=_HINT) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"Inception weights {path} are not a state dict of tensors", hint=_HINT)
    return state


def load_inception(weights: str | Path | None = None) -> InceptionFeatures:
    """Build :class:`InceptionFeatures` and load the FID weights (see :func:`resolve_weights_path`)."""
    path = resolve_weights_path(weights)
    state = _read_state_dict(path)
    if any(k.startswith("AuxLogits.") for k in state) or ("fc.weight" in state and state["fc.weight"].shape[0] == 1000):
        raise WeightsError(
            f"{path} holds torchvision's ImageNet Inception ({TORCHVISION_WEIGHTS_FILE}), "
            "not the FID Inception: its features would not give FID",
            hint=_HINT,
        )
    model = InceptionFeatures()
    expected = model.net.state_dict()
    # BatchNorm's step counters are bookkeeping, absent from some exports: keep the model's own
    state = {**{k: v for k, v in expected.items() if k.endswith("num_batches_tracked")}, **state}
    bad = sorted(k for k in expected if k not in state or state[k].shape != expected[k].shape)
    extra = sorted(k for k in state if k not in expected)
    if bad or extra:
        raise WeightsError(
            f"{path} is not the FID Inception state dict: missing or mis-shaped {bad[:4]}, unexpected {extra[:4]}",
            hint=_HINT,
        )
    model.net.load_state_dict(state, strict=True)
    return model


__all__ = [
    "ENV_VAR",
    "FEATURE_DIM",
    "FID_WEIGHTS_FILE",
    "InceptionFeatures",
    "default_weights_path",
    "load_inception",
    "resolve_weights_path",
]
