"""Tests of `mtbert_jax.readers` and `mtbert_jax.data`: real-file parsing, bad-input errors,
bucketing, iterators and the task schedule.

Real files come from `paths.default_data_dir()` and the tests that read them skip when it
is missing; tokenizing tests use the embedded checkpoint's tokenizer (`real_tokenizer`,
skips when not installed). Batching tests run on small synthetic `TokenizedSet`s.
"""

from __future__ import annotations

import collections
import json
import logging
import os

import numpy as np
import pytest

from mtbert_jax import data
from mtbert_jax import paths
from mtbert_jax import readers
from mtbert_jax import sources

BUCKETS = (8, 16, 32)


@pytest.fixture(scope="module")
def data_dir() -> str:
  root = paths.default_data_dir()
  if not os.path.isfile(os.path.join(root, "cs224n", "ids-sst-dev.csv")):
    pytest.skip(f"real data folder not found: {root}")
  return root


def _write(tmp_path, name: str, text: str) -> str:
  path = os.path.join(str(tmp_path), name)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return path


def _synthetic_set(lengths, labels=None, segments=("",), offset: int = 1000) -> data.TokenizedSet:
  """Example i of length n holds tokens offset+i, repeated n times (so rows are checkable)."""
  lists = {name: ([[offset + i] * n for i, n in enumerate(lengths)],
                  [[0] * n for n in lengths]) for name in segments}
  return data.TokenizedSet.from_lists(lists, labels, [f"id{i}" for i in range(len(lengths))])


# ---------------------------------------------------------------------------------------
# Real files.

# Row counts from shared/data/README.md. quora-dev.csv has 20,214 data rows (20,215 lines
# with the header; the README counts 20,215) of which two have an empty `is_duplicate`.
SENTIMENT_FILES = [("ids-sst-train.csv", 5, 8544, True), ("ids-sst-dev.csv", 5, 1101, True),
                   ("ids-sst-test-student.csv", 5, 2210, False),
                   ("ids-cfimdb-train.csv", 2, 1707, True), ("ids-cfimdb-dev.csv", 2, 245, True),
                   ("ids-cfimdb-test-student.csv", 2, 488, False)]
PAIR_FILES = [("quora-train-partial.csv", "paraphrase", 13507, True),
              ("sts-train.csv", "similarity", 6040, True),
              ("sts-dev.csv", "similarity", 863, True),
              ("sts-test-student.csv", "similarity", 1725, False)]


@pytest.mark.parametrize("name,num_classes,count,labeled", SENTIMENT_FILES)
def test_real_sentiment_files(data_dir, name, num_classes, count, labeled):
  rows = readers.read_sentiment(os.path.join(data_dir, "cs224n", name), num_classes)
  assert len(rows) == len(rows.ids) == count
  assert len(set(rows.ids)) == count and all(rows.ids) and all(rows.texts)
  if labeled:
    assert rows.labels.dtype == np.int32 and rows.labels.shape == (count,)
    assert set(rows.labels.tolist()) == set(range(num_classes))
  else:
    assert rows.labels is None


def test_real_sentiment_ids_and_label_map(data_dir):
  test = readers.read_sentiment(os.path.join(data_dir, "cs224n", "ids-sst-test-student.csv"))
  # The odd test header (`0<TAB><TAB>id<TAB>sentence`) still finds the id column.
  assert test.ids[:2] == ["b7573736a6ddf7be102b7fee0", "d17a8752e342834fd18b31aaa"]
  assert test.texts[0] == "Effective but too-tepid biopic"
  path = os.path.join(data_dir, "cs224n", "ids-cfimdb-dev.csv")
  plain = readers.read_sentiment(path, num_classes=2)
  mapped = readers.read_sentiment(path, num_classes=2, label_map={0: 0, 1: 4})
  np.testing.assert_array_equal(mapped.labels, plain.labels * 4)


