"""Orbax checkpoints of a run: resumable ones (`WORKDIR/checkpoints`) and the best (`WORKDIR/best`).

A resumable checkpoint holds the whole train state (params, optimizer state, task-loss
averages, EMA params) plus a JSON `meta` item (step, data-iterator states, best score so
far, the config), so the same command resumes exactly where a killed run stopped. The best
checkpoint holds only the parameters and the dev metrics that made it best. Orbax writes each
step to a temporary folder and renames it when complete, so a run killed mid-save leaves the
previous checkpoint intact.

The workdir's other files written by more than one mode live here too, below both the
training loop and evaluation: `config.json` (the run's settings), atomic JSON writes, and
restoring the best parameters into the configured model.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from mtbert_jax import experiment
from mtbert_jax import heads as heads_lib
from mtbert_jax import settings as settings_lib

RESUME_DIR = "checkpoints"
BEST_DIR = "best"


def _manager(directory: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "meta"))


def _abstract(tree: Any) -> Any:
  """Shape/dtype/sharding skeleton of `tree`, so a restore lands with the same layout."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


class Checkpoints:
  """The two checkpoint series of a workdir."""

  def __init__(self, workdir: str, keep: int = 1):
    self.workdir = workdir
    self.resume = _manager(os.path.join(workdir, RESUME_DIR), keep)
    self.best = _manager(os.path.join(workdir, BEST_DIR), 1)

  def latest_step(self) -> int | None:
    return self.resume.latest_step()

  def save_resume(self, step: int, state: Any, meta: dict) -> None:
    if step in self.resume.all_steps():
      self.resume.delete(step)
    self.resume.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)), force=True)
    self.resume.wait_until_finished()

  def restore_resume(self, state_like: Any, step: int | None = None) -> tuple[Any, dict]:
    step = self.resume.latest_step() if step is None else step
    restored = self.resume.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state_like)), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def save_best(self, step: int, params: Any, meta: dict) -> None:
    if step in self.best.all_steps():  # re-reached after a resume from an earlier checkpoint
      self.best.delete(step)
    self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(params),
                                                 meta=ocp.args.JsonSave(meta)), force=True)
    self.best.wait_until_finished()

  def best_step(self) -> int | None:
    return self.best.latest_step()

  def restore_best(self, params_like: Any) -> tuple[Any, dict]:
    step = self.best.latest_step()
    if step is None:
      raise FileNotFoundError(f"no best checkpoint in {os.path.join(self.workdir, BEST_DIR)}: "
                              "train first (python launch.py --mode=train ...)")
    restored = self.best.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(params_like)), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def read_best_meta(self) -> dict | None:
    step = self.best.latest_step()
    if step is None:
      return None
    return self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def close(self) -> None:
    self.resume.close()
    self.best.close()


# ------------------------------------------------------------------------------------------
# Workdir files.

CONFIG_FILE = "config.json"


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as JSON to a temporary file, then renames it: no reader sees half a file."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def save_settings(workdir: str, s: settings_lib.Settings) -> None:
  if jax.process_index() == 0:
    write_json(os.path.join(workdir, CONFIG_FILE), settings_lib.to_dict(s))


def load_settings(workdir: str) -> settings_lib.Settings:
  """The settings a workdir was trained with (its config.json)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} the --workdir of a training run?")
  with open(path, encoding="utf-8") as f:
    try:
      d = json.load(f)
    except json.JSONDecodeError as e:
      raise settings_lib.ConfigError(f"{path}: not valid JSON ({e})") from e
  try:
    return settings_lib.from_dict(d)
  except settings_lib.ConfigError as e:
    raise settings_lib.ConfigError(f"{path}: {e}") from e


def restore_best_params(s: settings_lib.Settings, workdir: str):
  """(model, best params, tokenizer) of a workdir's best checkpoint."""
  mt_model, _ = experiment.build_model(s, load_weights=False)
  tok = experiment.tokenizer(s)
  like = jax.eval_shape(lambda: heads_lib.init_params(mt_model, jax.random.key(0)))
  like = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), like)
  ckpts = Checkpoints(workdir)
  try:
    params, _ = ckpts.restore_best(like)
  except ValueError as e:
    raise ValueError(f"the best checkpoint in {workdir} does not fit the configured model "
                     f"({e})") from e
  finally:
    ckpts.close()
  return mt_model, params, tok
