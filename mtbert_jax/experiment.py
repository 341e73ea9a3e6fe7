"""The edge between a config and the objects it describes.

Everything below this module takes plain values or frozen dataclasses; this is the only
place (besides `launch.py`) that reads an `ml_collections.ConfigDict`. It checks the
config's values with errors that name the offending field, loads the encoder checkpoint, and
reads and tokenizes the configured data files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp

from mtbert_jax import convert
from mtbert_jax import data as data_lib
from mtbert_jax import heads as heads_lib
from mtbert_jax import paths
from mtbert_jax import tokenization

log = logging.getLogger(__name__)

TASKS = ("sst", "para", "sts", "nli")
EVAL_TASKS = ("sst", "para", "sts")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ConfigError(ValueError):
  """A config value that is not allowed; the message names the field."""


def _choice(config, field: str, allowed: tuple[str, ...]) -> str:
  value = config
  for part in field.split("."):
    value = value[part]
  if value not in allowed:
    raise ConfigError(f"--config.{field}={value!r}: expected one of {list(allowed)}")
  return value


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the jitted train step needs to know, fixed at trace time."""
  tasks: tuple[str, ...]
  freeze_encoder: bool
  label_smoothing: float
  weighting: str                       # "none" | "fixed" | "loss"
  fixed_weights: tuple[float, ...]     # per task in `tasks`
  weight_ema_decay: float
  weight_temperature: float
  smart_weight: float
  smart_tasks: tuple[str, ...]
  smart_variant: str
  smart_num_samples: int
  smart_num_steps: int
  smart_step_size: float
  smart_noise_std: float
  smart_epsilon: float
  smart_norm: str
  bregman_weight: float
  bregman_decay: float
  simcse_temperature: float
  simcse_weight: float
  simcse_unsup_weight: float


RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def dropout_rng_impl(config) -> str:
  """`train.rng_impl`: the PRNG implementation of the dropout keys."""
  return _choice(config, "train.rng_impl", RNG_IMPLS)


def _tuple_hint(field: str, value: str) -> str:
  """`--config.f=a,b` reaches a tuple-of-strings field as the one string 'a,b'."""
  if "," not in str(value):
    return ""
  items = ",".join(repr(v.strip()) for v in str(value).split(","))
  return f" (a tuple of names is written --config.{field}=\"({items})\")"


def step_config(config) -> StepConfig:
  tasks = tuple(config.train.tasks)
  for task in tasks:
    if task not in TASKS:
      raise ConfigError(f"--config.train.tasks: unknown task {task!r}; expected some of "
                        f"{list(TASKS)}{_tuple_hint('train.tasks', task)}")
  if not tasks:
    raise ConfigError("--config.train.tasks is empty")
  _choice(config, "train.mode", ("finetune", "pretrain"))
  dropout_rng_impl(config)
  _choice(config, "weighting.mode", ("none", "fixed", "loss"))
  _choice(config, "smart.variant", ("random", "adversarial"))
  _choice(config, "smart.norm", ("inf", "l2"))
  for task in config.smart.tasks:
    if task not in EVAL_TASKS:
      raise ConfigError(f"--config.smart.tasks: SMART applies to {list(EVAL_TASKS)}, "
                        f"not {task!r}{_tuple_hint('smart.tasks', task)}")
  fixed = {k: float(v) for k, v in config.weighting.fixed.items()}
  missing = [t for t in tasks if t not in fixed]
  if config.weighting.mode == "fixed" and missing:
    raise ConfigError(f"--config.weighting.fixed has no weight for tasks {missing}")
  return StepConfig(
      tasks=tasks, freeze_encoder=config.train.mode == "pretrain",
      label_smoothing=float(config.train.label_smoothing),
      weighting=config.weighting.mode,
      fixed_weights=tuple(fixed.get(t, 1.0) for t in tasks),
      weight_ema_decay=float(config.weighting.ema_decay),
      weight_temperature=float(config.weighting.temperature),
      smart_weight=float(config.smart.weight), smart_tasks=tuple(config.smart.tasks),
      smart_variant=config.smart.variant, smart_num_samples=int(config.smart.num_samples),
      smart_num_steps=int(config.smart.num_steps), smart_step_size=float(config.smart.step_size),
      smart_noise_std=float(config.smart.noise_std), smart_epsilon=float(config.smart.epsilon),
      smart_norm=config.smart.norm, bregman_weight=float(config.smart.bregman_weight),
      bregman_decay=float(config.smart.bregman_decay),
      simcse_temperature=float(config.simcse.temperature),
      simcse_weight=float(config.simcse.weight),
      simcse_unsup_weight=float(config.simcse.unsup_weight))


