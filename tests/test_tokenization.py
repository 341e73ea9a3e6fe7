"""The WordPiece tokenizer against transformers' `BertTokenizerFast` on the same vocab,
plus padding helpers and error messages."""

import os
import shutil

import numpy as np
import pytest

from mtbert_jax import tokenization

KEYS = ("input_ids", "token_type_ids", "attention_mask")

# Accents (stripped when lowercasing), CJK (split per character), odd whitespace (NBSP,
# ideographic space, tabs, newlines), control and zero-width characters (dropped), emoji
# and a word longer than WordPiece's 100-character limit (both [UNK]), and nothing at all.
ODD_TEXTS = [
    "Café naïve résumé — Ångström, façade, Zürich, São Paulo, Øresund",
    "我爱北京天安门。 日本語のテキスト，한국어 문장",
    "tabs\tand\nnewlines\r\nand\u00a0no-break\u3000ideographic   spaces  ",
    "zero\u200bwidth, soft\u00adhyphen, control\x07bell and \ufeffBOM",
    "emoji 🙂👍🏽 and symbols ™ © ½ ∑ → ≠",
    "x" * 120 + " pneumonoultramicroscopicsilicovolcanoconiosis",
    "HELLO World. It's U.S.A.'s \"quoted\" (text) [brackets] {braces} $5.00 50% #tag @user",
    "",
]


def _assert_same_as_hf(ours, theirs):
  for key in KEYS:
    assert ours[key].dtype == np.int32, key
    np.testing.assert_array_equal(ours[key], np.asarray(theirs[key]), err_msg=key)


def _hf(hf_tokenizer, texts, texts_b, max_length):
  return hf_tokenizer(texts, texts_b, truncation=True, max_length=max_length, padding=True,
                      return_tensors="np")


@pytest.mark.slow
@pytest.mark.parametrize("max_length", [128, 32])
def test_singles_match_hf(real_tokenizer, hf_tokenizer, real_sentences, max_length):
  texts = real_sentences.singles
  ours = real_tokenizer.batch_encode(texts, max_length=max_length)
  _assert_same_as_hf(ours, _hf(hf_tokenizer, texts, None, max_length))
  lengths = ours["attention_mask"].sum(axis=1)
  assert lengths.min() < ours["input_ids"].shape[1]  # padding happened
  if max_length == 32:
    assert (lengths == 32).sum() > 10  # truncation happened


@pytest.mark.slow
@pytest.mark.parametrize("max_length", [128, 32])
def test_pairs_match_hf(real_tokenizer, hf_tokenizer, real_sentences, max_length):
  first = [a for a, _ in real_sentences.pairs]
  second = [b for _, b in real_sentences.pairs]
  ours = real_tokenizer.batch_encode(first, second, max_length=max_length)
  _assert_same_as_hf(ours, _hf(hf_tokenizer, first, second, max_length))
  assert ours["token_type_ids"].max() == 1
  if max_length == 32:
    assert (ours["attention_mask"].sum(axis=1) == 32).sum() > 10


@pytest.mark.slow
def test_odd_texts_match_hf(real_tokenizer, hf_tokenizer):
  ours = real_tokenizer.batch_encode(ODD_TEXTS)
  _assert_same_as_hf(ours, _hf(hf_tokenizer, ODD_TEXTS, None, 128))
  pairs = real_tokenizer.batch_encode(ODD_TEXTS, ODD_TEXTS[::-1], max_length=24)
  _assert_same_as_hf(pairs, _hf(hf_tokenizer, ODD_TEXTS, ODD_TEXTS[::-1], 24))


@pytest.mark.slow
def test_normalization(real_tokenizer):
  ids, _ = real_tokenizer.encode_ids(["Café", "cafe", "我爱", "a\u00a0b", "a b"])
  assert ids[0] == ids[1]  # lowercased, accent stripped
  assert len(ids[2]) == 4  # [CLS] 我 爱 [SEP]: CJK characters are split
  assert ids[3] == ids[4]  # NBSP is whitespace


@pytest.mark.slow
def test_decode_skips_special_tokens_like_hf(real_tokenizer, hf_tokenizer):
  batch = real_tokenizer.batch_encode(["Café au lait, s'il vous plaît!", "Hi"], ["ok", "fine"])
  for ids in batch["input_ids"]:
    expected = hf_tokenizer.decode(ids, skip_special_tokens=True)
    assert "[CLS]" not in expected and "[PAD]" not in expected
    assert real_tokenizer.decode(ids) == expected