@pytest.mark.parametrize("name,task,count,labeled", PAIR_FILES)
def test_real_pair_files(data_dir, name, task, count, labeled):
  rows = readers.read_pairs(os.path.join(data_dir, "cs224n", name), task)
  assert len(rows) == len(rows.ids) == len(rows.texts_b) == count
  assert all(rows.texts_a) and all(rows.texts_b) and len(set(rows.ids)) == count
  if not labeled:
    assert rows.labels is None and rows.ids[0] == "cce9b526b3590d2ca2178584f"
  elif task == "paraphrase":
    assert rows.labels.dtype == np.int32 and set(rows.labels.tolist()) == {0, 1}
  else:
    assert rows.labels.dtype == np.float32
    assert rows.labels.min() == 0.0 and rows.labels.max() == 5.0


def test_quora_dev_two_rows_without_label(data_dir, caplog):
  path = os.path.join(data_dir, "cs224n", "quora-dev.csv")
  with pytest.raises(readers.DataError, match=r"quora-dev\.csv: line 2577: .*is_duplicate"):
    readers.read_pairs(path, "paraphrase")
  with caplog.at_level(logging.WARNING, logger="mtbert_jax.readers"):
    rows = readers.read_pairs(path, "paraphrase", on_invalid="skip")
  assert len(rows) == 20214 - 2
  assert "skipped 2 of 20214 rows" in caplog.text
  assert "2 lines (2577, 14222): column 'is_duplicate' is ''" in caplog.text


def test_quoted_fields(data_dir):
  # sts-dev.csv line 28 field: "The Marlins only said: ""The issue has been resolved."""
  rows = readers.read_pairs(os.path.join(data_dir, "cs224n", "sts-dev.csv"), "similarity")
  i = rows.ids.index("39a4eb10451fa52b0f35c3a16")
  assert rows.texts_a[i] == ('"The issue has been resolved," Marlins President David Samson '
                             'said through a club spokesman.')
  assert rows.texts_b[i] == 'The Marlins only said: "The issue has been resolved."'
  assert rows.labels[i] == 3.0
  triplets = readers.read_triplets(os.path.join(data_dir, "nli", "nli_for_simcse-subset.csv"))
  assert triplets.anchor[1] == "Two sunbathers, a man and a woman, soak in the sun."


def test_real_triplets_and_tweets(data_dir):
  triplets = readers.read_triplets(os.path.join(data_dir, "nli", "nli_for_simcse-subset.csv"))
  assert len(triplets) == len(triplets.positive) == len(triplets.negative) == 27560
  assert triplets.positive[0] == "A man is playing guitar."  # No stray \r from CRLF lines.
  assert triplets.negative[-1] and not triplets.negative[-1].endswith("\r")
  tweets = readers.read_tweets(os.path.join(data_dir, "twitter", "tweet-sentiment.csv"))
  assert len(tweets) == 31014 and tweets.ids[0] == "f87dea47db"
  assert collections.Counter(tweets.labels.tolist()) == {2: 12547, 4: 9685, 0: 8782}


# ---------------------------------------------------------------------------------------
# Bad input: every message names the file and the 1-based line.

SST_HEADER = "\tid\tsentence\tsentiment\n"
STS_HEADER = "\tid\tsentence1\tsentence2\tsimilarity\n"
QUORA_HEADER = "\tid\tsentence1\tsentence2\tis_duplicate\n"


