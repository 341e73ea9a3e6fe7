"""A workdir nobody can corrupt: the lock, the settings contract, checkpoint fallback,
divergence stops, the launcher's one-line errors, and the Predictor's input checks.

Runs use a tiny random encoder with the real vocabulary (`tiny_ckpt_dir`) on the real data
with small limits; one trained workdir is made per session and copied for each test that
changes it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import smoke
from mtbert_jax import checkpoint as ckpt_lib
from mtbert_jax import evaluate as eval_lib
from mtbert_jax import health
from mtbert_jax import settings as settings_lib
from mtbert_jax import train
from mtbert_jax import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_settings(ckpt_dir: str, **overrides) -> settings_lib.Settings:
  c = smoke.get_config()
  c.model.checkpoint = ckpt_dir
  c.jax_cache_dir = ""
  c.eval.write_predictions = False
  for key, value in overrides.items():
    group, field = key.split("__")
    c[group][field] = value
  return settings_lib.from_dict(c.to_dict())


@pytest.fixture(scope="module")
def trained(tiny_ckpt_dir, data_dir, tmp_path_factory):
  """A finished 6-step run (checkpoints at steps 3 and 6 kept: ckpt.keep=2)."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  s = tiny_settings(tiny_ckpt_dir, ckpt__keep=2)
  metrics = train.train_and_evaluate(s, workdir)
  return workdir, s, metrics


def _copy(trained, tmp_path) -> str:
  dst = str(tmp_path / "copy")
  shutil.copytree(trained[0], dst)
  return dst


# ---------------------------------------------------------------------------------------------
# The lock.


_HOLD = """
import sys, time
from mtbert_jax import workdir
with workdir.lock(sys.argv[1], "train"):
  print("locked", flush=True)
  time.sleep(60)
"""


def test_second_run_on_a_locked_workdir_fails_at_once_naming_the_holder(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO))
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(workdir_lib.WorkdirError, match=rf"is in use by train run of pid "
                                                       rf"{holder.pid} on "):
      with workdir_lib.lock(str(tmp_path), "eval"):
        pass
  finally:
    holder.kill()  # SIGKILL: the OS releases the lock, nothing stale is left
    holder.wait()
  with workdir_lib.lock(str(tmp_path), "eval"):
    pass


