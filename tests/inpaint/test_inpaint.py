"""The dedicated inpainting model (Stable Diffusion's inpainting UNet) on tiny configs: its
conditioners, the task's derived inputs, train-ldm --task inpaint with and without the latent
cache, the checkpoint that rebuilds it, and the errors users hit."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from ldmctl_conditioners import MaskConcat, MaskedLatentConcat
from PIL import Image
from typer.testing import CliRunner

from ldmctl.autoencoder import build_autoencoder
from ldmctl.checkpoint import read_checkpoint, save_autoencoder
from ldmctl.cli import app, main
from ldmctl.conditioning import LatentSpec
from ldmctl.conditioning.registry import conditioners
from ldmctl.config import PRESETS, ConditionerSpec, DataConfig, InpaintConfig, ldm_preset, merge
from ldmctl.diffusion.io import load_ldm
from ldmctl.errors import ConfigError, InputError
from ldmctl.inpaint.masks import InpaintDataset, batch_masks
from ldmctl.inpaint.task import CONDITIONERS, IMAGE_KEY, MASK_KEY, MASKED_LATENT_KEY, InpaintTask, with_inpaint_task
from ldmctl.samplers import get_sampler
from ldmctl.testing import check_conditioner
from ldmctl.train.latents import LatentCache
from ldmctl.train.ldm import _masked_batches, train_ldm
from ldmctl.train.loop import Callbacks, batch_stream

LATENT = LatentSpec(channels=4, size=8, factor=4)


@pytest.fixture(scope="module")
def ae_path(tmp_path_factory):
    torch.manual_seed(0)
    ae = build_autoencoder(PRESETS["tiny"].model).eval()
    return save_autoencoder(ae, tmp_path_factory.mktemp("ae") / "ae.safetensors")


@pytest.fixture(scope="module")
def ckpt(ae_path, tmp_path_factory):
    """`train-ldm --preset tiny --task inpaint --data builtin:shapes --max-steps 2` (text-conditioned
    too, so guidance has a condition to drop)."""
    out = tmp_path_factory.mktemp("inpaint") / "run"
    args = ["train-ldm", "--preset", "tiny", "--task", "inpaint", "--data", "builtin:shapes", "--max-steps", "2"]
    r = CliRunner().invoke(
        app, [*args, "--cond", "text-crossattn", "--ae", str(ae_path), "--sample-every", "2", "--out-dir", str(out)]
    )
    assert r.exit_code == 0, r.output
    return out / "ldm.safetensors"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An RGB image and two masks (left half, a centre square) of 16 x 16 px on disk."""
    root = tmp_path_factory.mktemp("files")
    Image.new("RGB", (16, 16), (200, 40, 40)).save(root / "img.png")
    left, centre = Image.new("L", (16, 16), 0), Image.new("L", (16, 16), 0)
    left.paste(255, (0, 0, 8, 16))
    centre.paste(255, (4, 4, 12, 12))
    left.save(root / "left.png")
    centre.save(root / "centre.png")
    return root


def test_the_task_keys_are_the_conditioners_input_keys():
    assert MaskConcat.input_key == MASK_KEY and MaskedLatentConcat.input_key == MASKED_LATENT_KEY
    found = conditioners()
    assert [found[n].cls for n in CONDITIONERS] == [MaskConcat, MaskedLatentConcat]


def test_the_inpaint_conditioners_pass_the_contract_kit(files):
    def masks(b: int, seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        return {MASK_KEY: (torch.rand(b, 1, 32, 32, generator=g) > 0.5).float()}

    def latents(b: int, seed: int) -> dict:
        return {MASKED_LATENT_KEY: torch.randn(b, 4, 8, 8, generator=torch.Generator().manual_seed(seed))}

    inputs = [str(files / "left.png"), str(files / "centre.png")]
    check_conditioner(MaskConcat, MaskConcat.Config(), masks, LATENT, inputs=inputs, bad_input="/nonexistent/m.png")
    check_conditioner(MaskedLatentConcat, MaskedLatentConcat.Config(), latents, LATENT, bad_input="x.png")


def test_mask_concat_reads_white_as_repaint_and_gives_each_cells_repainted_fraction(files):
    c = MaskConcat(MaskConcat.Config(), LATENT)
    m = c.parse_input(str(files / "left.png"))
    assert m.shape == (1, 16, 16) and m[:, :, :8].eq(1).all() and m[:, :, 8:].eq(0).all()
    out = c({MASK_KEY: m[None], "latent_hw": (4, 4)}).value  # f = 4
    assert torch.equal(out[0, 0], torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 4))
    half = torch.zeros(1, 1, 16, 16)
    half[..., :2, :] = 1  # half of the first latent row's pixels
    assert torch.allclose(c({MASK_KEY: half, "latent_hw": (4, 4)}).value[0, 0, 0], torch.full((4,), 0.5))


