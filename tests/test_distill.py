"""Distillation from single-task teachers: the mixed loss, the teachers' targets, resume.

The loss is checked against today's: at lambda = 1 it is the task loss exactly (value and
gradient), and a teacher whose targets are the labels themselves gives the task loss at
any lambda. End to end, a teacher trained here is refused when it does not match, its
targets are cached by row id, and a run killed mid-anneal resumes bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtbert_jax import data as data_lib
from mtbert_jax import distill
from mtbert_jax import losses
from mtbert_jax import objective
from mtbert_jax import settings as settings_lib
from mtbert_jax import tasks as tasks_lib
from mtbert_jax import train
from tests import test_objective as obj_tests
from tests import test_train as train_tests


def test_lambda_anneals_from_zero_to_one_and_fixed_is_constant():
  lam = lambda step: float(losses.distillation_lambda(jnp.int32(step), 11, "anneal", 0.3))
  assert [lam(s) for s in (0, 5, 10, 50)] == [0.0, 0.5, 1.0, 1.0]
  assert float(losses.distillation_lambda(jnp.int32(7), 11, "fixed", 0.3)) == np.float32(0.3)


def _targets(task: str, labels: np.ndarray, rng: np.random.Generator,
             as_labels: bool) -> np.ndarray:
  """A teacher's targets for a batch: random, or the labels themselves."""
  if task == "sst":
    if as_labels:
      return np.eye(5, dtype=np.float32)[labels]
    p = rng.uniform(0.1, 1.0, (len(labels), 5))
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
  if as_labels:
    return labels.astype(np.float32)
  return rng.uniform(0, 1 if task == "para" else 5, len(labels)).astype(np.float32)


def _loss_and_grad(tiny_config, task: str, lam: float | None, as_labels: bool = False):
  """(loss, gradient) of one step's objective; `lam` None: without a teacher."""
  overrides = {"train__tasks": ("sst", "para", "sts")}
  if lam is not None:
    overrides["distill__teachers"] = (f"{task}=unused",)
  s, m, params, _ = obj_tests._fixture(tiny_config, overrides)  # pylint: disable=protected-access
  batch = {k: jnp.asarray(v) for k, v in obj_tests._batch(task).items()}  # pylint: disable=protected-access
  if lam is not None:
    rng = np.random.default_rng(1)
    batch["teacher"] = jnp.asarray(_targets(task, np.asarray(batch["labels"]), rng,
                                            as_labels))
    batch["distill_lambda"] = jnp.float32(lam)
  spec = tasks_lib.get(task)
  fn = jax.jit(jax.value_and_grad(
      lambda p: objective.loss(m, s, spec, p, batch, jax.random.key(3))[0]))
  return fn(params)


@pytest.mark.parametrize("task", ["sst", "para", "sts"])
def test_lambda_one_is_todays_loss_and_gradient_exactly(tiny_config, task):
  today_loss, today_grad = _loss_and_grad(tiny_config, task, None)
  loss, grad = _loss_and_grad(tiny_config, task, 1.0)
  assert float(loss) == float(today_loss)
  jax.tree_util.tree_map(np.testing.assert_array_equal, grad, today_grad)


@pytest.mark.parametrize("task", ["sst", "para", "sts"])
def test_a_teacher_equal_to_the_labels_gives_todays_loss(tiny_config, task):
  today_loss, today_grad = _loss_and_grad(tiny_config, task, None)
  loss, grad = _loss_and_grad(tiny_config, task, 0.3, as_labels=True)
  # The soft cross entropy sums p * log q over the classes where today's picks one log q:
  # the same value up to float32 rounding of a few operations (1e-6 relative).
  np.testing.assert_allclose(float(loss), float(today_loss), rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                         grad, today_grad)