def sentence_vector_source(config) -> str:
  """`heads.cls_source`, with "auto" resolved from the checkpoint folder.

  "auto": a sentence-transformers checkpoint (such as the embedded all-MiniLM-L6-v2) says
  in `1_Pooling/config.json` how it was trained to pool (mean of the tokens -> "mean", the
  [CLS] state -> "hidden"); any other BERT folder gets the pooler, as in the paper.
  """
  source = config.heads.cls_source
  if source != "auto":
    return source
  ckpt = paths.resolve_checkpoint(config.model.checkpoint or None)
  pooling_file = os.path.join(ckpt, "1_Pooling", "config.json")
  if os.path.isfile(pooling_file):
    with open(pooling_file, encoding="utf-8") as f:
      pooling = json.load(f)
    if pooling.get("pooling_mode_mean_tokens"):
      return "mean"
    if pooling.get("pooling_mode_cls_token"):
      return "hidden"
  return "pooler"


def head_config(config) -> heads_lib.HeadConfig:
  try:
    return heads_lib.HeadConfig(sentiment=config.heads.sentiment,
                                paraphrase=config.heads.paraphrase,
                                similarity=config.heads.similarity,
                                dropout=float(config.heads.dropout),
                                cls_source=sentence_vector_source(config))
  except ValueError as e:
    raise ConfigError(f"--config.{e}") from e


def build_model(config, load_weights: bool = True
                ) -> tuple[heads_lib.MultitaskModel, dict | None]:
  """The multitask model of `config` and, with `load_weights`, the pretrained encoder params."""
  dtype = _DTYPES.get(config.model.dtype)
  if dtype is None:
    raise ConfigError(f"--config.model.dtype={config.model.dtype!r}: expected one of "
                      f"{list(_DTYPES)}")
  ckpt = paths.resolve_checkpoint(config.model.checkpoint or None)
  if load_weights:
    bert_cfg, bert_params = convert.load_pretrained(ckpt)
  else:
    bert_cfg = convert.model_lib.BertConfig.from_json_file(os.path.join(ckpt, "config.json"))
    bert_params = None
  overrides = {}
  if config.model.hidden_dropout >= 0:
    overrides["hidden_dropout_prob"] = float(config.model.hidden_dropout)
  if config.model.attention_dropout >= 0:
    overrides["attention_probs_dropout_prob"] = float(config.model.attention_dropout)
  overrides["attention_impl"] = _attention_impl(config, bert_cfg)
  bert_cfg = bert_cfg.replace(**overrides)
  mt_model = heads_lib.MultitaskModel(bert_cfg, head_config(config), dtype=dtype,
                                      remat=bool(config.model.remat))
  return mt_model, bert_params


def _attention_impl(config, bert_cfg) -> str:
  impl = config.model.get("attention", "xla")  # workdirs of earlier versions lack the field
  if impl not in convert.model_lib.ATTENTION_IMPLS:
    raise ConfigError(f"--config.model.attention={impl!r}: expected one of "
                      f"{list(convert.model_lib.ATTENTION_IMPLS)}")
  if impl == "cudnn":
    if jax.default_backend() != "gpu":
      raise ConfigError(f"--config.model.attention=cudnn needs a GPU; JAX runs on "
                        f"{jax.default_backend()!r} here (use 'xla')")
    if config.model.dtype != "bfloat16":
      raise ConfigError(f"--config.model.attention=cudnn needs --config.model.dtype=bfloat16 "
                        f"(cuDNN's fused attention has no float32 kernel); got "
                        f"{config.model.dtype!r}")
    if bert_cfg.head_dim % 8 or bert_cfg.head_dim > 128:
      raise ConfigError(f"--config.model.attention=cudnn: head size {bert_cfg.head_dim} of "
                        f"this checkpoint is not a multiple of 8 up to 128 (use 'xla')")
  return impl


def tokenizer(config) -> tokenization.BertTokenizer:
  return tokenization.load_tokenizer(config.model.checkpoint or None)


def data_path(config, field: str) -> str | None:
  """The configured file of `data.<field>` (absolute), or None when it is not configured.
  A configured file that does not exist is an error naming the flag and where it looked."""
  value = config.data[field]
  if not value:
    return None
  if os.path.isabs(value):
    path, where = value, ""
  else:
    base = config.data.dir or paths.default_data_dir()
    path = os.path.join(base, value)
    where = (f" (relative to --config.data.dir={config.data.dir!r})" if config.data.dir else
             " (relative paths are read from ../shared/data beside the repository when that "
             "folder exists, else from data/ in it; set --config.data.dir=/path/to/data)")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config.data.{field}: data file not found: {path}{where}")
  return path


def limit_rows(tokset: data_lib.TokenizedSet, limit: int) -> data_lib.TokenizedSet:
  """The first `limit` rows of a set (0: all)."""
  if not limit or limit >= len(tokset):
    return tokset
  segments = {}
  for name, seg in tokset.segments.items():
    end = int(seg.offsets[limit])
    segments[name] = data_lib.Segment(seg.input_ids[:end], seg.type_ids[:end],
                                      seg.offsets[:limit + 1])
  return data_lib.TokenizedSet(segments,
                               None if tokset.labels is None else tokset.labels[:limit],
                               None if tokset.ids is None else tokset.ids[:limit],
                               tokset.lengths[:limit], tokset.pad_id)