@pytest.mark.slow
def test_literal_special_tokens_in_text_like_hf(real_tokenizer, hf_tokenizer):
  texts = ["the capital of france is [MASK] .", "one [SEP] two", "[UNK] token"]
  _assert_same_as_hf(real_tokenizer.batch_encode(texts), _hf(hf_tokenizer, texts, None, 128))


@pytest.mark.slow
def test_special_tokens_and_pair_layout(real_tokenizer):
  ids, types = real_tokenizer.encode_ids(["hello world"], ["second"])
  cls, sep = real_tokenizer.cls_id, real_tokenizer.sep_id
  assert (cls, sep, real_tokenizer.pad_id) == (101, 102, 0)
  assert ids[0][0] == cls and ids[0][-1] == sep and ids[0].count(sep) == 2
  assert types[0] == [0, 0, 0, 0, 1, 1]
  assert real_tokenizer.vocab_size == 30522


@pytest.mark.slow
def test_pad_to(real_tokenizer):
  batch = real_tokenizer.batch_encode(["a b c", "a"], pad_to=16)
  assert all(v.shape == (2, 16) and v.dtype == np.int32 for v in batch.values())
  np.testing.assert_array_equal(batch["attention_mask"].sum(axis=1), [5, 3])
  assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
  with pytest.raises(ValueError, match="pad_to=3"):
    real_tokenizer.batch_encode(["a b c", "a"], pad_to=3)


def test_pad_batch():
  batch = tokenization.pad_batch([[5, 6, 7], [8]], [[0, 0, 1], [0]], length=4, pad_id=0)
  np.testing.assert_array_equal(batch["input_ids"], [[5, 6, 7, 0], [8, 0, 0, 0]])
  np.testing.assert_array_equal(batch["token_type_ids"], [[0, 0, 1, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 1, 0], [1, 0, 0, 0]])
  assert all(v.dtype == np.int32 for v in batch.values())


@pytest.mark.slow
def test_pair_lists_of_different_lengths(real_tokenizer):
  with pytest.raises(ValueError, match="3 != 2"):
    real_tokenizer.batch_encode(["a", "b", "c"], ["x", "y"])


@pytest.mark.slow
def test_max_length_too_short(real_tokenizer):
  with pytest.raises(ValueError, match="max_length=2"):
    real_tokenizer.encode_ids(["a"], max_length=2)
  with pytest.raises(ValueError, match="max_length=3"):
    real_tokenizer.encode_ids(["a"], ["b"], max_length=3)
  ids, _ = real_tokenizer.encode_ids(["a b c d"], ["e f g"], max_length=4)
  assert len(ids[0]) == 4


@pytest.mark.slow
def test_max_length_capped_by_model_max_length(real_tokenizer):
  assert real_tokenizer.model_max_length == 512
  ids, _ = real_tokenizer.encode_ids(["word " * 600], max_length=10_000)
  assert len(ids[0]) == 512


def test_missing_vocab_file_names_the_path(tmp_path):
  missing = tmp_path / "no_such_vocab.txt"
  with pytest.raises(FileNotFoundError, match="no_such_vocab.txt"):
    tokenization.BertTokenizer(str(missing))
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    tokenization.load_tokenizer(str(tmp_path))


def test_vocab_without_special_tokens(tmp_path):
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("[PAD]\n[UNK]\n[CLS]\nhello\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"\[SEP\]"):
    tokenization.BertTokenizer(str(vocab))


@pytest.mark.slow
def test_tokenizer_config_is_read(tmp_path, default_ckpt_dir):
  shutil.copyfile(os.path.join(default_ckpt_dir, "vocab.txt"), tmp_path / "vocab.txt")
  (tmp_path / "tokenizer_config.json").write_text(
      '{"do_lower_case": false, "model_max_length": 64}', encoding="utf-8")
  tok = tokenization.load_tokenizer(str(tmp_path))
  assert tok.model_max_length == 64
  ids, _ = tok.encode_ids(["Hello"])
  lower_ids, _ = tok.encode_ids(["hello"])
  assert ids != lower_ids  # cased: "Hello" is not in the uncased vocab as such
