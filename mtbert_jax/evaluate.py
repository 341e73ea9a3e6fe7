"""Dev metrics, prediction files in the course format, and inference from a workdir.

Metrics: SST accuracy, Quora accuracy, STS Pearson correlation, their plain average (the
paper's headline) and the course leaderboard score (sst + para + (sts + 1) / 2) / 3.
Prediction files follow the course's `multitask_classifier.py` byte for byte: a header
`id \\t Predicted_<X> ` and one `id , value ` line per input row. Each file is written to a
temporary name and renamed when complete, so no partial file looks finished.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtbert_jax import data as data_lib
from mtbert_jax import experiment
from mtbert_jax import heads as heads_lib

log = logging.getLogger(__name__)

M = heads_lib.MultitaskModel

# task -> (file stem, course header column)
PREDICTION_FILES = {"sst": ("sst", "Predicted_Sentiment"),
                    "para": ("para", "Predicted_Is_Paraphrase"),
                    "sts": ("sts", "Predicted_Similiary")}  # sic: the course's spelling


def pearson(pred: np.ndarray, gold: np.ndarray) -> float:
  pred, gold = np.asarray(pred, np.float64), np.asarray(gold, np.float64)
  if len(pred) < 2 or pred.std() == 0 or gold.std() == 0:
    return 0.0
  return float(np.corrcoef(pred, gold)[0, 1])


def task_metric(task: str, pred: np.ndarray, gold: np.ndarray) -> float:
  if task == "sts":
    return pearson(pred, gold)
  return float(np.mean(np.asarray(pred) == np.asarray(gold)))


METRIC_NAMES = {"sst": "sst_acc", "para": "para_acc", "sts": "sts_pearson"}


def summarize(scores: dict[str, float], prefix: str = "dev") -> dict[str, float]:
  """Per-task metrics plus the average and the leaderboard score when all three are there."""
  out = {f"{prefix}/{METRIC_NAMES[t]}": v for t, v in scores.items()}
  if all(t in scores for t in METRIC_NAMES):
    out[f"{prefix}/average"] = (scores["sst"] + scores["para"] + scores["sts"]) / 3
    out[f"{prefix}/leaderboard"] = (scores["sst"] + scores["para"]
                                    + (scores["sts"] + 1) / 2) / 3
  return out


def make_predict_fns(mt_model: heads_lib.MultitaskModel) -> dict[str, Callable]:
  """Jitted `fn(params, batch) -> predictions [B]` per task: class id, 0/1, or 0-5 score."""
  joint_para = mt_model.heads.paraphrase == "prompt"

  def vec(params, batch, suffix=""):
    return mt_model.apply({"params": params}, batch[f"input_ids{suffix}"],
                          batch[f"attention_mask{suffix}"], batch[f"token_type_ids{suffix}"],
                          True, method=M.vector)

  def pair_vectors(params, batch):
    both = {k: jnp.concatenate([batch[f"{k}_1"], batch[f"{k}_2"]])
            for k in ("input_ids", "attention_mask", "token_type_ids")}
    v = vec(params, both)
    return jnp.split(v, 2)

  def sst(params, batch):
    logits = mt_model.apply({"params": params}, vec(params, batch), True,
                            method=M.sentiment_logits)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def para(params, batch):
    if joint_para:
      logit = mt_model.apply({"params": params}, vec(params, batch), None, True,
                             method=M.paraphrase_logit)
    else:
      u, v = pair_vectors(params, batch)
      logit = mt_model.apply({"params": params}, u, v, True, method=M.paraphrase_logit)
    return (logit > 0).astype(jnp.int32)  # sigmoid(logit) > 0.5

  def sts(params, batch):
    u, v = pair_vectors(params, batch)
    return mt_model.apply({"params": params}, u, v, True, method=M.similarity_score)

  return {"sst": jax.jit(sst), "para": jax.jit(para), "sts": jax.jit(sts)}


def predict(predict_fn: Callable, params: Any, tokset: data_lib.TokenizedSet, batch_size: int,
            buckets: Sequence[int], sharder: Any = None) -> np.ndarray:
  """Predictions for every row of `tokset`, in file order.

  `batch_size` is global; with a `train.Sharder` each host feeds its slice of every batch
  to the mesh and every host gets all predictions back.
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
      out = np.zeros(len(tokset), pred.dtype)
    keep = index >= 0
    out[index[keep]] = pred[keep]
  return out if out is not None else np.zeros(0)


def format_value(task: str, value: Any) -> str:
  if task == "sts":
    return repr(float(value))
  return str(int(value))


def write_predictions(path: str, task: str, ids: Sequence[str], values: np.ndarray) -> None:
  """One course-format prediction file, written atomically."""
  if len(ids) != len(values):
    raise ValueError(f"{path}: {len(values)} predictions for {len(ids)} ids")
  header = PREDICTION_FILES[task][1]
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(f"id \t {header} \n")
    for example_id, value in zip(ids, values):
      f.write(f"{example_id} , {format_value(task, value)} \n")
  os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
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
      scores[task] = task_metric(task, preds[task], tokset.labels)
  return scores, preds


def write_split_predictions(pred_dir: str, split: str,
                            sets: dict[str, data_lib.TokenizedSet | None],
                            preds: dict[str, np.ndarray]) -> list[str]:
  """Writes `<task>-<split>-output.csv` for each configured set; logs the skipped ones."""
  os.makedirs(pred_dir, exist_ok=True)
  written = []
  for task, (stem, _) in PREDICTION_FILES.items():
    tokset = sets.get(task)
    if tokset is None:
      log.info("no %s file configured for %s: %s-%s-output.csv not written", split, task,
               stem, split)
      continue
    path = os.path.join(pred_dir, f"{stem}-{split}-output.csv")
    write_predictions(path, task, tokset.ids, preds[task])
    written.append(path)
  return written


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
    from mtbert_jax import train  # pylint: disable=import-outside-toplevel
    config = train.load_workdir_config(workdir)
    mt_model, params, tok = train.restore_best_params(config, workdir)
    return cls(mt_model, params, tok, int(config.data.max_length),
               experiment.eval_buckets(config), batch_size)

  def _run(self, task: str, tokset: data_lib.TokenizedSet) -> np.ndarray:
    return predict(self._fns[task], self.params, tokset, self.batch_size, self.buckets)

  def sentiment(self, sentences: Sequence[str]) -> np.ndarray:
    rows = data_lib.SentenceRows([str(i) for i in range(len(sentences))], list(sentences), None)
    return self._run("sst", data_lib.tokenize_sentences(rows, self.tokenizer, self.max_length))

  def _pairs(self, pairs: Sequence[tuple[str, str]], joint: bool) -> data_lib.TokenizedSet:
    rows = data_lib.PairRows([str(i) for i in range(len(pairs))], [a for a, _ in pairs],
                             [b for _, b in pairs], None)
    prompt = heads_lib.PARAPHRASE_PROMPT if joint else None
    return data_lib.tokenize_pairs(rows, self.tokenizer, self.max_length, joint, prompt)

  def paraphrase(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    return self._run("para", self._pairs(pairs, self.model.heads.paraphrase == "prompt"))

  def similarity(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    return self._run("sts", self._pairs(pairs, False))
