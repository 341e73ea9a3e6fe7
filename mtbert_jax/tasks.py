"""The task table: everything that differs between tasks, one row per task.

A row says which data fields hold the task's files and how they are read and tokenized,
which input segments one example has (and so how many encoder passes a batch takes),
which output method of `MultitaskModel` maps the stacked sentence vectors to the task's
output, which loss and which SMART divergence apply, how an output becomes a prediction,
which dev metric scores it, what its prediction file is called, its exported form's folder,
and its roles (a pair task whose label ignores the order, a contrastive task, a task of the
course's headline average). The training step (`objective.py`), evaluation
(`evaluate.py`), data loading (`experiment.py`), the export and the heads' parameters
(`init_params`) read these rows and contain no per-task branches. Adding a task is one
`Task` entry here plus its output method in `heads.py` (and its name and data fields in
`settings.py` and `configs/base.py`).
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
  """One task: data, segments, head, loss, prediction, metric, output file and roles."""
  name: str
  # The `data.<field>` that holds each split's file: {"train": ..., "dev": ..., "test": ...}
  # ("valid" is carved from "train"); a split not listed has no file.
  files: dict[str, str]
  read: Callable[[str, Any], Any]  # (path, DataSettings) -> rows (sources.py)
  # (rows, tokenizer, max_length, heads) -> the tokenized set of those rows.
  tokenize: Callable[..., data_lib.TokenizedSet]
  # Batch-key suffixes of one example's inputs, given the heads: ("",), ("_1", "_2"), ...
  segments: Callable[[settings_lib.HeadSettings], tuple[str, ...]]
  # The MultitaskModel output method on the stacked vectors: (model, vectors, deterministic).
  output: Callable[..., Any]
  # (output, labels, per-example weights, settings) -> scalar loss (before any weight).
  loss: Callable[..., Array]
  # Distillation (`distill.py`): a teacher's raw outputs [N, ...] (NumPy) -> the targets
  # the student learns beside the labels (class probabilities, probability, score), and
  # (output, targets, per-example weights, settings) -> scalar loss against those targets.
  # None: the task cannot be distilled.
  teacher_target: Callable[[np.ndarray], np.ndarray] | None = None
  soft_loss: Callable[..., Array] | None = None
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
  unit: str = "examples"          # what one example is, in progress counters
  description: str = ""           # the task in model cards, e.g. "SST-5 sentiment"
  # The folder of the head's exported form (`export_heads`); "": the head is not exported.
  export_folder: str = ""
  # Text that `tokenize` prepends to the first sentence of a joint pair, given the heads
  # (None: none); with `segments`, what tells two tokenizations of one file apart.
  prompt: Callable[[settings_lib.HeadSettings], str | None] = lambda heads: None
  # Further training sets mixed into the task's batches: (settings, tokenizer, path_of)
  # -> [(set, sampling weight)], `path_of(field)` the file of `data.<field>`.
  extra_train_sources: Callable[..., list] | None = None
  labeled: bool = True            # its train and dev rows carry labels
  # Sentence pairs whose label does not depend on the order (`data.swap_pairs`,
  # `eval.both_orders` read these).
  order_free_pairs: bool = False
  # The task is itself contrastive (supervised SimCSE): no unsupervised SimCSE term on it.
  contrastive: bool = False
  # Part of the course's headline: the plain average of the paper and the leaderboard score
  # are taken over these tasks, and the best checkpoint is chosen on that average.
  headline: bool = False

  @property
  def evaluated(self) -> bool:
    return self.predict is not None


# ------------------------------------------------------------------------------------------
# Readers and tokenizers.


def _para_joint(heads: settings_lib.HeadSettings) -> bool:
  return heads.paraphrase_joint


def _para_prompt(heads: settings_lib.HeadSettings) -> str | None:
  return heads_lib.PARAPHRASE_PROMPT if heads.paraphrase_prompted else None


def _sts_joint(heads: settings_lib.HeadSettings) -> bool:
  return heads.similarity_joint


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


def _class_loss(logits, labels, weights, s: settings_lib.Settings):
  return losses.softmax_cross_entropy(logits, labels, weights, s.train.label_smoothing)


def _soft_class_loss(logits, targets, weights, s: settings_lib.Settings):
  del s
  return losses.soft_cross_entropy(logits, targets, weights)


def _np_softmax(logits: np.ndarray) -> np.ndarray:
  z = np.asarray(logits, np.float64)
  z = np.exp(z - z.max(axis=-1, keepdims=True))
  return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


def _np_sigmoid(logit: np.ndarray) -> np.ndarray:
  return (1.0 / (1.0 + np.exp(-np.asarray(logit, np.float64)))).astype(np.float32)


def _class_of_logits(logits):
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


# What the sentence classification rows (SST-5, CFIMDB) share: one segment, cross entropy
# (to the labels and to a teacher's probabilities), the symmetric KL, argmax, accuracy.
_SENTENCE_CLASSES = dict(
    tokenize=lambda rows, tok, max_length, heads: data_lib.tokenize_sentences(
        rows, tok, max_length),
    segments=lambda heads: ("",), loss=_class_loss, teacher_target=_np_softmax,
    soft_loss=_soft_class_loss, divergence=functools.partial(losses.symmetric_kl, reduce=False),
    predict=_class_of_logits, score=accuracy)


TABLE: dict[str, Task] = {
    "sst": Task(
        name="sst", files={"train": "sst_train", "dev": "sst_dev", "test": "sst_test"},
        read=lambda path, d: sources.read_sentiment(path, on_invalid=d.on_invalid,
                                                    tfds_dir=d.tfds_dir),
        output=heads_lib.MultitaskModel.sst_output, **_SENTENCE_CLASSES,
        metric="sst_acc", metric_label="SST acc",
        prediction_file="sst", prediction_header="Predicted_Sentiment", unit="sentences",
        description="SST-5 sentiment (5 classes)", export_folder="sentiment",
        extra_train_sources=_sentiment_extras, headline=True),
    "para": Task(
        name="para", files={"train": "para_train", "dev": "para_dev", "test": "para_test"},
        read=lambda path, d: sources.read_pairs(path, "paraphrase", d.on_invalid,
                                                d.tfds_dir),
        tokenize=_tokenize_pairs(_para_joint, _para_prompt), prompt=_para_prompt,
        segments=_pair_segments(_para_joint), output=heads_lib.MultitaskModel.para_output,
        loss=lambda out, y, w, s: losses.sigmoid_binary_cross_entropy(out, y, w),
        teacher_target=_np_sigmoid, soft_loss=lambda out, y, w, s: (
            losses.sigmoid_binary_cross_entropy(out, y, w)),
        divergence=functools.partial(losses.symmetric_kl_binary, reduce=False),
        predict=lambda logit: (logit > 0).astype(jnp.int32),  # sigmoid(logit) > 0.5
        metric="para_acc", metric_label="Quora acc", score=accuracy, prediction_file="para",
        prediction_header="Predicted_Is_Paraphrase", unit="pairs",
        description="Quora paraphrase detection", export_folder="paraphrase",
        order_free_pairs=True, headline=True),
    "sts": Task(
        name="sts", files={"train": "sts_train", "dev": "sts_dev", "test": "sts_test"},
        read=lambda path, d: sources.read_pairs(path, "similarity", d.on_invalid,
                                                d.tfds_dir),
        tokenize=_tokenize_pairs(_sts_joint),
        segments=_pair_segments(_sts_joint), output=heads_lib.MultitaskModel.sts_output,
        loss=lambda out, y, w, s: losses.mean_squared_error(out, y, w),
        teacher_target=lambda score: np.asarray(score, np.float32),
        soft_loss=lambda out, y, w, s: losses.mean_squared_error(out, y, w),
        divergence=functools.partial(losses.mse_divergence, reduce=False),
        predict=lambda score: score, metric="sts_pearson", metric_label="STS r", score=pearson,
        to_unit=lambda r: (r + 1) / 2, prediction_file="sts",
        prediction_header="Predicted_Similiary",  # sic: the course's spelling
        format_value=lambda v: repr(float(v)), unit="pairs",
        description="SemEval STS similarity (0-5)", export_folder="similarity",
        order_free_pairs=True, headline=True),
    "nli": Task(
        name="nli", files={"train": "nli"},
        read=lambda path, d: sources.read_triplets(path, d.on_invalid, d.tfds_dir),
        tokenize=lambda rows, tok, max_length, heads: data_lib.tokenize_triplets(
            rows, tok, max_length),
        segments=lambda heads: ("_1", "_2", "_3"),
        output=heads_lib.MultitaskModel.nli_output,
        loss=_nli_loss, loss_scale=lambda s: s.simcse.weight,
        description="supervised SimCSE on NLI triplets", labeled=False, contrastive=True),
    "cfimdb": Task(
        name="cfimdb",
        files={"train": "cfimdb_train", "dev": "cfimdb_dev", "test": "cfimdb_test"},
        read=lambda path, d: sources.read_sentiment(path, num_classes=2,
                                                    on_invalid=d.on_invalid,
                                                    tfds_dir=d.tfds_dir),
        output=heads_lib.MultitaskModel.cfimdb_output, **_SENTENCE_CLASSES,
        metric="cfimdb_acc", metric_label="CFIMDB acc", prediction_file="cfimdb", prediction_header="Predicted_Sentiment",
        unit="reviews", description="CFIMDB movie-review sentiment (2 classes)"),
}

assert tuple(TABLE) == settings_lib.TASKS
assert all(t.files["train"] == settings_lib.train_file_field(n) for n, t in TABLE.items())
# Every task with a dev metric and prediction files.
EVALUATED = tuple(name for name, task in TABLE.items() if task.evaluated)
assert EVALUATED == settings_lib.EVALUATED_TASKS
assert settings_lib.DISTILLED_TASKS == tuple(n for n, t in TABLE.items() if t.soft_loss)
# The course's three tasks: the headline average and leaderboard, the study's columns.
EVAL_TASKS = tuple(name for name, task in TABLE.items() if task.headline)
# The tasks on sentence pairs whose label does not depend on the pair's order.
PAIR_TASKS = tuple(name for name, task in TABLE.items() if task.order_free_pairs)


def get(name: str) -> Task:
  return TABLE[name]


def orders(name: str, both_orders: bool) -> tuple[bool, ...]:
  """The orders a task's examples are scored in, as `reverse` flags: as given, and with
  `eval.both_orders` for an order-free pair task also as (b, a). Evaluation, `--mode=eval`
  and `Predictor` take the mean output over these orders (`evaluate.mean_over_orders`)."""
  return (False, True) if both_orders and TABLE[name].order_free_pairs else (False,)


def summarize(scores: dict[str, float], prefix: str = "dev") -> dict[str, float]:
  """Per-task metrics; with every headline task scored, also their plain average (the
  paper's headline) and the course leaderboard score (the mean of each metric mapped to
  [0, 1]: (sst + para + (sts + 1) / 2) / 3)."""
  out = {f"{prefix}/{TABLE[t].metric}": v for t, v in scores.items()}
  if all(t in scores for t in EVAL_TASKS):
    out[f"{prefix}/average"] = float(np.mean([scores[t] for t in EVAL_TASKS]))
    out[f"{prefix}/leaderboard"] = float(np.mean([TABLE[t].to_unit(scores[t])
                                                  for t in EVAL_TASKS]))
  return out


def init_params(mt_model: heads_lib.MultitaskModel, rng: Array,
                bert_params: dict | None = None,
                tasks: tuple[str, ...] | None = None) -> dict:
  """The parameters of `mt_model`: the head of each row (of `tasks`; default every row)
  initialised at random through its output method, on as many stacked vectors as the row
  has segments; the encoder's from `bert_params` when given. A layer's initial values
  depend on its name only, not on which other heads exist."""
  ids = jnp.zeros((2, 8), jnp.int32)
  rows = [TABLE[name] for name in (TABLE if tasks is None else tasks)]

  def every_head(model: heads_lib.MultitaskModel, ids: Array) -> list:
    v = model.vector(ids, jnp.ones_like(ids), ids, True)  # [2, H]
    return [task.output(model, jnp.concatenate([v] * len(task.segments(model.heads))), True)
            for task in rows]

  params = jax.jit(lambda r: mt_model.init(r, ids, method=every_head))(rng)["params"]
  params = dict(params)
  if bert_params is not None:
    ref = jax.tree_util.tree_structure(params["bert"])
    if jax.tree_util.tree_structure(bert_params) != ref:
      raise ValueError("pretrained encoder parameters do not match the configured encoder")
    params["bert"] = jax.tree_util.tree_map(jnp.asarray, bert_params)
  return params
