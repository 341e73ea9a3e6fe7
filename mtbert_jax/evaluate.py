"""Dev metrics, prediction files in the course format, and inference from a workdir.

Metrics come from the task table (SST accuracy, Quora accuracy, STS Pearson correlation),
with their plain average (the paper's headline) and the course leaderboard score
(`tasks.summarize`). Prediction files follow the course's `multitask_classifier.py` byte
for byte: a header `id \\t Predicted_<X> ` and one `id , value ` line per input row. Each
file is written to a temporary name and renamed when complete, so no partial file looks
finished. `evaluate_and_predict` is what the end of training and `--mode=eval` share;
`Predictor` is the Python API; `Predictor.stream` runs it over an iterable of any length one
chunk at a time (`predict_file.py` over a file: `--mode=predict --predict_input=FILE`).
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtbert_jax import checkpoint as ckpt_lib
from mtbert_jax import console
from mtbert_jax import data as data_lib
from mtbert_jax import experiment
from mtbert_jax import heads as heads_lib
from mtbert_jax import objective
from mtbert_jax import settings as settings_lib
from mtbert_jax import sharding
from mtbert_jax import tasks as tasks_lib
from mtbert_jax import workdir as workdir_lib
from mtbert_jax.settings import Settings

log = logging.getLogger(__name__)


def make_output_fns(mt_model: heads_lib.MultitaskModel, dtype: str = "") -> dict[str, Callable]:
  """Jitted `fn(params, batch) -> task output [B]` per evaluated task, dropout off, in the
  compute `dtype` ("" = the model's, "auto" = `experiment.compute_dtype`; the parameters
  stay as they are)."""
  if dtype:
    dtype = experiment.compute_dtype(dtype, "eval.dtype")
    mt_model = mt_model.clone(dtype={"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype])
  def output_fn(task: tasks_lib.Task):
    def fn(params, batch):
      inputs = objective.stack_segments(batch, task.segments(mt_model.heads))
      vectors = mt_model.apply({"params": params}, inputs["input_ids"],
                               inputs["attention_mask"], inputs["token_type_ids"], True,
                               method=heads_lib.MultitaskModel.vector)
      return objective.head(mt_model, params, task, vectors, None)
    return jax.jit(fn)
  return {name: output_fn(tasks_lib.get(name)) for name in tasks_lib.EVALUATED}


def to_predictions(task: str, outputs: np.ndarray) -> np.ndarray:
  """A task's raw outputs (logits, logit, score) as its predictions (class, 0/1, score)."""
  return np.asarray(tasks_lib.get(task).predict(outputs))


def predict(output_fn: Callable, params: Any, tokset: data_lib.TokenizedSet, batch_size: int,
            buckets: Sequence[int], sharder: Any = None,
            counter: console.Counter | None = None) -> np.ndarray:
  """`output_fn`'s outputs for every row of `tokset`, in file order.

  `batch_size` is global; with a `sharding.Sharder` each host feeds its slice of every
  batch to the mesh and every host gets all predictions back. `counter` is told each
  batch's real rows.
  """
  out = None
  for batch in data_lib.eval_batches(tokset, batch_size, buckets):
    index = batch.pop("index")
    batch.pop("labels", None)
    batch.pop("weights")
    if sharder is None:
      pred = np.asarray(jax.device_get(output_fn(params, batch)))
    else:
      pred = sharder.gather(output_fn(params, sharder.put_global(batch)))
    if out is None:
      out = np.zeros((len(tokset),) + pred.shape[1:], pred.dtype)
    keep = index >= 0
    out[index[keep]] = pred[keep]
    if counter is not None:
      counter.update(int(keep.sum()))
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


def mean_over_orders(output_of: Callable[[data_lib.TokenizedSet], np.ndarray],
                     orders: Sequence[data_lib.TokenizedSet]) -> np.ndarray:
  """The outputs for the rows of `orders[0]`; with a second order (`tasks.orders`: the same
  pairs as (b, a), row for row) the mean of the outputs on the two. Training-time
  evaluation, `--mode=eval` and `Predictor` all average here."""
  if not 1 <= len(orders) <= 2:
    raise ValueError(f"{len(orders)} orders: expected the pairs as given, and as (b, a)")
  out = output_of(orders[0])
  if len(orders) == 2:
    if orders[1].ids != orders[0].ids:
      raise ValueError("the reversed set does not hold the same rows")
    out = (out + output_of(orders[1])) / 2
  return out


