"""The built-in conditioners: discovery through entry points, the contract kit, composition, CFG dropout."""

from __future__ import annotations

import types

import pytest
import torch
from ldmctl_conditioners import ClassAdd, ClassToken, ImageConcat, LatentConcat

from ldmctl import hookimpl
from ldmctl.conditioning import Cond, Conditioner, LatentSpec, collate_items
from ldmctl.conditioning.compose import ConditionerSet
from ldmctl.conditioning.registry import check_conditioner_class, conditioners, make_plugin_manager
from ldmctl.config import ConditionerSpec
from ldmctl.errors import ConfigError, DataError, InputError, PluginError
from ldmctl.testing import check_conditioner

LATENT = LatentSpec(channels=4, size=8, factor=4)


def labels(b: int, seed: int) -> dict:
    return {"label": (torch.arange(b) + 3 * seed + 1) % 5}


def images(b: int, seed: int) -> dict:
    return {"cond_image": torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1}


def latents(b: int, seed: int) -> dict:
    return {"cond_latent": torch.randn(b, 4, 8, 8, generator=torch.Generator().manual_seed(seed))}


def test_builtins_are_discovered_through_the_entry_point_group():
    found = conditioners()
    assert {"concat", "concat-latent", "class", "class-token"} <= set(found)
    assert found["class"].package == "ldmctl" and found["class"].cls is ClassAdd


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Two different 32 x 32 RGB images on disk: what `--input cond_image=PATH` reads."""
    from PIL import Image

    root = tmp_path_factory.mktemp("cond")
    paths = []
    for i, colour in enumerate([(200, 20, 20), (20, 20, 200)]):
        Image.new("RGB", (32, 32), colour).save(root / f"{i}.png")
        paths.append(str(root / f"{i}.png"))
    return paths


@pytest.mark.parametrize(
    "cls,config,make,inputs,bad",
    [
        (ImageConcat, ImageConcat.Config(), images, "files", "/nonexistent/x.png"),
        (LatentConcat, LatentConcat.Config(), latents, None, "x.png"),
        (ClassAdd, ClassAdd.Config(num_classes=5, dim=16), labels, ["0", "4", "2"], "5"),
        (ClassToken, ClassToken.Config(num_classes=5, dim=16), labels, ["1", "3"], "cat"),
    ],
)
def test_builtins_pass_the_contract_kit(cls, config, make, inputs, bad, image_files):
    check_conditioner(cls, config, make, LATENT, inputs=image_files if inputs == "files" else inputs, bad_input=bad)


def test_builtin_sample_inputs(image_files):
    c = ClassAdd(ClassAdd.Config(num_classes=3, dim=8), LATENT)
    assert c.default_inputs(7) == [0, 1, 2] and c.describe_input() == "a class index 0..2"
    assert torch.equal(c.collate_inputs([c.parse_input(t) for t in ["2", " 0 "]]), torch.tensor([2, 0]))
    with pytest.raises(InputError, match="outside 0..2"):
        c.parse_input("3")
    with pytest.raises(InputError, match="not a class index"):
        c.parse_input("two")
    grey = ImageConcat(ImageConcat.Config(channels=1), LATENT)
    x = grey.parse_input(image_files[0])
    assert x.shape == (1, 32, 32) and -1 <= float(x.min()) <= float(x.max()) <= 1
    with pytest.raises(DataError, match="nonexistent"):
        grey.parse_input("/nonexistent/x.png")
    # its own key is derived by the model: it reads the low-res image that key is made from
    latent = LatentConcat(LatentConcat.Config(), LATENT)
    assert latent.parse_input(image_files[1]).shape == (3, 32, 32) and "low-res image" in latent.describe_input()


def test_default_collation_joins_items_by_kind():
    assert collate_items(["a", "b"]) == ["a", "b"]
    assert collate_items([1, 2]).dtype == torch.int64 and collate_items([1, 0.5]).dtype == torch.float32
    assert collate_items([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)]).shape == (2, 3, 4, 4)
    with pytest.raises(InputError, match="different shapes"):
        collate_items([torch.zeros(3, 4, 4), torch.zeros(3, 8, 8)])


def test_a_misspelt_hook_is_caught():
    bad = types.ModuleType("ldmctl_bad_plugin")

    @hookimpl
    def ldmctl_register_conditioner(register):  # missing the final "s"
        pass

    bad.ldmctl_register_conditioner = ldmctl_register_conditioner
    with pytest.raises(PluginError, match="does not have"):
        make_plugin_manager((bad,), entry_points=False)


def test_malformed_classes_are_rejected():
    class NoKind(Conditioner):
        name, input_key = "x", "label"
        kind = "sideways"
        Config = ClassAdd.Config

    with pytest.raises(PluginError, match="kind"):
        check_conditioner_class(NoKind)
    with pytest.raises(PluginError, match="not a subclass"):
        check_conditioner_class(dict)


def test_set_joins_outputs_and_derives_unet_widths():
    specs = (
        ConditionerSpec("class", {"num_classes": 5, "dim": 16}),
        ConditionerSpec("concat"),
        ConditionerSpec("class-token", {"num_classes": 5, "dim": 12}),
    )
    s = ConditionerSet(specs, LATENT)
    assert s.unet_widths() == {"concat_channels": 3, "add_dim": 16, "context_dim": 12, "token_dim": 0}
    cond = s({**labels(2, 0), **images(2, 0)})
    assert cond.add.shape == (2, 16) and cond.concat.shape == (2, 3, 8, 8) and cond.context.shape == (2, 1, 12)
    null = s.null(2, like=cond)
    assert null.concat.abs().sum() == 0 and not torch.equal(null.add, cond.add)
    with pytest.raises(ConfigError, match="unknown keys"):
        ConditionerSet((ConditionerSpec("class", {"classes": 3}),), LATENT)
    with pytest.raises(PluginError, match="no conditioner named 'foo'") as err:
        ConditionerSet((ConditionerSpec("foo"),), LATENT, packages={"foo": "ldmctl-foo"})
    assert err.value.hint == "pip install ldmctl-foo"


def test_training_dropout_replaces_conditions_by_null_at_the_configured_rate():
    s = ConditionerSet((ConditionerSpec("class", {"num_classes": 5, "dim": 8}, dropout=0.3),), LATENT)
    batch = {"label": torch.zeros(4000, dtype=torch.long)}
    cond = s(batch, generator=torch.Generator().manual_seed(0), train_dropout=True)
    null = s.null(1).add[0]
    dropped = (cond.add == null).all(dim=1).float().mean()
    assert abs(float(dropped) - 0.3) < 0.03
    assert torch.equal(s(batch).add, s(batch).add)  # no dropout outside training


def test_guidance_arithmetic():
    from ldmctl.samplers.guidance import cfg_model_fn

    def unet(z, t, cond: Cond):
        return z * 0 + cond.add[:, :1, None, None]

    fn = cfg_model_fn(unet, Cond(add=torch.full((2, 1), 3.0)), Cond(add=torch.full((2, 1), 1.0)), scale=2.5)
    out = fn(torch.zeros(2, 1, 2, 2), torch.tensor([5, 5]))
    torch.testing.assert_close(out, torch.full((2, 1, 2, 2), 1.0 + 2.5 * (3.0 - 1.0)))


def test_guidance_joins_contexts_of_different_lengths_with_masks():
    from ldmctl.samplers.guidance import stack_conds

    cond = Cond(context=torch.ones(2, 5, 3), context_mask=torch.tensor([[1, 1, 1, 0, 0], [1] * 5]).bool())
    uncond = Cond(context=torch.full((2, 2, 3), 2.0))
    both = stack_conds(uncond, cond)
    assert both.context.shape == (4, 5, 3)
    assert both.context_mask.tolist()[0] == [True, True, False, False, False]
    assert both.context_mask.tolist()[2] == [True, True, True, False, False]
    assert torch.equal(both.context[0, :2], torch.full((2, 3), 2.0)) and both.context[0, 2:].abs().sum() == 0
