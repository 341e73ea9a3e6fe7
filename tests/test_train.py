"""The training loop, checkpoints, resume, signals and evaluation, on a tiny encoder.

End-to-end runs use a tiny random encoder saved as an HF folder with the real vocabulary
(`tiny_ckpt_dir`), the real data files and small limits, so the whole file runs in about a
minute on 2 CPU cores; `test_smoke_config_real_checkpoint` runs `configs/smoke.py` as is.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import smoke
from mtbert_jax import checkpoint as ckpt_lib
from mtbert_jax import data as data_lib
from mtbert_jax import evaluate as eval_lib
from mtbert_jax import experiment
from mtbert_jax import heads as heads_lib
from mtbert_jax import readers
from mtbert_jax import settings as settings_lib
from mtbert_jax import sharding
from mtbert_jax import tasks as tasks_lib
from mtbert_jax import train
from mtbert_jax import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_run_config(ckpt_dir: str, **overrides) -> settings_lib.Settings:
  """configs/smoke.py on the tiny encoder, with overrides like `train__num_steps=8`."""
  c = smoke.get_config()
  c.model.checkpoint = ckpt_dir
  c.jax_cache_dir = ""
  for key, value in overrides.items():
    group, field = key.split("__")
    c[group][field] = value
  return settings_lib.from_dict(c.to_dict())


_MULTI_DEVICE_SCRIPT = r"""
import functools, jax, numpy as np
from configs import base
from mtbert_jax import experiment, heads as heads_lib, model as model_lib, settings, sharding, train
from mtbert_jax import tasks as tasks_lib
from jax.sharding import Mesh
assert len(jax.devices()) == 8, jax.devices()
cfg = model_lib.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=37,
                           max_position_embeddings=64, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
c = base.get_config(); c.heads.dropout = 0.0
s = settings.from_dict(c.to_dict())
m = heads_lib.MultitaskModel(cfg, experiment.head_settings(s))
params = jax.device_get(tasks_lib.init_params(m, jax.random.key(0)))  # host copy: steps donate
tx = train.make_optimizer(s, params)
rng = np.random.default_rng(0)
batch = {"input_ids": rng.integers(1, 99, (16, 12)).astype(np.int32),
         "attention_mask": np.ones((16, 12), np.int32),
         "token_type_ids": np.zeros((16, 12), np.int32),
         "labels": rng.integers(0, 5, 16).astype(np.int32),
         "weights": np.ones(16, np.float32)}
results = []
for devices in (jax.devices()[:1], jax.devices()):
  sharder = sharding.Sharder(Mesh(np.asarray(devices), ("data",)))
  step = train.compile_steps(m, s, tx, sharder)["sst"]
  state = sharder.replicate(train.init_state(params, tx, s))
  key = jax.random.wrap_key_data(sharder.replicate(jax.random.key_data(jax.random.key(1))))
  for _ in range(2):
    state, metrics = step(state, sharder(batch), key)
  assert len(state.params["sentiment_out"]["kernel"].sharding.device_set) == len(devices)
  results.append((jax.device_get(state.params), float(metrics["loss/sst"])))
(p1, l1), (p8, l8) = results
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(p1),
                                                        jax.tree_util.tree_leaves(p8)))