def test_with_inpaint_task_adds_both_conditioners_without_dropout():
    cfg = ldm_preset("tiny")
    out = with_inpaint_task(replace(cfg, task="inpaint"))
    assert out.model.inpaint
    assert [(s.name, s.dropout) for s in out.model.conditioners] == [(n, 0.0) for n in CONDITIONERS]
    given = replace(cfg, task="inpaint", model=replace(cfg.model, conditioners=(ConditionerSpec("mask-concat"),)))
    out = with_inpaint_task(given)  # a configured one is kept, its dropout set to 0; the missing one added
    assert [(s.name, s.dropout) for s in out.model.conditioners] == [
        ("masked-latent-concat", 0.0),
        ("mask-concat", 0.0),
    ]
    assert with_inpaint_task(cfg) is cfg  # other tasks are left alone
    with pytest.raises(ConfigError, match="inpainting models"):
        with_inpaint_task(replace(cfg, model=replace(cfg.model, inpaint=True)))
    with pytest.raises(ConfigError, match="inpainting models"):
        with_inpaint_task(replace(given, task="superres"))
    with pytest.raises(ConfigError, match="super-resolution"):
        with_inpaint_task(replace(cfg, task="inpaint", model=replace(cfg.model, sr_scale=4)))


def test_train_ldm_task_inpaint_writes_a_model_whose_unet_reads_mask_and_masked_latent(ckpt):
    meta = read_checkpoint(ckpt, expect_kind="ldm").config
    assert meta["ldm"]["inpaint"] is True
    model = load_ldm(ckpt)
    c = model.autoencoder.config.latent_channels
    assert isinstance(model.task, InpaintTask)
    assert [s.name for s in model.config.conditioners] == [*CONDITIONERS, "text-crossattn"]
    assert model.config.unet.concat_channels == 1 + c
    assert model.unet.conv_in.in_channels == c + 1 + c == 9  # Stable Diffusion's 4 + 1 + 4
    run = ckpt.parent
    assert json.loads((run / "config.json").read_text())["task"] == "inpaint"
    cached = json.loads((run / "latents" / "index.json").read_text())["arrays"]
    assert IMAGE_KEY in cached and MASK_KEY not in cached  # the crops are cached, the masks drawn per step
    assert (run / "samples" / "samples_0000002.png").is_file()


def test_the_model_encodes_the_masked_image(ckpt):
    model = load_ldm(ckpt)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    inputs = model.derived_inputs({IMAGE_KEY: image, MASK_KEY: mask, "caption": ["a red circle", "a blue square"]})
    assert inputs["latent_hw"] == (4, 4)
    assert torch.equal(inputs[MASKED_LATENT_KEY], model.encode(image * (1 - mask)))  # masked pixels: 0 (grey)
    inside = image.clone()
    inside[..., 6:10, 6:10] = 1.0  # only masked pixels change: the same masked latent
    assert torch.equal(
        model.derived_inputs({IMAGE_KEY: inside, MASK_KEY: mask})[MASKED_LATENT_KEY], inputs[MASKED_LATENT_KEY]
    )
    cond = model.cond(inputs)
    assert cond.concat.shape == (2, 5, 4, 4) and torch.equal(
        cond.concat[:, :1], torch.nn.functional.adaptive_avg_pool2d(mask, 4)
    )
    # guidance drops the text only: the unconditional branch keeps the mask and the masked latent
    uncond = model.conditioners.null(2, like=cond, negative=model.task.uncond_inputs(inputs))
    assert torch.equal(uncond.concat, cond.concat)
    assert not torch.equal(uncond.context, cond.context)


def test_sampling_an_inpainting_model_needs_an_image_and_a_mask(ckpt):
    model = load_ldm(ckpt)
    task = model.task
    image = torch.zeros(3, 16, 16)
    for mask in (None, torch.zeros(1, 16, 16)):  # no mask, or one that repaints nothing
        with pytest.raises(InputError, match="this is an inpainting model: give --init-image and --mask"):
            task.editing_inputs(image, mask)
    with pytest.raises(InputError, match="this is an inpainting model: give --init-image and --mask"):
        task.editing_inputs(None, torch.ones(1, 16, 16))
    with pytest.raises(InputError, match="this is an inpainting model: give --init-image and --mask"):
        model.derived_inputs({"caption": ["a red circle"]})
    with pytest.raises(InputError, match="mask"):
        task.editing_inputs(image, torch.ones(1, 8, 8))
    items = task.editing_inputs(image, torch.full((1, 16, 16), 0.7))  # one item each: binarised
    assert items[IMAGE_KEY].shape == (3, 16, 16) and torch.equal(items[MASK_KEY], torch.ones(1, 16, 16))
    batch = task.editing_inputs(torch.zeros(3, 3, 16, 16), torch.ones(1, 1, 16, 16))  # one mask for the batch
    assert batch[MASK_KEY].shape == (3, 1, 16, 16)
    with pytest.raises(InputError, match="output is 32x32"):  # an image of another size than the output
        model.derived_inputs({**batch, "latent_hw": (8, 8)})
    big = task.editing_inputs(torch.zeros(1, 3, 32, 32), torch.ones(1, 1, 32, 32))
    with pytest.raises(InputError, match="output is 16x16"):  # without latent_hw: the trained size
        model.derived_inputs(big)
    assert model.derived_inputs({**big, "latent_hw": (8, 8)})[MASKED_LATENT_KEY].shape == (1, 4, 8, 8)


