"""Dev metrics, prediction files in the course format, and inference from a workdir.

Metrics come from the task table (SST accuracy, Quora accuracy, STS Pearson correlation),
with their plain average (the paper's headline) and the course leaderboard score
(`tasks.summarize`). Prediction files follow the course's `multitask_classifier.py` byte
for byte: a header `id \\t Predicted_<X> ` and one `id , value ` line per input row. Each
file is written to a temporary name and renamed when complete, so no partial file looks
finished. `evaluate_and_predict` is what the end of training and `--mode=eval` share;
`Predictor` is the Python API.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

from mtbert_jax import checkpoint as ckpt_lib
from mtbert_jax import data as data_lib
from mtbert_jax import experiment
from mtbert_jax import heads as heads_lib
from mtbert_jax import objective
from mtbert_jax import sharding
from mtbert_jax import tasks as tasks_lib
from mtbert_jax.settings import Settings

log = logging.getLogger(__name__)


def make_output_fns(mt_model: heads_lib.MultitaskModel) -> dict[str, Callable]:
  """Jitted `fn(params, batch) -> task output [B]` per evaluated task, dropout off."""
  def output_fn(task: tasks_lib.Task):
    def fn(params, batch):
      inputs = objective.stack_segments(batch, task.segments(mt_model.heads))
      vectors = mt_model.apply({"params": params}, inputs["input_ids"],
                               inputs["attention_mask"], inputs["token_type_ids"], True,
                               method=heads_lib.MultitaskModel.vector)
      return objective.head(mt_model, params, task, vectors, None)
    return jax.jit(fn)
  return {name: output_fn(tasks_lib.get(name)) for name in tasks_lib.EVAL_TASKS}


def make_predict_fns(mt_model: heads_lib.MultitaskModel) -> dict[str, Callable]:
  """Jitted `fn(params, batch) -> predictions [B]` per task: class id, 0/1, or 0-5 score."""
  def predict_fn(task: tasks_lib.Task, out_fn):
    return jax.jit(lambda params, batch: task.predict(out_fn(params, batch)))
  return {name: predict_fn(tasks_lib.get(name), fn)
          for name, fn in make_output_fns(mt_model).items()}


def predict(predict_fn: Callable, params: Any, tokset: data_lib.TokenizedSet, batch_size: int,
            buckets: Sequence[int], sharder: Any = None) -> np.ndarray:
  """Predictions for every row of `tokset`, in file order.

  `batch_size` is global; with a `sharding.Sharder` each host feeds its slice of every
  batch to the mesh and every host gets all predictions back.
  """
  out = None
  for batch in data_lib.eval_batches(tokset, batch_size, buckets):
    index = batch.pop("index")
    batch.pop("labels", None)
    batch.pop("weights")
    if sharder is None:
      pred = np.asarray(jax.device_get(predict_fn(params, batch)))
    else:
      pred = sharder.gather(predict_fn(params, sharder.put_global(batch)))
    if out is None:
      out = np.zeros((len(tokset),) + pred.shape[1:], pred.dtype)
    keep = index >= 0
    out[index[keep]] = pred[keep]
  return out if out is not None else np.zeros(0)


def write_predictions(path: str, task: str, ids: Sequence[str], values: np.ndarray) -> None:
  """One course-format prediction file, written atomically."""
  if len(ids) != len(values):
    raise ValueError(f"{path}: {len(values)} predictions for {len(ids)} ids")
  spec = tasks_lib.get(task)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(f"id \t {spec.prediction_header} \n")
    for example_id, value in zip(ids, values):
      f.write(f"{example_id} , {spec.format_value(value)} \n")
  os.replace(tmp, path)


def evaluate_split(predict_fns: dict[str, Callable], params: Any,
                   sets: dict[str, data_lib.TokenizedSet | None], batch_size: int,
                   buckets: Sequence[int], sharder: Any = None
                   ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """(scores per labeled task, predictions per task) over the configured sets."""
  scores, preds = {}, {}
  for task, tokset in sets.items():
    if tokset is None:
      continue
    preds[task] = predict(predict_fns[task], params, tokset, batch_size, buckets, sharder)
    if tokset.labels is not None:
      scores[task] = tasks_lib.get(task).score(preds[task], tokset.labels)
  return scores, preds


def prediction_path(pred_dir: str, task: str, split: str) -> str:
  return os.path.join(pred_dir, f"{tasks_lib.get(task).prediction_file}-{split}-output.csv")


def write_split_predictions(pred_dir: str, split: str,
                            sets: dict[str, data_lib.TokenizedSet | None],
                            preds: dict[str, np.ndarray]) -> list[str]:
  """Writes `<task>-<split>-output.csv` for each configured set; logs the skipped ones."""
  os.makedirs(pred_dir, exist_ok=True)
  written = []
  for task in tasks_lib.EVAL_TASKS:
    path = prediction_path(pred_dir, task, split)
    if sets.get(task) is None:
      log.info("no %s file configured for %s: %s not written", split, task,
               os.path.basename(path))
      continue
    write_predictions(path, task, sets[task].ids, preds[task])
    written.append(path)
  return written


def evaluate_and_predict(s: Settings, workdir: str, mt_model, params, tok,
                         sharder: sharding.Sharder, step: int, write_metrics: bool = True,
                         dev_results: tuple | None = None,
                         predict_fns: dict | None = None) -> dict[str, float]:
  """Dev metrics of `params`, `metrics.json` (`write_metrics`), and the prediction files.

  `dev_results`: (scores, predictions) already computed for exactly these params on the
  full dev sets (the loop's last evaluation of the best step), reused instead of recomputed.
  `predict_fns`: the loop's jitted predictors, so their compiled shapes are reused.
  """
  predict_fns = predict_fns or make_predict_fns(mt_model)
  sharder.check_batch_size(s.eval.batch_size, "eval.batch_size")
  metrics: dict[str, Any] = {"step": int(step)}
  pred_dir = os.path.join(workdir, "predictions")
  for split in ("dev", "test"):
    sets = experiment.eval_sets(s, tok, split)
    if split == "dev" and dev_results is not None:
      scores, preds = dev_results
    else:
      log.info("evaluating the %s sets: %s", split,
               [t for t in tasks_lib.EVAL_TASKS if sets[t] is not None])
      scores, preds = evaluate_split(predict_fns, params, sets, s.eval.batch_size,
                                     s.eval_buckets, sharder)
    if split == "dev":
      metrics.update(tasks_lib.summarize(scores))
    if s.eval.write_predictions and jax.process_index() == 0:
      write_split_predictions(pred_dir, split, sets, preds)
  if write_metrics and jax.process_index() == 0:
    ckpt_lib.write_json(os.path.join(workdir, "metrics.json"), metrics)
  return metrics


def evaluate_workdir(workdir: str, s: Settings | None = None,
                     write_metrics: bool = True) -> dict[str, float]:
  """`--mode=eval` (metrics.json + predictions) / `predict` (predictions only) of the best
  checkpoint; the data files are those of `s` (default: the training run's)."""
  s = s or ckpt_lib.load_settings(workdir)
  mt_model, params, tok = ckpt_lib.restore_best_params(s, workdir)
  sharder = sharding.Sharder(sharding.make_mesh())
  ckpts = ckpt_lib.Checkpoints(workdir)
  step = ckpts.best_step()
  ckpts.close()
  return evaluate_and_predict(s, workdir, mt_model, sharder.replicate(params), tok, sharder,
                              step, write_metrics)


class Predictor:
  """Inference with the best checkpoint of a workdir.

      p = Predictor.from_workdir("runs/quick")
      p.sentiment(["A gorgeous film ."])          # -> array of classes 0..4
      p.paraphrase([("How old are you?", "What is your age?")])  # -> array of 0/1
      p.similarity([("A man plays.", "A man is playing.")])      # -> array of 0..5 scores
  """

  def __init__(self, mt_model, params, tokenizer, max_length: int, buckets: Sequence[int],
               batch_size: int = 64):
    self.model, self.params, self.tokenizer = mt_model, params, tokenizer
    self.max_length, self.buckets, self.batch_size = max_length, tuple(buckets), batch_size
    self._fns = make_predict_fns(mt_model)

  @classmethod
  def from_workdir(cls, workdir: str, batch_size: int = 64) -> "Predictor":
    s = ckpt_lib.load_settings(workdir)
    mt_model, params, tok = ckpt_lib.restore_best_params(s, workdir)
    return cls(mt_model, params, tok, s.data.max_length, s.eval_buckets, batch_size)

  def _run(self, task: str, tokset: data_lib.TokenizedSet) -> np.ndarray:
    return predict(self._fns[task], self.params, tokset, self.batch_size, self.buckets)

  def sentiment(self, sentences: Sequence[str]) -> np.ndarray:
    rows = data_lib.SentenceRows([str(i) for i in range(len(sentences))], list(sentences), None)
    return self._run("sst", data_lib.tokenize_sentences(rows, self.tokenizer, self.max_length))

  def _pairs(self, task: str, pairs: Sequence[tuple[str, str]]) -> data_lib.TokenizedSet:
    rows = data_lib.PairRows([str(i) for i in range(len(pairs))], [a for a, _ in pairs],
                             [b for _, b in pairs], None)
    return tasks_lib.get(task).tokenize(rows, self.tokenizer, self.max_length,
                                        self.model.heads)

  def paraphrase(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    return self._run("para", self._pairs("para", pairs))

  def similarity(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    return self._run("sts", self._pairs("sts", pairs))
