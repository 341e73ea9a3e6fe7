"""Uncased WordPiece tokenization from a checkpoint's `vocab.txt`.

The heavy lifting is done by the Rust `tokenizers` library (the same engine as HF
`BertTokenizerFast`), configured exactly as `BertTokenizerFast` configures it: BERT
normalizer (clean text, Chinese-character splitting, lowercase, accent stripping with
lowercase), BERT pre-tokenizer, WordPiece with `[UNK]` and `##` continuation, and the
`[CLS] a [SEP] (b [SEP])` template with token type ids 0/1. Outputs are int32 NumPy arrays;
nothing here touches JAX.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from mtbert_jax import paths

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class BertTokenizer:
  """WordPiece tokenizer for single sentences and sentence pairs."""

  def __init__(self, vocab_file: str, lowercase: bool = True, max_length: int = 512):
    if not os.path.isfile(vocab_file):
      raise FileNotFoundError(f"vocabulary file not found: {vocab_file}")
    vocab = {}
    with open(vocab_file, encoding="utf-8") as f:
      for index, line in enumerate(f):
        vocab[line.rstrip("\n")] = index
    for token in SPECIAL_TOKENS:
      if token not in vocab:
        raise ValueError(f"{vocab_file}: special token {token} missing from the vocabulary")
    self.vocab_file = vocab_file
    self.vocab_size = len(vocab)
    self.model_max_length = max_length
    self.pad_id = vocab["[PAD]"]
    self.cls_id = vocab["[CLS]"]
    self.sep_id = vocab["[SEP]"]

    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing(("[SEP]", self.sep_id), ("[CLS]", self.cls_id))
    tok.decoder = decoders.WordPiece(prefix="##")
    # Registered as special: kept whole in input text and dropped by decode(skip_special_tokens).
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    self._tok = tok

  # -- unpadded ids (used by the data pipeline, which pads to length buckets itself) --
  def encode_ids(self, texts: Sequence[str], texts_b: Sequence[str] | None = None,
                 max_length: int = 128) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids and token type ids per example, truncated to `max_length`, unpadded."""
    if max_length < (4 if texts_b is not None else 3):
      raise ValueError(f"max_length={max_length} is too short for the special tokens")
    max_length = min(max_length, self.model_max_length)
    self._tok.no_padding()
    self._tok.enable_truncation(max_length=max_length, strategy="longest_first")
    texts = list(texts)
    if texts_b is None:
      encodings = self._tok.encode_batch(texts)
    else:
      texts_b = list(texts_b)
      if len(texts_b) != len(texts):
        raise ValueError(f"sentence pairs need as many second sentences as first ones: "
                         f"{len(texts)} != {len(texts_b)}")
      encodings = self._tok.encode_batch(list(zip(texts, texts_b)))
    return [e.ids for e in encodings], [e.type_ids for e in encodings]

  def batch_encode(self, texts: Sequence[str], texts_b: Sequence[str] | None = None,
                   max_length: int = 128, pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Encodes a batch, padded to its longest example (or to `pad_to`).

    Returns a dict of int32 arrays `input_ids`, `attention_mask`, `token_type_ids`, each
    `[B, L]`, as `BertTokenizerFast(..., truncation=True, padding=True)` would.
    """
    ids, type_ids = self.encode_ids(texts, texts_b, max_length)
    length = max((len(x) for x in ids), default=1)
    if pad_to is not None:
      if pad_to < length:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest example ({length})")
      length = pad_to
    return pad_batch(ids, type_ids, length, self.pad_id)

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode(list(ids), skip_special_tokens=True)


def pad_batch(ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]], length: int,
              pad_id: int = 0) -> dict[str, np.ndarray]:
  """Right-pads token lists into `[B, length]` int32 arrays with an attention mask."""
  batch = len(ids)
  input_ids = np.full((batch, length), pad_id, np.int32)
  token_type_ids = np.zeros((batch, length), np.int32)
  attention_mask = np.zeros((batch, length), np.int32)
  for row, (x, t) in enumerate(zip(ids, type_ids)):
    n = len(x)
    input_ids[row, :n] = x
    token_type_ids[row, :n] = t
    attention_mask[row, :n] = 1
  return {"input_ids": input_ids, "attention_mask": attention_mask,
          "token_type_ids": token_type_ids}


def load_tokenizer(ckpt_dir: str | None = None) -> BertTokenizer:
  """The tokenizer of an HF checkpoint folder (`None`: the embedded default checkpoint).

  Lowercasing and the maximum length follow the folder's `tokenizer_config.json` when it
  has one (uncased and 512 otherwise).
  """
  ckpt_dir = paths.resolve_checkpoint(ckpt_dir)
  lowercase, max_length = True, 512
  cfg_file = os.path.join(ckpt_dir, "tokenizer_config.json")
  if os.path.isfile(cfg_file):
    with open(cfg_file, encoding="utf-8") as f:
      tok_cfg = json.load(f)
    lowercase = bool(tok_cfg.get("do_lower_case", True))
    model_max = tok_cfg.get("model_max_length")
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:
      max_length = model_max
  return BertTokenizer(os.path.join(ckpt_dir, "vocab.txt"), lowercase=lowercase,
                       max_length=max_length)
