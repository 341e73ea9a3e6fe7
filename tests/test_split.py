"""The validation split carved from each train file (`data.valid_fraction`)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from configs import base
from mtbert_jax import data
from mtbert_jax import experiment
from mtbert_jax import settings as settings_lib

SST_HEADER = "\tid\tsentence\tsentiment\n"


def _settings(**data_fields) -> settings_lib.Settings:
  c = base.get_config()
  for key, value in data_fields.items():
    c.data[key] = value
  return settings_lib.from_dict(c.to_dict())


def test_membership_is_a_function_of_the_id_alone():
  ids = [f"row{i:05d}" for i in range(20000)]
  mask = data.in_validation_split(ids, 0.1)
  # About the fraction: the binomial standard deviation is 0.0021 at n = 20,000; 5 of it.
  assert abs(mask.mean() - 0.1) < 0.011
  shuffled = ids[:]
  random.Random(0).shuffle(shuffled)
  by_id = dict(zip(ids, mask))
  assert data.in_validation_split(shuffled, 0.1).tolist() == [by_id[i] for i in shuffled]
  # A larger fraction holds every row of a smaller one (the hash is cut, not redrawn).
  assert np.all(data.in_validation_split(ids, 0.2)[mask])
  assert not data.in_validation_split(ids, 0.0).any()


def test_select_rows_keeps_each_rows_tokens_labels_and_id():
  tokset = data.TokenizedSet.from_lists(
      {"1": ([[1, 2], [3], [4, 5, 6], [7]], [[0, 0], [0], [0, 0, 0], [0]]),
       "2": ([[8], [9, 10], [11], [12, 13]], [[0], [0, 0], [0], [0, 0]])},
      labels=np.array([0, 1, 2, 3]), ids=["a", "b", "c", "d"])
  picked = data.select_rows(tokset, np.array([False, True, True, False]))
  assert picked.ids == ["b", "c"] and picked.labels.tolist() == [1, 2]
  assert picked.lengths.tolist() == [2, 3]
  assert picked.segments["1"].tokens(1)[0].tolist() == [4, 5, 6]
  assert picked.segments["2"].tokens(0)[0].tolist() == [9, 10]
  assert len(data.select_rows(tokset, np.zeros(4, bool))) == 0


def _write_sst(path, rows):
  with open(path, "w", encoding="utf-8") as f:
    f.write(SST_HEADER)
    for i, (row_id, text, label) in enumerate(rows):
      f.write(f"{i}\t{row_id}\t{text}\t{label}\n")


def test_train_and_valid_are_disjoint_cover_the_file_and_ignore_its_order(
    tmp_path, real_tokenizer):
  rows = [(f"id{i}", f"sentence number {i}", i % 5) for i in range(400)]
  _write_sst(tmp_path / "a.csv", rows)
  shuffled = rows[:]
  random.Random(1).shuffle(shuffled)
  _write_sst(tmp_path / "b.csv", shuffled)
  splits = {}
  for name in ("a.csv", "b.csv"):
    s = _settings(dir=str(tmp_path), sst_train=name, valid_fraction=0.1)
    train = experiment.load_split(s, real_tokenizer, "sst", "train")
    valid = experiment.load_split(s, real_tokenizer, "sst", "valid")
    assert not set(train.ids) & set(valid.ids)
    assert sorted(train.ids + valid.ids) == sorted(r[0] for r in rows)
    labels = {r[0]: r[2] for r in rows}
    assert valid.labels.tolist() == [labels[i] for i in valid.ids]
    splits[name] = (set(train.ids), set(valid.ids))
  assert splits["a.csv"] == splits["b.csv"]
  assert 20 <= len(splits["a.csv"][1]) <= 60  # ~40 of 400 (binomial sd 6)
  off = _settings(dir=str(tmp_path), sst_train="a.csv")
  assert experiment.load_split(off, real_tokenizer, "sst", "valid") is None
  assert len(experiment.load_split(off, real_tokenizer, "sst", "train")) == 400


def test_the_split_of_the_course_files_has_the_documented_sizes(data_dir, real_tokenizer):
  """The sizes the README documents, on every run and machine (a function of the ids)."""
  s = _settings(valid_fraction=0.1, max_length=128)
  sizes = {task: (len(experiment.load_split(s, real_tokenizer, task, "train")),
                  len(experiment.load_split(s, real_tokenizer, task, "valid")))
           for task in ("sst", "para", "sts")}
  assert sizes == {"sst": (7678, 866), "para": (12207, 1300), "sts": (5460, 580)}


def test_a_bad_fraction_names_the_flag():
  with pytest.raises(settings_lib.ConfigError, match="data.valid_fraction"):
    _settings(valid_fraction=0.7)


def test_only_the_trained_tasks_are_scored():
  c = base.get_config()
  c.train.tasks = ("sts",)
  s = settings_lib.from_dict(c.to_dict())
  assert experiment.evaluated_tasks(s) == ("sts",)
  assert experiment.eval_split(s) == "dev" and experiment.scored_splits(s) == ("dev",)
  c.data.valid_fraction, c.eval.dev = 0.1, False
  s = settings_lib.from_dict(c.to_dict())
  assert experiment.eval_split(s) == "valid" and experiment.scored_splits(s) == ("valid",)
