"""CLIP score: the real loading code on a tiny random open_clip model the tests write."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ldmctl.errors import ConfigError, WeightsError

open_clip = pytest.importorskip("open_clip")

from ldmctl.eval.clip import ENV_VAR, clip_score, load_clip, resolve_clip_weights  # noqa: E402

PROMPTS = ["a red circle", "a blue square above a green triangle", "a handwritten digit seven"]


@pytest.fixture(scope="module")
def clip_folder(tiny_clip_folder):
    return tiny_clip_folder


@pytest.fixture(scope="module")
def tiny_state(tiny_clip_folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(tiny_clip_folder / "open_clip_model.safetensors"))


@pytest.fixture(scope="module")
def tiny_arch(tiny_clip_folder, tmp_path_factory) -> str:
    """Register the tiny architecture under a name, as a built-in config would be."""
    model_cfg = json.loads((tiny_clip_folder / "open_clip_config.json").read_text())["model_cfg"]
    path = tmp_path_factory.mktemp("arch") / "ldmctl-test-tiny-clip.json"
    path.write_text(json.dumps(model_cfg))
    open_clip.add_model_config(path)
    return "ldmctl-test-tiny-clip"


def _images() -> torch.Tensor:
    return torch.rand(3, 3, 24, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_folder_loads_the_saved_weights_and_scores(clip_folder, tiny_state):
    scorer = load_clip(clip_folder)
    loaded = scorer.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in tiny_state.items())
    images = _images()
    scores = scorer(images, PROMPTS)
    assert scores.shape == (3,) and bool(((scores >= 0) & (scores <= 100)).all())
    # the definition, by hand: 100 * max(cos, 0) between the unit-norm embeddings
    x = scorer.preprocess(images)
    assert x.shape == (3, 3, 32, 32)
    with torch.no_grad():
        img = F.normalize(scorer.model.encode_image(x), dim=-1)
        txt = F.normalize(scorer.model.encode_text(open_clip.get_tokenizer("ViT-B-32")(PROMPTS)), dim=-1)
    expected = 100 * (img * txt).sum(-1).clamp(min=0)
    assert torch.allclose(scores, expected, atol=1e-4)
    assert clip_score(scorer, images, PROMPTS) == pytest.approx(float(expected.mean()), abs=1e-4)


def test_state_dict_file_with_an_architecture_name(clip_folder, tiny_arch, tiny_state, tmp_path):
    path = tmp_path / "weights.bin"
    torch.save(tiny_state, path)
    by_file = load_clip(path, model=tiny_arch)
    by_folder = load_clip(clip_folder)
    assert torch.allclose(by_file(_images(), PROMPTS), by_folder(_images(), PROMPTS), atol=1e-5)


def test_env_var_and_hugging_face_cache(clip_folder, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(clip_folder))
    assert resolve_clip_weights(None) == clip_folder
    monkeypatch.delenv(ENV_VAR)
    # the standard cache: open_clip's Hugging Face repo of the tag, looked up offline
    import huggingface_hub.constants as hf

    snapshot = tmp_path / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"x")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    assert resolve_clip_weights(None, "ViT-B-32:openai") == snapshot / "open_clip_model.safetensors"


def test_missing_weights_name_the_file(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError) as err:
        load_clip(None)
    assert "models--timm--vit_base_patch32_clip_224.openai" in str(err.value)
    assert "open_clip_model.safetensors" in str(err.value) and "--clip-weights" in err.value.hint
    with pytest.raises(WeightsError, match="not found"):
        load_clip(tmp_path / "nothing.safetensors")


def test_unusable_weights(tmp_path, tiny_arch):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(WeightsError, match="could not be loaded"):
        load_clip(bad, model=tiny_arch)
    wrong = tmp_path / "wrong.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(WeightsError):
        load_clip(wrong, model=tiny_arch)
    empty = tmp_path / "folder"
    empty.mkdir()
    with pytest.raises(WeightsError, match="open_clip_config.json"):
        load_clip(empty)
    with pytest.raises(ConfigError, match="not an open_clip architecture"):
        load_clip(wrong, model="no-such-arch")