@pytest.mark.parametrize("text,reader,pattern", [
    (SST_HEADER + "0\ta\tgood\t3\n1\tb\tbad\n", "sst", r"line 3: expected 4 tab-separated"),
    (SST_HEADER + "0\ta\tgood\tthree\n", "sst", r"line 2: column 'sentiment' is 'three', "
                                                 r"expected a number"),
    (SST_HEADER + "0\ta\tgood\t3\n1\tb\tbad\t7\n", "sst", r"line 3: .*'7', expected an "
                                                           r"integer class in 0\.\.4"),
    (SST_HEADER + "0\ta\tgood\t2.5\n", "sst", r"line 2: .*integer class"),
    (SST_HEADER + "0\ta\t  \t3\n", "sst", r"line 2: column 'sentence' is empty"),
    (SST_HEADER + "0\t\tgood\t3\n", "sst", r"line 2: column 'id' is empty"),
    ("\tid\ttext\tsentiment\n0\ta\tgood\t3\n", "sst", r"line 1: .*lacks the required column "
                                                      r"'sentence'"),
    (STS_HEADER + "0\ta\tx\ty\t5.5\n", "sts", r"line 2: .*'5\.5', expected a similarity in "
                                             r"\[0, 5\]"),
    (STS_HEADER + "0\ta\tx\ty\tnan\n", "sts", r"line 2: .*finite"),
    (STS_HEADER + "0\ta\tx\t\t1.0\n", "sts", r"line 2: column 'sentence2' is empty"),
    (QUORA_HEADER + "0\ta\tx\ty\t1.0\n1\tb\tx\ty\t2\n", "quora", r"line 3: .*'2', expected an "
                                                                 r"integer class in 0\.\.1"),
    ("sent0,sent1\nx,y\n", "nli", r"line 1: .*'hard_neg'"),
    ("sent0,sent1,hard_neg\nx,y,z\nx,y\n", "nli", r"line 3: expected 3 ','-separated"),
    ("textID,text,sentiment\nab,hi,happy\n", "tweets", r"line 2: .*'happy', expected one of"),
    ("textID,text,sentiment\nab,hi,neutral\ncd, ,neutral\n", "tweets",
     r"line 3: column 'text' is empty"),
])
def test_bad_input_names_file_and_line(tmp_path, text, reader, pattern):
  path = _write(tmp_path, "bad.csv", text)
  read = {"sst": lambda p: readers.read_sentiment(p),
          "sts": lambda p: readers.read_pairs(p, "similarity"),
          "quora": lambda p: readers.read_pairs(p, "paraphrase"),
          "nli": readers.read_triplets, "tweets": readers.read_tweets}[reader]
  with pytest.raises(readers.DataError) as info:
    read(path)
  assert str(info.value).startswith(f"{path}: line ")
  assert info.match(pattern)


def test_a_quote_spanning_lines_is_reported_not_merged(tmp_path):
  """A stray quote that opens on line 3 and closes on line 7 would, read as CSV, merge five
  rows into one text (the file reading as 4 rows instead of 8). Each row is one line here:
  the opening line is the error, and the rows after it read normally."""
  rows = ["0\ta\tgood\t3", '1\tb\t"a stray quote\t2', "2\tc\tfine\t1", "3\td\tok\t0",
          "4\te\tyes\t4", '5\tf\tclosing" here\t1', "6\tg\tlast\t2"]
  path = _write(tmp_path, "stray.csv", SST_HEADER + "\n".join(rows) + "\n")
  with pytest.raises(readers.DataError, match=r"stray.csv: line 3: a quoted field opens and "
                                              r"does not close on this line"):
    readers.read_sentiment(path)
  read = readers.read_sentiment(path, on_invalid="skip")
  assert read.ids == ["a", "c", "d", "e", "f", "g"]  # 7 rows, the broken one skipped
  assert read.texts[4] == 'closing" here'  # a quote inside an unquoted field is literal


def test_unclosed_quote_and_bad_utf8_name_the_line_and_obey_on_invalid(tmp_path):
  path = _write(tmp_path, "open.csv", SST_HEADER + '0\ta\tgood\t3\n1\tb\t"never closed\t2\n')
  with pytest.raises(readers.DataError, match=r"open.csv: line 3: a quoted field opens"):
    readers.read_sentiment(path)
  assert readers.read_sentiment(path, on_invalid="skip").ids == ["a"]
  bad = os.path.join(str(tmp_path), "latin1.csv")
  with open(bad, "wb") as f:
    f.write((SST_HEADER + "0\ta\tgood\t3\n").encode() + b"1\tb\tcaf\xe9\t2\n2\tc\tok\t1\n")
  with pytest.raises(readers.DataError, match=r"latin1.csv: line 3: not valid UTF-8 \(byte "
                                              r"8 of the line"):
    readers.read_sentiment(bad)
  assert readers.read_sentiment(bad, on_invalid="skip").ids == ["a", "c"]


