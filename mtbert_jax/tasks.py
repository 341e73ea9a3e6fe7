"""The task table: everything that differs between tasks, one row per task.

A row says which data fields hold the task's files and how they are read and tokenized,
which input segments one example has (and so how many encoder passes a batch takes),
which output method of `MultitaskModel` maps the stacked sentence vectors to the task's
output, which loss and which SMART divergence apply, how an output becomes a prediction,
which dev metric scores it and what its prediction file is called. The training step
(`objective.py`), evaluation (`evaluate.py`) and data loading (`experiment.py`) read these
rows and contain no per-task branches. Adding a task is one `Task` entry here plus its
output method in `heads.py` (and its name in `settings.TASKS`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mtbert_jax import data as data_lib
from mtbert_jax import heads as heads_lib
from mtbert_jax import losses
from mtbert_jax import readers
from mtbert_jax import settings as settings_lib
from mtbert_jax import sources

Array = jax.Array


def pearson(pred: np.ndarray, gold: np.ndarray) -> float:
  pred, gold = np.asarray(pred, np.float64), np.asarray(gold, np.float64)
  if len(pred) < 2 or pred.std() == 0 or gold.std() == 0:
    return 0.0
  return float(np.corrcoef(pred, gold)[0, 1])


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
  return float(np.mean(np.asarray(pred) == np.asarray(gold)))


@dataclasses.dataclass(frozen=True)
class Task:
  """One task: data, segments, head, loss, prediction, metric and output file."""
  name: str
  read: Callable[[str, Any], Any]  # (path, DataSettings) -> rows (sources.py)
  # (rows, tokenizer, max_length, heads) -> the tokenized set of those rows.
  tokenize: Callable[..., data_lib.TokenizedSet]
  # Batch-key suffixes of one example's inputs, given the heads: ("",), ("_1", "_2"), ...
  segments: Callable[[settings_lib.HeadSettings], tuple[str, ...]]
  output: str                     # the MultitaskModel method on the stacked vectors
  # (output, labels, per-example weights, settings) -> scalar loss (before any weight).
  loss: Callable[..., Array]
  # Scale of the loss in the objective (a setting), e.g. SimCSE's weight for "nli".
  loss_scale: Callable[[settings_lib.Settings], float] = lambda s: 1.0
  # (output_p, output_q) -> per-example divergence [B] for SMART and Bregman; None: none.
  divergence: Callable[[Any, Any], Array] | None = None
  # output -> prediction per example (class id, 0/1, score); None: not evaluated.
  predict: Callable[[Array], Array] | None = None
  metric: str = ""                # dev metric key, e.g. "sst_acc" (-> "dev/sst_acc")
  metric_label: str = ""          # the metric in table headings and figures, e.g. "SST acc"
  score: Callable[[np.ndarray, np.ndarray], float] | None = None  # (pred, gold) -> metric
  to_unit: Callable[[float], float] = lambda x: x  # metric -> [0, 1] for the leaderboard
  prediction_file: str = ""       # stem of `<stem>-<split>-output.csv`
  prediction_header: str = ""     # the course's column name
  format_value: Callable[[Any], str] = lambda v: str(int(v))
  # Text that `tokenize` prepends to the first sentence of a joint pair, given the heads
  # (None: none); with `segments`, what tells two tokenizations of one file apart.
  prompt: Callable[[settings_lib.HeadSettings], str | None] = lambda heads: None
  # Further training sets mixed into the task's batches: (settings, tokenizer, path_of)
  # -> [(set, sampling weight)], `path_of(field)` the file of `data.<field>`.
  extra_train_sources: Callable[..., list] | None = None

  @property
  def evaluated(self) -> bool:
    return self.predict is not None


# ------------------------------------------------------------------------------------------
# Readers and tokenizers.


def _para_joint(heads: settings_lib.HeadSettings) -> bool:
  return heads.paraphrase in ("prompt", "cross")


def _para_prompt(heads: settings_lib.HeadSettings) -> str | None:
  return heads_lib.PARAPHRASE_PROMPT if heads.paraphrase == "prompt" else None


def _sts_joint(heads: settings_lib.HeadSettings) -> bool:
  return heads.similarity == "cross"


def _pair_segments(joint_of: Callable):
  return lambda heads: ("",) if joint_of(heads) else ("_1", "_2")


def _tokenize_pairs(joint_of: Callable, prompt_of: Callable = lambda heads: None):
  def tokenize(rows, tok, max_length, heads):
    return data_lib.tokenize_pairs(rows, tok, max_length, joint_of(heads), prompt_of(heads))
  return tokenize


def _sentiment_extras(s: settings_lib.Settings, tok, path_of) -> list:
  """CFIMDB (binary, mapped to two SST classes) and the tweets (0/2/4), when weighted."""
  extras, d = [], s.data
  if d.cfimdb_weight > 0:
    path = path_of("cfimdb_train")
    neg, pos = d.cfimdb_labels
    tokset = data_lib.tokenize_once(
        path, tok, ("cfimdb", d.max_length, d.on_invalid, neg, pos),
        lambda: data_lib.tokenize_sentences(sources.read_sentiment(
            path, num_classes=2, label_map={0: neg, 1: pos}, on_invalid=d.on_invalid,
            tfds_dir=d.tfds_dir), tok, d.max_length))
    extras.append((tokset, d.cfimdb_weight))
  if d.tweets_weight > 0:
    path = path_of("tweets")
    tokset = data_lib.tokenize_once(
        path, tok, ("tweets", d.max_length, d.on_invalid),
        lambda: data_lib.tokenize_sentences(readers.read_tweets(path, d.on_invalid), tok,
                                            d.max_length))
    extras.append((tokset, d.tweets_weight))
  return extras


# ------------------------------------------------------------------------------------------
# Losses on a task's output.


def _nli_loss(embeddings, labels, weights, s: settings_lib.Settings):
  del labels
  anchor, positive, negative = jnp.split(embeddings, 3)
  return losses.simcse_loss(anchor, positive, s.simcse.temperature, negative, weights=weights)


TABLE: dict[str, Task] = {
    "sst": Task(
        name="sst", read=lambda path, d: sources.read_sentiment(
            path, on_invalid=d.on_invalid, tfds_dir=d.tfds_dir),
        tokenize=lambda rows, tok, max_length, heads: data_lib.tokenize_sentences(
            rows, tok, max_length),
        segments=lambda heads: ("",), output="sst_output",
        loss=lambda out, y, w, s: losses.softmax_cross_entropy(out, y, w,
                                                               s.train.label_smoothing),
        divergence=functools.partial(losses.symmetric_kl, reduce=False),
        predict=lambda logits: jnp.argmax(logits, axis=-1).astype(jnp.int32),
        metric="sst_acc", metric_label="SST acc", score=accuracy, prediction_file="sst",
        prediction_header="Predicted_Sentiment", extra_train_sources=_sentiment_extras),
    "para": Task(
        name="para", read=lambda path, d: sources.read_pairs(path, "paraphrase", d.on_invalid,
                                                            d.tfds_dir),
        tokenize=_tokenize_pairs(_para_joint, _para_prompt), prompt=_para_prompt,
        segments=_pair_segments(_para_joint), output="para_output",
        loss=lambda out, y, w, s: losses.sigmoid_binary_cross_entropy(out, y, w),
        divergence=functools.partial(losses.symmetric_kl_binary, reduce=False),
        predict=lambda logit: (logit > 0).astype(jnp.int32),  # sigmoid(logit) > 0.5
        metric="para_acc", metric_label="Quora acc", score=accuracy, prediction_file="para",
        prediction_header="Predicted_Is_Paraphrase"),
    "sts": Task(
        name="sts", read=lambda path, d: sources.read_pairs(path, "similarity", d.on_invalid,
                                                           d.tfds_dir),
        tokenize=_tokenize_pairs(_sts_joint),
        segments=_pair_segments(_sts_joint), output="sts_output",
        loss=lambda out, y, w, s: losses.mean_squared_error(out, y, w),
        divergence=functools.partial(losses.mse_divergence, reduce=False),
        predict=lambda score: score, metric="sts_pearson", metric_label="STS r", score=pearson,
        to_unit=lambda r: (r + 1) / 2, prediction_file="sts",
        prediction_header="Predicted_Similiary",  # sic: the course's spelling
        format_value=lambda v: repr(float(v))),
    "nli": Task(
        name="nli", read=lambda path, d: sources.read_triplets(path, d.on_invalid, d.tfds_dir),
        tokenize=lambda rows, tok, max_length, heads: data_lib.tokenize_triplets(
            rows, tok, max_length),
        segments=lambda heads: ("_1", "_2", "_3"),
        output="nli_output", loss=_nli_loss, loss_scale=lambda s: s.simcse.weight),
}

assert tuple(TABLE) == settings_lib.TASKS
EVAL_TASKS = tuple(name for name, task in TABLE.items() if task.evaluated)
assert EVAL_TASKS == settings_lib.EVAL_TASKS
# The tasks on sentence pairs, whose label does not depend on the pair's order
# (`data.swap_pairs`, `eval.both_orders`).
PAIR_TASKS = ("para", "sts")


def get(name: str) -> Task:
  return TABLE[name]


def summarize(scores: dict[str, float], prefix: str = "dev") -> dict[str, float]:
  """Per-task metrics; with every evaluated task scored, also their plain average (the
  paper's headline) and the course leaderboard score (the mean of each metric mapped to
  [0, 1]: (sst + para + (sts + 1) / 2) / 3)."""
  out = {f"{prefix}/{TABLE[t].metric}": v for t, v in scores.items()}
  if all(t in scores for t in EVAL_TASKS):
    out[f"{prefix}/average"] = float(np.mean([scores[t] for t in EVAL_TASKS]))
    out[f"{prefix}/leaderboard"] = float(np.mean([TABLE[t].to_unit(scores[t])
                                                  for t in EVAL_TASKS]))
  return out