def _check_max_length(config) -> int:
  max_length = int(config.data.max_length)
  buckets = tuple(int(b) for b in config.data.buckets)
  if not buckets or list(buckets) != sorted(set(buckets)):
    raise ConfigError(f"--config.data.buckets={buckets}: expected increasing lengths")
  if max_length > buckets[-1]:
    raise ConfigError(f"--config.data.max_length={max_length} exceeds the largest bucket "
                      f"{buckets[-1]} (--config.data.buckets)")
  return max_length


def eval_buckets(config) -> tuple[int, ...]:
  """Padded lengths for evaluation: `eval.buckets`, or `data.buckets` when empty."""
  buckets = tuple(int(b) for b in (config.eval.buckets or config.data.buckets))
  if list(buckets) != sorted(set(buckets)) or buckets[-1] < int(config.data.max_length):
    raise ConfigError(f"--config.eval.buckets={buckets}: expected increasing lengths up to "
                      f"at least data.max_length={config.data.max_length}")
  return buckets


def _on_invalid(config) -> str:
  return _choice(config, "data.on_invalid", ("raise", "skip"))


def load_split(config, tok: tokenization.BertTokenizer, task: str, split: str,
               joint_para: bool | None = None) -> data_lib.TokenizedSet | None:
  """The tokenized `split` ("train", "dev", "test") of an eval task, or None if unconfigured."""
  path = data_path(config, f"{task}_{split}")
  if path is None:
    return None
  max_length = _check_max_length(config)
  on_invalid = _on_invalid(config)
  if task == "sst":
    tokset = data_lib.load_and_tokenize_sentiment(path, tok, max_length, on_invalid=on_invalid)
  elif task == "para":
    joint = (config.heads.paraphrase == "prompt") if joint_para is None else joint_para
    tokset = data_lib.load_and_tokenize_pairs(
        path, "paraphrase", tok, max_length, joint=joint,
        prompt=heads_lib.PARAPHRASE_PROMPT if joint else None, on_invalid=on_invalid)
  elif task == "sts":
    tokset = data_lib.load_and_tokenize_pairs(path, "similarity", tok, max_length, joint=False,
                                              on_invalid=on_invalid)
  else:
    raise ValueError(task)
  if split != "test" and tokset.labels is None:
    raise data_lib.DataError(f"{path}: the {split} file of task {task} has no labels")
  limit = {"train": config.data.train_limit, "dev": config.data.dev_limit}.get(split, 0)
  return limit_rows(tokset, int(limit))


def train_sources(config, tok: tokenization.BertTokenizer, task: str
                  ) -> tuple[list[data_lib.TokenizedSet], list[float]]:
  """The tokenized training sets of `task` and their sampling weights."""
  max_length = _check_max_length(config)
  if task == "nli":
    path = data_path(config, "nli")
    if path is None:
      raise ConfigError("--config.train.tasks has 'nli' but --config.data.nli is empty")
    sets = [data_lib.load_and_tokenize_triplets(path, tok, max_length,
                                                on_invalid=_on_invalid(config))]
    return [limit_rows(sets[0], int(config.data.train_limit))], [1.0]
  main = load_split(config, tok, task, "train")
  if main is None:
    raise ConfigError(f"--config.data.{task}_train is empty but {task!r} is in "
                      "--config.train.tasks")
  sources, weights = [main], [1.0]
  if task == "sst":
    limit = int(config.data.train_limit)
    if config.data.cfimdb_weight > 0:
      path = data_path(config, "cfimdb_train")
      if path is None:
        raise ConfigError("--config.data.cfimdb_weight > 0 but --config.data.cfimdb_train "
                          "is empty")
      neg, pos = (int(x) for x in config.data.cfimdb_labels)
      sources.append(limit_rows(data_lib.load_and_tokenize_sentiment(
          path, tok, max_length, num_classes=2, label_map={0: neg, 1: pos},
          on_invalid=_on_invalid(config)), limit))
      weights.append(float(config.data.cfimdb_weight))
    if config.data.tweets_weight > 0:
      path = data_path(config, "tweets")
      if path is None:
        raise ConfigError("--config.data.tweets_weight > 0 but --config.data.tweets is empty")
      sources.append(limit_rows(data_lib.load_and_tokenize_tweets(
          path, tok, max_length, on_invalid=_on_invalid(config)), limit))
      weights.append(float(config.data.tweets_weight))
  return sources, weights


def to_dict(config) -> dict[str, Any]:
  """The config as plain JSON-able values."""
  return config.to_dict()