def evaluate_split(output_fns: dict[str, Callable], params: Any,
                   sets: dict[str, Sequence[data_lib.TokenizedSet] | None], batch_size: int,
                   buckets: Sequence[int], sharder: Any = None, split: str = "dev"
                   ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """(scores per labeled task, raw outputs per task) over the configured sets
  (`experiment.eval_sets`: per task its set in each order it is scored in, whose outputs
  are averaged), with a progress counter per set."""
  scores, outputs = {}, {}
  for task, orders in sets.items():
    if orders is None:
      continue
    tokset = orders[0]
    counter = console.Counter(f"{'predicting' if split == 'test' else 'evaluating'} {task} "
                              f"{split}" + (" in both orders" if len(orders) == 2 else ""),
                              len(tokset) * len(orders), tasks_lib.get(task).unit)
    try:
      outputs[task] = mean_over_orders(
          lambda order, fn=output_fns[task]: predict(fn, params, order, batch_size, buckets,
                                                     sharder, counter), orders)
    finally:
      counter.close()
    if tokset.labels is not None:
      scores[task] = tasks_lib.get(task).score(to_predictions(task, outputs[task]),
                                               tokset.labels)
  return scores, outputs


def prediction_path(pred_dir: str, task: str, split: str) -> str:
  return os.path.join(pred_dir, f"{tasks_lib.get(task).prediction_file}-{split}-output.csv")


def write_split_predictions(pred_dir: str, split: str,
                            sets: dict[str, Sequence[data_lib.TokenizedSet] | None],
                            outputs: dict[str, np.ndarray]) -> list[str]:
  """Writes `<task>-<split>-output.csv` for each configured set (the course's files) and
  `<split>-outputs.npz` with every task's ids and raw outputs (logits, logit, score: what
  `mtbert_jax.report` reads for confidences); logs the sets that are not configured."""
  os.makedirs(pred_dir, exist_ok=True)
  written, missing, arrays = [], [], {}
  for task in sets:
    path = prediction_path(pred_dir, task, split)
    if sets[task] is None:
      missing.append(task)
      continue
    ids = sets[task][0].ids
    write_predictions(path, task, ids, to_predictions(task, outputs[task]))
    log.info("wrote %s (%d rows)", path, len(outputs[task]))
    written.append(path)
    arrays[f"{task}/ids"] = np.asarray(ids, dtype=str)
    arrays[f"{task}/outputs"] = outputs[task]
  if arrays:
    path = os.path.join(pred_dir, f"{split}-outputs.npz")
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    written.append(path)
  if missing:
    log.info("no %s file configured for %s: no %s predictions for %s", split,
             ", ".join(missing), split, "it" if len(missing) == 1 else "them")
  return written


def evaluate_and_predict(s: Settings, workdir: str, mt_model, params, tok,
                         sharder: sharding.Sharder, step: int, score: bool = True,
                         results: dict[str, tuple] | None = None,
                         output_fns: dict | None = None, suffix: str = "") -> dict[str, float]:
  """With `score`: the metrics of `params` on each scored split (`experiment.scored_splits`:
  the validation split, dev) into `metrics.json` as `valid/...` and `dev/...`, and their
  and the test sets' prediction files; without (predict mode): the test prediction files
  only, no metrics.

  `results`: per split, (scores, outputs) already computed for exactly these params on the
  whole split (the loop's last evaluation of the best step), reused, not recomputed.
  `output_fns`: the loop's jitted output functions, so their compiled shapes are reused.
  `suffix`: written as `metrics<suffix>.json` and `predictions<suffix>/` (an evaluation on
  other rows than the run's own, beside its files instead of over them).
  """
  output_fns = output_fns or make_output_fns(mt_model, s.eval.dtype)
  sharder.check_batch_size(s.eval.batch_size, "eval.batch_size")
  metrics: dict[str, Any] = {"step": int(step)}
  if score and s.data.dev_limit:
    metrics["dev_limit"] = s.data.dev_limit  # the dev metrics are of the first N rows only
  pred_dir = os.path.join(workdir, "predictions" + suffix)
  scored = experiment.scored_splits(s) if score else ()
  for split in scored + ("test",):
    sets = experiment.eval_sets(s, tok, split)
    if split in (results or {}):
      scores, outputs = results[split]
    else:
      scores, outputs = evaluate_split(output_fns, params, sets, s.eval.batch_size,
                                       s.eval_buckets, sharder, split)
    if split in scored:
      metrics.update(tasks_lib.summarize(scores, split))
    if (s.eval.write_predictions or not score) and jax.process_index() == 0:
      write_split_predictions(pred_dir, split, sets, outputs)
  if score and jax.process_index() == 0:
    workdir_lib.write_json(os.path.join(workdir, f"metrics{suffix}.json"), metrics)
  return metrics


def best_params(mt_model: heads_lib.MultitaskModel, workdir: str,
                trained: Sequence[str] | None = None) -> dict:
  """The parameters of a workdir's best checkpoint for `mt_model` (on the default device).

  `trained`: the run's tasks. A checkpoint written before a row joined the task table lacks
  that row's head layer; when no trained task's head needs it, the rest is restored and the
  layer is zeros, with a warning that names it (never trained, it is never scored)."""
  def shapes(tasks: tuple[str, ...] | None = None) -> dict:  # of the heads of `tasks`
    return jax.eval_shape(lambda: tasks_lib.init_params(mt_model, jax.random.key(0),
                                                        tasks=tasks))

  like = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), shapes())
  saved = ckpt_lib.best_param_names(workdir)
  missing = set() if saved is None or trained is None else set(like) - saved
  if not missing or missing & set(shapes(tuple(trained))):
    return ckpt_lib.read_best_params(workdir, like)
  log.warning("the best checkpoint in %s has no %s: the heads of tasks that joined the task "
              "table after it was written, which its run did not train; they are zeros",
              workdir, ", ".join(sorted(missing)))
  restored = ckpt_lib.read_best_params(
      workdir, {name: value for name, value in like.items() if name not in missing})
  return {**like, **restored}