def test_targets_ride_in_the_batches_beside_the_labels():
  tokset = data_lib.TokenizedSet.from_lists(
      {"": ([[1, 5, 2], [1, 6, 7, 2], [1, 8, 2]], [[0] * 3, [0] * 4, [0] * 3])},
      labels=np.array([0, 3, 4], np.int32), ids=["a", "b", "c"])
  targets = np.arange(15, dtype=np.float32).reshape(3, 5)
  with_targets = distill.attach(tokset, ["c", "a", "b", "z"],
                                targets[[2, 0, 1, 0]], "sst")
  batch = data_lib.make_batch(with_targets, np.array([1, -1, 2]), 8)
  np.testing.assert_array_equal(batch["teacher"], [targets[1], np.zeros(5), targets[2]])
  # Carried through the split and the row limit.
  kept = data_lib.limit_rows(data_lib.select_rows(with_targets, np.array([False, True, True])),
                             1)
  np.testing.assert_array_equal(kept.targets, targets[[1]])
  with pytest.raises(settings_lib.ConfigError, match="no output for 1 training rows.*'b'"):
    distill.attach(tokset, ["a", "c"], targets[:2], "sst")
  with pytest.raises(ValueError, match="all or none a teacher's targets"):
    data_lib.TrainIterator([with_targets, tokset], None, 2, (8,))


def test_teacher_settings_are_checked():
  make = obj_tests.make_settings
  with pytest.raises(settings_lib.ConfigError, match="distill.teachers.*TASK=WORKDIR"):
    make(distill__teachers=("sst:runs/a",))
  with pytest.raises(settings_lib.ConfigError, match="TASK=WORKDIR"):
    make(distill__teachers=("nli=runs/a",))
  with pytest.raises(settings_lib.ConfigError, match="one teacher per task"):
    make(distill__teachers=("sst=runs/a", "sst=runs/b"))
  with pytest.raises(settings_lib.ConfigError, match="'sts', which is not in"):
    make(train__tasks=("sst",), distill__teachers=("sts=runs/a",))
  with pytest.raises(settings_lib.ConfigError, match="tweets_weight"):
    make(distill__teachers=("sst=runs/a",), data__tweets_weight=0.5)
  with pytest.raises(settings_lib.ConfigError, match="distill.schedule"):
    make(distill__schedule="cosine")
  assert make(distill__teachers=("sst=runs/a", "sts=b=c")).distill.by_task == {
      "sst": "runs/a", "sts": "b=c"}


@pytest.fixture(scope="module")
def sst_teacher(tiny_ckpt_dir, data_dir, tmp_path_factory) -> str:
  """A finished single-task SST run (6 steps on the tiny encoder, a validation split)."""
  del data_dir
  workdir = str(tmp_path_factory.mktemp("sst_teacher"))
  s = train_tests.tiny_run_config(tiny_ckpt_dir, train__tasks=("sst",),
                                  data__valid_fraction=0.1, eval__dev=False,
                                  eval__write_predictions=False)
  train.train_and_evaluate(s, workdir)
  return workdir


def _student(tiny_ckpt_dir, teacher, **overrides):
  settings = dict(train__tasks=("sst", "sts"), data__valid_fraction=0.1,
                  distill__teachers=(f"sst={teacher}",))
  return train_tests.tiny_run_config(tiny_ckpt_dir, **{**settings, **overrides})


def test_a_mismatched_teacher_is_refused(sst_teacher, tiny_ckpt_dir, tmp_path):
  refused = {
      "did not train sts": _student(tiny_ckpt_dir, sst_teacher,
                                    distill__teachers=(f"sts={sst_teacher}",)),
      "valid_fraction=0.1, this run 0.2": _student(tiny_ckpt_dir, sst_teacher,
                                                   data__valid_fraction=0.2),
      "trained on data.sst_train": _student(tiny_ckpt_dir, sst_teacher,
                                            data__sst_train="cs224n/ids-sst-dev.csv"),
  }
  other_vocab = str(tmp_path / "other_vocab")
  shutil.copytree(tiny_ckpt_dir, other_vocab)
  with open(os.path.join(other_vocab, "vocab.txt"), "a", encoding="utf-8") as f:
    f.write("[NEWWORD]\n")
  refused["another vocabulary"] = _student(other_vocab, sst_teacher)
  refused["is not the workdir of a training run"] = _student(
      tiny_ckpt_dir, str(tmp_path / "nothing"))
  for message, s in refused.items():
    task = next(iter(s.distill.by_task))
    with pytest.raises(settings_lib.ConfigError, match=message.replace("[", r"\[")):
      distill.teacher_targets(s, str(tmp_path / "student"), task)


