"""Teachers for distillation: their targets on the training rows, computed once, cached.

A task with a teacher (`distill.teachers`: TASK=WORKDIR, a finished run, e.g. a single-task
row) learns the mix lambda * gold + (1 - lambda) * teacher (`objective.distilled_task_term`,
lambda from `losses.distillation_lambda`: Clark et al. 2019's teacher annealing). Before the
first step, the teacher's best checkpoint scores the task's training rows through the
evaluation path (`evaluate.predict`, with the mean over both pair orders where the teacher
was evaluated so), the task's row turns the outputs into targets (`Task.teacher_target`:
class probabilities, a probability, a score), and the result is cached in the student's
workdir by teacher and row id. The targets ride in the training sets
(`TokenizedSet.targets`) into the batches beside the labels, so the jitted step runs no
teacher. A teacher of another vocabulary, train file or validation split is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

import jax
import numpy as np

from mtbert_jax import checkpoint as ckpt_lib
from mtbert_jax import console
from mtbert_jax import data as data_lib
from mtbert_jax import evaluate as eval_lib
from mtbert_jax import experiment
from mtbert_jax import tasks as tasks_lib
from mtbert_jax import workdir as workdir_lib
from mtbert_jax.settings import ConfigError, Settings

log = logging.getLogger(__name__)

CACHE_DIR = "teachers"  # under the student's workdir: <task>.npz per teacher


def _vocab_digest(tok) -> str:
  with open(tok.vocab_file, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def check_teacher(s: Settings, teacher: Settings, task: str, teacher_dir: str) -> None:
  """Refuses a teacher whose outputs would not be the student's task on the student's
  rows: a run that did not train `task`, of another vocabulary, another train
  file, or another validation split (it would have trained on the student's validation
  rows, or not have scored some of its training rows)."""
  flag = f"--config.distill.teachers: the {task} teacher {teacher_dir}"
  if task not in teacher.train.tasks:
    raise ConfigError(f"{flag} did not train {task} (its train.tasks are "
                      f"{list(teacher.train.tasks)})")
  field = tasks_lib.get(task).files["train"]
  mine, theirs = experiment.data_path(s, field), experiment.data_path(teacher, field)
  if mine != theirs:
    raise ConfigError(f"{flag} trained on data.{field}={theirs!r}, this run on {mine!r}")
  if teacher.data.valid_fraction != s.data.valid_fraction:
    raise ConfigError(f"{flag} has data.valid_fraction={teacher.data.valid_fraction}, this "
                      f"run {s.data.valid_fraction}: another validation split")
  mine, theirs = (_vocab_digest(experiment.tokenizer(x)) for x in (s, teacher))
  if mine != theirs:
    raise ConfigError(f"{flag} has another vocabulary than this run (model.checkpoint "
                      f"{teacher.model.checkpoint!r} against {s.model.checkpoint!r})")


def _cache_key(teacher_dir: str, teacher: Settings, task: str, best_step: int) -> str:
  return json.dumps({"teacher": teacher_dir, "task": task, "best_step": best_step,
                     "train_file": experiment.data_path(teacher,
                                                        tasks_lib.get(task).files["train"]),
                     "valid_fraction": teacher.data.valid_fraction,
                     "both_orders": teacher.eval.both_orders,
                     "eval_dtype": teacher.eval.dtype}, sort_keys=True)


def _best_step(teacher_dir: str) -> int:
  ckpts = ckpt_lib.Checkpoints(teacher_dir, create=False)
  try:
    step = ckpts.best_step()
  finally:
    ckpts.close()
  if step is None:
    raise ConfigError(f"--config.distill.teachers: {teacher_dir} has no best checkpoint "
                      "(is its training finished?)")
  return int(step)


def teacher_dir_of(s: Settings, task: str) -> str:
  """The teacher workdir of `task` (absolute), `{seed}` in it replaced by this run's seed."""
  return os.path.abspath(s.distill.by_task[task].replace("{seed}", str(s.seed)))


def teacher_targets(s: Settings, workdir: str, task: str) -> tuple[list[str], np.ndarray]:
  """(row ids, targets) of the teacher of `task` on every row of the task's train part
  (the train file minus the validation split), from the cache in `workdir` when it holds
  this teacher's, else computed and cached."""
  teacher_dir = teacher_dir_of(s, task)
  if not workdir_lib.has_settings(teacher_dir):
    raise ConfigError(f"--config.distill.teachers: the {task} teacher {teacher_dir} is not "
                      f"the workdir of a training run (no {workdir_lib.CONFIG_FILE})")
  # A teacher's config.json written before a field existed takes this run's value of it,
  # except for the teachers: a teacher of its own has none.
  teacher = workdir_lib.load_settings(teacher_dir,
                                      fill_from=s.replace(distill={"teachers": ()}))
  check_teacher(s, teacher, task, teacher_dir)
  key = _cache_key(teacher_dir, teacher, task, _best_step(teacher_dir))
  path = os.path.join(workdir, CACHE_DIR, f"{task}.npz")
  if os.path.isfile(path):
    with np.load(path) as cached:
      if str(cached["key"]) == key:
        log.info("the %s teacher's targets: %s (cached)", task, path)
        return [str(i) for i in cached["ids"]], cached["targets"]
  mt_model, params, tok = eval_lib.restore_best(teacher, teacher_dir)
  every_row = teacher.replace(data={"train_limit": 0})
  orders = [experiment.load_split(every_row, tok, task, "train", reverse)
            for reverse in tasks_lib.orders(task, teacher.eval.both_orders)]
  fn = eval_lib.make_output_fns(mt_model, teacher.eval.dtype)[task]
  spec = tasks_lib.get(task)
  counter = console.Counter(f"the {task} teacher on the train rows"
                            + (" in both orders" if len(orders) == 2 else ""),
                            len(orders[0]) * len(orders), spec.unit)
  try:
    outputs = eval_lib.mean_over_orders(
        lambda order: eval_lib.predict(fn, params, order, teacher.eval.batch_size,
                                       teacher.eval_buckets, counter=counter), orders)
  finally:
    counter.close()
  ids, targets = list(orders[0].ids), spec.teacher_target(outputs)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, ids=np.array(ids), targets=targets, key=np.array(key))
    os.replace(tmp, path)
    log.info("the %s teacher's targets on %d rows: %s", task, len(ids), path)
  return ids, targets


def attach(tokset: data_lib.TokenizedSet, ids: list[str], targets: np.ndarray,
           what: str) -> data_lib.TokenizedSet:
  """`tokset` with the targets of its rows (by row id); every row must have one."""
  index = {row_id: i for i, row_id in enumerate(ids)}
  missing = [row_id for row_id in tokset.ids or () if row_id not in index]
  if tokset.ids is None or missing:
    raise ConfigError(f"--config.distill.teachers: the {what} teacher has no output for "
                      + ("rows without ids" if tokset.ids is None else
                         f"{len(missing)} training rows (the first: id {missing[0]!r})"))
  return dataclasses.replace(tokset, targets=targets[[index[r] for r in tokset.ids]])


def attach_all(s: Settings, workdir: str, task: str,
               sources: list[data_lib.TokenizedSet]) -> list[data_lib.TokenizedSet]:
  """The task's training sources with its teacher's targets, when it has a teacher."""
  if task not in s.distill.by_task:
    return sources
  ids, targets = teacher_targets(s, workdir, task)
  return [attach(src, ids, targets, task) for src in sources]