def restore_best(s: Settings, workdir: str):
  """(model, best params, tokenizer) of a workdir's best checkpoint, the model and the
  tokenizer built from `s` (for eval, predict and export, which have no model yet)."""
  mt_model, _ = experiment.build_model(s, load_weights=False)
  return mt_model, best_params(mt_model, workdir, s.train.tasks), experiment.tokenizer(s)


def evaluate_workdir(workdir: str, s: Settings | None = None,
                     score: bool = True) -> dict[str, float]:
  """`--mode=eval` (dev metrics, metrics.json, dev and test predictions) or, without
  `score`, `--mode=predict` (test predictions only) of the best checkpoint. The data files
  are those of `s` (default: the training run's, checked against the config saved with the
  checkpoints); `s` must agree with the trained settings in every field that changes the
  model or its inputs (`workdir.FREE["eval"]` lists what may differ). With another
  `data.dev_limit` than the run's, the metrics and predictions go to
  `metrics-dev_limitN.json` and `predictions-dev_limitN/`, beside the run's own."""
  workdir = workdir_lib.prepare(workdir, create=False)
  with workdir_lib.lock(workdir, "eval" if score else "predict"):
    s = ckpt_lib.run_settings(workdir, s)
    if not score and not any(getattr(s.data, tasks_lib.get(t).files.get("test", ""), "")
                             for t in experiment.evaluated_tasks(s)):
      raise settings_lib.ConfigError("--mode=predict writes the test sets' predictions, and "
                                     "no --config.data.*_test file is configured")
    mt_model, params, tok = restore_best(s, workdir)
    sharder = sharding.Sharder(sharding.make_mesh())
    ckpts = ckpt_lib.Checkpoints(workdir, create=False)
    step = ckpts.best_step()
    ckpts.close()
    # Another dev limit than the run's scores other rows: its metrics and predictions go
    # beside the run's own, named by the limit, instead of replacing them.
    trained_limit = (workdir_lib.load_settings(workdir, fill_from=s).data.dev_limit
                     if workdir_lib.has_settings(workdir) else s.data.dev_limit)
    suffix = (f"-dev_limit{s.data.dev_limit}" if s.data.dev_limit != trained_limit else "")
    return evaluate_and_predict(s, workdir, mt_model, sharder.replicate(params), tok,
                                sharder, step, score, suffix=suffix)