def test_teacher_targets_are_the_teachers_outputs_cached_by_row_id(sst_teacher, tiny_ckpt_dir,
                                                                   tmp_path):
  from mtbert_jax import evaluate, experiment  # pylint: disable=import-outside-toplevel
  s = _student(tiny_ckpt_dir, sst_teacher)
  ids, targets = distill.teacher_targets(s, str(tmp_path), "sst")
  teacher_s = settings_lib.from_dict(
      json.load(open(os.path.join(sst_teacher, "config.json"), encoding="utf-8")))
  model, params, tok = evaluate.restore_best(teacher_s, sst_teacher)
  rows = experiment.load_split(teacher_s.replace(data={"train_limit": 0}), tok, "sst", "train")
  logits = evaluate.predict(evaluate.make_output_fns(model)["sst"], params, rows, 32, (32, 64))
  assert ids == rows.ids and len(ids) > 256  # every train row, not the run's limit
  np.testing.assert_allclose(targets, jax.nn.softmax(logits), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-5)
  cache = os.path.join(str(tmp_path), distill.CACHE_DIR, "sst.npz")
  os.utime(cache, (0, 0))
  again_ids, again = distill.teacher_targets(s, str(tmp_path), "sst")
  assert again_ids == ids and np.array_equal(again, targets)
  assert os.stat(cache).st_mtime == 0  # read back, not recomputed


def test_a_run_killed_mid_anneal_resumes_bit_for_bit(sst_teacher, tiny_ckpt_dir, tmp_path):
  flags = ["--config.train.tasks=('sst','sts')", "--config.data.valid_fraction=0.1",
           f"--config.distill.teachers=('sst={sst_teacher}',)"]
  full_dir, killed_dir = str(tmp_path / "full"), str(tmp_path / "killed")
  cmd, env = train_tests._launch(full_dir, tiny_ckpt_dir, *flags)  # pylint: disable=protected-access
  subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
  cmd, env = train_tests._launch(killed_dir, tiny_ckpt_dir, *flags)  # pylint: disable=protected-access
  train_tests.kill_at_checkpoint(cmd, env, os.path.join(killed_dir, "checkpoints", "8"))
  subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)

  config = _student(tiny_ckpt_dir, sst_teacher, train__num_steps=20)
  full_state, full_meta = train_tests._final_state(full_dir, config)  # pylint: disable=protected-access
  killed_state, _ = train_tests._final_state(killed_dir, config)  # pylint: disable=protected-access
  assert full_meta["step"] == 20
  jax.tree_util.tree_map(np.testing.assert_array_equal, full_state, killed_state)
  # The teacher's share fell over the run: lambda logged per pull rises from 0 towards 1.
  with open(os.path.join(full_dir, "history.jsonl"), encoding="utf-8") as f:
    lams = [r["train"]["distill/lambda"] for r in map(json.loads, f)
            if "distill/lambda" in r.get("train", {})]
  assert lams and lams == sorted(lams) and 0 < lams[-1] <= 1, lams


def test_a_teacher_workdir_may_name_the_seed():
  s = obj_tests.make_settings(distill__teachers=("sts=runs/sts/seed{seed}",)).replace(seed=3)
  assert distill.teacher_dir_of(s, "sts") == os.path.abspath("runs/sts/seed3")