def test_text_after_a_closing_quote_is_an_error(tmp_path):
  path = _write(tmp_path, "after.csv", SST_HEADER + '0\ta\t"quoted" tail\t3\n')
  with pytest.raises(readers.DataError, match=r"after.csv: line 2: the line does not parse"):
    readers.read_sentiment(path)


def test_header_only_file_and_a_folder_are_precise_errors(tmp_path):
  path = _write(tmp_path, "header.csv", SST_HEADER)
  with pytest.raises(readers.DataError, match=r"header.csv: has a header but no data rows"):
    readers.read_sentiment(path)
  with pytest.raises(IsADirectoryError, match=r"is a folder, expected a data file"):
    readers.read_sentiment(str(tmp_path))


def test_skipped_rows_are_one_short_warning(tmp_path, caplog):
  path = _write(tmp_path, "skip.csv", SST_HEADER + "0\ta\tgood\tx\n1\tb\tok\t9\n2\tc\tfine\t1\n")
  with caplog.at_level(logging.WARNING):
    readers.read_sentiment(path, on_invalid="skip")
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and warnings[0].count(path) == 1
  assert "skipped 2 of 3 rows" in warnings[0] and "1 line (2): " in warnings[0]


def test_missing_file_and_unmapped_label(tmp_path):
  missing = os.path.join(str(tmp_path), "nope.csv")
  with pytest.raises(FileNotFoundError, match="nope.csv"):
    readers.read_sentiment(missing)
  path = _write(tmp_path, "cf.csv", SST_HEADER + "0\ta\tgood\t1\n")
  with pytest.raises(readers.DataError, match=r"line 2: label 1 is not a key of label_map"):
    readers.read_sentiment(path, num_classes=2, label_map={0: 0})


def test_empty_label_column_reads_as_unlabeled(tmp_path, monkeypatch):
  path = _write(tmp_path, "test.csv", SST_HEADER + "0\ta\tgood\t\n1\tb\tbad\t\n")
  opened = []
  lines = readers._lines  # pylint: disable=protected-access
  monkeypatch.setattr(readers, "_lines", lambda p: opened.append(p) or lines(p))
  rows = readers.read_sentiment(path)
  assert rows.labels is None and rows.ids == ["a", "b"]
  assert opened == [path]  # the blank column is found in the same pass over the file
  partly = _write(tmp_path, "partly.csv", SST_HEADER + "0\ta\tgood\t3\n1\tb\tbad\t\n")
  with pytest.raises(readers.DataError, match=r"partly.csv: line 3: column 'sentiment' is "):
    readers.read_sentiment(partly)
  assert readers.read_sentiment(partly, on_invalid="skip").labels.tolist() == [3]


def test_sources_read_a_file_with_the_readers(data_dir):
  """A data path that is not `tfds:...` is read by `readers` (test_tfds.py: the others)."""
  path = os.path.join(data_dir, "cs224n", "sts-dev.csv")
  ours, theirs = (sources.read_pairs(path, "similarity", tfds_dir="/nonexistent"),
                  readers.read_pairs(path, "similarity"))
  assert ours.ids == theirs.ids and ours.texts_b == theirs.texts_b
  np.testing.assert_array_equal(ours.labels, theirs.labels)


# ---------------------------------------------------------------------------------------
# Tokenizing and caching.