def _texts(value: Any, what: str, start: int = 0) -> list[str]:
  """`value` as a list of strings, or a TypeError saying what was expected; items are
  numbered from `start` in the messages (a chunk's first item in a stream)."""
  if isinstance(value, str):
    raise TypeError(f"{what}: expected a list of strings, got one string {value[:40]!r} "
                    "(wrap it in a list: [text])")
  try:
    items = list(value)
  except TypeError:
    raise TypeError(f"{what}: expected a list of strings, got {type(value).__name__}") from None
  for i, item in enumerate(items):
    if not isinstance(item, str):
      raise TypeError(f"{what}: item {start + i} is a {type(item).__name__}, expected a "
                      "string")
    if not item.strip():
      # The model would still answer ([CLS] [SEP] alone), as if it had read something;
      # the data readers reject empty texts for the same reason.
      raise ValueError(f"{what}: item {start + i} is an empty text, expected a sentence")
  return items


def _pairs(value: Any, what: str, start: int = 0) -> tuple[list[str], list[str]]:
  """`value` as two lists of strings (a list of (a, b) pairs), or a clear error; items are
  numbered from `start` in the messages."""
  if isinstance(value, str):
    raise TypeError(f"{what}: expected a list of (sentence, sentence) pairs, got a string")
  if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value):
    raise TypeError(f"{what}: expected a list of pairs, got one pair {value!r} (wrap it in a "
                    "list: [(a, b)])")
  try:
    items = list(value)
  except TypeError:
    raise TypeError(f"{what}: expected a list of pairs, got {type(value).__name__}") from None
  a, b = [], []
  for i, item in enumerate(items):
    if isinstance(item, str) or not isinstance(item, (tuple, list)) or len(item) != 2:
      raise ValueError(f"{what}: item {start + i} is {item!r}, expected a pair (sentence, "
                       "sentence)")
    if not all(isinstance(t, str) for t in item):
      raise TypeError(f"{what}: item {start + i} holds a {type(item[0]).__name__} and a "
                      f"{type(item[1]).__name__}, expected two strings")
    if not all(t.strip() for t in item):
      raise ValueError(f"{what}: item {start + i} has an empty sentence, expected two "
                       "sentences")
    a.append(item[0])
    b.append(item[1])
  return a, b


# The tasks of `Predictor.stream`, and what one of their inputs is.
_UNITS = {name: tasks_lib.get(name).unit for name in tasks_lib.EVAL_TASKS}
STREAM_CHUNK = 4096  # inputs held at once by `Predictor.stream` (and so `predict_file`)


class StreamChunk(NamedTuple):
  """One chunk of `Predictor.stream`'s outputs, in input order."""
  predictions: np.ndarray  # sst: classes 0..4; para: 0/1; sts: scores
  probabilities: np.ndarray | None  # sst: [n, 5]; para: [n] (of a paraphrase); sts: None


def _softmax(logits: np.ndarray) -> np.ndarray:
  logits = logits.astype(np.float64)
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(logit: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-logit.astype(np.float64)))


class Predictor:
  """Inference with the best checkpoint of a workdir.

      p = Predictor.from_workdir("runs/quick")
      p.sentiment(["A gorgeous film ."])                         # classes 0..4
      p.sentiment_probabilities(["A gorgeous film ."])           # [N, 5], rows sum to 1
      p.paraphrase([("How old are you?", "What is your age?")])  # 0/1
      p.paraphrase_probability([("How old are you?", "What is your age?")])  # in [0, 1]
      p.similarity([("A man plays.", "A man is playing.")])      # 0..5 scores
      for chunk in p.stream("para", pairs_from_anywhere()):      # StreamChunk per 4096
        ...

  Inputs are lists (a bare string or pair is refused with a TypeError); an empty list gives
  an empty array. `stream` takes any iterable and holds one chunk of it at a time.
  """

  def __init__(self, mt_model, params, tokenizer, max_length: int, buckets: Sequence[int],
               batch_size: int = 64, both_orders: bool = False):
    self.model, self.params, self.tokenizer = mt_model, params, tokenizer
    self.max_length, self.buckets, self.batch_size = max_length, tuple(buckets), batch_size
    self.both_orders = both_orders  # pairs: the mean output over (a, b) and (b, a)
    self._outputs = make_output_fns(mt_model)

  @classmethod
  def from_workdir(cls, workdir: str, batch_size: int = 64) -> "Predictor":
    """The best checkpoint, with the run's lengths and `eval.both_orders`."""
    s = ckpt_lib.workdir_settings(workdir_lib.prepare(workdir, create=False))
    mt_model, params, tok = restore_best(s, workdir)
    return cls(mt_model, params, tok, s.data.max_length, s.eval_buckets, batch_size,
               s.eval.both_orders)

  def _output(self, task: str, tokset: data_lib.TokenizedSet) -> np.ndarray:
    if not len(tokset):
      return np.zeros((0, 5) if task == "sst" else (0,), np.float32)
    return predict(self._outputs[task], self.params, tokset, self.batch_size, self.buckets)

  def _pair_output(self, task: str, pairs, start: int = 0) -> np.ndarray:
    a, b = _pairs(pairs, "pairs", start)
    orders = [self._pair_set(task, *((b, a) if reverse else (a, b)))
              for reverse in tasks_lib.orders(task, self.both_orders)]
    return mean_over_orders(lambda order: self._output(task, order), orders)

  def _sentences(self, sentences, start: int = 0) -> data_lib.TokenizedSet:
    texts = _texts(sentences, "sentences", start)
    rows = data_lib.SentenceRows([str(i) for i in range(len(texts))], texts, None)
    return tasks_lib.get("sst").tokenize(rows, self.tokenizer, self.max_length,
                                         self.model.heads)

  def _pair_set(self, task: str, a: list[str], b: list[str]) -> data_lib.TokenizedSet:
    rows = data_lib.PairRows([str(i) for i in range(len(a))], a, b, None)
    return tasks_lib.get(task).tokenize(rows, self.tokenizer, self.max_length,
                                        self.model.heads)

  def sentiment_probabilities(self, sentences: Sequence[str]) -> np.ndarray:
    """[N, 5] class probabilities (softmax of the head's logits)."""
    return _softmax(self._output("sst", self._sentences(sentences)))

  def sentiment(self, sentences: Sequence[str]) -> np.ndarray:
    """Predicted classes 0..4 (the argmax of the logits, as in evaluation)."""
    out = self._output("sst", self._sentences(sentences))
    return to_predictions("sst", out) if len(out) else np.zeros(0, np.int32)

  def paraphrase_probability(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """[N] probabilities that each pair is a paraphrase (sigmoid of the logit)."""
    return _sigmoid(self._pair_output("para", pairs))

  def paraphrase(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """0/1 per pair (probability > 0.5, as in evaluation)."""
    out = self._pair_output("para", pairs)
    return to_predictions("para", out) if len(out) else np.zeros(0, np.int32)

  def similarity(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """The predicted similarity of each pair (0..5 for the cosine head)."""
    return self._pair_output("sts", pairs)

  def _chunk(self, task: str, items: list, start: int) -> StreamChunk:
    """The list methods' outputs for one chunk of a stream (items numbered from `start`)."""
    if task == "sst":
      logits = self._output("sst", self._sentences(items, start))
      return StreamChunk(to_predictions("sst", logits), _softmax(logits))
    out = self._pair_output(task, items, start)
    if task == "para":
      return StreamChunk(to_predictions("para", out), _sigmoid(out))
    return StreamChunk(out, None)

  def stream(self, task: str, items: Iterable, chunk_size: int = STREAM_CHUNK,
             progress: bool = False, total: int | None = None) -> Iterator[StreamChunk]:
    """A `StreamChunk` per `chunk_size` items of `items` (sentences for "sst", (a, b) pairs
    for "para" and "sts"), in order: the same values as the list methods. `items` may be
    any iterable (a generator over a file); it is read one chunk ahead of the chunk
    yielded, never further, so a file of any length is never held at once. `progress`: a
    tqdm bar on stderr (`total`: the number of items, when known)."""
    if task not in _UNITS:
      raise ValueError(f"task {task!r}: expected one of {sorted(_UNITS)}")
    if chunk_size < 1:
      raise ValueError(f"chunk_size={chunk_size}: expected >= 1")
    # A bare string (or pair) iterates as characters: refuse it as the list methods do.
    if task == "sst" and isinstance(items, str):
      _texts(items, "sentences")
    if task != "sst" and (isinstance(items, str) or (isinstance(items, tuple)
                                                      and len(items) == 2)):
      _pairs(items, "pairs")
    try:
      iterator = iter(items)
    except TypeError:
      raise TypeError(f"items: expected an iterable of {_UNITS[task]}, got "
                      f"{type(items).__name__}") from None
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=total, desc=f"predicting {task}", unit=_UNITS[task][:-1],
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    start = 0
    try:
      while True:
        chunk = list(itertools.islice(iterator, chunk_size))
        if not chunk:
          return
        result = self._chunk(task, chunk, start)
        start += len(chunk)
        bar.update(len(chunk))
        del chunk  # hold no inputs while the consumer has the chunk's outputs
        yield result
    finally:
      bar.close()