print("max_abs_param_diff", diff, "loss", l1, l8)
# 1e-6: the same float32 math, with the batch reductions split over 8 devices in another
# order; two AdamW steps of lr 3e-5 move parameters by ~6e-5, so a layout bug shows as ~1e-5.
assert diff < 1e-6 and abs(l1 - l8) < 1e-5, (diff, l1, l8)
"""


def test_sharded_step_on_8_fake_devices_equals_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-c", _MULTI_DEVICE_SCRIPT], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout + out.stderr
  assert "max_abs_param_diff" in out.stdout


def test_the_evaluated_weight_average_follows_its_recurrence(tiny_config):
  """optim.ema_decay: after each step avg <- d_t * avg + (1 - d_t) * params, with d_t =
  min(decay, (1 + t) / (10 + t)) for the t-th update (0-based), starting from the initial
  weights; off (0), the state holds no average and evaluates the weights."""
  from configs import base  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh  # pylint: disable=import-outside-toplevel
  c = base.get_config()
  c.optim.ema_decay = 0.2
  c.optim.lr = 1e-2  # steps large enough that a wrong decay shows well above float noise
  s = settings_lib.from_dict(c.to_dict())
  m = heads_lib.MultitaskModel(tiny_config, experiment.head_settings(s))
  params = jax.device_get(tasks_lib.init_params(m, jax.random.key(0)))
  tx = train.make_optimizer(s, params)
  sharder = sharding.Sharder(Mesh(np.asarray(jax.devices()[:1]), ("data",)))
  step = train.compile_steps(m, s, tx, sharder)["sst"]
  rng = np.random.default_rng(0)
  batch = {"input_ids": rng.integers(1, 99, (8, 12)).astype(np.int32),
           "attention_mask": np.ones((8, 12), np.int32),
           "token_type_ids": np.zeros((8, 12), np.int32),
           "labels": rng.integers(0, 5, 8).astype(np.int32), "weights": np.ones(8, np.float32)}
  state = sharder.replicate(train.init_state(params, tx, s))
  expected = params
  for t in range(3):
    state, _ = step(state, sharder(batch), jax.random.key(1))
    new_params = jax.device_get(state.params)
    d = min(0.2, (1 + t) / (10 + t))  # 0.1, then 0.2: the warm-up, then the decay itself
    expected = jax.tree_util.tree_map(lambda a, p, d=d: d * a + (1 - d) * p, expected,
                                      new_params)
  average = jax.device_get(train.eval_params(state, s))
  # 1e-6: float32 rounding of three blends of weights of size ~1; the average differs from
  # the last weights by ~1e-3 (lr 1e-2), so a wrong decay or a missing step shows.
  jax.tree_util.tree_map(lambda a, e: np.testing.assert_allclose(a, e, atol=1e-6),
                         average, expected)
  head = ("sentiment_out", "kernel")
  assert np.abs(average[head[0]][head[1]] - new_params[head[0]][head[1]]).max() > 1e-4
  off = dataclasses.replace(s, optim=dataclasses.replace(s.optim, ema_decay=0.0))
  plain = train.init_state(params, tx, off)
  assert plain.ema_params is None and train.eval_params(plain, off) is plain.params
  with pytest.raises(settings_lib.ConfigError, match="ema_decay > 0 and .*bregman_weight"):
    dataclasses.replace(s, smart=dataclasses.replace(s.smart, bregman_weight=1.0))


# ---------------------------------------------------------------------------------------------
# The loop, checkpoints, evaluation.


def _read_predictions(path):
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  return lines[0], [line.split(" , ") for line in lines[1:]]


def test_train_eval_predict_roundtrip(tiny_ckpt_dir, data_dir, tmp_path):
  config = tiny_run_config(tiny_ckpt_dir, data__sst_test="cs224n/ids-sst-test-student.csv")
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(config, workdir)
  for key in ("dev/sst_acc", "dev/para_acc", "dev/sts_pearson", "dev/average",
              "dev/leaderboard", "step"):
    assert key in metrics
  with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
    assert json.load(f) == pytest.approx(metrics)
  with open(os.path.join(workdir, "train_stats.json"), encoding="utf-8") as f:
    assert json.load(f)["devices"] == {"backend": "cpu", "kind": "cpu", "count": 1,
                                       "processes": 1}
  pred_dir = os.path.join(workdir, "predictions")
  # The CSV files the course expects, and each split's raw outputs for the report.
  assert sorted(os.listdir(pred_dir)) == ["dev-outputs.npz", "para-dev-output.csv",
                                          "sst-dev-output.csv", "sst-test-output.csv",
                                          "sts-dev-output.csv", "test-outputs.npz"]
  header, rows = _read_predictions(os.path.join(pred_dir, "sst-test-output.csv"))
  assert header == "id \t Predicted_Sentiment "
  test_rows = readers.read_sentiment(os.path.join(data_dir, "cs224n/ids-sst-test-student.csv"))
  assert [r[0] for r in rows] == test_rows.ids
  assert all(r[1].strip() in {"0", "1", "2", "3", "4"} for r in rows)
  header, rows = _read_predictions(os.path.join(pred_dir, "sts-dev-output.csv"))
  assert header == "id \t Predicted_Similiary " and len(rows) == 64

  # --mode=eval restores the best checkpoint and reproduces the dev metrics exactly.
  os.remove(os.path.join(workdir, "metrics.json"))
  again = eval_lib.evaluate_workdir(workdir, config)
  assert again == metrics
  # The Python API gives the same predictions as the files.
  predictor = eval_lib.Predictor.from_workdir(workdir)
  sst_dev = readers.read_sentiment(os.path.join(data_dir, "cs224n/ids-sst-dev.csv"))
  _, rows = _read_predictions(os.path.join(pred_dir, "sst-dev-output.csv"))
  np.testing.assert_array_equal(predictor.sentiment(sst_dev.texts[:64]),
                                [int(r[1]) for r in rows])
  assert predictor.paraphrase([("a b", "a b")]).shape == (1,)
  assert predictor.similarity([("a b", "c d"), ("x", "y")]).shape == (2,)

  # eval.both_orders: a pair's output is the mean over (a, b) and (b, a), in the API and in
  # --mode=eval alike, so it no longer depends on the order.
  sts_dev = readers.read_pairs(os.path.join(data_dir, "cs224n/sts-dev.csv"), "similarity")
  pairs = list(zip(sts_dev.texts_a[:64], sts_dev.texts_b[:64]))
  swapped = [(b, a) for a, b in pairs]
  one, other = predictor.similarity(pairs), predictor.similarity(swapped)
  assert not np.allclose(one, other)  # the bi-encoder's [u; v; |u-v|; u*v] has an order
  both = eval_lib.Predictor(predictor.model, predictor.params, predictor.tokenizer,
                            config.data.max_length, config.eval_buckets, both_orders=True)
  np.testing.assert_array_equal(both.similarity(pairs), (one + other) / 2)
  np.testing.assert_array_equal(both.similarity(pairs), both.similarity(swapped))
  p_one = predictor.paraphrase_probability(pairs)
  p_both = both.paraphrase_probability(pairs)
  np.testing.assert_array_equal(p_both, both.paraphrase_probability(swapped))
  assert not np.allclose(p_both, p_one)
  both_config = dataclasses.replace(config, eval=dataclasses.replace(config.eval,
                                                                     both_orders=True))
  both_metrics = eval_lib.evaluate_workdir(workdir, both_config)
  assert both_metrics["dev/sst_acc"] == metrics["dev/sst_acc"]
  with np.load(os.path.join(pred_dir, "dev-outputs.npz")) as arrays:
    # Batches of 32 (eval) and 64 (the API) pad differently: float32 sums in another
    # order, a few ulps of a score of ~1.
    np.testing.assert_allclose(arrays["sts/outputs"], (one + other) / 2, rtol=1e-5,
                               atol=1e-6)
  # An absolute tolerance: r of this barely trained model is near 0 (-0.037 on one
  # machine), where a relative one demands more than float32 outputs that agree to 1e-6
  # can give (r moves by about the outputs' error over their spread, ~1e-6 / 0.1 here).
  np.testing.assert_allclose(both_metrics["dev/sts_pearson"],
                             np.corrcoef((one + other) / 2, sts_dev.labels[:64])[0, 1],
                             rtol=0, atol=1e-4)


def test_with_a_weight_average_the_best_checkpoint_and_eval_are_the_average(
    tiny_ckpt_dir, data_dir, tmp_path):
  config = tiny_run_config(tiny_ckpt_dir, optim__ema_decay=0.5, train__num_steps=6,
                           train__eval_every=6, train__ckpt_every=6)
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(config, workdir)
  state, _ = _final_state(workdir, config)
  _, best, _ = eval_lib.restore_best(config, workdir)
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(best),
                         state.ema_params)
  kernel = lambda p: np.asarray(p["sentiment_out"]["kernel"])
  assert not np.array_equal(kernel(state.ema_params), kernel(state.params))
  os.remove(os.path.join(workdir, "metrics.json"))
  assert eval_lib.evaluate_workdir(workdir, config) == metrics


def test_nan_loss_stops_training_and_keeps_last_checkpoint(tiny_ckpt_dir, data_dir, tmp_path,
                                                           monkeypatch):
  # Steps 1, 2 (sst, para) are fine and checkpointed at step 2; step 3 (sts) is NaN and
  # skipped; the metrics pull at step 4 stops the run before anything else is saved.
  config = tiny_run_config(tiny_ckpt_dir, train__num_steps=9, train__ckpt_every=2,
                           train__log_every=4, train__eval_every=100)
  real_mse = tasks_lib.losses.mean_squared_error
  monkeypatch.setattr(tasks_lib.losses, "mean_squared_error",
                      lambda pred, target, weights=None: real_mse(pred, target, weights) * jnp.nan)
  with pytest.raises(FloatingPointError, match="non-finite"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  ckpts = ckpt_lib.Checkpoints(str(tmp_path / "run"))
  latest = ckpts.latest_step()
  ckpts.close()
  assert latest == 2
  if latest is not None:  # the saved state is finite
    m, _ = experiment.build_model(config, load_weights=False)
    params = tasks_lib.init_params(m, jax.random.key(0))
    like = train.init_state(params, train.make_optimizer(config, params), config)
    ckpts = ckpt_lib.Checkpoints(str(tmp_path / "run"))
    state, _ = ckpts.restore_resume(like)
    ckpts.close()
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state.params))


def _launch(workdir, ckpt_dir, *extra):
  cmd = [sys.executable, os.path.join(REPO, "launch.py"),
         f"--config={os.path.join(REPO, 'configs/smoke.py')}", f"--workdir={workdir}",
         f"--config.model.checkpoint={ckpt_dir}", "--config.jax_cache_dir=",
         "--config.train.num_steps=20", "--config.train.ckpt_every=2",
         "--config.train.eval_every=4", *extra]
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  return cmd, env


def _final_state(workdir, config):
  m, _ = experiment.build_model(config, load_weights=False)
  params = tasks_lib.init_params(m, jax.random.key(0))
  like = train.init_state(params, train.make_optimizer(config, params), config)
  ckpts = ckpt_lib.Checkpoints(workdir)
  state, meta = ckpts.restore_resume(like)
  ckpts.close()
  return jax.device_get(state), meta


def kill_at_checkpoint(cmd, env, checkpoint: str) -> None:
  """Runs `cmd` and SIGKILLs it as soon as the folder `checkpoint` exists."""
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 300
  while not os.path.isdir(checkpoint) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def test_sigkill_and_resume_matches_uninterrupted_run(tiny_ckpt_dir, data_dir, tmp_path):
  full_dir, killed_dir = str(tmp_path / "full"), str(tmp_path / "killed")
  cmd, env = _launch(full_dir, tiny_ckpt_dir)
  subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)

  cmd, env = _launch(killed_dir, tiny_ckpt_dir)
  kill_at_checkpoint(cmd, env, os.path.join(killed_dir, "checkpoints", "4"))
  assert not os.path.exists(os.path.join(killed_dir, "metrics.json"))
  subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)

  config = tiny_run_config(tiny_ckpt_dir, train__num_steps=20)
  full_state, full_meta = _final_state(full_dir, config)
  killed_state, killed_meta = _final_state(killed_dir, config)
  assert full_meta["step"] == killed_meta["step"] == 20
  jax.tree_util.tree_map(np.testing.assert_array_equal, full_state, killed_state)
  with open(os.path.join(full_dir, "metrics.json"), encoding="utf-8") as f:
    full_metrics = json.load(f)
  with open(os.path.join(killed_dir, "metrics.json"), encoding="utf-8") as f:
    assert json.load(f) == full_metrics


class _Counter:
  """A stand-in TrainIterator: batch i holds the value i."""

  def __init__(self):
    self.i = 0

  def __next__(self):
    self.i += 1
    return {"x": np.full((2,), self.i)}

  def get_state(self):
    return {"i": self.i}


def test_prefetcher_close_waits_for_its_thread():
  # The thread must be gone when close() returns: a thread still inside a device transfer at
  # interpreter shutdown aborted a SIGTERM'd run in CI ("FATAL: exception not rethrown").
  in_transfer = []

  def slow_sharder(batch):
    in_transfer.append(True)
    time.sleep(0.5)
    return batch

  prefetch = sharding.Prefetcher({"sst": _Counter()}, lambda step: "sst", 0, 1000,
                                 slow_sharder, depth=1)
  task, batch, states = next(prefetch)
  assert task == "sst" and batch["x"][0] == 1 and states == {"sst": {"i": 1}}
  while len(in_transfer) < 2:  # the thread is building a later batch
    time.sleep(0.01)
  prefetch.close()
  assert not prefetch._thread.is_alive()  # pylint: disable=protected-access


def test_prefetcher_surfaces_iterator_errors():
  class Broken(_Counter):
    def __next__(self):
      raise ValueError("bad row")

  prefetch = sharding.Prefetcher({"sst": Broken()}, lambda step: "sst", 0, 10, lambda b: b)
  with pytest.raises(ValueError, match="bad row"):
    next(prefetch)
  prefetch.close()


@pytest.mark.parametrize("sig,returncode", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_sigterm_saves_checkpoint_and_exits_cleanly(tiny_ckpt_dir, data_dir, tmp_path, sig,
                                                    returncode):
  workdir = str(tmp_path / "run")
  cmd, env = _launch(workdir, tiny_ckpt_dir, "--config.train.num_steps=100000",
                     "--config.train.ckpt_every=100000", "--config.train.eval_every=100000")
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  tb = os.path.join(workdir, "config.json")
  deadline = time.time() + 300
  while not os.path.exists(tb) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  time.sleep(3.0)  # let it run some steps
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == returncode, stderr[-3000:]
  assert f"{sig.name}: checkpoint saved" in stderr
  steps = os.listdir(os.path.join(workdir, "checkpoints"))
  assert len(steps) == 1 and int(steps[0]) > 0


def test_config_typo_is_a_clear_error(tmp_path):
  cmd = [sys.executable, os.path.join(REPO, "launch.py"),
         f"--config={os.path.join(REPO, 'configs/smoke.py')}", f"--workdir={tmp_path}",
         "--config.train.num_stepz=3"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=REPO))
  assert out.returncode != 0
  assert "num_stepz" in out.stderr


def test_bad_config_values_name_the_field(tiny_ckpt_dir):
  with pytest.raises(settings_lib.ConfigError, match="train.tasks"):
    tiny_run_config(tiny_ckpt_dir, train__tasks=("sst", "qqp"))
  # `--config.train.tasks=sst,para` arrives as one string: the error shows the tuple syntax
  with pytest.raises(settings_lib.ConfigError, match=r"""train.tasks="\('sst','para'\)"""):
    tiny_run_config(tiny_ckpt_dir, train__tasks=("sst,para",))
  with pytest.raises(settings_lib.ConfigError, match="model.dtype"):
    tiny_run_config(tiny_ckpt_dir, model__dtype="fp16")
  with pytest.raises(settings_lib.ConfigError, match="data.max_length"):
    tiny_run_config(tiny_ckpt_dir, data__max_length=512)


