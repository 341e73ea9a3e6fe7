"""`Predictor.stream` and `--mode=predict --predict_input=FILE`: streaming gives the list
methods' outputs, holds one chunk of its input at a time, and a file of sentences or pairs
round-trips its ids with those outputs; bad input names the file and line.

One tiny trained workdir (a random encoder with the real vocabulary, 6 steps on the real
data, as in tests/test_workdir.py) serves every test.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import smoke
from mtbert_jax import evaluate as eval_lib
from mtbert_jax import predict_file
from mtbert_jax import readers
from mtbert_jax import settings as settings_lib
from mtbert_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SENTENCES = ["A gorgeous , witty , seductive movie .", "Dull .", "It is not bad at all , "
             "and the second half is even better than the first one .", "Meh", "I laughed .",
             "Too long , too loud , too slow and far too pleased with itself .", "Fine .",
             "A film .", "Nothing happens for two hours and then it ends .", "Great !", "No ."]
PAIRS = [(s, t) for s, t in zip(SENTENCES, SENTENCES[3:] + SENTENCES[:3])]


@pytest.fixture(scope="module")
def trained(tiny_ckpt_dir, data_dir, tmp_path_factory):
  """(workdir, settings) of a finished 6-step run."""
  c = smoke.get_config()
  c.model.checkpoint = tiny_ckpt_dir
  c.jax_cache_dir = ""
  c.eval.write_predictions = False
  s = settings_lib.from_dict(c.to_dict())
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  train.train_and_evaluate(s, workdir)
  return workdir, s


@pytest.fixture(scope="module")
def predictor(trained):
  """The Predictor that `predict_file_workdir` builds (the run's eval batch size)."""
  return eval_lib.Predictor.from_workdir(trained[0], batch_size=trained[1].eval.batch_size)


def _joined(chunks):
  chunks = list(chunks)
  probabilities = [c.probabilities for c in chunks]
  return (np.concatenate([c.predictions for c in chunks]),
          None if probabilities[0] is None else np.concatenate(probabilities))


def test_stream_equals_the_list_api(predictor):
  # Chunks of 3 cut the inputs into other batches than one list call; every row is padded
  # to the same bucket length and batch size either way, so the same compiled program sees
  # each row and its outputs are expected bit for bit.
  classes, probs = _joined(predictor.stream("sst", iter(SENTENCES), chunk_size=3))
  np.testing.assert_array_equal(classes, predictor.sentiment(SENTENCES))
  np.testing.assert_array_equal(probs, predictor.sentiment_probabilities(SENTENCES))
  for both_orders in (False, True):
    predictor.both_orders = both_orders
    try:
      labels, para = _joined(predictor.stream("para", (p for p in PAIRS), chunk_size=4))
      np.testing.assert_array_equal(labels, predictor.paraphrase(PAIRS))
      np.testing.assert_array_equal(para, predictor.paraphrase_probability(PAIRS))
      scores, none = _joined(predictor.stream("sts", PAIRS, chunk_size=5))
      np.testing.assert_array_equal(scores, predictor.similarity(PAIRS))
      assert none is None
    finally:
      predictor.both_orders = False
  chunks = list(predictor.stream("sst", SENTENCES, chunk_size=4))
  assert [len(c.predictions) for c in chunks] == [4, 4, 3]
  assert list(predictor.stream("sts", [])) == []


def test_stream_checks_its_inputs_naming_the_item(predictor):
  with pytest.raises(TypeError, match="got one string"):
    list(predictor.stream("sst", "a bare string"))
  with pytest.raises(TypeError, match="got one pair"):
    list(predictor.stream("para", ("hi", "yo")))
  with pytest.raises(ValueError, match="task 'nli'"):
    list(predictor.stream("nli", SENTENCES))
  # Item numbers count from the stream's start, not the chunk's.
  with pytest.raises(ValueError, match="item 5 is an empty text"):
    list(predictor.stream("sst", SENTENCES[:5] + [" "], chunk_size=2))


def test_stream_pulls_its_input_one_chunk_at_a_time(predictor):
  chunk, pulled, received = 3, [0], [0]

  def sentences():
    for s in SENTENCES * 3:
      pulled[0] += 1
      if pulled[0] > received[0] + 2 * chunk:
        raise AssertionError(f"{pulled[0]} items pulled with {received[0]} returned")
      yield s
  for out in predictor.stream("sst", sentences(), chunk_size=chunk):
    received[0] += len(out.predictions)
    # Between chunks the stream holds no more than the chunk it returned.
    assert pulled[0] <= received[0] + 1, (pulled[0], received[0])
  assert received[0] == pulled[0] == 3 * len(SENTENCES)


def _write_tsv(path, header, rows, delimiter="\t"):
  with open(path, "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f, delimiter=delimiter)
    writer.writerow(header)
    writer.writerows(rows)


def _read_output(path):
  with open(path, encoding="utf-8") as f:
    rows = list(csv.reader(f, delimiter="\t"))
  return rows[0], rows[1:]


def test_file_mode_round_trips_ids_and_predictions(trained, predictor, tmp_path):
  workdir = trained[0]
  # TSV for sst, with an extra column and a sentence holding a tab and quotes (csv quoting).
  sentences = SENTENCES[:-1] + ['He said "no"\tand left .']
  tsv = tmp_path / "reviews.tsv"
  _write_tsv(tsv, ["note", "sentence", "id"],
             [["x", s, f"r{i}"] for i, s in enumerate(sentences)])
  path, count = predict_file.predict_file_workdir(workdir, "sst", str(tsv))
  assert path == os.path.join(workdir, "predictions", "reviews-sst-output.tsv")
  assert count == len(sentences)
  header, rows = _read_output(path)
  assert header == ["id", "predicted", "p0", "p1", "p2", "p3", "p4"]
  assert [r[0] for r in rows] == [f"r{i}" for i in range(len(sentences))]
  np.testing.assert_array_equal([int(r[1]) for r in rows], predictor.sentiment(sentences))
  np.testing.assert_array_equal([[float(x) for x in r[2:]] for r in rows],
                                predictor.sentiment_probabilities(sentences))
  # CSV for sts, an explicit output path.
  csv_in, out = tmp_path / "pairs.csv", tmp_path / "out" / "sts.tsv"
  _write_tsv(csv_in, ["id", "sentence1", "sentence2"],
             [[f"p{i}", a, b] for i, (a, b) in enumerate(PAIRS)], delimiter=",")
  predict_file.predict_file_workdir(workdir, "sts", str(csv_in), str(out))
  header, rows = _read_output(out)
  assert header == ["id", "similarity"] and [r[0] for r in rows] == [f"p{i}" for i in
                                                                    range(len(PAIRS))]
  np.testing.assert_array_equal([float(r[1]) for r in rows], predictor.similarity(PAIRS))
  assert sorted(os.listdir(out.parent)) == ["sts.tsv"]  # no temporary file left


def test_launcher_predicts_a_jsonl_file(trained, predictor, tmp_path):
  jsonl = tmp_path / "quora.jsonl"
  with open(jsonl, "w", encoding="utf-8") as f:
    for i, (a, b) in enumerate(PAIRS):
      f.write(json.dumps({"id": 100 + i, "sentence1": a, "sentence2": b}) + "\n")
      if i == 2:
        f.write("\n")  # a blank line holds no row
  out = tmp_path / "para.tsv"
  cmd = [sys.executable, os.path.join(REPO, "launch.py"), f"--workdir={trained[0]}",
         "--mode=predict", f"--predict_input={jsonl}", "--predict_task=para",
         f"--predict_output={out}"]
  run = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"))
  assert run.returncode == 0, run.stderr[-3000:]
  assert f"{out} ({len(PAIRS)} rows)" in run.stdout
  header, rows = _read_output(out)
  assert header == ["id", "predicted", "probability"]
  assert [r[0] for r in rows] == [str(100 + i) for i in range(len(PAIRS))]
  np.testing.assert_array_equal([int(r[1]) for r in rows], predictor.paraphrase(PAIRS))
  np.testing.assert_array_equal([float(r[2]) for r in rows],
                                predictor.paraphrase_probability(PAIRS))


@pytest.mark.parametrize("name,text,task,message", [
    ("a.tsv", "id\tsentence1\nx\ty\n", "para", r"line 1: .* lacks the column\(s\) "
     r"\['sentence2'\]"),
    ("a.tsv", "id\tsentence\nx\tfine\ny\t  \n", "sst", r"line 3: 'sentence' is empty"),
    ("a.tsv", "id\tsentence\nx\tfine\ny\tok\textra\n", "sst", r"line 3: 3 fields, the "
     "header has 2"),
    ("a.csv", 'id,sentence\nx,"open\n', "sst", r"line 2: the line does not parse"),
    ("a.jsonl", '{"id": 1, "sentence": "ok"}\n{"id": 2, "sentence": \n', "sst",
     r"line 2: not valid JSON"),
    ("a.jsonl", '{"id": 1, "sentence1": "ok"}\n', "sts", r"line 1: no \['sentence2'\] key"),
    ("a.jsonl", '\n\n["x", "y"]\n', "sst", r"line 3: a list, expected an object"),
    ("a.jsonl", '{"id": "a\\tb", "sentence": "ok"}\n', "sst", r"line 1: the id 'a\\tb'"),
    ("a.txt", "id\tsentence\n", "sst", r"expected a \.tsv, \.csv or \.jsonl file"),
])
def test_bad_input_names_the_file_and_line(tmp_path, name, text, task, message):
  path = tmp_path / name
  path.write_text(text, encoding="utf-8")
  with pytest.raises(readers.DataError, match=f"^{path}: {message}"):
    list(predict_file.read_inputs(str(path), task))


def test_an_error_after_the_first_chunk_leaves_no_output(predictor, tmp_path):
  path, out = tmp_path / "late.jsonl", tmp_path / "late-output.tsv"
  with open(path, "w", encoding="utf-8") as f:
    for i, s in enumerate(SENTENCES):
      f.write(json.dumps({"id": i, "sentence": s}) + "\n")
    f.write("{not json}\n")
  with pytest.raises(readers.DataError, match=rf"{path}: line {len(SENTENCES) + 1}: not valid"):
    predict_file.predict_file(predictor, "sst", str(path), str(out), chunk_size=4)
  assert os.listdir(tmp_path) == ["late.jsonl"]
  empty = tmp_path / "empty.tsv"
  empty.write_text("id\tsentence\n", encoding="utf-8")
  with pytest.raises(readers.DataError, match="no rows to predict"):
    predict_file.predict_file(predictor, "sst", str(empty), str(out))
  assert not out.exists()
