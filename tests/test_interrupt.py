"""The training loop under signals and divergence: what is saved, and when."""

from __future__ import annotations

import logging
import os
import signal

import jax
import jax.numpy as jnp
import pytest

from mtbert_jax import checkpoint as ckpt_lib
from mtbert_jax import evaluate as eval_lib
from mtbert_jax import health
from mtbert_jax import train
from test_workdir import tiny_settings as _settings  # the smoke run on a given checkpoint


def _saved_steps(workdir: str) -> tuple[list[int], int | None]:
  ckpts = ckpt_lib.Checkpoints(workdir, create=False)
  try:
    return sorted(ckpts.resume.all_steps()), ckpts.best_step()
  finally:
    ckpts.close()


def test_sigterm_during_an_evaluation_saves_that_step(tiny_ckpt_dir, data_dir, tmp_path,
                                                      monkeypatch, caplog):
  """The save is decided after the evaluation: a signal that arrives while step 3 is being
  evaluated leaves checkpoints/3, and the exit message names step 3."""
  real = eval_lib.evaluate_split
  calls = []

  def evaluate_then_signal(*args, **kwargs):
    calls.append(1)
    if len(calls) == 1:
      os.kill(os.getpid(), signal.SIGTERM)   # the handler only sets a flag
    return real(*args, **kwargs)

  monkeypatch.setattr(eval_lib, "evaluate_split", evaluate_then_signal)
  s = _settings(tiny_ckpt_dir, train__num_steps=30, train__log_every=3, train__eval_every=3,
                train__ckpt_every=100)
  workdir = str(tmp_path / "run")
  with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as info:
    train.train_and_evaluate(s, workdir)
  assert info.value.code == 0
  assert _saved_steps(workdir) == ([3], 3)
  assert "SIGTERM: checkpoint saved at step 3" in caplog.text


def test_the_host_runs_at_most_max_in_flight_steps_ahead(tiny_ckpt_dir, data_dir, tmp_path,
                                                         monkeypatch):
  """Each step also dispatches a slow computation (~tens of ms on the CPU); without a
  bound the host would dispatch every step of the run before the first finished, and a
  SIGTERM would wait for all of them."""
  real_compile = train.compile_steps
  dispatched: list = []
  behind: list[int] = []

  def slow_steps(*args, **kwargs):
    steps = real_compile(*args, **kwargs)
    heavy = jax.jit(lambda x: jnp.linalg.matrix_power(x, 40).sum())
    x = jnp.eye(600) * 0.5

    def wrap(step):
      def run(state, batch, rng):
        behind.append(sum(not leaf.is_ready() for m in dispatched
                          for leaf in jax.tree_util.tree_leaves(m)))
        state, metrics = step(state, batch, rng)
        metrics = dict(metrics, slow=heavy(x))
        dispatched.append(metrics)
        return state, metrics
      return run
    return {task: wrap(step) for task, step in steps.items()}

  monkeypatch.setattr(train, "compile_steps", slow_steps)
  s = _settings(tiny_ckpt_dir, train__num_steps=24, train__log_every=1000,
                train__eval_every=1000, train__ckpt_every=1000)
  train.train_and_evaluate(s, str(tmp_path / "run"))
  assert len(behind) == 24
  # Unfinished metrics leaves (loss, total, grad norm, ...) of at most MAX_IN_FLIGHT steps.
  per_step = len(jax.tree_util.tree_leaves(dispatched[0]))
  assert max(behind) <= train.MAX_IN_FLIGHT * per_step, behind


def test_a_run_that_diverges_in_its_first_window_saves_nothing(default_ckpt_dir, data_dir,
                                                              tmp_path):
  """The smoke run at lr 1e3: STS's first step (step 3, after an SST and a Quora step) has
  a loss of ~1e15. Measured against the first window's own values it looked healthy and
  became checkpoints/3 and best/3; against the run's first step it stops before anything
  is saved, and says no checkpoint was saved."""
  s = _settings(default_ckpt_dir, optim__lr=1e3, train__num_steps=3, train__log_every=3,
                train__eval_every=3, train__ckpt_every=3)
  workdir = str(tmp_path / "run")
  with pytest.raises(health.TrainingStopped) as info:
    train.train_and_evaluate(s, workdir)
  assert "started diverged" in str(info.value)
  assert "no checkpoint was saved before it" in str(info.value)
  assert _saved_steps(workdir) == ([], None)