def test_tokenize_sentences_and_pairs(real_tokenizer, tmp_path):
  tok = real_tokenizer
  rows = readers.PairRows(ids=["p", "q"], texts_a=["A cat sat.", "Hello"],
                          texts_b=["A dog ran far away.", "World"],
                          labels=np.array([1, 0], np.int32))
  separate = data.tokenize_pairs(rows, tok, 16, joint=False)
  assert set(separate.segments) == {"1", "2"}
  ids_1, _ = tok.encode_ids(rows.texts_a, max_length=16)
  ids_2, _ = tok.encode_ids(rows.texts_b, max_length=16)
  for i in range(2):
    np.testing.assert_array_equal(separate.segments["1"].tokens(i)[0], ids_1[i])
    np.testing.assert_array_equal(separate.segments["2"].tokens(i)[0], ids_2[i])
    assert separate.lengths[i] == max(len(ids_1[i]), len(ids_2[i]))
  joint = data.tokenize_pairs(rows, tok, 16, joint=True, prompt="same?")
  ids, type_ids = tok.encode_ids(["same? A cat sat.", "same? Hello"], rows.texts_b, max_length=16)
  assert list(joint.segments) == [""]
  np.testing.assert_array_equal(joint.segments[""].tokens(0)[0], ids[0])
  np.testing.assert_array_equal(joint.segments[""].tokens(0)[1], type_ids[0])
  assert joint.ids == ["p", "q"] and joint.labels.tolist() == [1, 0]
  triplets = data.tokenize_triplets(readers.TripletRows(["a b"], ["c"], ["d e f"]), tok, 16)
  assert set(triplets.segments) == {"1", "2", "3"} and triplets.lengths.tolist() == [5]
  assert triplets.labels is None and triplets.ids is None


def _tokenize_sst(path, tok, max_length):
  return data.tokenize_once(path, tok, ("sst", max_length), lambda: data.tokenize_sentences(
      readers.read_sentiment(path), tok, max_length))


def test_tokenize_once_per_file_version_and_options(real_tokenizer, tmp_path):
  path = _write(tmp_path, "s.csv", SST_HEADER + "0\ta\tgood fun\t3\n1\tb\tbad\t0\n")
  data.clear_cache()
  first = _tokenize_sst(path, real_tokenizer, 32)
  assert _tokenize_sst(path, real_tokenizer, 32) is first
  assert _tokenize_sst(path, real_tokenizer, 16) is not first
  # A changed file is read again.
  _write(tmp_path, "s.csv", SST_HEADER + "0\ta\tgood fun\t3\n1\tb\tbad\t0\n2\tc\tok\t2\n")
  os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 10**9))
  assert len(_tokenize_sst(path, real_tokenizer, 32)) == 3


def test_real_sst_dev_tokenized_batches(real_tokenizer, data_dir):
  tokset = _tokenize_sst(os.path.join(data_dir, "cs224n", "ids-sst-dev.csv"),
                        real_tokenizer, 64)
  assert len(tokset) == 1101 and tokset.lengths.max() <= 64
  seen = np.concatenate([b["index"][b["weights"] > 0]
                         for b in data.eval_batches(tokset, 32, (32, 64))])
  assert sorted(seen.tolist()) == list(range(1101))


# ---------------------------------------------------------------------------------------
# Bucketing and batches.


def test_bucket_for():
  assert data.bucket_for(1, BUCKETS) == 8 and data.bucket_for(8, BUCKETS) == 8
  assert data.bucket_for(9, BUCKETS) == 16 and data.bucket_for(32, BUCKETS) == 32
  with pytest.raises(ValueError, match="exceeds the largest bucket 32"):
    data.bucket_for(33, BUCKETS)


def test_eval_batches_cover_each_example_once():
  rng = np.random.default_rng(0)
  lengths = rng.integers(3, 33, size=103).tolist()
  tokset = _synthetic_set(lengths, labels=np.arange(103, dtype=np.int32),
                          segments=("1", "2"))
  seen = []
  for batch in data.eval_batches(tokset, 10, BUCKETS):
    length = batch["input_ids_1"].shape[1]
    assert length in BUCKETS
    for key in ("input_ids", "attention_mask", "token_type_ids"):
      for suffix in ("_1", "_2"):
        assert batch[key + suffix].shape == (10, length) and batch[key + suffix].dtype == np.int32
    assert batch["labels"].shape == batch["weights"].shape == batch["index"].shape == (10,)
    pad = batch["weights"] == 0
    assert np.all(batch["index"][pad] == -1) and np.all(batch["index"][~pad] >= 0)
    assert np.all(batch["attention_mask_1"][pad] == 0)
    for row, i in enumerate(batch["index"][~pad]):
      assert data.bucket_for(lengths[i], BUCKETS) == length
      assert batch["labels"][row] == i
      np.testing.assert_array_equal(batch["input_ids_1"][row, :lengths[i]], 1000 + i)
      assert np.all(batch["input_ids_1"][row, lengths[i]:] == 0)
      assert batch["attention_mask_1"][row].sum() == lengths[i]
    seen.extend(batch["index"][~pad].tolist())
  assert sorted(seen) == list(range(103))


