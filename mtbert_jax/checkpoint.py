"""Orbax checkpoints of a run: resumable ones (`WORKDIR/checkpoints`) and the best (`WORKDIR/best`).

A resumable checkpoint holds the whole train state (params, optimizer state, task-loss
averages, EMA params) plus a JSON `meta` item (step, data-iterator states, best score so
far, the config), so the same command resumes exactly where a killed run stopped. The best
checkpoint holds only the parameters and the dev metrics that made it best. Orbax writes each
step to a temporary folder and renames it when complete, so a run killed mid-save leaves the
previous checkpoint intact.

A step that does not restore (a truncated or missing file) is reported in one line, and
the newest intact step before it is used instead, saying so; with none left the error says
what to do. `read_best_params` restores the best parameters into the skeleton of a model
that its caller built (`evaluate.restore_best` builds one from the settings).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from mtbert_jax import settings as settings_lib
from mtbert_jax import workdir as workdir_lib

log = logging.getLogger(__name__)

RESUME_DIR = "checkpoints"
BEST_DIR = "best"


class CheckpointError(RuntimeError):
  """No intact checkpoint to restore where one was expected."""


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  first = next((line.strip() for line in text if line.strip()), "")
  first = first.split(" See full TensorStore details")[0]  # a repr of the whole spec follows
  return f"{type(e).__name__}: {first[:300]}"


def _manager(directory: str, keep: int, create: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
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

  def __init__(self, workdir: str, keep: int = 1, create: bool = True):
    self.workdir = workdir
    self.resume = _manager(os.path.join(workdir, RESUME_DIR), keep, create)
    self.best = _manager(os.path.join(workdir, BEST_DIR), 1, create)

  def latest_step(self) -> int | None:
    return self.resume.latest_step()

  def save_resume(self, step: int, state: Any, meta: dict) -> None:
    if step in self.resume.all_steps():
      self.resume.delete(step)
    self.resume.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)), force=True)
    self.resume.wait_until_finished()

  def restore_resume(self, state_like: Any) -> tuple[Any, dict]:
    """The newest resumable step that restores, and its meta; a broken newer step is
    reported and skipped (`ckpt.keep` > 1 keeps earlier ones to fall back on)."""
    steps = sorted(self.resume.all_steps(), reverse=True)
    broken = []
    for step in steps:
      try:
        restored = self.restore_step(step, state_like)
      except Exception as e:  # orbax/TensorStore raise many types; each is reported
        broken.append(step)
        log.warning("checkpoint %s/%d does not restore (%s)%s", self.resume.directory, step,
                    _first_line(e), "; trying the step before it" if step != steps[-1] else "")
        continue
      if broken:
        log.warning("resuming from step %d instead of the broken step(s) %s", step, broken)
      return restored
    raise CheckpointError(
        f"no resumable checkpoint in {self.resume.directory} restores (steps {broken} are "
        "broken, see the warnings above). Start over in a new --workdir, or delete the broken "
        f"step folders (e.g. rm -r {os.path.join(str(self.resume.directory), str(steps[0]))}) "
        "to retrain from the step before them or from the start.")

  def restore_step(self, step: int, state_like: Any) -> tuple[Any, dict]:
    """The resumable checkpoint of `step` and its meta (orbax's errors propagate; a meta
    item of the wrong shape is a CheckpointError naming it)."""
    restored = self.resume.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state_like)), meta=ocp.args.JsonRestore()))
    return restored["state"], _checked_meta(restored["meta"],
                                            os.path.join(str(self.resume.directory), str(step)))

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
      raise CheckpointError(f"no best checkpoint in {os.path.join(self.workdir, BEST_DIR)}: "
                            "train first (python launch.py --mode=train ...)")
    try:
      restored = self.best.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract(params_like)), meta=ocp.args.JsonRestore()))
    except ValueError as e:
      if "structure" in str(e).lower() or "shape" in str(e).lower():
        raise  # a checkpoint of another model: read_best_params names it
      raise CheckpointError(f"the best checkpoint {self.best.directory}/{step} does not "
                            f"restore ({_first_line(e)})") from e
    except Exception as e:  # orbax/TensorStore raise many types
      raise CheckpointError(f"the best checkpoint {self.best.directory}/{step} does not "
                            f"restore ({_first_line(e)}); retrain, or restore the files of "
                            "that folder") from e
    return restored["state"], restored["meta"]

  def read_resume_meta(self) -> dict | None:
    """The newest resumable checkpoint's meta item, or None without one."""
    step = self.resume.latest_step()
    if step is None:
      return None
    meta = self.resume.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return meta["meta"]

  def read_best_meta(self) -> dict | None:
    step = self.best.latest_step()
    if step is None:
      return None
    return self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def close(self) -> None:
    self.resume.close()
    self.best.close()


