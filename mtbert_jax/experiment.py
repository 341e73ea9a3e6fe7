"""What a run is built from, given its `Settings`: the model, the tokenizer, the data sets.

The settings arrive validated (`settings.py`); this module resolves what depends on the
machine or on the checkpoint folder (the kernels for "auto", the checkpoint's own sentence
pooling for `heads.cls_source="auto"`, checks of cuDNN attention), loads the encoder
weights, and reads and tokenizes the configured files through the task table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import jax.numpy as jnp

from mtbert_jax import convert
from mtbert_jax import data as data_lib
from mtbert_jax import heads as heads_lib
from mtbert_jax import model as model_lib
from mtbert_jax import paths
from mtbert_jax import readers
from mtbert_jax import runtime
from mtbert_jax import tasks as tasks_lib
from mtbert_jax import tfds_source
from mtbert_jax import tokenization
from mtbert_jax.settings import ConfigError, Settings

log = logging.getLogger(__name__)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def kernels(s: Settings, backend: str | None = None) -> str:
  """`model.kernels` resolved: "auto" is "xla_cpu" on the CPU backend (where they were
  measured, docs/performance.md) and "flax" on every other."""
  if s.model.kernels != "auto":
    return s.model.kernels
  return "xla_cpu" if (backend or jax.default_backend()) == "cpu" else "flax"


def checkpoint_dir(s: Settings) -> str:
  return paths.resolve_checkpoint(s.model.checkpoint or None)


def sentence_vector_source(s: Settings) -> str:
  """`heads.cls_source`, with "auto" resolved from the checkpoint folder.

  "auto": a sentence-transformers checkpoint (such as the embedded all-MiniLM-L6-v2) says
  in `1_Pooling/config.json` how it was trained to pool (mean of the tokens -> "mean", the
  [CLS] state -> "hidden"); any other BERT folder gets the pooler, as in the paper.
  """
  if s.heads.cls_source != "auto":
    return s.heads.cls_source
  pooling_file = os.path.join(checkpoint_dir(s), "1_Pooling", "config.json")
  if os.path.isfile(pooling_file):
    with open(pooling_file, encoding="utf-8") as f:
      pooling = json.load(f)
    if pooling.get("pooling_mode_mean_tokens"):
      return "mean"
    if pooling.get("pooling_mode_cls_token"):
      return "hidden"
  return "pooler"


def head_settings(s: Settings):
  """The heads with `cls_source` resolved, as the model takes them."""
  return dataclasses.replace(s.heads, cls_source=sentence_vector_source(s))


def build_model(s: Settings, load_weights: bool = True
                ) -> tuple[heads_lib.MultitaskModel, dict | None]:
  """The multitask model of `s` and, with `load_weights`, the pretrained encoder params."""
  ckpt = checkpoint_dir(s)
  if load_weights:
    bert_cfg, bert_params = convert.load_pretrained(ckpt)
  else:
    bert_cfg = model_lib.BertConfig.from_json_file(os.path.join(ckpt, "config.json"))
    bert_params = None
  overrides = {"attention_impl": _attention_impl(s, bert_cfg), "kernels": kernels(s)}
  if s.model.hidden_dropout >= 0:
    overrides["hidden_dropout_prob"] = s.model.hidden_dropout
  if s.model.attention_dropout >= 0:
    overrides["attention_probs_dropout_prob"] = s.model.attention_dropout
  bert_cfg = bert_cfg.replace(**overrides)
  dtype = compute_dtype(s.model.dtype, "model.dtype")
  mt_model = heads_lib.MultitaskModel(bert_cfg, head_settings(s), dtype=_DTYPES[dtype],
                                      remat=s.model.remat)
  return mt_model, bert_params


def compute_dtype(dtype: str, flag: str = "") -> str:
  """A compute dtype, with "auto" resolved for the backend JAX runs on: bfloat16 where the
  hardware multiplies it natively (a CPU with AMX or AVX-512 BF16, a TPU, an NVIDIA GPU of
  compute capability 8.0 or later), else float32. With `flag`, the choice is logged."""
  if dtype != "auto":
    return dtype
  device = jax.devices()[0]
  if device.platform == "cpu":
    native, why = runtime.native_bfloat16(), "this CPU's flags (AMX-BF16 / AVX-512 BF16)"
  elif device.platform == "gpu":
    capability = getattr(device, "compute_capability", "0")
    native = float(capability) >= 8.0
    why = f"GPU compute capability {capability}"
  else:
    native, why = device.platform == "tpu", f"platform {device.platform}"
  chosen = "bfloat16" if native else "float32"
  if flag:
    log.info("%s=auto: %s (%s)", flag, chosen, why)
  return chosen


def _attention_impl(s: Settings, bert_cfg: model_lib.BertConfig) -> str:
  impl = s.model.attention
  if impl == "cudnn":
    if jax.default_backend() != "gpu":
      raise ConfigError(f"--config.model.attention=cudnn needs a GPU; JAX runs on "
                        f"{jax.default_backend()!r} here (use 'xla')")
    if compute_dtype(s.model.dtype) != "bfloat16":
      raise ConfigError(f"--config.model.attention=cudnn needs --config.model.dtype=bfloat16 "
                        f"(cuDNN's fused attention has no float32 kernel); got "
                        f"{s.model.dtype!r}")
    if bert_cfg.head_dim % 8 or bert_cfg.head_dim > 128:
      raise ConfigError(f"--config.model.attention=cudnn: head size {bert_cfg.head_dim} of "
                        f"this checkpoint is not a multiple of 8 up to 128 (use 'xla')")
  return impl


def tokenizer(s: Settings) -> tokenization.BertTokenizer:
  return tokenization.load_tokenizer(s.model.checkpoint or None)


def data_path(s: Settings, field: str) -> str | None:
  """The configured file of `data.<field>` (absolute), a `tfds:NAME:SPLIT` dataset as is,
  or None when it is not configured. A configured file that does not exist is an error
  naming the flag and where it looked."""
  value = getattr(s.data, field)
  if not value:
    return None
  if tfds_source.is_tfds(value):  # a TFDS dataset: the name is checked now, the rest on opening
    tfds_source.parse_tfds(value)
    return value
  if os.path.isabs(value):
    path, where = value, ""
  else:
    if s.data.dir and os.path.exists(s.data.dir) and not os.path.isdir(s.data.dir):
      raise NotADirectoryError(f"--config.data.dir={s.data.dir!r} is a file, expected the "
                               "folder that holds the data files")
    base = s.data.dir or paths.default_data_dir()
    path = os.path.join(base, value)
    where = (f" (relative to --config.data.dir={s.data.dir!r})" if s.data.dir else
             " (relative paths are read from ../shared/data beside the repository when that "
             "folder exists, else from data/ in it; set --config.data.dir=/path/to/data)")
  if os.path.isdir(path):
    raise IsADirectoryError(f"--config.data.{field}: {path} is a folder, expected a data "
                            f"file{where}")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config.data.{field}: data file not found: {path}{where}")
  return path


def _load(s: Settings, tok, task: tasks_lib.Task, path: str,
          reverse: bool) -> data_lib.TokenizedSet:
  heads = head_settings(s)

  def build():
    rows = task.read(path, s.data)
    if reverse:
      rows = dataclasses.replace(rows, texts_a=rows.texts_b, texts_b=rows.texts_a)
    tokset = task.tokenize(rows, tok, s.data.max_length, heads)
    return dataclasses.replace(tokset, reordered=True) if reverse else tokset

  return data_lib.tokenize_once(path, tok, (task.name, task.segments(heads), task.prompt(heads),
                                            s.data.max_length, s.data.on_invalid, reverse),
                                build)


SPLITS = ("train", "valid", "dev", "test")


def eval_split(s: Settings) -> str:
  """The split that the training loop's evaluations read and the best checkpoint is chosen
  on: the validation split carved from train when `data.valid_fraction` > 0, else dev."""
  return "valid" if s.data.valid_fraction > 0 else "dev"


def scored_splits(s: Settings) -> tuple[str, ...]:
  """The labeled splits that a finished run is scored on (metrics.json): the validation
  split when there is one, and dev unless `eval.dev` is off."""
  return tuple(split for split, on in (("valid", s.data.valid_fraction > 0),
                                       ("dev", s.eval.dev)) if on)


def load_split(s: Settings, tok, task: str, split: str,
               reverse: bool = False) -> data_lib.TokenizedSet | None:
  """The tokenized `split` (`SPLITS`) of a task, or None if unconfigured; with `reverse`, a
  pair task's pairs as (b, a) (`reordered` set).

  With `data.valid_fraction` > 0, "valid" is the part of an evaluated task's train file
  that `data.in_validation_split` assigns to validation, and "train" the rest; otherwise
  "valid" is None and "train" the whole file."""
  if split not in SPLITS:
    raise ValueError(f"split {split!r}: expected one of {SPLITS}")
  spec = tasks_lib.get(task)
  if reverse and not spec.order_free_pairs:
    raise ValueError(f"task {task} has no pairs to reverse")
  carve = s.data.valid_fraction > 0 and spec.evaluated
  if split == "valid" and not carve:
    return None
  field = spec.files.get("train" if split == "valid" else split)
  path = None if field is None else data_path(s, field)
  if path is None:
    return None
  tokset = _load(s, tok, spec, path, reverse)
  if split != "test" and tokset.labels is None and spec.labeled:
    raise readers.DataError(f"{path}: the {split} file of task {task} has no labels")
  if carve and split in ("train", "valid"):
    if tokset.ids is None:
      raise readers.DataError(f"{path}: --config.data.valid_fraction needs a row id per "
                              "row (the split is a hash of the id); this file has none")
    held_out = data_lib.in_validation_split(tokset.ids, s.data.valid_fraction)
    tokset = data_lib.select_rows(tokset, held_out if split == "valid" else ~held_out)
    if not len(tokset):
      raise readers.DataError(f"{path}: --config.data.valid_fraction="
                              f"{s.data.valid_fraction} leaves no {split} rows")
  limit = {"train": s.data.train_limit, "dev": s.data.dev_limit}.get(split, 0)
  return data_lib.limit_rows(tokset, limit)


def train_sources(s: Settings, tok, task: str
                  ) -> tuple[list[data_lib.TokenizedSet], list[float]]:
  """The tokenized training sets of `task` and their sampling weights. With
  `data.swap_pairs`, a pair task's pairs again as (b, a), as a second source of the same
  weight: half its batches show each order. Neither label depends on the order; a
  cross-encoder's input does (`[CLS] a [SEP] b [SEP]`, the prompt on a), as do the
  bi-encoder's features [u; v; |u-v|; u*v]."""
  sources, weights = [load_split(s, tok, task, "train")], [1.0]
  spec = tasks_lib.get(task)
  if s.data.swap_pairs and spec.order_free_pairs:
    sources.append(load_split(s, tok, task, "train", reverse=True))
    weights.append(1.0)
  if spec.extra_train_sources is not None:
    for tokset, weight in spec.extra_train_sources(s, tok, lambda f: data_path(s, f)):
      sources.append(data_lib.limit_rows(tokset, s.data.train_limit))
      weights.append(weight)
  return sources, weights


def evaluated_tasks(s: Settings) -> tuple[str, ...]:
  """The tasks a run is scored on: those of `train.tasks` that have a metric (a
  single-task run is not scored on heads it never trained)."""
  return tuple(t for t in tasks_lib.EVALUATED if t in s.train.tasks)


def eval_sets(s: Settings, tok, split: str, limit: int = 0
              ) -> dict[str, tuple[data_lib.TokenizedSet, ...] | None]:
  """Per evaluated task, its `split` set in each order it is scored in
  (`tasks.orders`: with `eval.both_orders`, a pair task's pairs as given and as (b, a), row
  for row), each cut to its first `limit` rows; None where no file is configured."""
  sets = {}
  for task in evaluated_tasks(s):
    orders = [load_split(s, tok, task, split, reverse)
              for reverse in tasks_lib.orders(task, s.eval.both_orders)]
    sets[task] = (None if orders[0] is None else
                  tuple(data_lib.limit_rows(tokset, limit) for tokset in orders))
  return sets