def test_too_long_example_raises():
  tokset = _synthetic_set([5, 40])
  with pytest.raises(ValueError, match="40 tokens exceeds the largest bucket"):
    list(data.eval_batches(tokset, 4, BUCKETS))
  with pytest.raises(ValueError, match="40 tokens exceeds the largest bucket"):
    data.TrainIterator([tokset], None, 4, BUCKETS)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.fixture
def train_set() -> data.TokenizedSet:
  lengths = np.random.default_rng(1).integers(3, 33, size=150).tolist()
  return _synthetic_set(lengths, labels=np.arange(150, dtype=np.int32))


def test_train_iterator_deterministic_and_full(train_set):
  a = _take(data.TrainIterator([train_set], None, 8, BUCKETS, seed=3), 60)
  b = _take(data.TrainIterator([train_set], None, 8, BUCKETS, seed=3), 60)
  _assert_same_batches(a, b)
  c = _take(data.TrainIterator([train_set], None, 8, BUCKETS, seed=4), 60)
  assert any(not np.array_equal(x["index"], y["index"]) for x, y in zip(a, c))
  exact = []
  for batch in a:
    assert batch["input_ids"].shape[0] == 8 and batch["input_ids"].shape[1] in BUCKETS
    assert np.all(batch["weights"] == 1.0)
    lengths = train_set.lengths[batch["index"]]
    # Leftovers may ride in a longer bucket; most batches hold one bucket's examples.
    assert all(data.bucket_for(n, BUCKETS) <= batch["input_ids"].shape[1] for n in lengths)
    exact.append(data.bucket_for(int(lengths.min()), BUCKETS) == batch["input_ids"].shape[1])
  assert np.mean(exact) > 0.8


@pytest.mark.parametrize("lengths", [
    np.random.default_rng(1).integers(3, 33, size=150).tolist(),
    [4] * 100 + [30] * 3,  # 3 long examples: too few for a batch of their own bucket.
])
def test_train_iterator_sees_every_example_each_epoch(lengths):
  tokset = _synthetic_set(lengths)
  iterator = data.TrainIterator([tokset], None, 8, BUCKETS, seed=0)
  by_epoch = collections.defaultdict(collections.Counter)
  for _ in range(150):
    epoch = iterator.get_state()["epoch_0"]
    batch = next(iterator)
    assert len(set(batch["index"].tolist())) == 8  # Never twice in a batch.
    by_epoch[epoch].update(batch["index"].tolist())
  complete = sorted(by_epoch)[:-1]  # The last epoch may be unfinished.
  assert len(complete) >= 5
  for epoch in complete:
    assert set(by_epoch[epoch]) == set(range(len(lengths))), epoch
    # Repeats only top up the one batch of leftovers.
    assert sum(by_epoch[epoch].values()) - len(lengths) < 8


def test_train_iterator_rejects_a_set_smaller_than_the_batch():
  with pytest.raises(ValueError, match="5 examples cannot fill a global batch of 8"):
    data.TrainIterator([_synthetic_set([4] * 5)], None, 4, BUCKETS, shard_count=2)


def test_train_iterator_resume(train_set):
  other = _synthetic_set([4] * 40 + [20] * 30, labels=np.zeros(70, np.int32), offset=5000)
  make = lambda: data.TrainIterator([train_set, other], [0.7, 0.3], 8, BUCKETS,
                                    seed=7)
  for k in (0, 5, 47):  # 47 crosses epoch boundaries of both sources.
    iterator = make()
    _take(iterator, k)
    state = json.loads(json.dumps(iterator.get_state()))  # Survives a JSON checkpoint.
    assert all(isinstance(v, int) for v in state.values())
    expected = _take(iterator, 30)
    restored = make()
    restored.set_state(state)
    _assert_same_batches(_take(restored, 30), expected)


