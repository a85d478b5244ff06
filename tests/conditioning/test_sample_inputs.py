"""A third-party conditioner whose input key is new is a first-class citizen: trained from a folder
whose metadata.jsonl gives that key, then sampled with ``ldmctl sample CKPT --input KEY=VALUE``."""

from __future__ import annotations

import json
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from ldmctl import hookimpl
from ldmctl.cli import app, main
from ldmctl.conditioning import Conditioner, CondOutput, LatentSpec
from ldmctl.errors import InputError
from ldmctl.testing import check_conditioner

PALETTES = ("warm", "cool", "grey")


class Palette(Conditioner):
    """A palette word per image (``batch["palette"]``, a list of strings) -> an embedding, added."""

    name = "palette"
    kind = "add"
    input_key = "palette"

    @dataclass(frozen=True)
    class Config:
        dim: int = 16

    def __init__(self, config: Config, latent: LatentSpec) -> None:
        super().__init__(config, latent)
        self.embedding = nn.Embedding(len(PALETTES) + 1, config.dim)  # + the null palette

    @property
    def out_dim(self) -> int:
        return self.config.dim

    def parse_input(self, text: str) -> str:
        if text not in PALETTES:
            raise InputError(f"unknown palette {text!r}", hint=f"choose one of {list(PALETTES)}")
        return text

    def describe_input(self) -> str:
        return f"one of {', '.join(PALETTES)}"

    def forward(self, batch: Mapping[str, Any]) -> CondOutput:
        idx = torch.tensor([PALETTES.index(p) for p in batch[self.input_key]], device=self.device)
        return CondOutput(self.embedding(idx))

    def null(self, batch_size: int, device: torch.device | None = None) -> CondOutput:
        return CondOutput(self.embedding(torch.full((batch_size,), len(PALETTES), device=self.device)))


@hookimpl
def ldmctl_register_conditioners(register):
    register(Palette)


@pytest.fixture(scope="module")
def palette_plugin():
    """Install the throw-away plugin for this module: a plugin manager with the entry-point plugins
    (the built-ins) and this module-like object, in place of the process-wide one."""
    from ldmctl.conditioning import registry

    plugin = types.ModuleType("ldmctl_palette")
    plugin.ldmctl_register_conditioners = ldmctl_register_conditioners
    pm = registry.make_plugin_manager((plugin,))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "plugin_manager", lambda: pm)
        assert registry.conditioners()["palette"].cls is Palette
        yield plugin


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Eight 16 x 16 images whose metadata.jsonl gives each a palette (the new key)."""
    root = tmp_path_factory.mktemp("palette-data")
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(8):
        pixels = (torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": "", "palette": PALETTES[i % 3]})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


@pytest.fixture(scope="module")
def ckpt(palette_plugin, folder, tmp_path_factory, tiny_ae, tiny_ldm):
    """The conditioner trained 2 steps with train-ldm --preset tiny --cond palette on that folder."""
    tmp_path = tmp_path_factory.mktemp("palette-run")
    ae = tiny_ae(tmp_path, data=folder)
    return tiny_ldm(tmp_path, ae, "--cond", "palette", data=folder, steps=2)


def _sample(ckpt, out, *args) -> torch.Tensor:
    files = ["--out-file", str(out.with_suffix(".png")), "--save-tensor", str(out)]
    r = CliRunner().invoke(app, ["sample", str(ckpt), "--n", "2", "--steps", "2", *args, *files])
    assert r.exit_code == 0, r.output
    return torch.load(out, weights_only=True)


def test_the_throwaway_conditioner_passes_the_contract_kit():
    check_conditioner(
        Palette,
        Palette.Config(dim=8),
        lambda b, seed: {"palette": [PALETTES[(i + seed) % 3] for i in range(b)]},
        inputs=["warm", "grey"],
        bad_input="purple",
    )


def test_a_new_input_key_is_trained_from_metadata_and_sampled_with_input(ckpt, tmp_path):
    from ldmctl.checkpoint import read_checkpoint

    meta = read_checkpoint(ckpt).config
    assert meta["ldm"]["conditioners"][0]["name"] == "palette" and meta["ldm"]["unet"]["add_dim"] == 16
    warm = _sample(ckpt, tmp_path / "warm.pt", "--input", "palette=warm")
    again = _sample(ckpt, tmp_path / "again.pt", "--input", "palette=warm")
    cool = _sample(ckpt, tmp_path / "cool.pt", "--input", "palette=cool")
    assert warm.shape == (2, 3, 16, 16) and torch.equal(warm, again)
    assert not torch.equal(warm, cool)  # the value reaches the model
    both = _sample(ckpt, tmp_path / "both.pt", "--input", "palette=warm", "--input", "palette=cool")
    assert torch.equal(both[0], warm[0]) and not torch.equal(both[1], warm[1])  # values cycle over the samples


@pytest.mark.parametrize(
    "args,match",
    [
        (["--input", "palette=purple"], "palette conditioner cannot read --input palette='purple': unknown palette"),
        (
            ["--input", "mood=happy"],
            "no conditioner of this model reads 'mood'; it reads: palette (palette: one of warm",
        ),
        (["--label", "1"], "--label (--input label=...) was given, but no conditioner of this model reads 'label'"),
        (["--input", "palette"], "write KEY=VALUE"),
        ([], "reads 'palette' and has no default: give --input palette=VALUE"),
    ],
)
def test_bad_inputs_are_clear_errors(ckpt, tmp_path, capsys, args, match):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["sample", str(ckpt), "--n", "1", "--steps", "1", *args, "--out-file", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "error:" in err and "Traceback" not in err
    assert match in " ".join(err.split()), err
    if args and args[-1] == "palette=purple":
        assert "choose one of ['warm', 'cool', 'grey']" in " ".join(err.split())  # the plugin's own hint


@pytest.mark.parametrize("name", ["sr", "sr-residual"])
def test_a_superres_model_samples_from_an_image_input(tmp_path, name):
    """image-concat reads an image file; latent-concat (sr-residual) reads the image its latent is derived from."""
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "pre-refactor"
    dark = tmp_path / "dark.png"
    Image.new("RGB", (8, 8), (10, 10, 10)).save(dark)
    ckpt = fixtures / f"{name}.safetensors"
    lr = _sample(ckpt, tmp_path / "lr.pt", "--input", f"cond_image={fixtures / 'lr.png'}", "--guidance", "1")
    other = _sample(ckpt, tmp_path / "dark.pt", "--input", f"cond_image={dark}", "--guidance", "1")
    assert lr.shape[0] == 2 and not torch.equal(lr, other)
