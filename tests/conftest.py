"""Test-wide settings: offline, CPU, deterministic, small thread count."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded generator: tests never draw from global RNG state."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def isolated_torch_hub(tmp_path, monkeypatch):
    """Point the torch hub cache at an empty folder, so no real weights are ever found."""
    hub = tmp_path / "torch_home" / "hub"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    yield hub


def random_fid_inception_state() -> dict[str, torch.Tensor]:
    """A state dict in the layout of pytorch-fid's FID Inception weights, random but well scaled
    (variance-preserving convolutions), so features neither vanish nor blow up."""
    from torch import nn
    from torchvision.models import inception_v3

    g = torch.Generator().manual_seed(0)
    net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / m.weight[0].numel()) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return net.state_dict()


@pytest.fixture(scope="session")
def fid_inception_weights(tmp_path_factory):
    """Random weights saved as pytorch-fid's FID Inception file (about 95 MB, in a temp folder)."""
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_fid_inception_state(), path)
    return path


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip_folder(tmp_path_factory):
    """A random tiny open_clip model saved in open_clip's Hugging Face folder layout
    (open_clip_config.json + open_clip_model.safetensors)."""
    import json

    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    with torch.random.fork_rng(devices=[]):  # open_clip initialises from the global RNG
        torch.manual_seed(0)
        model = open_clip.model.CLIP(**TINY_CLIP)
    folder = tmp_path_factory.mktemp("tiny-clip")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def _run_cli(*args: object):
    """Run ``ldmctl ARGS`` through typer's CliRunner; assert it exits 0 (its output in the message)."""
    from typer.testing import CliRunner

    from ldmctl.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(*args)``: run an ldmctl command line that must succeed; returns the click Result."""
    return _run_cli


@pytest.fixture(scope="session")
def tiny_ae(run_cli):
    """``tiny_ae(root, *extra, data=..., steps=1, out_option="--out-dir")``: train-ae --preset tiny
    --perceptual none into ROOT/ae; returns ROOT/ae/ae.safetensors."""

    def train(root: Path, *extra: object, data="builtin:synthetic", steps=1, out_option="--out-dir") -> Path:
        args = ["train-ae", "--preset", "tiny", "--data", data, "--perceptual", "none", "--max-steps", steps]
        run_cli(*args, *extra, out_option, root / "ae")
        return root / "ae" / "ae.safetensors"

    return train


@pytest.fixture(scope="session")
def tiny_ldm(run_cli):
    """``tiny_ldm(root, ae, *extra, data=..., steps=1, name="ldm", out_option="--out-dir")``: train-ldm
    --preset tiny on the autoencoder AE into ROOT/NAME; returns ROOT/NAME/ldm.safetensors."""

    def train(
        root: Path, ae: Path, *extra: object, data="builtin:synthetic", steps=1, name="ldm", out_option="--out-dir"
    ):
        args = ["train-ldm", "--preset", "tiny", "--ae", ae, "--data", data, "--max-steps", steps]
        run_cli(*args, *extra, out_option, root / name)
        return root / name / "ldm.safetensors"

    return train


@pytest.fixture(scope="session")
def class_ldm(tmp_path_factory, tiny_ae, tiny_ldm):
    """A tiny class-conditional LDM on builtin:synthetic (4 shape classes), trained 1 step."""
    root = tmp_path_factory.mktemp("ldm")
    ae = tiny_ae(root, out_option="--out")
    return tiny_ldm(root, ae, "--cond", "class", out_option="--out")
