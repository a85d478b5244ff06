"""Text encoders (tau_theta) for the text conditioners."""

from ldmctl.text.encoders import MINILM_PACKAGE, TextEncoder, TextTransformer, load_tokenizer, minilm_dir

__all__ = ["MINILM_PACKAGE", "TextEncoder", "TextTransformer", "load_tokenizer", "minilm_dir"]