def test_missing_data_file_is_a_clear_error(tiny_ckpt_dir, tmp_path):
  config = tiny_run_config(tiny_ckpt_dir, data__sst_dev=str(tmp_path / "nope.csv"))
  with pytest.raises(FileNotFoundError, match="nope.csv"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_eval_with_checkpoint_of_another_shape_fails_clearly(tiny_ckpt_dir, data_dir,
                                                             tmp_path):
  config = tiny_run_config(tiny_ckpt_dir, train__num_steps=2, train__eval_every=2,
                           eval__write_predictions=False)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  other = tiny_run_config("")  # the real MiniLM (hidden 384) against a hidden-32 checkpoint
  with pytest.raises(workdir_lib.WorkdirError, match=r"--config.model.checkpoint: trained "):
    eval_lib.evaluate_workdir(workdir, other)  # the workdir's contract refuses it first
  with pytest.raises(ValueError, match="does not fit the configured model"):
    eval_lib.restore_best(other, workdir)


def test_compile_count_bounded_over_a_real_epoch(tiny_ckpt_dir, data_dir):
  """A full epoch of SST dev through the sst step compiles once per bucket, no more."""
  config = tiny_run_config(tiny_ckpt_dir, data__buckets=(16, 32, 64))
  tok = experiment.tokenizer(config)
  tokset = experiment.load_split(config, tok, "sst", "dev")
  m, bert = experiment.build_model(config)
  params = tasks_lib.init_params(m, jax.random.key(0), bert)
  tx = train.make_optimizer(config, params)
  sharder = sharding.Sharder(sharding.make_mesh())
  def fn(state, batch, key):
    return train.train_step(state, batch, key, task="sst", mt_model=m, s=config, tx=tx)

  step = jax.jit(chex.assert_max_traces(fn, n=3),
                 in_shardings=(sharder.replicated, sharder.batch, sharder.replicated),
                 donate_argnums=(0,))
  state = sharder.replicate(train.init_state(params, tx, config))
  it = data_lib.TrainIterator(sources=[tokset], mix_weights=None, batch_size=8,
                              buckets=config.data.buckets, seed=0)
  key = jax.random.key(0)
  lengths = set()
  for _ in range(len(tokset) // 8 + 1):
    batch = next(it)
    batch.pop("index")
    lengths.add(batch["input_ids"].shape[1])
    state, _ = step(state, sharder(batch), key)
  assert lengths == {16, 32, 64}
  chex.clear_trace_counter()


@pytest.mark.slow
def test_smoke_config_real_checkpoint(data_dir, tmp_path):
  """configs/smoke.py exactly as CI and users run it (the embedded MiniLM checkpoint)."""
  cache = tmp_path / "xla_cache"  # the compilation cache stays in the test's folder
  workdir = tmp_path / "run"
  cmd = [sys.executable, os.path.join(REPO, "launch.py"),
         f"--config={os.path.join(REPO, 'configs/smoke.py')}", f"--workdir={workdir}",
         f"--config.jax_cache_dir={cache}"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=REPO))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "dev/average" in out.stdout
  # orbax's routine INFO lines are filtered out of the run's log (runtime.quiet_library_logs)
  assert "checkpoint_manager.py" not in out.stderr, out.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
    metrics = json.load(f)
  assert 0.0 <= metrics["dev/sst_acc"] <= 1.0 and metrics["step"] > 0
  assert cache.is_dir() and any(cache.iterdir())


def test_paraphrase_cross_encoder_reads_the_joint_pair_with_or_without_the_prompt(
    tiny_ckpt_dir):
  """"cross" is "prompt" less the prompt's tokens; the two never share a cached set."""
  tok = None
  sets = {}
  for head in ("prompt", "cross"):
    s = tiny_run_config(tiny_ckpt_dir, heads__paraphrase=head)
    tok = tok or experiment.tokenizer(s)
    sets[head] = experiment.load_split(s, tok, "para", "dev")
    assert set(sets[head].segments) == {""}
  prompt_ids = tok.encode_ids([heads_lib.PARAPHRASE_PROMPT], max_length=64)[0][0][1:-1]
  rows = readers.read_pairs(experiment.data_path(s, "para_dev"), "paraphrase", "skip")
  for i in (0, 1, len(sets["cross"]) - 1):
    cross = sets["cross"].segments[""].tokens(i)[0]
    prompted = sets["prompt"].segments[""].tokens(i)[0]
    want, _ = tok.encode_ids([rows.texts_a[i]], [rows.texts_b[i]], max_length=s.data.max_length)
    np.testing.assert_array_equal(cross, want[0])           # [CLS] a [SEP] b [SEP]
    np.testing.assert_array_equal(prompted[1:1 + len(prompt_ids)], prompt_ids)
    assert len(prompted) == len(cross) + len(prompt_ids) or len(prompted) == s.data.max_length


@pytest.mark.parametrize("heads", [{"heads__paraphrase": "prompt", "heads__similarity": "cross"},
                                   {"heads__paraphrase": "bi", "heads__similarity": "cosine"}])
def test_swap_pairs_trains_each_pair_reversed_and_the_sampler_counts_it_once(tiny_ckpt_dir, heads):
  off = tiny_run_config(tiny_ckpt_dir, train__sampling="proportional", **heads)
  on = tiny_run_config(tiny_ckpt_dir, train__sampling="proportional", data__swap_pairs=True,
                       **heads)
  tok = experiment.tokenizer(on)
  for task in ("para", "sts"):
    (plain,), _ = experiment.train_sources(off, tok, task)
    (first, swapped), weights = experiment.train_sources(on, tok, task)
    assert weights == [1.0, 1.0] and not first.reordered and swapped.reordered
    assert len(swapped) == len(first) == on.data.train_limit
    for name, seg in first.segments.items():  # the first source as without the switch
      np.testing.assert_array_equal(seg.input_ids, plain.segments[name].input_ids)
    assert swapped.ids == first.ids
    np.testing.assert_array_equal(swapped.labels, first.labels)
    if "" in first.segments:  # cross-encoder: the pair tokenized as (b, a)
      spec = tasks_lib.get(task)
      rows = spec.read(experiment.data_path(on, f"{task}_train"), on.data)
      n = on.data.train_limit
      reversed_rows = readers.PairRows(rows.ids[:n], rows.texts_b[:n], rows.texts_a[:n],
                                       rows.labels[:n])
      expected = spec.tokenize(reversed_rows, tok, on.data.max_length, on.heads)
      for i in (0, 1, n - 1):
        for got, want in zip(swapped.segments[""].tokens(i), expected.segments[""].tokens(i)):
          np.testing.assert_array_equal(got, want)
      assert not np.array_equal(swapped.segments[""].tokens(0)[0],
                                first.segments[""].tokens(0)[0])
    else:  # bi-encoder: the two sentences exchanged
      for i in (0, 1, len(first) - 1):
        for got, want in zip(swapped.segments["2"].tokens(i), first.segments["1"].tokens(i)):
          np.testing.assert_array_equal(got, want)
  # SST has no pairs; the task sampler counts each pair once.
  assert len(experiment.train_sources(on, tok, "sst")[0]) == 1

  def schedule(s):
    iterators = {t: data_lib.TrainIterator(*experiment.train_sources(s, tok, t), batch_size=8,
                                           buckets=s.data.buckets) for t in s.train.tasks}
    return train.task_schedule(s, iterators).probabilities

  np.testing.assert_array_equal(schedule(on), schedule(off))
  # `train.sampling_scale` counts a task as that factor times its examples.
  scaled = tiny_run_config(tiny_ckpt_dir, train__sampling="proportional",
                           train__sampling_scale={"sst": 1.0, "para": 0.25, "sts": 1.0,
                                                  "nli": 1.0, "cfimdb": 1.0}, **heads)
  sizes = np.array([len(experiment.load_split(off, tok, t, "train")) for t in off.train.tasks],
                   float) * [1.0, 0.25, 1.0]
  np.testing.assert_allclose(schedule(scaled), sizes / sizes.sum())
