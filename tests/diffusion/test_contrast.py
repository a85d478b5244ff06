"""The hard-negative caption contrast (ldmctl/diffusion/contrast.py, config section [contrast])."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from ldmctl.config import ConditionerSpec, ContrastConfig, DataConfig, ldm_preset
from ldmctl.diffusion.contrast import check_contrast, swap_table, swap_words
from ldmctl.diffusion.io import load_ldm
from ldmctl.errors import ConfigError
from ldmctl.train.ldm import train_ldm

SWAPS = ("circle:square", "triangle:cross")
CAPTIONS = [
    "a red circle on a striped background",
    "a blue square on a plain background",
    "a green cross on a dotted background",
    "a yellow triangle on a plain background",
]


def tiny_text_cfg(**fields):
    cfg = ldm_preset("tiny")
    train = replace(cfg.train, sample_every=1000, save_every=1000, warmup_steps=0, lr=1e-3, max_steps=2)
    spec = ConditionerSpec("text-crossattn", {"width": 16, "depth": 1, "heads": 2})
    model = replace(cfg.model, conditioners=(spec,))
    return replace(cfg, data=DataConfig(source="builtin:synthetic", size=16), train=train, model=model, **fields)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory, tiny_ae):
    root = tmp_path_factory.mktemp("contrast")
    ckpt = train_ldm(tiny_text_cfg(), tiny_ae(root), root / "run")["checkpoint"]
    return load_ldm(ckpt, weights="raw").train()


def _batch(model, captions):
    g = torch.Generator().manual_seed(7)
    return {"z0": torch.randn(len(captions), *model.latent_shape, generator=g), "caption": list(captions)}


def test_swap_words_exchanges_whole_words_both_ways():
    table = swap_table(("left:right", "above:below"))
    assert (
        swap_words("a red circle to the left of a blue square", table) == "a red circle to the right of a blue square"
    )
    assert swap_words("below, right", table) == "above, left"
    assert swap_words("leftover rights", table) == "leftover rights"  # whole words only
    for bad in ("left", "left:", ":right", "a:b:c"):
        with pytest.raises(ConfigError, match="contrast.swaps"):
            swap_table((bad,))


def test_check_contrast_refuses_what_it_cannot_apply():
    check_contrast(ContrastConfig(), {"label"}, 4)  # off: nothing to check
    on = ContrastConfig(weight=1.0, swaps=SWAPS)
    check_contrast(on, {"caption"}, 1)
    with pytest.raises(ConfigError, match="needs contrast.swaps"):
        check_contrast(replace(on, swaps=()), {"caption"}, 1)
    with pytest.raises(ConfigError, match="not read by any conditioner"):
        check_contrast(on, {"label"}, 1)
    with pytest.raises(ConfigError, match="grad_accum"):
        check_contrast(on, {"caption"}, 2)


def test_denoising_term_is_the_plain_step_and_the_contrast_reaches_the_text_encoder(text_model):
    model, batch = text_model, _batch(text_model, CAPTIONS)
    plain, plain_logs = model.training_loss(batch, generator=torch.Generator().manual_seed(3))
    model.zero_grad(set_to_none=True)
    cfg = ContrastConfig(weight=1.0, margin=10.0, swaps=SWAPS)
    parts = []
    total, logs = model.training_loss(
        batch,
        generator=torch.Generator().manual_seed(3),
        backward=lambda x: (parts.append(x), x.backward()),
        contrast=cfg,
    )
    assert logs["simple"] == pytest.approx(plain_logs["simple"], rel=1e-5)  # same draws, same true-caption rows
    assert logs["contrast"] == pytest.approx(10.0 - logs["gap"], rel=1e-5)  # the hinge is active on every row
    assert float(total) == pytest.approx(plain_logs["loss"] + logs["contrast"], rel=1e-5) and len(parts) == 1
    grads = [p.grad for p in model.conditioners.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_captions_without_swap_words_add_nothing(text_model):
    model = text_model
    batch = _batch(model, ["a red star", "a blue moon"])
    with torch.no_grad():
        plain, _ = model.training_loss(batch, generator=torch.Generator().manual_seed(1))
    cfg = ContrastConfig(weight=1.0, swaps=SWAPS)
    total, logs = model.training_loss(
        batch, generator=torch.Generator().manual_seed(1), backward=lambda x: None, contrast=cfg
    )
    assert logs["contrast"] == 0.0 and float(total) == pytest.approx(float(plain), rel=1e-5)


def test_train_ldm_with_contrast_logs_it_and_keeps_it_for_resume(tmp_path, tiny_ae):
    cfg, ae = tiny_text_cfg(contrast=ContrastConfig(weight=0.5, swaps=SWAPS)), tiny_ae(tmp_path)
    train_ldm(cfg, ae, tmp_path / "run")
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("contrast" in r and "gap" in r for r in logs)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["contrast"]["weight"] == 0.5 and stored["contrast"]["swaps"] == list(SWAPS)
    with pytest.raises(ConfigError, match="not read by any conditioner"):
        train_ldm(replace(cfg, model=replace(cfg.model, conditioners=())), ae, tmp_path / "run2")