def test_two_launches_on_one_workdir_one_refused(tiny_ckpt_dir, data_dir, tmp_path):
  """The reported case: two runs on one workdir started a second apart. The second exits
  with the lock error; the first trains to the end with its own settings."""
  workdir = str(tmp_path / "run")
  base = [sys.executable, os.path.join(REPO, "launch.py"),
          f"--config={os.path.join(REPO, 'configs/smoke.py')}", f"--workdir={workdir}",
          f"--config.model.checkpoint={tiny_ckpt_dir}", "--config.jax_cache_dir=",
          "--config.train.num_steps=30"]
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  first = subprocess.Popen(base + ["--config.optim.lr=1e-4"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  lock_file = os.path.join(workdir, workdir_lib.LOCK_FILE)
  while time.time() < deadline and not (os.path.isfile(lock_file)
                                        and os.path.getsize(lock_file)):
    time.sleep(0.05)
  second = subprocess.run(base + ["--config.optim.lr=3e-4"], env=env, capture_output=True,
                          text=True, timeout=300)
  first_out, first_err = first.communicate(timeout=600)
  assert second.returncode == 1
  assert second.stderr.strip().splitlines()[-1].startswith("error: --workdir=")
  assert f"is in use by train run of pid {first.pid}" in second.stderr
  assert first.returncode == 0, first_err[-2000:]
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["optim"]["lr"] == 1e-4
  # stderr is a pipe, not a terminal: progress comes as log lines, not a tqdm bar, and the
  # run says what it compiles and what it evaluates (stderr), and what it wrote (stdout,
  # after the metrics table).
  assert "\r" not in first_err and "it/s" not in first_err
  assert "compiling the sst step for length" in first_err
  assert re.search(r"step 30/30 \(100%\) .*ETA 0:00:00", first_err), first_err[-2000:]
  assert re.search(r"evaluating para dev: [\d,]+ pairs in \d+ s", first_err)
  assert f"wrote in {workdir}:" in first_out and "metrics.json" in first_out


# ---------------------------------------------------------------------------------------------
# The trained settings are the contract.


def test_eval_with_a_model_changing_field_is_refused_listing_it(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  s = trained[1].replace(heads={"cls_source": "hidden"}, data={"max_length": 48})
  with pytest.raises(workdir_lib.WorkdirError) as info:
    eval_lib.evaluate_workdir(workdir, s)
  message = str(info.value)
  assert "--config.heads.cls_source: trained 'auto', now 'hidden'" in message
  assert "--config.data.max_length: trained 64, now 48" in message
  assert "2 field(s) differ" in message
  with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
    assert json.load(f) == pytest.approx(trained[2])  # nothing was overwritten


def test_eval_may_change_the_batch_size_and_training_fields(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  s = trained[1].replace(eval={"batch_size": 16}, optim={"lr": 1.0})
  again = eval_lib.evaluate_workdir(workdir, s)
  # Same model, same dev sets. Batches of 16 are padded to other shapes than the run's, and
  # XLA blocks float32 matmuls per shape, so raw outputs differ in their last bits: the
  # accuracies (argmaxes) are equal; a Pearson r near 0.1 over the tiny model's nearly equal
  # STS scores amplifies that rounding to about 1e-5 relative (seen: 1.04e-5 on the CI
  # machine), so r is held to 1e-4 relative, ten times that.
  assert set(again) == set(trained[2])
  for key, value in trained[2].items():
    if key.endswith("_acc") or key == "step":
      assert again[key] == value, key
  assert again["dev/sts_pearson"] == pytest.approx(trained[2]["dev/sts_pearson"], rel=1e-4)


def test_resume_with_other_training_settings_is_refused(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  s = trained[1].replace(optim={"lr": 1e-3}, heads={"cls_source": "pooler"})
  with pytest.raises(workdir_lib.WorkdirError, match=r"cannot resume it with these \(2 "
                                                     r"field\(s\) differ\)"):
    train.train_and_evaluate(s, workdir)
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["optim"]["lr"] == trained[1].optim.lr  # config.json untouched
  # A longer budget is a resume, not a new run.
  longer = trained[1].replace(train={"num_steps": 9})
  assert workdir_lib.differences(trained[1], longer, "resume") == []


# ---------------------------------------------------------------------------------------------
# Checkpoints that do not restore.


def _largest_file(folder: str) -> str:
  files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
  return max(files, key=os.path.getsize)


def test_corrupt_latest_checkpoint_falls_back_to_the_kept_one(trained, tmp_path, caplog):
  workdir = _copy(trained, tmp_path)
  broken = _largest_file(os.path.join(workdir, "checkpoints", "6", "state"))
  with open(broken, "r+b") as f:
    f.truncate(os.path.getsize(broken) // 3)
  s = trained[1].replace(train={"num_steps": 9})
  with caplog.at_level("WARNING"):
    train.train_and_evaluate(s, workdir)
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= 30]
  assert any("checkpoints/6 does not restore" in w for w in warnings), warnings
  assert any("resuming from step 3 instead of the broken step(s) [6]" in w for w in warnings)
  with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
    assert json.load(f)["step"] > 0


def test_no_intact_checkpoint_is_one_clear_error_with_the_options(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  os.remove(os.path.join(workdir, "checkpoints", "6", "state", "_METADATA"))  # a tree error
  broken = _largest_file(os.path.join(workdir, "checkpoints", "3", "state"))
  with open(broken, "r+b") as f:  # a TensorStore read error
    f.truncate(1000)
  with pytest.raises(ckpt_lib.CheckpointError, match=r"no resumable checkpoint in .* "
                                                     r"restores \(steps \[6, 3\] are broken"):
    train.train_and_evaluate(trained[1], workdir)


def test_broken_best_checkpoint_is_named(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  broken = _largest_file(os.path.join(workdir, "best", "6", "state"))
  with open(broken, "r+b") as f:
    f.truncate(1000)
  with pytest.raises(ckpt_lib.CheckpointError, match=r"the best checkpoint .*best/6 does "
                                                     r"not restore"):
    eval_lib.evaluate_workdir(workdir)


# ---------------------------------------------------------------------------------------------
# Bad values and diverging runs.


def test_diverged_run_stops_before_a_checkpoint_and_says_where_the_last_one_is(
    tiny_ckpt_dir, data_dir, tmp_path):
  # lr 3e3: the losses explode within a few steps but stay finite at first.
  s = tiny_settings(tiny_ckpt_dir, optim__lr=3e3, train__num_steps=30, train__log_every=3,
                    train__eval_every=3, train__ckpt_every=30)
  with pytest.raises(health.TrainingStopped) as info:
    train.train_and_evaluate(s, str(tmp_path / "run"))
  message = str(info.value)
  assert "diverged" in message or "non-finite" in message
  assert "no checkpoint was saved before it" in message
  assert "lower --config.optim.lr" in message.lower()
  ckpts = ckpt_lib.Checkpoints(str(tmp_path / "run"))
  assert ckpts.latest_step() is None  # the diverged state was never saved
  ckpts.close()


def test_batch_larger_than_a_tasks_data_names_the_flag(tiny_ckpt_dir, data_dir, tmp_path):
  s = tiny_settings(tiny_ckpt_dir, data__train_limit=16, train__batch_size=32)
  with pytest.raises(settings_lib.ConfigError, match=r"--config.train.batch_size=32 is "
                                                     r"larger than the 16 training examples"):
    train.train_and_evaluate(s, str(tmp_path / "run"))


def test_workdir_that_is_a_file_or_missing_is_refused_without_creating_folders(tmp_path):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  with pytest.raises(workdir_lib.WorkdirError, match=r"is a file, expected a folder"):
    workdir_lib.prepare(str(a_file), create=True)
  missing = tmp_path / "missing"
  with pytest.raises(workdir_lib.WorkdirError, match=r"does not exist: it is not the "
                                                     r"workdir of a training run"):
    eval_lib.evaluate_workdir(str(missing))
  assert not missing.exists()


def _launch(*args, timeout=300):
  cmd = [sys.executable, os.path.join(REPO, "launch.py"), *args]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"))


def test_launcher_errors_are_one_line(tmp_path):
  smoke_cfg = f"--config={os.path.join(REPO, 'configs/smoke.py')}"
  cases = [
      ([smoke_cfg, f"--workdir={tmp_path}", "--config.train.num_step=3"],
       "error: --config.train.num_step: no such field in group 'train'; did you mean "
       "'num_steps'?"),
      ([smoke_cfg, f"--workdir={tmp_path}", "--config.optim.lr=-1e-4"],
       "error: --config.optim.lr=-0.0001: expected > 0"),
      ([smoke_cfg, f"--workdir={tmp_path}", "--config.train.batch_size=0"],
       "error: --config.train.batch_size=0: expected >= 1"),
      ([smoke_cfg, f"--workdir={tmp_path / 'none'}", "--mode=eval"],
       "error: --workdir="),
  ]
  for args, expected in cases:
    out = _launch(*args)
    assert out.returncode in (1, 2), (args, out.stderr[-2000:])
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(expected), (args, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, (args, out.stderr[-2000:])
  assert not (tmp_path / "none").exists()


def test_help_exits_0_and_lists_the_config_fields():
  out = _launch("--help", timeout=60)
  assert out.returncode == 0, out.stderr
  assert "--mode=train|eval|predict" in out.stdout
  assert "train.num_steps = 1500" in out.stdout and "optim.lr = 3e-5" in out.stdout


# ---------------------------------------------------------------------------------------------
# The inference API.


def test_predictor_checks_its_inputs_and_returns_probabilities(trained):
  p = eval_lib.Predictor.from_workdir(trained[0])
  with pytest.raises(TypeError, match="got one string"):
    p.sentiment("a bare string")
  with pytest.raises(TypeError, match="got one pair"):
    p.paraphrase(("hi", "yo"))
  with pytest.raises(TypeError, match="expected a list of strings, got NoneType"):
    p.sentiment(None)
  with pytest.raises(TypeError, match="expected a list of strings, got int"):
    p.sentiment(3)
  with pytest.raises(TypeError, match="item 1 is a int"):
    p.sentiment(["fine", 3])
  with pytest.raises(ValueError, match=r"item 1 is 'lonely', expected a pair"):
    p.similarity([("a", "b"), "lonely"])
  with pytest.raises(ValueError, match=r"item 0 is an empty text"):
    p.sentiment(["", "fine"])
  with pytest.raises(ValueError, match=r"item 1 has an empty sentence"):
    p.paraphrase([("a", "b"), ("c", "  ")])
  assert p.sentiment([]).shape == (0,) and p.paraphrase([]).shape == (0,)
  assert p.similarity([]).shape == (0,) and p.sentiment_probabilities([]).shape == (0, 5)
  probs = p.sentiment_probabilities(["a good film", "a bad one"])
  assert probs.shape == (2, 5)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(probs.argmax(-1), p.sentiment(["a good film", "a bad one"]))
  para = p.paraphrase_probability([("a", "a"), ("a", "b")])
  assert ((para >= 0) & (para <= 1)).all()
  np.testing.assert_array_equal(para > 0.5, p.paraphrase([("a", "a"), ("a", "b")]))


def test_predict_mode_writes_test_predictions_only(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  os.remove(os.path.join(workdir, "metrics.json"))
  s = trained[1].replace(data={"sst_test": "cs224n/ids-sst-test-student.csv"})
  metrics = eval_lib.evaluate_workdir(workdir, s, score=False)
  assert set(metrics) == {"step"}
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))
  predictions = os.path.join(workdir, "predictions")
  assert sorted(os.listdir(predictions)) == ["sst-test-output.csv", "test-outputs.npz"]
  with np.load(os.path.join(predictions, "test-outputs.npz")) as outputs:
    assert set(outputs) == {"sst/ids", "sst/outputs"}  # the test split only


# ---------------------------------------------------------------------------------------------
# The contract held by the checkpoints, budgets and evaluations on other rows.


def test_a_deleted_config_json_does_not_free_the_settings(trained, tmp_path):
  """The checkpoints keep the config they were trained with; with config.json deleted a
  resume with other settings is refused all the same, listing the fields."""
  workdir = _copy(trained, tmp_path)
  os.remove(os.path.join(workdir, "config.json"))
  s = trained[1].replace(heads={"cls_source": "hidden"}, optim={"lr": 1e-3},
                         train={"num_steps": 9})
  with pytest.raises(workdir_lib.WorkdirError) as info:
    train.train_and_evaluate(s, workdir)
  message = str(info.value)
  assert "config.json is missing" in message and "2 field(s) differ" in message
  assert (f"--config.heads.cls_source: trained {trained[1].heads.cls_source!r}, now 'hidden'"
          in message)
  assert not os.path.exists(os.path.join(workdir, "config.json"))  # nothing written


def test_a_hand_edited_config_json_is_refused_where_the_model_is_built(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  path = os.path.join(workdir, "config.json")
  with open(path, encoding="utf-8") as f:
    config = json.load(f)
  config["heads"]["cls_source"] = "hidden"
  with open(path, "w", encoding="utf-8") as f:
    json.dump(config, f)
  for load in (eval_lib.Predictor.from_workdir, eval_lib.evaluate_workdir):
    with pytest.raises(workdir_lib.WorkdirError, match=r"config.json was changed since.*\n"
                                                       r".*heads.cls_source: trained "):
      load(workdir)


def test_a_resume_may_not_lower_the_step_budget(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  with pytest.raises(settings_lib.ConfigError, match=r"num_steps=3: the run in .* is at "
                                                     r"step 6 already"):
    train.train_and_evaluate(trained[1].replace(train={"num_steps": 3}), workdir)
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["train"]["num_steps"] == 6


def test_eval_with_another_dev_limit_writes_beside_the_runs_metrics(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
    before = f.read()
  limited = eval_lib.evaluate_workdir(workdir, trained[1].replace(data={"dev_limit": 8}))
  assert limited["dev_limit"] == 8
  with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
    assert f.read() == before
  with open(os.path.join(workdir, "metrics-dev_limit8.json"), encoding="utf-8") as f:
    assert json.load(f)["dev_limit"] == 8


def test_malformed_checkpoint_metadata_is_named_not_an_attribute_error(trained, tmp_path,
                                                                       caplog):
  workdir = _copy(trained, tmp_path)
  for step in ("3", "6"):
    meta_dir = os.path.join(workdir, "checkpoints", step, "meta")
    for name in os.listdir(meta_dir):
      with open(os.path.join(meta_dir, name), "w", encoding="utf-8") as f:
        json.dump({"step": 6, "iterators": "not an object", "best_score": 0.5,
                   "best_step": 6}, f)
  with caplog.at_level("WARNING"), pytest.raises(ckpt_lib.CheckpointError,
                                                 match="no resumable checkpoint"):
    train.train_and_evaluate(trained[1].replace(train={"num_steps": 9}), workdir)
  assert "malformed meta item: iterators (str)" in caplog.text


def test_an_export_folder_in_the_way_is_refused_before_training(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  os.makedirs(os.path.join(workdir, "hf_encoder", "2_Dense"))
  with pytest.raises(workdir_lib.WorkdirError, match=r"hf_encoder exists and is not an empty "
                                                     r"folder"):
    train.train_and_evaluate(trained[1].replace(ckpt={"export_hf": True},
                                                train={"num_steps": 9}), workdir)


def test_a_torn_last_history_line_is_left_out_and_an_inner_one_named(tmp_path, caplog):
  from mtbert_jax import console  # pylint: disable=import-outside-toplevel
  path = tmp_path / "history.jsonl"
  path.write_text('{"step": 3, "train": {"loss/sst": 1.5}}\n{"step": 6, "tra', encoding="utf-8")
  with caplog.at_level("WARNING"):
    assert console.read_history(str(path)) == [{"step": 3, "train": {"loss/sst": 1.5}}]
  assert "line 2 is cut short" in caplog.text
  path.write_text('{"step": 3, "tr\n{"step": 6, "train": {}}\n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"history.jsonl: line 1 is not JSON"):
    console.read_history(str(path))


def test_a_data_dir_that_is_a_file_is_named(tmp_path):
  from mtbert_jax import experiment  # pylint: disable=import-outside-toplevel
  (tmp_path / "data.tgz").write_text("x", encoding="utf-8")
  c = smoke.get_config()
  c.data.dir = str(tmp_path / "data.tgz")
  with pytest.raises(NotADirectoryError, match=r"--config.data.dir=.*data.tgz' is a file"):
    experiment.data_path(settings_lib.from_dict(c.to_dict()), "sst_train")


def test_a_failed_restore_from_the_command_line_is_one_error_line(trained, tmp_path):
  """Orbax's background loops, torn down by the interpreter's exit after the error, printed
  thousands of lines of "Exception ignored in: <coroutine ...>" (some of the time: it
  depends on where their tasks were); the launcher now ends the process at once."""
  workdir = _copy(trained, tmp_path)
  broken = _largest_file(os.path.join(workdir, "best", "6", "state"))
  with open(broken, "r+b") as f:
    f.truncate(os.path.getsize(broken) // 2)
  proc = _launch(f"--config={os.path.join(REPO, 'configs/smoke.py')}", f"--workdir={workdir}",
                 f"--config.model.checkpoint={trained[1].model.checkpoint}",
                 "--config.jax_cache_dir=", "--config.eval.write_predictions=false",
                 "--config.ckpt.keep=2", "--mode=eval")
  assert proc.returncode == 1
  assert "error: the best checkpoint" in proc.stderr and "does not restore" in proc.stderr
  assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr
