"""The typed settings of an experiment: the one edge where a config becomes values.

`configs/base.py` defines every field (with its default and a comment) as an
`ml_collections.ConfigDict`; `from_dict(config.to_dict())` turns it, once, into the frozen
dataclasses below, with the same nesting (`settings.smart.weight`). Every value is checked
there, with errors that name the flag (`--config.optim.lr=-0.0001: expected > 0`); below
this edge code takes these dataclasses and nothing re-validates. `to_dict` gives the plain
JSON that a workdir keeps as `config.json`, and `from_dict` reads it back. Nothing here
imports `ml_collections` (only `launch.py` and `configs/` do).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any


class ConfigError(ValueError):
  """A config value that is not allowed; the message names the field."""


# The task table's rows (tasks.py checks): all, and those with dev metrics and predictions.
TASKS = ("sst", "para", "sts", "nli", "cfimdb")
EVALUATED_TASKS = ("sst", "para", "sts", "cfimdb")
# The tasks a teacher's outputs can be distilled into (their rows' `soft_loss`).
DISTILLED_TASKS = ("sst", "para", "sts", "cfimdb")


def _fail(field: str, value: Any, expected: str):
  raise ConfigError(f"--config.{field}={value!r}: expected {expected}")


def _one_of(field: str, value: Any, allowed: tuple) -> None:
  if value not in allowed:
    _fail(field, value, f"one of {list(allowed)}")


def _at_least(field: str, value: float, low: float) -> None:
  if not value >= low:
    _fail(field, value, f">= {low}")


def _positive(field: str, value: float) -> None:
  if not (value > 0 and math.isfinite(value)):
    _fail(field, value, "> 0")


def _probability(field: str, value: float) -> None:
  if not 0.0 <= value < 1.0:
    _fail(field, value, "a probability in [0, 1)")


def _tuple_hint(field: str, value: str) -> str:
  """`--config.f=a,b` reaches a tuple-of-strings field as the one string 'a,b'."""
  if "," not in str(value):
    return ""
  items = ",".join(repr(v.strip()) for v in str(value).split(","))
  return f" (a tuple of names is written --config.{field}=\"({items})\")"


def _tasks(field: str, tasks: tuple[str, ...], allowed: tuple[str, ...]) -> None:
  for task in tasks:
    if task not in allowed:
      raise ConfigError(f"--config.{field}: unknown task {task!r}; expected some of "
                        f"{list(allowed)}{_tuple_hint(field, task)}")


def train_file_field(task: str) -> str:
  """The `data` field of a task's train file: `<task>_train`, or `<task>` for a task with one
  file (the NLI triplets, `data.nli`); the task table's `files` agree (tasks.py checks)."""
  return f"{task}_train" if f"{task}_train" in DataSettings.__dataclass_fields__ else task


# ------------------------------------------------------------------------------------------
# The groups, in the order of configs/base.py. Field comments live there.


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  checkpoint: str
  dtype: str
  kernels: str
  hidden_dropout: float
  attention_dropout: float
  remat: bool
  attention: str

  def __post_init__(self):
    _one_of("model.dtype", self.dtype, ("float32", "bfloat16", "auto"))
    _one_of("model.kernels", self.kernels, ("auto", "flax", "xla_cpu"))
    _one_of("model.attention", self.attention, ("xla", "cudnn"))
    for name in ("hidden_dropout", "attention_dropout"):
      value = getattr(self, name)
      if value >= 0:  # < 0 keeps the checkpoint's value
        _probability(f"model.{name}", value)


@dataclasses.dataclass(frozen=True)
class HeadSettings:
  sentiment: str
  paraphrase: str
  similarity: str
  dropout: float
  cls_source: str

  def __post_init__(self):
    _one_of("heads.sentiment", self.sentiment, ("linear", "squared_relu", "mlp"))
    _one_of("heads.paraphrase", self.paraphrase, ("bi", "prompt", "cross"))
    _one_of("heads.similarity", self.similarity, ("linear", "cosine", "cross"))
    _probability("heads.dropout", self.dropout)
    _one_of("heads.cls_source", self.cls_source, ("auto", "pooler", "hidden", "mean"))

  # A pair-head choice's meaning, read here only (heads.py and tasks.py ask): one joint
  # input `[CLS] a [SEP] b [SEP]` rather than two sentence vectors; the paper's prompt.
  @property
  def paraphrase_joint(self) -> bool:
    return self.paraphrase != "bi"

  @property
  def paraphrase_prompted(self) -> bool:
    return self.paraphrase == "prompt"

  @property
  def similarity_joint(self) -> bool:
    return self.similarity == "cross"


