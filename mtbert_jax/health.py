"""A run's guards: signals turned into a checkpoint-and-exit request, and the checks that
stop training on a non-finite or diverged loss (or broken loaded weights) before such a
state can become a checkpoint. `train.py` runs them between steps."""

from __future__ import annotations

import logging
import math
import signal
import threading

import jax
import numpy as np

from mtbert_jax import settings as settings_lib

log = logging.getLogger(__name__)


class Interrupt:
  """Turns SIGTERM and a first Ctrl-C (SIGINT) into a flag the loop checks between steps:
  it saves a checkpoint and exits. A second Ctrl-C stops at once (KeyboardInterrupt)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = None  # the signal's name once one arrived
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.requested:
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name
    if signum == signal.SIGINT:
      log.warning("Ctrl-C: saving a checkpoint after this step, then exiting; press Ctrl-C "
                  "again to stop at once")

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


# A task's mean loss over a metrics window this many times its first step's is divergence.
DIVERGENCE_FACTOR = 1e3

class TrainingStopped(FloatingPointError):
  """Training stopped on a non-finite or diverged loss; the message says where the last
  good checkpoint is and what may have caused it."""


class Health:
  """Stops the run on a non-finite update (skipped by the step and counted) or a window's
  mean loss `DIVERGENCE_FACTOR` times the loss of its first step, before that state can
  become a checkpoint. The baseline is the first step's loss (per term), not the first
  window's mean: a run that diverges inside its first window would otherwise measure
  itself against its own diverged values."""

  def __init__(self, resume_dir: str, last_saved: int | None = None):
    self.resume_dir, self.last_saved = resume_dir, last_saved
    self.first: dict[str, float] = {}  # per loss term, its first step's value
    self.run_first: tuple[str, float] | None = None  # the run's first task loss (abs)

  def _stop(self, step: int, what: str, cause: str):
    saved = (f"the last checkpoint, step {self.last_saved}, is in {self.resume_dir} (the run "
             "resumes from it with the same command)" if self.last_saved is not None else
             "no checkpoint was saved before it")
    raise TrainingStopped(f"training stopped at step {step}: {what}; {saved}. {cause}")

  def check(self, step: int, nonfinite: int, host: list[dict[str, float]],
            summary: dict[str, float], first_window: bool):
    """`host`: the window's per-step metrics in step order; `summary`: their means."""
    for metrics in host:
      for key, value in metrics.items():
        if key.startswith("loss/") and key != "loss/total" and math.isfinite(value):
          self.first.setdefault(key, value)
          # A task whose first step comes after other tasks' (round robin) may start
          # diverged: its first loss is held against the run's first step too (tasks'
          # losses at the start differ by far less than the factor).
          if self.run_first is None:
            self.run_first = (key, abs(value))
          elif (key.removeprefix("loss/") in settings_lib.TASKS and self.first[key] == value
                and abs(value) > DIVERGENCE_FACTOR * max(self.run_first[1], 1e-3)):
            self._stop(step, f"{key} started diverged ({value:.3g} at its first step, "
                       f"against {self.run_first[0]} {self.run_first[1]:.3g} at the run's "
                       "first step)", "Lower --config.optim.lr (or set "
                       "--config.optim.grad_clip).")
    if nonfinite:
      cause = ("It happened within the first steps: check the data and the loaded weights "
               "first, then lower --config.optim.lr." if first_window else
               "Lower --config.optim.lr (or set --config.optim.grad_clip), or check the data.")
      self._stop(step, f"a non-finite loss or gradient ({nonfinite} step(s) skipped)", cause)
    for key, value in summary.items():
      if not key.startswith("loss/") or key == "loss/total":
        continue
      first = self.first.setdefault(key, value)
      if abs(value) > DIVERGENCE_FACTOR * max(abs(first), 1e-3):
        self._stop(step, f"{key} diverged (a mean of {value:.3g} over the steps to {step}, "
                   f"against {first:.3g} at its first step)",
                   "Lower --config.optim.lr (or set --config.optim.grad_clip).")


def check_finite_weights(params, source: str) -> None:
  bad = [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_leaves_with_path(params)
         if not np.all(np.isfinite(np.asarray(x)))]
  if bad:
    raise TrainingStopped(f"the weights loaded from {source} hold NaN or inf values in "
                          f"{len(bad)} tensor(s), e.g. {bad[:3]}; the checkpoint is broken")
