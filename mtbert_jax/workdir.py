"""A workdir's files and the rules that keep it consistent.

* One run at a time: `lock(workdir)` holds an exclusive `fcntl` lock on `WORKDIR/.lock`
  for the life of a train, eval or predict run. The operating system releases it when the
  process ends, however it ends (SIGKILL too), so a lock never goes stale; the file keeps
  the holder's host, process id, start time and command, which a second run names when it
  refuses to start.
* The trained settings are the workdir's contract (`config.json`): a resume, an evaluation
  or a prediction compares its settings with them and refuses every difference that would
  change the model, its inputs or its training, listing each field with both values
  (`check_contract`). Fields that may differ are listed in `FREE` per mode.
* Files are written whole or not at all (`write_json`, and the prediction files in
  `evaluate.py`): to a temporary name, then renamed.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import fnmatch
import json
import logging
import os
import socket
import sys
from typing import Any, Iterator

from mtbert_jax import settings as settings_lib

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"

# Fields that may differ from config.json, per mode (fnmatch patterns over flat names).
_ALWAYS = ("train.log_every", "train.eval_every", "train.ckpt_every", "train.progress",
           "eval.batch_size", "eval.dtype", "eval.write_predictions", "eval.dev", "ckpt.keep",
           "ckpt.export_hf", "jax_cache_dir", "data.dir", "data.tfds_dir", "data.*_test")
FREE = {
    # Resuming continues the same training: only the step budget may grow, and what is
    # logged, saved or evaluated (dev sets and their padding) may change.
    "resume": _ALWAYS + ("train.num_steps", "eval.buckets"),
    # Evaluation and prediction use the trained model and its tokenization (checkpoint,
    # heads, max length); everything about training, and which dev files, may differ, as
    # may the compute precision and kernels of the forward pass.
    "eval": _ALWAYS + ("seed", "train.*", "optim.*", "weighting.*", "smart.*", "simcse.*",
                       "distill.*",
                       "data.*_train", "data.*_dev", "data.train_limit", "data.dev_limit",
                       "data.cfimdb_*", "data.tweets*", "data.nli", "data.on_invalid",
                       "data.swap_pairs", "eval.buckets", "eval.both_orders", "model.dtype",
                       "model.kernels", "model.attention", "model.hidden_dropout",
                       "model.attention_dropout", "model.remat"),
}


class WorkdirError(RuntimeError):
  """A workdir that cannot be used as asked: locked, of another config, not a run's."""


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as JSON to a temporary file, then renames it: no reader sees half a file."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def prepare(workdir: str, create: bool) -> str:
  """`workdir` as an absolute folder: created for training (`create`), required otherwise."""
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir={workdir} is a file, expected a folder")
  if create:
    os.makedirs(workdir, exist_ok=True)
  elif not os.path.isfile(os.path.join(workdir, CONFIG_FILE)):
    what = "does not exist" if not os.path.isdir(workdir) else f"has no {CONFIG_FILE}"
    raise WorkdirError(f"--workdir={workdir} {what}: it is not the workdir of a training "
                       "run (train first: python launch.py --mode=train ...)")
  return workdir


@contextlib.contextmanager
def lock(workdir: str, mode: str) -> Iterator[None]:
  """Holds the workdir's exclusive lock for the block, or fails at once naming the holder."""
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      with open(path, encoding="utf-8") as f:
        holder = f.read().strip() or "another process"
      raise WorkdirError(f"--workdir={workdir} is in use by {holder}: one run at a time per "
                         "workdir (wait for it, stop it, or choose another --workdir)") from None
    info = (f"{mode} run of pid {os.getpid()} on {socket.gethostname()}, started "
            f"{datetime.datetime.now().isoformat(timespec='seconds')}: "
            f"{' '.join(sys.argv)}")
    os.ftruncate(fd, 0)
    os.pwrite(fd, info.encode(), 0)
    try:
      yield
    finally:
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


def save_settings(workdir: str, s: settings_lib.Settings) -> None:
  write_json(os.path.join(workdir, CONFIG_FILE), settings_lib.to_dict(s))


def has_settings(workdir: str) -> bool:
  return os.path.isfile(os.path.join(workdir, CONFIG_FILE))


def load_settings(workdir: str, fill_from: settings_lib.Settings | None = None
                  ) -> settings_lib.Settings:
  """The settings a workdir was trained with (its config.json). A field that config.json
  lacks (written by a version before the field existed) is an error, or, with `fill_from`,
  takes that value with a warning that names it."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise WorkdirError(f"{path} not found: is {workdir} the --workdir of a training run?")
  with open(path, encoding="utf-8") as f:
    try:
      d = json.load(f)
    except json.JSONDecodeError as e:
      raise settings_lib.ConfigError(f"{path}: not valid JSON ({e})") from e
  filled: list[str] = []
  try:
    s = settings_lib.from_dict(d, fill_from, filled)
  except settings_lib.ConfigError as e:
    raise settings_lib.ConfigError(f"{path}: {e}") from e
  if filled:
    values = settings_lib.flatten(settings_lib.to_dict(fill_from))
    log.warning("%s lacks %s (fields added since it was written): using %s", path,
                ", ".join(filled), ", ".join(f"{f}={values[f]!r}" for f in filled))
  return s


def differences(saved: settings_lib.Settings, new: settings_lib.Settings,
                mode: str) -> list[tuple[str, Any, Any]]:
  """(field, trained value, new value) of every field that `mode` may not change."""
  a = settings_lib.flatten(settings_lib.to_dict(saved))
  b = settings_lib.flatten(settings_lib.to_dict(new))
  free = FREE[mode]
  return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k) and not any(fnmatch.fnmatchcase(k, p) for p in free)]


def check_contract(workdir: str, new: settings_lib.Settings, mode: str) -> None:
  """Refuses `new` for `mode` ("resume" or "eval") when it differs from the trained settings
  in a field that mode may not change; the message lists each field and both values."""
  diff = differences(load_settings(workdir, fill_from=new), new, mode)
  if diff:
    lines = "\n".join(f"  --config.{k}: trained {a!r}, now {b!r}" for k, a, b in diff)
    action = {"resume": "resume", "eval": "evaluate or predict with"}[mode]
    raise WorkdirError(
        f"--workdir={workdir} was trained with other settings; cannot {action} it with "
        f"these ({len(diff)} field(s) differ):\n{lines}\nUse the training run's config "
        f"and flags (saved in {os.path.join(workdir, CONFIG_FILE)}), or another --workdir.")