def test_shards_are_disjoint_and_cover_the_global_batch(train_set):
  whole = _take(data.TrainIterator([train_set], None, 12, BUCKETS, seed=2), 25)
  shards = [_take(data.TrainIterator([train_set], None, 4, BUCKETS, seed=2, shard_index=i,
                                     shard_count=3), 25) for i in range(3)]
  for step, batch in enumerate(whole):
    parts = [shard[step] for shard in shards]
    indices = [set(p["index"].tolist()) for p in parts]
    assert not (indices[0] & indices[1] or indices[0] & indices[2] or indices[1] & indices[2])
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), batch[key])


def test_mixture_ratios(train_set):
  # 4,000 batches at p = 0.75: std of the observed fraction is sqrt(.75 * .25 / 4000) =
  # 0.0068, so +-0.03 is > 4 standard deviations (and the draw is seeded, so not flaky).
  other = _synthetic_set([4] * 50, labels=np.full(50, -1, np.int32))
  iterator = data.TrainIterator([train_set, other], [3.0, 1.0], 8, BUCKETS, seed=0)
  from_first = [bool(np.all(next(iterator)["labels"] >= 0)) for _ in range(4000)]
  assert abs(np.mean(from_first) - 0.75) < 0.03
  only_second = data.TrainIterator([train_set, other], [0.0, 1.0], 8, BUCKETS)
  assert all(np.all(next(only_second)["labels"] == -1) for _ in range(50))


# ---------------------------------------------------------------------------------------
# The task schedule.


def test_task_schedule_round_robin_and_sampled_frequencies():
  rr = data.TaskSchedule(("sst", "para", "sts"), (10, 20, 30))
  assert [rr(s) for s in range(7)] == ["sst", "para", "sts", "sst", "para", "sts", "sst"]
  sizes = (8544, 13507, 6040)
  for mode, temperature in (("proportional", 1.0), ("temperature", 2.0)):
    schedule = data.TaskSchedule(("sst", "para", "sts"), sizes, mode, temperature, seed=3)
    expected = np.asarray(sizes, float) ** (1 / temperature)
    expected /= expected.sum()
    np.testing.assert_allclose(schedule.probabilities, expected)
    draws = [schedule(s) for s in range(6000)]
    counts = collections.Counter(draws)
    for task, p in zip(("sst", "para", "sts"), expected):
      # Binomial standard error of a frequency over 6,000 draws is <= 0.0065: 5 of them.
      assert abs(counts[task] / 6000 - p) < 0.033, (mode, task, counts)
    # A function of the step alone: a fresh schedule (a resumed run) gives the same tasks.
    again = data.TaskSchedule(("sst", "para", "sts"), sizes, mode, temperature, seed=3)
    assert [again(s) for s in range(5000, 6000)] == draws[5000:]
  with pytest.raises(ValueError, match="positive size"):
    data.TaskSchedule(("sst",), (0,), "proportional")