def _checked_meta(meta: Any, where: str) -> dict:
  """A resumable checkpoint's meta item as the loop reads it, or a CheckpointError that
  names the checkpoint (a hand-edited or foreign meta file)."""
  expected = {"step": int, "iterators": dict, "best_score": (int, float), "best_step": int}
  bad = ([] if isinstance(meta, dict) else ["the item itself (not a JSON object)"]) or [
      f"{key} ({type(meta.get(key)).__name__ if key in meta else 'missing'})"
      for key, kind in expected.items() if not isinstance(meta.get(key), kind)]
  if not bad and not all(isinstance(v, dict) for v in meta["iterators"].values()):
    bad = ["iterators (each task's state should be an object)"]
  if bad:
    raise CheckpointError(f"the checkpoint {where} has a malformed meta item: "
                          f"{', '.join(bad)}; restore that step's files, or delete it to "
                          "resume from an earlier one")
  return meta


# ------------------------------------------------------------------------------------------
# The config saved with the checkpoints: the workdir's contract beside config.json.


def saved_config(workdir: str) -> dict | None:
  """The config the checkpoints were trained with: the newest resumable checkpoint's, else
  the best one's; None when the workdir has no checkpoint holding one."""
  if not any(os.path.isdir(os.path.join(workdir, d)) for d in (RESUME_DIR, BEST_DIR)):
    return None
  ckpts = Checkpoints(workdir, create=False)
  try:
    for read in (ckpts.read_resume_meta, ckpts.read_best_meta):
      try:
        meta = read()
      except Exception:  # pylint: disable=broad-except
        continue  # an unreadable step: restoring it reports it in one line
      if isinstance(meta, dict) and isinstance(meta.get("config"), dict):
        return meta["config"]
    return None
  finally:
    ckpts.close()


def check_saved_config(workdir: str, s: settings_lib.Settings, mode: str) -> None:
  """Refuses `s` for `mode` ("resume" or "eval") when it differs from the config saved with
  the checkpoints in a field that mode may not change, whether or not config.json says the
  same: config.json can be deleted or edited, the checkpoints' copy travels with them."""
  saved = saved_config(workdir)
  if saved is None:
    return
  try:
    trained = settings_lib.from_dict(saved, fill_from=s)
  except (settings_lib.ConfigError, TypeError, ValueError) as e:
    raise CheckpointError(f"the config saved with the checkpoints of {workdir} does not "
                          f"read ({e})") from e
  diff = workdir_lib.differences(trained, s, mode)
  if diff:
    lines = "\n".join(f"  --config.{k}: trained {a!r}, now {b!r}" for k, a, b in diff)
    # Callers compare with config.json first, so a difference here means config.json was
    # deleted or changed after the checkpoints were saved.
    config_json = os.path.join(workdir, workdir_lib.CONFIG_FILE)
    why = "is missing" if not workdir_lib.has_settings(workdir) else "was changed since"
    action = {"resume": "resume", "eval": "evaluate or predict with"}[mode]
    raise workdir_lib.WorkdirError(
        f"--workdir={workdir}: its checkpoints were trained with other settings ({config_json} "
        f"{why}); cannot {action} them with these ({len(diff)} field(s) differ):\n{lines}\n"
        "Use the training run's settings, or another --workdir.")


def run_settings(workdir: str, s: settings_lib.Settings | None) -> settings_lib.Settings:
  """The settings to evaluate, predict with or export a finished workdir: `s` checked
  against its config.json and its checkpoints' config (a field that changes the model or
  its inputs must agree), or with `s` None the run's own (`workdir_settings`)."""
  if s is None:
    return workdir_settings(workdir)
  workdir_lib.check_contract(workdir, s, "eval")
  check_saved_config(workdir, s, "eval")
  return s


def workdir_settings(workdir: str) -> settings_lib.Settings:
  """The settings a finished workdir was trained with: its config.json, checked against
  the config saved with its checkpoints (a hand-edited config.json is refused); with
  config.json deleted, the checkpoints' config, with a warning."""
  if workdir_lib.has_settings(workdir):
    s = workdir_lib.load_settings(workdir)
    check_saved_config(workdir, s, "eval")
    return s
  saved = saved_config(workdir)
  if saved is None:
    return workdir_lib.load_settings(workdir)  # the error that says config.json is missing
  log.warning("%s is missing: using the config saved with the checkpoints",
              os.path.join(workdir, workdir_lib.CONFIG_FILE))
  return settings_lib.from_dict(saved)


# ------------------------------------------------------------------------------------------
# The best parameters of a workdir.


def best_param_names(workdir: str) -> set[str] | None:
  """The top-level names of the best checkpoint's parameter tree (`bert` and each head
  layer), read from its metadata; None without a best checkpoint."""
  ckpts = Checkpoints(workdir, create=False)
  step = ckpts.best_step()
  ckpts.close()
  if step is None:
    return None
  from etils import epath  # pylint: disable=import-outside-toplevel  # orbax's path type
  folder = epath.Path(os.path.join(workdir, BEST_DIR, str(step), "state"))
  return set(ocp.StandardCheckpointHandler().metadata(folder).keys())


def read_best_params(workdir: str, params_like: Any) -> Any:
  """The parameters of a workdir's best checkpoint, restored with the structure, shapes,
  dtypes and shardings of `params_like`; a checkpoint of another structure or shape is a
  ValueError that says so."""
  ckpts = Checkpoints(workdir, create=False)
  try:
    params, _ = ckpts.restore_best(params_like)
  except ValueError as e:
    raise ValueError(f"the best checkpoint in {workdir} does not fit the configured model "
                     f"({e})") from e
  finally:
    ckpts.close()
  return params
