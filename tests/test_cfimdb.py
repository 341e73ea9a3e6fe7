"""CFIMDB as a fourth evaluated task, added by its row in the task table and its head: it
trains, is scored on its dev file and writes predictions, while the headline average and
older checkpoints stay as they were."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from mtbert_jax import checkpoint as ckpt_lib
from mtbert_jax import data as data_lib
from mtbert_jax import evaluate as eval_lib
from mtbert_jax import experiment
from mtbert_jax import export_heads
from mtbert_jax import settings as settings_lib
from mtbert_jax import tasks as tasks_lib
from mtbert_jax import train
from test_workdir import tiny_settings  # the smoke run on a given checkpoint

FOUR = ("sst", "para", "sts", "cfimdb")


def test_the_row_makes_cfimdb_an_evaluated_task_outside_the_headline():
  task = tasks_lib.get("cfimdb")
  assert task.evaluated and not task.headline and task.files["dev"] == "cfimdb_dev"
  assert "cfimdb" in tasks_lib.EVALUATED and "cfimdb" not in tasks_lib.EVAL_TASKS
  scores = {"sst": 0.5, "para": 0.75, "sts": 0.5, "cfimdb": 0.9}
  summary = tasks_lib.summarize(scores)
  assert summary["dev/cfimdb_acc"] == 0.9
  assert summary["dev/average"] == pytest.approx((0.5 + 0.75 + 0.5) / 3)  # the course's three


def test_cfimdb_trains_is_scored_on_dev_and_writes_predictions(tiny_ckpt_dir, data_dir,
                                                               tmp_path):
  s = tiny_settings(tiny_ckpt_dir, train__tasks=("cfimdb",), train__num_steps=2,
                    train__eval_every=2, train__ckpt_every=2, train__log_every=1,
                    eval__write_predictions=True, data__dev_limit=16)
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(s, workdir)
  assert 0.0 <= metrics["dev/cfimdb_acc"] <= 1.0
  assert "dev/average" not in metrics  # the headline average is of the course's three tasks
  with open(os.path.join(workdir, "history.jsonl"), encoding="utf-8") as f:
    losses = [json.loads(line)["train"]["loss/cfimdb"] for line in f if '"train"' in line]
  assert len(losses) == 2 and all(np.isfinite(losses))
  pred_dir = os.path.join(workdir, "predictions")
  for split, rows in (("dev", 16), ("test", 488)):
    with open(os.path.join(pred_dir, f"cfimdb-{split}-output.csv"), encoding="utf-8") as f:
      lines = f.read().splitlines()
    assert lines[0] == "id \t Predicted_Sentiment "
    assert len(lines) == 1 + rows
    assert {line.split(" , ")[1].strip() for line in lines[1:]} <= {"0", "1"}
  # The same metric from --mode=eval on the restored best checkpoint.
  again = eval_lib.evaluate_workdir(workdir)
  assert again["dev/cfimdb_acc"] == metrics["dev/cfimdb_acc"]


def _tiny_model(tiny_ckpt_dir):
  s = tiny_settings(tiny_ckpt_dir)
  return experiment.build_model(s, load_weights=False)[0]


def test_a_checkpoint_from_before_the_cfimdb_row_restores_when_cfimdb_was_not_trained(
    tiny_ckpt_dir, tmp_path):
  mt_model = _tiny_model(tiny_ckpt_dir)
  params = jax.device_get(tasks_lib.init_params(mt_model, jax.random.key(1)))
  old = {name: value for name, value in params.items() if name != "cfimdb_out"}
  workdir = str(tmp_path / "old")
  ckpts = ckpt_lib.Checkpoints(workdir)
  ckpts.save_best(3, old, {"step": 3})
  ckpts.close()
  restored = eval_lib.best_params(mt_model, workdir, ("sst", "para", "sts"))
  assert set(restored) == set(params)
  np.testing.assert_array_equal(restored["sentiment_out"]["kernel"],
                                params["sentiment_out"]["kernel"])
  assert not np.any(np.asarray(restored["cfimdb_out"]["kernel"]))
  with pytest.raises(ValueError, match="does not fit the configured model"):
    eval_lib.best_params(mt_model, workdir, FOUR)  # a trained head is never made up
  with pytest.raises(ValueError, match="does not fit the configured model"):
    eval_lib.best_params(mt_model, workdir)


def test_the_export_refuses_a_head_that_the_table_gives_no_form(tiny_ckpt_dir):
  heads = _tiny_model(tiny_ckpt_dir).heads
  with pytest.raises(export_heads.ExportRefused, match="cfimdb head no exported form"):
    export_heads.head_form("cfimdb", heads)
  assert "cfimdb" not in export_heads.TASK_FOLDERS


def test_train_tasks_accept_cfimdb_and_a_missing_dev_file_is_skipped(tiny_ckpt_dir):
  s = tiny_settings(tiny_ckpt_dir, train__tasks=FOUR, data__cfimdb_dev="")
  assert experiment.evaluated_tasks(s) == FOUR
  assert experiment.load_split(s, None, "cfimdb", "dev") is None
  with pytest.raises(settings_lib.ConfigError, match="data.cfimdb_train is empty"):
    tiny_settings(tiny_ckpt_dir, train__tasks=FOUR, data__cfimdb_train="")


# ------------------------------------------------------------------------------------------
# One encoding per setting: the head choices and the both-orders mean.


@pytest.mark.parametrize("paraphrase,similarity,para_segments,sts_segments", [
    ("bi", "linear", ("_1", "_2"), ("_1", "_2")),
    ("prompt", "cosine", ("",), ("_1", "_2")),
    ("cross", "cross", ("",), ("",)),
])
def test_the_head_choices_decide_the_segments(tiny_ckpt_dir, paraphrase, similarity,
                                              para_segments, sts_segments):
  heads = tiny_settings(tiny_ckpt_dir, heads__paraphrase=paraphrase,
                        heads__similarity=similarity).heads
  assert tasks_lib.get("para").segments(heads) == para_segments
  assert tasks_lib.get("sts").segments(heads) == sts_segments
  assert (tasks_lib.get("para").prompt(heads) is not None) == (paraphrase == "prompt")


def test_the_orders_of_a_task_and_their_mean():
  assert tasks_lib.orders("para", True) == (False, True)
  assert tasks_lib.orders("sts", False) == (False,)
  assert tasks_lib.orders("sst", True) == tasks_lib.orders("cfimdb", True) == (False,)
  rows = lambda ids: data_lib.TokenizedSet({}, None, ids, np.ones(len(ids), np.int32))
  outputs = {"ab": np.array([1.0, 3.0]), "ba": np.array([2.0, 5.0])}
  a, b = rows(["1", "2"]), rows(["1", "2"])
  output_of = lambda tokset: outputs["ab" if tokset is a else "ba"]
  np.testing.assert_array_equal(eval_lib.mean_over_orders(output_of, (a,)), [1.0, 3.0])
  np.testing.assert_array_equal(eval_lib.mean_over_orders(output_of, (a, b)), [1.5, 4.0])
  with pytest.raises(ValueError, match="same rows"):
    eval_lib.mean_over_orders(output_of, (a, rows(["2", "1"])))