def test_annealed_task_schedule_moves_from_proportional_to_near_uniform():
  sizes, tasks, steps = (8544, 13507, 6040), ("sst", "para", "sts"), 20_001
  schedule = data.TaskSchedule(tasks, sizes, "annealed", seed=5, alpha_start=1.0,
                               alpha_end=0.2, num_steps=steps)

  def expected(alpha):
    w = np.asarray(sizes, float) ** alpha
    return w / w.sum()

  np.testing.assert_allclose(schedule.probabilities_at(0), expected(1.0))
  np.testing.assert_allclose(schedule.probabilities_at(steps // 2), expected(0.6))
  np.testing.assert_allclose(schedule.probabilities_at(steps - 1), expected(0.2))
  np.testing.assert_allclose(schedule.probabilities_at(10 * steps), expected(0.2))
  # The drawn frequencies of the first and last 4,000 steps follow the probabilities of
  # those stretches (their mean over the steps): the binomial standard error of a
  # frequency over 4,000 draws is <= 0.008, and 0.04 is 5 of them.
  draws = [schedule(s) for s in range(steps)]
  for window in (range(0, 4000), range(steps - 4000, steps)):
    mean_p = np.mean([schedule.probabilities_at(s) for s in window], axis=0)
    counts = collections.Counter(draws[s] for s in window)
    for task, p in zip(tasks, mean_p):
      assert abs(counts[task] / len(window) - p) < 0.04, (window, task, counts, mean_p)
  # Quora (the largest) loses about 0.10 of the steps' share from the first stretch to the
  # last (0.475 -> 0.376; 0.06 is 3.6 standard errors of the difference below that), and
  # the two smaller tasks gain.
  early = collections.Counter(draws[:4000])
  late = collections.Counter(draws[-4000:])
  assert (early["para"] - late["para"]) / 4000 > 0.06, (early, late)
  assert late["sst"] > early["sst"] and late["sts"] > early["sts"], (early, late)
  # A function of the step alone: a resumed run draws the same tasks.
  again = data.TaskSchedule(tasks, sizes, "annealed", seed=5, alpha_start=1.0,
                            alpha_end=0.2, num_steps=steps)
  assert [again(s) for s in range(9000, 11000)] == draws[9000:11000]


def _sst_rows(count: int) -> str:
  return "".join(f"{i}\tid{i}\tsentence number {i} is fine\t{i % 5}\n" for i in range(count))


def test_a_zero_filled_block_is_rejected_not_merged_into_a_row(tmp_path, caplog):
  """NUL bytes from 40 bytes into line 40 to line 70, as an interrupted write leaves: the
  lines between merge into one line, which holds the NULs and is named."""
  text = SST_HEADER + _sst_rows(100)
  lines = text.split("\n")
  start = sum(len(l) + 1 for l in lines[:39]) + 10          # inside line 40
  end = sum(len(l) + 1 for l in lines[:69]) + 5             # inside line 70
  damaged = text[:start] + "\0" * (end - start) + text[end:]
  path = _write(tmp_path, "nul.csv", damaged)
  with pytest.raises(readers.DataError, match=r"nul.csv: line 40: \d+ NUL bytes"):
    readers.read_sentiment(path, on_invalid="raise")
  with caplog.at_level(logging.WARNING):
    rows = readers.read_sentiment(path, on_invalid="skip")
  assert len(rows) == 99 - 30 and not any("\0" in t for t in rows.texts)
  assert "1 line (40): " in caplog.text and "NUL bytes" in caplog.text


def test_a_row_far_longer_than_the_others_is_named(tmp_path, caplog):
  text = SST_HEADER + _sst_rows(40) + "40\tid40\t" + "merged rows " * 400 + "\t2\n"
  path = _write(tmp_path, "long.csv", text)
  with pytest.raises(readers.DataError, match=r"long.csv: line 42: a row of 48\d\d characters"):
    readers.read_sentiment(path, on_invalid="raise")
  with caplog.at_level(logging.WARNING):
    assert len(readers.read_sentiment(path, on_invalid="skip")) == 40
  assert "1 line (42): a row of" in caplog.text


def test_every_bad_label_is_counted_and_the_first_ten_named(tmp_path, caplog):
  rows = "".join(f"{i}\tid{i}\ttext {i}\t{9 if 20 <= i < 32 else 1}\n" for i in range(40))
  path = _write(tmp_path, "labels.csv", SST_HEADER + rows)
  with caplog.at_level(logging.WARNING):
    readers.read_sentiment(path, on_invalid="skip")
  # Rows 20..31 are lines 22..33: twelve lines, the first ten named and the count given.
  assert "12 lines (22, 23, 24, 25, 26, 27, 28, 29, 30, 31, ...): column 'sentiment'" in (
      caplog.text)


def test_duplicate_ids_are_kept_with_a_warning(tmp_path, caplog):
  path = _write(tmp_path, "dup.csv", SST_HEADER + "0\ta\tx\t1\n1\tb\ty\t2\n2\ta\tz\t3\n")
  with caplog.at_level(logging.WARNING):
    rows = readers.read_sentiment(path)
  assert rows.ids == ["a", "b", "a"]
  assert "1 id(s) occur more than once ('a' (2x))" in caplog.text