@dataclasses.dataclass(frozen=True)
class DataSettings:
  dir: str
  sst_train: str
  sst_dev: str
  sst_test: str
  para_train: str
  para_dev: str
  para_test: str
  sts_train: str
  sts_dev: str
  sts_test: str
  cfimdb_train: str
  cfimdb_dev: str
  cfimdb_test: str
  tweets: str
  nli: str
  max_length: int
  buckets: tuple[int, ...]
  train_limit: int
  dev_limit: int
  cfimdb_weight: float
  tweets_weight: float
  swap_pairs: bool
  valid_fraction: float
  cfimdb_labels: tuple[int, ...]
  on_invalid: str
  tfds_dir: str

  def __post_init__(self):
    if not self.buckets or list(self.buckets) != sorted(set(self.buckets)) or min(
        self.buckets) < 1:
      _fail("data.buckets", self.buckets, "increasing positive lengths")
    if self.max_length < 3:
      _fail("data.max_length", self.max_length, ">= 3 (room for [CLS] and [SEP])")
    if self.max_length > self.buckets[-1]:
      raise ConfigError(f"--config.data.max_length={self.max_length} exceeds the largest "
                        f"bucket {self.buckets[-1]} (--config.data.buckets)")
    _at_least("data.train_limit", self.train_limit, 0)
    _at_least("data.dev_limit", self.dev_limit, 0)
    _at_least("data.cfimdb_weight", self.cfimdb_weight, 0.0)
    _at_least("data.tweets_weight", self.tweets_weight, 0.0)
    if not 0.0 <= self.valid_fraction <= 0.5:
      _fail("data.valid_fraction", self.valid_fraction, "a fraction in [0, 0.5] (0 = no "
            "validation split)")
    if len(self.cfimdb_labels) != 2 or not all(0 <= c < 5 for c in self.cfimdb_labels):
      _fail("data.cfimdb_labels", self.cfimdb_labels, "two SST classes (negative, positive)")
    _one_of("data.on_invalid", self.on_invalid, ("raise", "skip"))


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  num_steps: int
  tasks: tuple[str, ...]
  sampling: str
  sampling_temperature: float
  sampling_alpha_start: float
  sampling_alpha_end: float
  sampling_scale: tuple[tuple[str, float], ...]  # (task, factor) pairs; a dict in config.json
  batch_size: int
  mode: str
  label_smoothing: float
  log_every: int
  eval_every: int
  ckpt_every: int
  eval_limit: int
  progress: bool
  rng_impl: str

  def __post_init__(self):
    if not self.tasks:
      raise ConfigError("--config.train.tasks is empty")
    _tasks("train.tasks", self.tasks, TASKS)
    if len(set(self.tasks)) != len(self.tasks):
      _fail("train.tasks", self.tasks, "each task once")
    _one_of("train.sampling", self.sampling,
            ("round_robin", "proportional", "temperature", "annealed"))
    _positive("train.sampling_temperature", self.sampling_temperature)
    _at_least("train.sampling_alpha_start", self.sampling_alpha_start, 0.0)
    _at_least("train.sampling_alpha_end", self.sampling_alpha_end, 0.0)
    for task, factor in self.sampling_scale:
      _tasks("train.sampling_scale", (task,), TASKS)
      _positive(f"train.sampling_scale.{task}", factor)
    _at_least("train.num_steps", self.num_steps, 1)
    _at_least("train.batch_size", self.batch_size, 1)
    _one_of("train.mode", self.mode, ("finetune", "pretrain"))
    _probability("train.label_smoothing", self.label_smoothing)
    for name in ("log_every", "eval_every", "ckpt_every"):
      _at_least(f"train.{name}", getattr(self, name), 1)
    _at_least("train.eval_limit", self.eval_limit, 0)
    _one_of("train.rng_impl", self.rng_impl, ("threefry2x32", "rbg", "unsafe_rbg"))


@dataclasses.dataclass(frozen=True)
class OptimSettings:
  lr: float
  schedule: str
  warmup_steps: int
  layer_decay: float
  weight_decay: float
  b1: float
  b2: float
  eps: float
  grad_clip: float
  ema_decay: float

  def __post_init__(self):
    _positive("optim.lr", self.lr)
    _one_of("optim.schedule", self.schedule, ("constant", "linear", "cosine"))
    _at_least("optim.warmup_steps", self.warmup_steps, 0)
    if not 0.0 < self.layer_decay <= 1.0:
      _fail("optim.layer_decay", self.layer_decay, "in (0, 1] (1 = off)")
    _at_least("optim.weight_decay", self.weight_decay, 0.0)
    _probability("optim.b1", self.b1)
    _probability("optim.b2", self.b2)
    _positive("optim.eps", self.eps)
    _at_least("optim.grad_clip", self.grad_clip, 0.0)
    if not 0.0 <= self.ema_decay < 1.0:
      _fail("optim.ema_decay", self.ema_decay, "in [0, 1) (0 = off)")


@dataclasses.dataclass(frozen=True)
class WeightingSettings:
  mode: str
  fixed: tuple[tuple[str, float], ...]  # (task, weight) pairs; a dict in config.json
  ema_decay: float
  temperature: float

  def __post_init__(self):
    _one_of("weighting.mode", self.mode, ("none", "fixed", "loss"))
    for task, weight in self.fixed:
      _tasks("weighting.fixed", (task,), TASKS)
      _at_least(f"weighting.fixed.{task}", weight, 0.0)
    _probability("weighting.ema_decay", self.ema_decay)
    _positive("weighting.temperature", self.temperature)

  def fixed_weight(self, task: str) -> float:
    return dict(self.fixed).get(task, 1.0)


@dataclasses.dataclass(frozen=True)
class SmartSettings:
  weight: float
  tasks: tuple[str, ...]
  variant: str
  num_samples: int
  num_steps: int
  step_size: float
  noise_std: float
  epsilon: float
  norm: str
  bregman_weight: float
  bregman_decay: float

  def __post_init__(self):
    _at_least("smart.weight", self.weight, 0.0)
    for task in self.tasks:
      if task not in EVALUATED_TASKS:
        raise ConfigError(f"--config.smart.tasks: SMART applies to {list(EVALUATED_TASKS)}, "
                          f"not {task!r}{_tuple_hint('smart.tasks', task)}")
    _one_of("smart.variant", self.variant, ("random", "adversarial"))
    _at_least("smart.num_samples", self.num_samples, 1)
    _at_least("smart.num_steps", self.num_steps, 0)
    _positive("smart.step_size", self.step_size)
    _at_least("smart.noise_std", self.noise_std, 0.0)
    _positive("smart.epsilon", self.epsilon)
    _one_of("smart.norm", self.norm, ("inf", "l2"))
    _at_least("smart.bregman_weight", self.bregman_weight, 0.0)
    _probability("smart.bregman_decay", self.bregman_decay)


@dataclasses.dataclass(frozen=True)
class SimcseSettings:
  temperature: float
  weight: float
  unsup_weight: float

  def __post_init__(self):
    _positive("simcse.temperature", self.temperature)
    _at_least("simcse.weight", self.weight, 0.0)
    _at_least("simcse.unsup_weight", self.unsup_weight, 0.0)


@dataclasses.dataclass(frozen=True)
class DistillSettings:
  teachers: tuple[str, ...]
  schedule: str
  weight: float

  def __post_init__(self):
    seen = []
    for entry in self.teachers:
      task, sep, workdir = str(entry).partition("=")
      if not sep or not workdir.strip() or task not in DISTILLED_TASKS:
        _fail("distill.teachers", self.teachers, "entries TASK=WORKDIR with TASK among "
              f"{list(DISTILLED_TASKS)}, e.g. \"('sst=runs/sst',)\"")
      if task in seen:
        _fail("distill.teachers", self.teachers, "one teacher per task")
      seen.append(task)
    _one_of("distill.schedule", self.schedule, ("anneal", "fixed"))
    _probability("distill.weight", self.weight)

  @property
  def by_task(self) -> dict[str, str]:
    """{task: teacher workdir}."""
    return dict(str(e).split("=", 1) for e in self.teachers)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  batch_size: int
  buckets: tuple[int, ...]
  dtype: str
  write_predictions: bool
  both_orders: bool
  dev: bool

  def __post_init__(self):
    _at_least("eval.batch_size", self.batch_size, 1)
    _one_of("eval.dtype", self.dtype, ("", "float32", "bfloat16", "auto"))
    if self.buckets and (list(self.buckets) != sorted(set(self.buckets))
                         or min(self.buckets) < 1):
      _fail("eval.buckets", self.buckets, "increasing positive lengths, or () for data.buckets")


@dataclasses.dataclass(frozen=True)
class CkptSettings:
  keep: int
  export_hf: bool

  def __post_init__(self):
    _at_least("ckpt.keep", self.keep, 1)


@dataclasses.dataclass(frozen=True)
class Settings:
  """Every setting of an experiment (configs/base.py says what each field does)."""
  seed: int
  model: ModelSettings
  heads: HeadSettings
  data: DataSettings
  train: TrainSettings
  optim: OptimSettings
  weighting: WeightingSettings
  smart: SmartSettings
  simcse: SimcseSettings
  distill: DistillSettings
  eval: EvalSettings
  ckpt: CkptSettings
  jax_cache_dir: str

  def __post_init__(self):
    # Checks that span groups.
    if self.weighting.mode == "fixed":
      missing = [t for t in self.train.tasks if t not in dict(self.weighting.fixed)]
      if missing:
        raise ConfigError(f"--config.weighting.fixed has no weight for tasks {missing}")
    if self.eval.buckets and self.eval.buckets[-1] < self.data.max_length:
      _fail("eval.buckets", self.eval.buckets,
            f"a largest length of at least data.max_length={self.data.max_length}")
    for task in self.train.tasks:
      field = train_file_field(task)
      if not getattr(self.data, field):
        raise ConfigError(f"--config.data.{field} is empty but {task!r} is in "
                          "--config.train.tasks")
    if self.data.cfimdb_weight > 0 and not self.data.cfimdb_train:
      raise ConfigError("--config.data.cfimdb_weight > 0 but --config.data.cfimdb_train is "
                        "empty")
    if self.data.tweets_weight > 0 and not self.data.tweets:
      raise ConfigError("--config.data.tweets_weight > 0 but --config.data.tweets is empty")
    for task in self.distill.by_task:
      if task not in self.train.tasks:
        raise ConfigError(f"--config.distill.teachers names a teacher for {task!r}, which is "
                          "not in --config.train.tasks")
    if "sst" in self.distill.by_task and (self.data.cfimdb_weight > 0
                                          or self.data.tweets_weight > 0):
      raise ConfigError("--config.distill.teachers has an SST teacher and SST mixes in "
                        "CFIMDB or tweets (data.cfimdb_weight / data.tweets_weight > 0): the "
                        "teacher's outputs exist for SST's own rows only; set both to 0")
    if self.optim.ema_decay > 0 and self.smart.bregman_weight > 0:
      raise ConfigError("--config.optim.ema_decay > 0 and --config.smart.bregman_weight > 0: "
                        "the train state keeps one moving average of the weights, the "
                        "evaluated one or the Bregman term's; set one of them to 0")

  @property
  def eval_buckets(self) -> tuple[int, ...]:
    """Padded lengths for evaluation: `eval.buckets`, or `data.buckets` when empty."""
    return self.eval.buckets or self.data.buckets

  def replace(self, **groups: dict[str, Any]) -> "Settings":
    """A copy with fields of groups replaced, e.g. `replace(train={"num_steps": 10})`."""
    d = to_dict(self)
    for group, fields in groups.items():
      if isinstance(fields, dict):
        d[group] = {**d[group], **fields}
      else:
        d[group] = fields
    return from_dict(d)


# ------------------------------------------------------------------------------------------
# Conversion.