def test_sample_reads_the_image_and_mask_inputs(ckpt, files, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # neither an image nor a mask: a message, not a traceback
        main(["sample", str(ckpt), "--n", "1", "--steps", "2", "--out", str(tmp_path / "a.png")])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "error:" in err and "Traceback" not in err
    assert "this is an inpainting model: give --init-image and --mask" in err
    args = ["--input", f"image={files / 'img.png'}", "--input", f"inpaint_mask={files / 'centre.png'}"]
    r = CliRunner().invoke(
        app,
        ["sample", str(ckpt), *args, "--prompt", "a red circle", "--n", "2", "--steps", "2"]
        + ["--out", str(tmp_path / "g.png"), "--save-tensor", str(tmp_path / "s.pt")],
    )
    assert r.exit_code == 0, r.output
    assert torch.load(tmp_path / "s.pt", weights_only=True).shape == (2, 3, 16, 16)


class _Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.full((3, 16, 16), i / 6.0)}


def test_cached_runs_draw_the_masks_the_data_set_would():
    """With the latent cache, each step's masks are those InpaintDataset gives the same items."""
    cfg = replace(ldm_preset("tiny"), task="inpaint", inpaint=InpaintConfig(kinds=("stroke",)))
    cfg = replace(cfg, train=replace(cfg.train, batch_size=4, seed=5))
    cache = LatentCache({"z0": torch.zeros(6, 4, 4, 4).numpy(), IMAGE_KEY: torch.zeros(6, 3, 16, 16).numpy()})
    run = SimpleNamespace(cfg=cfg, dist=SimpleNamespace(rank=0, world=1))
    stream = batch_stream(InpaintDataset(_Images(), cfg.inpaint, seed=5), 4, seed=5, start_step=3)
    cached = _masked_batches(run, cache, 3)
    for _ in range(4):  # steps 3..6: epochs 3..6 (one full batch per epoch of 6 items)
        a, b = next(stream), next(cached)
        assert torch.equal(a[MASK_KEY], b[MASK_KEY])
        assert a[MASK_KEY].shape == (4, 1, 16, 16)
    assert not torch.equal(
        batch_masks([0], 0, (16, 16), cfg.inpaint, seed=5), batch_masks([0], 1, (16, 16), cfg.inpaint, seed=5)
    )


class Crash(Exception):
    pass


def _crash_at(step: int) -> Callbacks:
    def on_save(s: int, path: str) -> None:
        if s == step:
            raise Crash

    return Callbacks(on_save=on_save)


def _tiny_inpaint(**train):
    cfg = ldm_preset("tiny")
    cfg = replace(cfg, task="inpaint", data=DataConfig(source="builtin:synthetic", size=16))
    return replace(cfg, train=replace(cfg.train, **{"sample_every": 1000, "save_every": 1000, **train}))


def test_resume_is_bit_identical_and_the_cache_is_optional(ae_path, tmp_path):
    cfg = _tiny_inpaint(max_steps=4, save_every=2)
    train_ldm(cfg, ae_path, tmp_path / "full")
    with pytest.raises(Crash):
        train_ldm(cfg, ae_path, tmp_path / "part", callbacks=_crash_at(2))
    train_ldm(cfg, None, tmp_path / "part", resume=True)
    a = read_checkpoint(tmp_path / "full" / "ldm.safetensors").tensors
    b = read_checkpoint(tmp_path / "part" / "ldm.safetensors").tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = train_ldm(merge(_tiny_inpaint(max_steps=2), {"cache_latents": False}), ae_path, tmp_path / "nocache")
    assert torch.isfinite(torch.tensor(summary["final"]["loss"]))
    assert isinstance(load_ldm(summary["checkpoint"]).task, InpaintTask)
    with pytest.raises(ConfigError, match="min_coverage"):
        train_ldm(merge(_tiny_inpaint(), {"inpaint": {"min_coverage": 0.9}}), ae_path, tmp_path / "bad")


def test_guidance_keeps_the_mask_in_the_unconditional_branch(ckpt, monkeypatch):
    """generate's unconditional branch drops the prompt only: the mask and the masked latent stay."""
    from ldmctl import sampling

    model = load_ldm(ckpt)
    seen = {}

    def capture(unet, cond, uncond, scale):
        seen.update(cond=cond, uncond=uncond)
        return lambda z, t: unet(z, t, cond)

    monkeypatch.setattr(sampling, "cfg_model_fn", capture)
    image, mask = torch.zeros(3, 16, 16), torch.zeros(1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    items = model.task.editing_inputs(image, mask)
    conditions = {"caption": ["a red circle"], **{k: v[None] for k, v in items.items()}}
    list(sampling.generate(model, get_sampler("ddim"), 1, steps=2, conditions=conditions, guidance=3.0))
    assert torch.equal(seen["uncond"].concat, seen["cond"].concat)
    assert not torch.equal(seen["uncond"].context, seen["cond"].context)
