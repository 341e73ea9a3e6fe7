"""The numbers behind the error analysis (`report.py`): pure numpy functions of predictions
and gold labels, each tested on small hand-computed cases (tests/test_report.py)."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

NUM_CLASSES = 5


def class_counts(pred: np.ndarray, gold: np.ndarray, k: int = NUM_CLASSES
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(predicted counts [k], gold counts [k]) per class."""
  return (np.bincount(np.asarray(pred, int), minlength=k)[:k],
          np.bincount(np.asarray(gold, int), minlength=k)[:k])


def confusion_matrix(pred: np.ndarray, gold: np.ndarray, k: int = NUM_CLASSES) -> np.ndarray:
  """[gold class, predicted class] counts."""
  m = np.zeros((k, k), int)
  np.add.at(m, (np.asarray(gold, int), np.asarray(pred, int)), 1)
  return m


def error_distances(pred: np.ndarray, gold: np.ndarray, k: int = NUM_CLASSES
                    ) -> dict[int, tuple[int, float]]:
  """{d: (count, share of the wrong predictions)} for d = |pred - gold| in 1..k-1."""
  d = np.abs(np.asarray(pred, int) - np.asarray(gold, int))
  wrong = d[d > 0]
  return {i: (int(np.sum(wrong == i)), float(np.mean(wrong == i)) if len(wrong) else 0.0)
          for i in range(1, k)}


def ecdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(sorted values, fraction of values <= each): the empirical CDF's steps."""
  x = np.sort(np.asarray(values, float))
  return x, np.arange(1, len(x) + 1) / max(len(x), 1)


def binary_report(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
  """Counts and rates of a 0/1 classifier: tp, fp, tn, fn, the false-positive rate
  fp / (fp + tn), the false-negative rate fn / (fn + tp), precision, recall, F1, accuracy."""
  pred, gold = np.asarray(pred, int), np.asarray(gold, int)
  tp = int(np.sum((pred == 1) & (gold == 1)))
  fp = int(np.sum((pred == 1) & (gold == 0)))
  tn = int(np.sum((pred == 0) & (gold == 0)))
  fn = int(np.sum((pred == 0) & (gold == 1)))
  ratio = lambda a, b: a / b if b else 0.0
  precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
  return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "fp_rate": ratio(fp, fp + tn),
          "fn_rate": ratio(fn, fn + tp), "precision": precision, "recall": recall,
          "f1": ratio(2 * precision * recall, precision + recall),
          "accuracy": ratio(tp + tn, len(pred))}


_WORD = re.compile(r"\w+")


def word_overlap(a: str, b: str) -> float:
  """Jaccard overlap of the two texts' lowercased word sets (1: the same words)."""
  wa, wb = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
  return len(wa & wb) / len(wa | wb) if wa | wb else 1.0


def confident_errors(prob: np.ndarray, gold: np.ndarray, k: int
                     ) -> tuple[list[int], list[int]]:
  """(false positives by decreasing probability, false negatives by increasing
  probability), at most `k` indices each; ties keep file order."""
  prob, gold = np.asarray(prob, float), np.asarray(gold, int)
  pred = prob > 0.5
  fp = np.flatnonzero(pred & (gold == 0))
  fn = np.flatnonzero(~pred & (gold == 1))
  fp = fp[np.argsort(-prob[fp], kind="stable")][:k]
  fn = fn[np.argsort(prob[fn], kind="stable")][:k]
  return fp.tolist(), fn.tolist()


def largest_errors(pred: np.ndarray, gold: np.ndarray, k: int) -> list[int]:
  """Indices of the `k` largest |pred - gold|, largest first; ties keep file order."""
  err = np.abs(np.asarray(pred, float) - np.asarray(gold, float))
  return np.argsort(-err, kind="stable")[:k].tolist()


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = 10
                ) -> tuple[list[tuple[float, float, int, float, float]], float]:
  """Reliability of confidences in [0, 1]: for each non-empty one of `bins` equal-width
  bins (low, high, count, mean confidence, accuracy), and the expected calibration error
  sum_b n_b / N * |accuracy_b - confidence_b|."""
  conf, ok = np.asarray(confidence, float), np.asarray(correct, bool)
  index = np.minimum((conf * bins).astype(int), bins - 1)
  rows, ece = [], 0.0
  for b in range(bins):
    sel = index == b
    if sel.any():
      c, a = float(conf[sel].mean()), float(ok[sel].mean())
      rows.append((b / bins, (b + 1) / bins, int(sel.sum()), c, a))
      ece += sel.sum() / len(conf) * abs(a - c)
  return rows, float(ece)


def confidences(task: str, outputs: np.ndarray, gold: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
  """(confidence in the predicted label, whether it is right) from raw outputs: sentiment
  logits [N, 5] (the softmax's largest probability) or a paraphrase logit [N] (P of the
  predicted side of 0.5)."""
  x = np.asarray(outputs, float)
  if task == "sst":
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p.max(axis=1), p.argmax(axis=1) == np.asarray(gold)
  p = 1 / (1 + np.exp(-x))
  return np.maximum(p, 1 - p), (p > 0.5) == (np.asarray(gold) == 1)


def correlation_table(points: Sequence[dict[str, float]], keys: Sequence[str]
                      ) -> tuple[np.ndarray, int]:
  """(Pearson correlations [len(keys), len(keys)] of the metrics across `points`, number
  of points); NaN where a metric is constant or fewer than 3 points."""
  rows = [[p[k] for k in keys] for p in points if all(k in p for k in keys)]
  n = len(rows)
  out = np.full((len(keys), len(keys)), np.nan)
  if n >= 3:
    x = np.asarray(rows, float)
    for i in range(len(keys)):
      for j in range(len(keys)):
        if x[:, i].std() > 0 and x[:, j].std() > 0:
          out[i, j] = float(np.corrcoef(x[:, i], x[:, j])[0, 1])
  return out, n
