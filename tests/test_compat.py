"""Checkpoints written before the issue-19 rework (tests/fixtures/pre-refactor, made by its make.sh at
commit 2cae7e1) still load and give bit-identical samples and super-resolved images today."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ldmctl.cli import app

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "pre-refactor"

SAMPLES = [  # fixture, expected tensor, sample args
    ("uncond", "uncond", []),
    ("uncond", "uncond-ddpm", ["--sampler", "ddpm"]),
    ("uncond", "uncond-plms", ["--sampler", "plms"]),
    ("uncond", "uncond-dpmpp", ["--sampler", "dpmpp"]),
    ("class", "class", ["--label", "1", "--guidance", "2"]),
    ("crossattn", "crossattn", ["--prompt", "a red circle", "--guidance", "3"]),
    ("add", "add", ["--prompt", "a red circle", "--guidance", "3"]),
    ("tokens", "tokens", ["--prompt", "a red circle", "--guidance", "3"]),
]


@pytest.fixture(autouse=True)
def _at_root_with_two_threads(monkeypatch):
    monkeypatch.chdir(ROOT)  # the text fixtures name their vocab.txt by its path from the root
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the fixtures were made with 2 threads; CPU reductions depend on the split
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name,expected,args", SAMPLES, ids=[s[1] for s in SAMPLES])
def test_old_checkpoints_sample_bit_identically(tmp_path, name, expected, args):
    r = CliRunner().invoke(
        app,
        [
            "sample",
            str(FIX / f"{name}.safetensors"),
            "--n",
            "2",
            "--steps",
            "3",
            "--seed",
            "5",
            *args,
            "--device",
            "cpu",  # the fixtures were made on the CPU; --device auto would pick a GPU where there is one
            "--out",
            str(tmp_path / "g.png"),
            "--save-tensor",
            str(tmp_path / "s.pt"),
        ],
    )
    assert r.exit_code == 0, r.output
    got = torch.load(tmp_path / "s.pt", weights_only=True)
    assert torch.equal(got, torch.load(FIX / f"{expected}.samples.pt", weights_only=True))


@pytest.mark.parametrize("name", ["sr", "sr-residual"])
def test_old_superres_checkpoints_upscale_bit_identically(tmp_path, name):
    r = CliRunner().invoke(
        app,
        [
            "superres",
            str(FIX / "lr.png"),
            "--model",
            str(FIX / f"{name}.safetensors"),
            "--steps",
            "3",
            "--back-project",  # the fixtures predate back-projection (on by default since): off, as they were made
            "0",
            "--device",
            "cpu",
            "-o",
            str(tmp_path / "x.png"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "x.png")), np.asarray(Image.open(FIX / f"{name}.superres.png"))
    )


def test_shipped_models_give_the_same_outputs(tmp_path):
    r = CliRunner().invoke(
        app,
        [
            "sample",
            "--n",
            "2",
            "--steps",
            "4",
            "--seed",
            "3",
            "--prompt",
            "a red circle above a blue square",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "g.png"),
            "--save-tensor",
            str(tmp_path / "s.pt"),
        ],
    )
    assert r.exit_code == 0, r.output
    got = torch.load(tmp_path / "s.pt", weights_only=True)
    assert torch.equal(got, torch.load(FIX / "shipped-shapes.samples.pt", weights_only=True))
    r = CliRunner().invoke(
        app, ["superres", str(FIX / "lr.png"), "--back-project", "0", "--device", "cpu", "-o", str(tmp_path / "x.png")]
    )
    assert r.exit_code == 0, r.output
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "x.png")), np.asarray(Image.open(FIX / "shipped-superres.superres.png"))
    )
