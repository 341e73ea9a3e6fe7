"""Two processes on localhost (JAX's distributed runtime, CPU collectives through gloo)
train the smoke config like one process with the same global batch, and a checkpoint of
the two-process run resumes in one process.

Three launches: one process to step 9 (keeping its step-6 checkpoint and dev metrics), two
processes to step 6, then one process resuming the two-process run to step 9."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import smoke
from mtbert_jax import checkpoint as ckpt_lib
from mtbert_jax import console
from mtbert_jax import experiment
from mtbert_jax import settings as settings_lib
from mtbert_jax import tasks as tasks_lib
from mtbert_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 600  # seconds per launch; each process also stops itself (initialization timeout)


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def _cmd(workdir, ckpt_dir, steps, *extra):
  return [sys.executable, os.path.join(REPO, "launch.py"),
          f"--config={os.path.join(REPO, 'configs/smoke.py')}", f"--workdir={workdir}",
          f"--config.model.checkpoint={ckpt_dir}", "--config.jax_cache_dir=",
          f"--config.train.num_steps={steps}", "--config.eval.write_predictions=false", *extra]


def _env(**extra):
  return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", **extra)


def _one(workdir, ckpt_dir, steps, *extra):
  out = subprocess.run(_cmd(workdir, ckpt_dir, steps, *extra), env=_env(), capture_output=True,
                       text=True, timeout=TIMEOUT)
  assert out.returncode == 0, out.stderr[-3000:]


def _two(workdir, ckpt_dir, steps):
  port = _free_port()
  procs = [subprocess.Popen(_cmd(workdir, ckpt_dir, steps, "--multihost"),
                            env=_env(JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                                     JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
                                     JAX_INITIALIZATION_TIMEOUT="120"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=TIMEOUT) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "process 0 of 2" in outs[0][1] and "process 1 of 2" in outs[1][1]


def _state(workdir, s, step=None):
  """(state, meta) of the resumable checkpoint at `step` (default: the newest)."""
  m, _ = experiment.build_model(s, load_weights=False)
  params = tasks_lib.init_params(m, jax.random.key(0))
  like = train.init_state(params, train.make_optimizer(s, params), s)
  ckpts = ckpt_lib.Checkpoints(workdir, create=False)
  state, meta = (ckpts.restore_resume(like) if step is None
                 else ckpts.restore_step(step, like))
  ckpts.close()
  return jax.device_get(state), meta


def _dev_metrics(workdir, step):
  for entry in console.read_history(os.path.join(workdir, "history.jsonl")):
    if entry["step"] == step and "dev" in entry:
      return entry["dev"]
  raise AssertionError(f"no dev metrics of step {step} in {workdir}/history.jsonl")


def _close(a, b):
  # float32, gradient sums split over two processes in another order; 6 AdamW steps of
  # lr 3e-5 move parameters by ~2e-4, so a wrong slice or a missing all-reduce shows as
  # ~1e-5 or more.
  diff = max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a.params),
                                                          jax.tree.leaves(b.params)))
  assert diff < 2e-6, diff


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_in_one(tiny_ckpt_dir, data_dir, tmp_path):
  c = smoke.get_config()
  c.model.checkpoint = tiny_ckpt_dir
  c.jax_cache_dir = ""
  c.eval.write_predictions = False
  s = settings_lib.from_dict(c.to_dict())
  single, double = str(tmp_path / "single"), str(tmp_path / "double")
  _one(single, tiny_ckpt_dir, 9, "--config.ckpt.keep=2")  # keeps the checkpoints of 6 and 9
  _two(double, tiny_ckpt_dir, 6)
  state_1, meta_1 = _state(single, s, step=6)
  state_2, meta_2 = _state(double, s)
  assert meta_2["step"] == 6
  assert meta_1["iterators"] == meta_2["iterators"]  # the same global data position
  _close(state_1, state_2)
  metrics_1, metrics_2 = _dev_metrics(single, 6), _dev_metrics(double, 6)
  for key, value in metrics_1.items():
    assert metrics_2[key] == pytest.approx(value, abs=1e-4), key
  # The two-process checkpoint resumes in one process and continues as the single run does.
  _one(double, tiny_ckpt_dir, 9)
  longer = s.replace(train={"num_steps": 9})
  state_1, meta_1 = _state(single, longer)
  state_2, meta_2 = _state(double, longer)
  assert meta_1["step"] == meta_2["step"] == 9
  _close(state_1, state_2)
