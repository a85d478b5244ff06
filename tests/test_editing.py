"""Editing with any LDM (ldmctl/editing.py, ``ldmctl sample --init-image``): the strength identities,
img2img with every sampler, inpainting's guarantee, outpainting, any size, and the user errors.

The models are the pre-refactor fixtures (tiny: 16x16 images, f = 4, UNet downsampling 2, so sides
are multiples of 8 pixels)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from ldmctl.cli import app, main
from ldmctl.data import load_image, pil_to_tensor
from ldmctl.diffusion.io import load_ldm
from ldmctl.editing import feather, latent_mask, prepare_edit, read_mask, start_timestep
from ldmctl.samplers import SAMPLERS, sampler_timesteps
from ldmctl.sampling import generate

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "pre-refactor"
UNCOND = str(FIX / "uncond.safetensors")
F_AE = 4  # the fixtures' first-stage factor


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Init images (16x16 and 32x48, smooth colour ramps with a square), masks of several kinds."""
    d = tmp_path_factory.mktemp("edit")
    for name, (h, w) in {"init": (32, 48), "small": (16, 16), "odd": (20, 20)}.items():
        y, x = np.mgrid[0:h, 0:w]
        rgb = np.stack([x * 255 / w, y * 255 / h, np.full_like(x, 90.0)], -1)
        rgb[h // 4 : h // 2, w // 4 : w // 2] = (240, 40, 40)
        Image.fromarray(rgb.astype(np.uint8)).save(d / f"{name}.png")
    mask = np.zeros((32, 48), np.uint8)
    mask[12:20, 20:28] = 200  # 78 % white: repainted
    Image.fromarray(mask).save(d / "mask.png")
    rgba = np.zeros((32, 48, 4), np.uint8)
    rgba[12:20, 20:28] = (255, 255, 255, 255)
    Image.fromarray(rgba, mode="RGBA").save(d / "mask-rgba.png")
    Image.fromarray(np.full((32, 48), 100, np.uint8)).save(d / "black.png")  # 39 %: nothing to repaint
    Image.fromarray(mask[:16]).save(d / "short.png")
    (d / "text.png").write_text("not an image")
    return d


def run(args: list[str], tmp_path: Path, name: str = "s") -> torch.Tensor:
    """``ldmctl sample ARGS``; the samples it saved, (N, 3, H, W) in [-1, 1]."""
    out = tmp_path / f"{name}.pt"
    r = CliRunner().invoke(app, ["sample", *args, "-o", str(tmp_path / f"{name}.png"), "--save-tensor", str(out)])
    assert r.exit_code == 0, r.output
    return torch.load(out, weights_only=True)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ---- img2img --------------------------------------------------------------------------------


def test_strength_0_is_the_autoencoders_reconstruction(files, tmp_path):
    got = run([UNCOND, "--n", "1", "--init-image", str(files / "init.png"), "--strength", "0"], tmp_path)
    model = load_ldm(UNCOND)
    x = pil_to_tensor(load_image(files / "init.png"))[None]
    assert torch.equal(got, model.decode(model.encode(x)))


def test_strength_0_calls_no_unet(files, monkeypatch):
    model = load_ldm(UNCOND)
    monkeypatch.setattr(model.unet, "forward", lambda *a, **k: pytest.fail("the UNet was called"))
    edit = prepare_edit(model, files / "init.png", strength=0.0)
    images = torch.cat([x for x, _ in generate(model, SAMPLERS["plms"], 2, steps=4, edit=edit)])
    assert images.shape == (2, 3, 32, 48)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_strength_1_is_plain_sampling_bit_for_bit(files, tmp_path, sampler):
    common = [UNCOND, "--n", "2", "--steps", "4", "--seed", "11", "--sampler", sampler]
    edited = run([*common, "--init-image", str(files / "init.png"), "--strength", "1"], tmp_path, "e")
    plain = run([*common, "--height", "32", "--width", "48"], tmp_path, "p")
    assert edited.shape == (2, 3, 32, 48)
    assert torch.equal(edited, plain)


def test_strength_1_at_the_trained_size_is_plain_sampling(files, tmp_path):
    common = [UNCOND, "--n", "2", "--steps", "3", "--seed", "5"]
    edited = run([*common, "--init-image", str(files / "small.png"), "--strength", "1"], tmp_path, "e")
    assert torch.equal(edited, run(common, tmp_path, "p"))


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_edits_at_half_strength(files, tmp_path, sampler):
    common = [UNCOND, "--n", "2", "--steps", "6", "--seed", "3", "--sampler", sampler]
    half = run([*common, "--init-image", str(files / "init.png"), "--strength", "0.5"], tmp_path, "h")
    full = run([*common, "--init-image", str(files / "init.png"), "--strength", "1"], tmp_path, "f")
    rec = run([*common, "--init-image", str(files / "init.png"), "--strength", "0"], tmp_path, "r")
    assert half.shape == (2, 3, 32, 48) and torch.isfinite(half).all()
    assert not torch.allclose(half, full) and not torch.allclose(half, rec)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_img2img_starts_from_the_init_latent_noised_to_its_first_timestep(files, sampler, monkeypatch):
    model, strength, steps, seed = load_ldm(UNCOND), 0.6, 10, 4
    seen: list[tuple[int, torch.Tensor]] = []
    forward = model.unet.forward

    def spy(z_t, t, cond):
        seen.append((int(t[0]), z_t.clone()))
        return forward(z_t, t, cond)

    monkeypatch.setattr(model.unet, "forward", spy)
    edit = prepare_edit(model, files / "init.png", strength=strength)
    list(generate(model, SAMPLERS[sampler], 2, steps=steps, seed=seed, edit=edit))
    T = model.schedule.num_timesteps
    ts = sampler_timesteps(sampler, T, steps, start_timestep(strength, T))
    assert ts[0] <= strength * T and len(ts) < steps
    a = float(model.schedule.alphas_cumprod[ts[0]])
    z0 = model.encode(edit.image[None])
    eps = torch.randn((2, 4, 8, 12), generator=torch.Generator().manual_seed(seed))  # plain sampling's z_T
    assert seen[0][0] == ts[0]
    torch.testing.assert_close(seen[0][1], math.sqrt(a) * z0 + math.sqrt(1 - a) * eps, rtol=0, atol=1e-6)
    assert len(seen) == len(ts) + (1 if sampler == "plms" else 0)


def test_img2img_with_a_prompt_and_guidance(files, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the text fixture names its vocab.txt by its path from the root
    common = [str(FIX / "crossattn.safetensors"), "--n", "2", "--steps", "4", "--prompt", "a red circle"]
    init = ["--init-image", str(files / "init.png")]
    half = run([*common, *init, "--strength", "0.7", "--guidance", "3"], tmp_path, "h")
    assert half.shape == (2, 3, 32, 48) and torch.isfinite(half).all()
    full = run([*common, *init, "--strength", "1", "--guidance", "3"], tmp_path, "f")
    assert torch.equal(full, run([*common, "--height", "32", "--width", "48", "--guidance", "3"], tmp_path, "p"))


# ---- inpainting and outpainting ---------------------------------------------------------------


def far_from(mask: np.ndarray, d: int) -> np.ndarray:
    """Pixels farther than ``d`` (Chebyshev distance) from the mask."""
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    return ~F.max_pool2d(m, 2 * d + 1, stride=1, padding=d)[0, 0].bool().numpy()


@pytest.mark.parametrize(("sampler", "mask"), [("ddim", "mask.png"), ("dpmpp", "mask-rgba.png"), ("ddpm", "mask.png")])
def test_inpainting_keeps_the_outside_and_repaints_the_inside(files, tmp_path, sampler, mask):
    args = [UNCOND, "--n", "2", "--steps", "5", "--sampler", sampler, "--init-image", str(files / "init.png")]
    run([*args, "--mask", str(files / mask), "--out-dir", str(tmp_path / "each")], tmp_path)
    init, m = pixels(files / "init.png"), read_mask(files / "mask.png")[0].numpy() > 0
    outside, band = far_from(m, F_AE), ~far_from(m, F_AE) & ~m
    assert outside.sum() > 0.8 * m.size and band.any()
    for png in sorted((tmp_path / "each").glob("*.png")):
        out = pixels(png)
        assert np.array_equal(out[outside], init[outside])  # exactly the input's 8-bit values
        changed = np.abs(out[m].astype(int) - init[m].astype(int)).mean()
        assert changed > 10, f"the masked region hardly changed ({changed:.1f} of 255)"


def test_the_paste_back_is_a_feathered_blend(files):
    model = load_ldm(UNCOND)
    edit = prepare_edit(model, files / "init.png", mask=files / "mask.png")
    generated = torch.full((1, 3, 32, 48), 0.5)
    out = edit.paste_back(generated)
    alpha = feather(edit.mask[None], F_AE)
    torch.testing.assert_close(out, alpha * generated + (1 - alpha) * edit.image[None], rtol=0, atol=0)
    assert torch.equal(out[:, :, edit.mask[0].bool()], generated[:, :, edit.mask[0].bool()])
    # the band covers distances 1..f with weights f/(f+1) .. 1/(f+1): no step at the seam
    row = alpha[0, 0, 16, 20 - F_AE - 1 : 21]  # left of the mask's column 20, into it
    assert row.tolist() == pytest.approx([k / (F_AE + 1) for k in range(F_AE + 2)])
    # the latent mask (dilated by one cell) covers the whole feather band
    cells = F.interpolate(latent_mask(edit.mask[None], F_AE), scale_factor=F_AE, mode="nearest")
    assert bool((cells[alpha > 0] == 1).all())


def test_latent_blending_can_be_turned_off(files, tmp_path):
    args = [
        UNCOND,
        "--n",
        "1",
        "--steps",
        "5",
        "--init-image",
        str(files / "init.png"),
        "--mask",
        str(files / "mask.png"),
    ]
    on, off = run(args, tmp_path, "on"), run([*args, "--no-blend"], tmp_path, "off")
    assert not torch.equal(on, off)
    keep = torch.from_numpy(far_from(read_mask(files / "mask.png")[0].numpy() > 0, F_AE))
    assert torch.equal(on[..., keep], off[..., keep])  # the paste-back holds either way


def test_outpainting_grows_the_canvas_and_keeps_the_image(files, tmp_path):
    args = [UNCOND, "--n", "1", "--steps", "4", "--init-image", str(files / "init.png"), "--pad", "8,16,0,8"]
    run([*args, "--out-dir", str(tmp_path / "each")], tmp_path)
    out, init = pixels(tmp_path / "each" / "00000.png"), pixels(files / "init.png")
    assert out.shape == (32 + 0 + 8, 48 + 8 + 16, 3)
    inner = out[0 : 32 - F_AE - 1, 8 + F_AE + 1 : 8 + 48 - F_AE - 1]  # the init image, away from the new border
    assert np.array_equal(inner, init[: 32 - F_AE - 1, F_AE + 1 : 48 - F_AE - 1])
    assert np.abs(out[:32, :8].astype(int) - init[:, :1].astype(int)).mean() > 5  # the border is painted, not copied


def test_masks_of_any_mode_are_read_at_50_percent(tmp_path):
    grey = np.array([[0, 127, 128, 255]], np.uint8)
    Image.fromarray(grey).save(tmp_path / "l.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "16.png")  # a 16-bit PNG
    Image.fromarray(grey).convert("1", dither=Image.Dither.NONE).save(tmp_path / "1.png")  # 127 -> 0, 128 -> 1
    for name in ("l", "rgb", "16", "1"):
        assert read_mask(tmp_path / f"{name}.png").tolist() == [[[0.0, 0.0, 1.0, 1.0]]], name


# ---- any size -----------------------------------------------------------------------------------


def test_height_and_width_give_non_square_samples(tmp_path):
    got = run([UNCOND, "--n", "3", "--steps", "3", "--height", "16", "--width", "40"], tmp_path)
    assert got.shape == (3, 3, 16, 40) and torch.isfinite(got).all()


def test_height_and_width_resize_the_init_image(files, tmp_path):
    args = ["--init-image", str(files / "odd.png"), "--height", "24", "--width", "32", "--strength", "0.5"]
    assert run([UNCOND, "--n", "1", "--steps", "4", *args], tmp_path).shape == (1, 3, 24, 32)


# ---- a model that reads the mask itself -----------------------------------------------------------


class ReadsTheMask:
    """A task with the editing hook of an inpainting model (ldmctl.inpaint.task)."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...] | None]] = []

    def editing_inputs(self, image, mask):
        self.calls.append((tuple(image.shape), None if mask is None else tuple(mask.shape)))
        return {"inpaint_mask": mask}


def test_a_task_with_an_editing_hook_gets_the_image_and_mask(files):
    model = load_ldm(UNCOND)
    model.task = ReadsTheMask()
    edit = prepare_edit(model, files / "init.png", mask=files / "mask.png")
    assert model.task.calls == [((3, 32, 48), (1, 32, 48))]
    assert not edit.blend and edit.strength == 1.0  # the model blends nothing: it reads the mask
    assert list(edit.inputs) == ["inpaint_mask"] and torch.equal(edit.inputs["inpaint_mask"][0], edit.mask)
    assert prepare_edit(model, files / "init.png", mask=files / "mask.png", blend=True).blend
    plain = prepare_edit(load_ldm(UNCOND), files / "init.png", mask=files / "mask.png")
    assert plain.blend and plain.inputs == {}


# ---- user errors --------------------------------------------------------------------------------

ERRORS = [
    (["--mask", "{d}/mask.png"], "--mask edits an image: give it with --init-image"),
    (["--pad", "8,8,8,8"], "--pad edits an image"),
    (["--strength", "0.5"], "--strength edits an image"),
    (["--no-blend"], "--blend edits an image"),
    (["--init-image", "{d}/nope.png"], "--init-image: image"),
    (["--init-image", "{d}/text.png"], "cannot be decoded"),
    (["--init-image", "{d}/init.png", "--mask", "{d}/text.png"], "--mask: image"),
    (["--init-image", "{d}/init.png", "--mask", "{d}/short.png"], "must be the same size"),
    (["--init-image", "{d}/init.png", "--mask", "{d}/black.png"], "has nothing to repaint"),
    (["--init-image", "{d}/init.png", "--strength", "1.5"], "--strength 1.5 is outside [0, 1]"),
    (["--init-image", "{d}/init.png", "--strength", "-0.1"], "is outside [0, 1]"),
    (["--init-image", "{d}/init.png", "--strength", "0.0001"], "below every one of the 4 steps"),
    (["--init-image", "{d}/odd.png"], "is 20x20 pixels; this model needs sides that are multiples of 8"),
    (["--init-image", "{d}/init.png", "--pad", "2,0,0,0"], "multiple of 4 pixels"),
    (["--init-image", "{d}/init.png", "--pad", "8,8"], "LEFT,RIGHT,TOP,BOTTOM"),
    (["--height", "12"], "positive multiples of 8 pixels"),
    (["--height", "16", "--width", "-8"], "positive multiples of 8 pixels"),
]


@pytest.mark.parametrize(("args", "match"), ERRORS, ids=[m for _, m in ERRORS])
def test_user_errors_exit_1_with_a_message(files, tmp_path, capsys, args, match):
    argv = [a.format(d=files) for a in args]
    with pytest.raises(SystemExit) as exc:
        main(["sample", UNCOND, "--n", "1", "--steps", "4", *argv, "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "error:" in err and match in err and "hint:" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()