def _closest(name: str, known) -> str:
  close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
  return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def unknown_field_message(path: str, known) -> str:
  """The one-line error for a config field that does not exist."""
  *parents, leaf = path.split(".")
  where = ".".join(parents)
  what = f"field in group {where!r}" if where else "field or group"
  return (f"--config.{path}: no such {what}{_closest(leaf, known)} (every field is "
          "listed, with its meaning, in configs/base.py)")


def _convert(value: Any, hint: Any, field: str) -> Any:
  """`value` (from a ConfigDict or JSON) as the annotated type of `field`."""
  origin = typing.get_origin(hint)
  if dataclasses.is_dataclass(hint):
    if not isinstance(value, dict):
      _fail(field, value, f"a group of fields ({hint.__name__})")
    return _build(hint, value, field + ".")
  if origin is tuple:
    args = typing.get_args(hint)
    if isinstance(value, dict) and args and typing.get_origin(args[0]) is tuple:
      return tuple((str(k), float(v)) for k, v in value.items())  # weighting.fixed
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
      _fail(field, value, "a tuple" + _tuple_hint(field, value))
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_convert(v, args[0], field) for v in value)
    if len(value) != len(args):
      _fail(field, value, f"{len(args)} values")
    return tuple(_convert(v, a, field) for v, a in zip(value, args))
  if hint is bool:
    if not isinstance(value, bool):
      _fail(field, value, "true or false")
    return value
  if hint is int:
    if isinstance(value, bool) or not isinstance(value, int):
      if isinstance(value, float) and value.is_integer():
        return int(value)
      _fail(field, value, "an integer")
    return value
  if hint is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      _fail(field, value, "a number")
    return float(value)
  if hint is str:
    if not isinstance(value, str):
      _fail(field, value, "a string")
    return value
  raise TypeError(f"{field}: unsupported annotation {hint!r}")


def _build(cls, d: dict[str, Any], prefix: str = "", fill: dict[str, Any] | None = None,
           filled: list[str] | None = None):
  hints = typing.get_type_hints(cls)
  names = [f.name for f in dataclasses.fields(cls)]
  for key in d:
    if key not in hints:
      raise ConfigError(unknown_field_message(prefix + key, names))
  missing = [n for n in names if n not in d]
  if missing and fill is not None:
    d = {**d, **{n: fill[n] for n in missing}}
    for n in missing:  # a whole missing group names each of its fields
      filled.extend(prefix + n + (f".{k}" if isinstance(fill[n], dict) else "")
                    for k in (flatten(fill[n]) if isinstance(fill[n], dict) else [""]))
    missing = []
  if missing:
    raise ConfigError(f"config lacks the field(s) {[prefix + n for n in missing]}: it was "
                      "written by another version of mtbert_jax (configs/base.py lists the "
                      "current fields)")
  values = {}
  for n in names:
    if dataclasses.is_dataclass(hints[n]) and isinstance(d[n], dict):
      values[n] = _build(hints[n], d[n], f"{prefix}{n}.",
                         None if fill is None else fill[n], filled)
    else:
      values[n] = _convert(d[n], hints[n], prefix + n)
  return cls(**values)


def from_dict(d: dict[str, Any], fill_from: "Settings | None" = None,
              filled: list[str] | None = None) -> Settings:
  """Settings from a nested dict (`ConfigDict.to_dict()`, or a workdir's config.json).

  Every field must be there, unless `fill_from` is given: then a missing field (a
  config.json written before the field existed) takes `fill_from`'s value, and its name is
  appended to `filled`."""
  fill = None if fill_from is None else to_dict(fill_from)
  return _build(Settings, d, "", fill, [] if filled is None else filled)


def _plain(value: Any) -> Any:
  if dataclasses.is_dataclass(value):
    return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
  if isinstance(value, tuple):
    if value and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str)
                     for v in value):
      return {k: v for k, v in value}  # weighting.fixed
    return list(value)
  return value


def to_dict(settings: Settings) -> dict[str, Any]:
  """The settings as plain JSON values (tuples as lists), the format of config.json."""
  return _plain(settings)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"train.num_steps": 300, ...} of a nested dict (for comparisons and listings)."""
  out = {}
  for key, value in d.items():
    if isinstance(value, dict) and key != "fixed":
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out
