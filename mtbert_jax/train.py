"""Train state, the jitted multitask train step, and the training loop.

One optimizer step trains one task, in round-robin order over `train.tasks` (the paper's
schedule). The step's loss is assembled from pure terms (`losses.py`): the task loss, then,
when their weights are non-zero, SMART on that task, unsupervised SimCSE, the Bregman
proximal term; and the whole is scaled by the task weight (fixed, or following each task's
recent loss). A term whose weight is zero is left out at trace time, so the baseline pays
nothing for the extensions. Each task's step is jitted once per bucket shape, with the
state replicated and the batch sharded over a `Mesh` of all devices (data parallel, any
number of hosts), and the state donated.

The loop pulls metrics to the host every `log_every` steps only, evaluates on dev every
`eval_every` steps (keeping the best checkpoint by the dev average), saves a resumable
checkpoint every `ckpt_every` steps and on SIGTERM or Ctrl-C, and resumes from the latest
one when started again with the same command.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import queue
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mtbert_jax import checkpoint as ckpt_lib
from mtbert_jax import data as data_lib
from mtbert_jax import evaluate as eval_lib
from mtbert_jax import experiment
from mtbert_jax import heads as heads_lib
from mtbert_jax import losses

log = logging.getLogger(__name__)

M = heads_lib.MultitaskModel
_SEGMENT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  loss_ema: jax.Array          # [T] moving average of each task's loss (task weighting)
  ema_params: Any              # EMA copy of params for the Bregman term, or None
  nonfinite: jax.Array         # count of steps skipped for a NaN/inf loss or gradient


# ------------------------------------------------------------------------------------------
# Optimizer.


def _decay_mask(params):
  """AdamW weight decay on kernels and embeddings, not on biases and LayerNorm scales."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {k: k[-1] in ("kernel", "embedding") for k in flat})


def learning_rate_schedule(optim, num_steps: int) -> optax.Schedule:
  lr, warmup = float(optim.lr), int(optim.warmup_steps)
  if optim.schedule == "constant":
    after = optax.constant_schedule(lr)
  elif optim.schedule == "linear":
    after = optax.linear_schedule(lr, 0.0, max(num_steps - warmup, 1))
  elif optim.schedule == "cosine":
    after = optax.cosine_decay_schedule(lr, max(num_steps - warmup, 1))
  else:
    raise experiment.ConfigError(f"--config.optim.schedule={optim.schedule!r}: expected "
                                 "'constant', 'linear' or 'cosine'")
  if warmup <= 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def make_optimizer(config: ml_collections.ConfigDict, params) -> optax.GradientTransformation:
  optim = config.optim
  adamw = optax.adamw(learning_rate_schedule(optim, int(config.train.num_steps)),
                      b1=optim.b1, b2=optim.b2, eps=optim.eps,
                      weight_decay=optim.weight_decay, mask=_decay_mask)
  chain = [optax.clip_by_global_norm(optim.grad_clip)] if optim.grad_clip > 0 else []
  tx = optax.chain(*chain, adamw)
  if config.train.mode == "pretrain":  # frozen encoder: heads only
    labels = {k: ("frozen" if k == "bert" else "train") for k in params}
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx


def init_state(params, tx: optax.GradientTransformation, sc: experiment.StepConfig
               ) -> TrainState:
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
      loss_ema=jnp.ones((len(sc.tasks),), jnp.float32),
      # A copy: the state is donated to the step, and two leaves must not share a buffer.
      ema_params=jax.tree_util.tree_map(jnp.copy, params) if sc.bregman_weight > 0 else None,
      nonfinite=jnp.zeros((), jnp.int32))


# ------------------------------------------------------------------------------------------
# Loss terms.


def _divergence(task: str, para_joint: bool, per_example: bool = False):
  reduce = not per_example
  if task == "sst":
    return functools.partial(losses.symmetric_kl, reduce=reduce)
  if task == "para":
    return functools.partial(losses.symmetric_kl_binary, reduce=reduce)
  return functools.partial(losses.mse_divergence, reduce=reduce)


def _stack(batch: dict, suffixes: tuple[str, ...]) -> dict:
  """Segments `_1`, `_2`(, `_3`) stacked along the batch axis: one encoder pass."""
  return {k: jnp.concatenate([batch[f"{k}{s}"] for s in suffixes]) for k in _SEGMENT_KEYS}


def task_loss(mt_model: M, sc: experiment.StepConfig, params, batch: dict, rng: jax.Array,
              task: str, ema_params=None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss of one task's batch, extensions included (before the task weight)."""
  joint_para = mt_model.heads.paraphrase == "prompt"
  weights = batch["weights"]
  r_embed, r_encode, r_head, r_smart, r_view = jax.random.split(rng, 5)

  def call(p, method, *args, r=None):
    return mt_model.apply({"params": p}, *args, rngs={"dropout": r} if r is not None else {},
                          method=method)

  if task == "nli":  # supervised SimCSE: anchor, entailment, contradiction in one pass
    inputs = _stack(batch, ("_1", "_2", "_3"))
    v = call(params, M.vector, inputs["input_ids"], inputs["attention_mask"],
             inputs["token_type_ids"], False, r=r_encode)
    z = call(params, M.sts_embedding, v)
    anchor, positive, negative = jnp.split(z, 3)
    loss = losses.simcse_loss(anchor, positive, sc.simcse_temperature, negative,
                              weights=weights)
    return sc.simcse_weight * loss, {"loss/nli": loss}

  single = task == "sst" or (task == "para" and joint_para)
  inputs = batch if single else _stack(batch, ("_1", "_2"))
  mask = inputs["attention_mask"]

  def head(p, vectors, r):
    if task == "sst":
      return call(p, M.sentiment_logits, vectors, False, r=r)
    if task == "para" and joint_para:
      return call(p, M.paraphrase_logit, vectors, None, False, r=r)
    u, v = jnp.split(vectors, 2)
    if task == "para":
      return call(p, M.paraphrase_logit, u, v, False, r=r)
    return call(p, M.similarity_score, u, v, False, r=r)

  def forward(p, embeddings):  # embeddings -> head output, dropout masks fixed
    vectors = call(p, M.vector_from_embeddings, embeddings, mask, False, r=r_encode)
    return head(p, vectors, r_head)

  embeddings = call(params, M.embed, inputs["input_ids"], inputs["token_type_ids"], False,
                    r=r_embed)
  vectors = call(params, M.vector_from_embeddings, embeddings, mask, False, r=r_encode)
  out = head(params, vectors, r_head)
  labels = batch["labels"]
  if task == "sst":
    loss = losses.softmax_cross_entropy(out, labels, weights, sc.label_smoothing)
  elif task == "para":
    loss = losses.sigmoid_binary_cross_entropy(out, labels, weights)
  else:
    loss = losses.mean_squared_error(out, labels, weights)
  metrics = {f"loss/{task}": loss}
  total = loss
  pair_weights = weights if single else jnp.concatenate([weights, weights])

  if sc.smart_weight > 0 and task in sc.smart_tasks:
    fwd = functools.partial(forward, params)
    mask_for_noise = mask
    if sc.smart_variant == "random":
      reg = losses.smart_random(fwd, embeddings, out, r_smart,
                                divergence_per_example=_divergence(task, joint_para, True),
                                num_samples=sc.smart_num_samples, epsilon=sc.smart_epsilon,
                                norm=sc.smart_norm, mask=mask_for_noise, weights=weights)
    else:
      reg = losses.smart_adversarial(fwd, embeddings, out, r_smart,
                                     divergence=_divergence(task, joint_para),
                                     num_steps=sc.smart_num_steps,
                                     step_size=sc.smart_step_size, epsilon=sc.smart_epsilon,
                                     noise_std=sc.smart_noise_std, norm=sc.smart_norm,
                                     mask=mask_for_noise, weights=weights)
    metrics["loss/smart"] = reg
    total = total + sc.smart_weight * reg

  if sc.bregman_weight > 0 and ema_params is not None:
    ema_out = forward(ema_params, call(ema_params, M.embed, inputs["input_ids"],
                                       inputs["token_type_ids"], False, r=r_embed))
    reg = losses.bregman_proximal(out, ema_out, _divergence(task, joint_para), weights)
    metrics["loss/bregman"] = reg
    total = total + sc.bregman_weight * reg

  if sc.simcse_unsup_weight > 0:  # a second view of the same sentences, new dropout masks
    z1 = call(params, M.sts_embedding, vectors)
    v2 = call(params, M.vector, inputs["input_ids"], mask, inputs["token_type_ids"], False,
              r=r_view)
    z2 = call(params, M.sts_embedding, v2)
    reg = losses.simcse_loss(z1, z2, sc.simcse_temperature, weights=pair_weights)
    metrics["loss/simcse_unsup"] = reg
    total = total + sc.simcse_unsup_weight * reg
  return total, metrics


def train_step(state: TrainState, batch: dict, base_rng: jax.Array, *, task: str,
               mt_model: M, sc: experiment.StepConfig,
               tx: optax.GradientTransformation) -> tuple[TrainState, dict]:
  """One optimizer step on one task's batch. Non-finite updates are skipped and counted."""
  task_index = sc.tasks.index(task)
  rng = jax.random.fold_in(base_rng, state.step)
  params = state.params
  if sc.freeze_encoder:
    frozen = lambda p: {**p, "bert": jax.lax.stop_gradient(p["bert"])}
  else:
    frozen = lambda p: p

  if sc.weighting == "loss":
    task_weights = losses.loss_based_task_weights(state.loss_ema, sc.weight_temperature)
    weight = task_weights[task_index]
  elif sc.weighting == "fixed":
    weight = jnp.float32(sc.fixed_weights[task_index])
  else:
    weight = jnp.float32(1.0)

  def loss_fn(p):
    loss, metrics = task_loss(mt_model, sc, frozen(p), batch, rng, task, state.ema_params)
    return weight * loss, (loss, metrics)

  (weighted, (loss, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  # Each squared norm as a dot product of the leaf with itself: XLA:CPU computes a plain
  # sum of squares as a separate square (a float32 copy of the 30522 x 384 embedding
  # gradient) and then a reduction.
  grad_norm = jnp.sqrt(sum(jnp.einsum("...,...->", g, g)
                           for g in jax.tree_util.tree_leaves(grads)))
  finite = jnp.isfinite(weighted) & jnp.isfinite(grad_norm)
  updates, new_opt_state = tx.update(grads, state.opt_state, params)
  new_params = optax.apply_updates(params, updates)
  keep = lambda new, old: jax.tree_util.tree_map(
      lambda n, o: jnp.where(finite, n, o), new, old)
  new_ema = state.loss_ema
  if sc.weighting == "loss":
    task_loss_value = metrics.get(f"loss/{task}", loss)
    new_ema = state.loss_ema.at[task_index].set(
        sc.weight_ema_decay * state.loss_ema[task_index]
        + (1 - sc.weight_ema_decay) * jax.lax.stop_gradient(task_loss_value))
  ema_params = state.ema_params
  if ema_params is not None:
    d = sc.bregman_decay
    ema_params = jax.tree_util.tree_map(lambda e, p: d * e + (1 - d) * p, ema_params,
                                        new_params)
  new_state = TrainState(
      step=state.step + 1,
      params=keep(new_params, params), opt_state=keep(new_opt_state, state.opt_state),
      loss_ema=keep(new_ema, state.loss_ema),
      ema_params=None if ema_params is None else keep(ema_params, state.ema_params),
      nonfinite=state.nonfinite + jnp.where(finite, 0, 1).astype(jnp.int32))
  metrics = dict(metrics, **{"loss/total": weighted, "grad_norm": grad_norm,
                             f"weight/{task}": weight})
  return new_state, metrics


# ------------------------------------------------------------------------------------------
# Devices and sharding.


def make_mesh() -> Mesh:
  """A 1-D data-parallel mesh over every device of every host."""
  return Mesh(np.asarray(jax.devices()), ("data",))


class Sharder:
  """Puts host batches on the mesh (each host holds its slice of the global batch)."""

  def __init__(self, mesh: Mesh):
    self.mesh = mesh
    self.replicated = NamedSharding(mesh, P())
    self.batch = NamedSharding(mesh, P("data"))

  def check_batch_size(self, global_batch: int, flag: str) -> int:
    devices = self.mesh.devices.size
    if global_batch % devices:
      raise experiment.ConfigError(f"--config.{flag}={global_batch} is not divisible by the "
                                   f"{devices} devices")
    if global_batch % jax.process_count():
      raise experiment.ConfigError(f"--config.{flag}={global_batch} is not divisible by the "
                                   f"{jax.process_count()} hosts")
    return global_batch // jax.process_count()

  def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This host's rows of a global batch -> global arrays sharded over the mesh."""
    return {k: jax.make_array_from_process_local_data(self.batch, v) for k, v in batch.items()}

  def put_global(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A global batch that every host holds in full (evaluation): each puts its slice."""
    count, index = jax.process_count(), jax.process_index()
    local = {k: np.split(v, count)[index] for k, v in batch.items()}
    return self(local)

  def gather(self, x: jax.Array) -> np.ndarray:
    """A (possibly multi-host) global array as one NumPy array on every host."""
    if x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  def replicate(self, tree):
    return jax.device_put(tree, self.replicated)

  def dropout_key(self, seed: int, impl: str = "threefry2x32") -> jax.Array:
    """The run's base dropout key (each step folds in its step number), replicated."""
    return self.replicate(jax.random.key(seed, impl=impl))


def compile_steps(mt_model: M, sc: experiment.StepConfig, tx, sharder: Sharder
                  ) -> dict[str, Callable]:
  """A jitted step per task; each compiles once per bucket shape."""
  steps = {}
  for task in sc.tasks:
    fn = functools.partial(train_step, task=task, mt_model=mt_model, sc=sc, tx=tx)
    steps[task] = jax.jit(fn, in_shardings=(sharder.replicated, sharder.batch,
                                            sharder.replicated),
                          out_shardings=(sharder.replicated, sharder.replicated),
                          donate_argnums=(0,))
  return steps


# ------------------------------------------------------------------------------------------
# Input pipeline.


class Prefetcher:
  """Builds the round-robin batches on a thread, a few steps ahead of the device.

  Each item carries the iterator states *after* its batch, so a checkpoint taken after
  consuming step s records exactly the data position of step s + 1.
  """

  def __init__(self, iterators: dict[str, data_lib.TrainIterator], tasks: tuple[str, ...],
               start_step: int, end_step: int, sharder: Sharder, depth: int = 3):
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(
        target=self._run, args=(iterators, tasks, start_step, end_step, sharder), daemon=True)
    self._thread.start()

  def _run(self, iterators, tasks, start_step, end_step, sharder):
    try:
      for step in range(start_step, end_step):
        task = tasks[step % len(tasks)]
        batch = next(iterators[task])
        batch.pop("index", None)
        states = {t: it.get_state() for t, it in iterators.items()}
        if not self._put((task, sharder(batch), states)):
          return
    except BaseException as e:  # surfaced in the main thread
      self._put(e)

  def _put(self, item) -> bool:
    """Waits for room in the queue; False once `close` was called."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def __iter__(self):
    return self

  def __next__(self):
    item = self._queue.get()
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self):
    """Stops the thread and waits for it: a thread still inside JAX's C++ code (a transfer)
    when the interpreter shuts down aborts the process ("FATAL: exception not rethrown")."""
    self._stop.set()
    self._thread.join()


# ------------------------------------------------------------------------------------------
# Logging helpers.


class _Progress:
  """Progress on stderr: a tqdm bar (step, examples/s, losses, ETA), or, with the bar
  off (`train.progress=False`, e.g. in batch jobs), one log line per metrics pull."""

  def __init__(self, total: int, initial: int, enabled: bool):
    self.bar = None
    self.total, self.step, self.start, self.initial = total, initial, time.time(), initial
    if enabled and jax.process_index() == 0:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, unit="step",
                      file=sys.stderr)

  def update(self, n: int, postfix: dict[str, str]):
    self.step += n
    if self.bar is not None:
      self.bar.set_postfix(postfix, refresh=False)
      self.bar.update(n)
    elif jax.process_index() == 0:
      done = self.step - self.initial
      eta = (time.time() - self.start) / max(done, 1) * (self.total - self.step)
      log.info("step %d/%d %s eta %s", self.step, self.total,
               " ".join(f"{k}={v}" for k, v in postfix.items()),
               time.strftime("%H:%M:%S", time.gmtime(eta)))

  def write(self, msg: str):
    if self.bar is not None:
      self.bar.write(msg)
    elif jax.process_index() == 0:
      log.info("%s", msg)

  def close(self):
    if self.bar is not None:
      self.bar.close()


class _Writer:
  """TensorBoard event files (tensorboardX: no TensorFlow needed) on host 0."""

  def __init__(self, logdir: str):
    self.writer = None
    if jax.process_index() != 0:
      return
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    except ImportError:
      log.warning("tensorboardX is not installed: no TensorBoard event files")
      return
    self.writer = SummaryWriter(logdir)

  def scalars(self, step: int, values: dict[str, float]):
    if self.writer is not None:
      for k, v in values.items():
        self.writer.add_scalar(k, v, step)
      self.writer.flush()

  def close(self):
    if self.writer is not None:
      self.writer.close()


def format_table(metrics: dict[str, float]) -> str:
  rows = [(k, v) for k, v in sorted(metrics.items()) if isinstance(v, float)]
  width = max((len(k) for k, _ in rows), default=10)
  lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
  lines += [f"{k:<{width}}  {v:.4f}" for k, v in rows]
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# The run.


def save_workdir_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    eval_lib.write_json(os.path.join(workdir, "config.json"), experiment.to_dict(config))


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} the --workdir of a training run?")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_best_params(config, workdir: str):
  """(model, best params, tokenizer) of a workdir's best checkpoint."""
  mt_model, _ = experiment.build_model(config, load_weights=False)
  tok = experiment.tokenizer(config)
  like = jax.eval_shape(lambda: heads_lib.init_params(mt_model, jax.random.key(0)))
  like = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), like)
  ckpts = ckpt_lib.Checkpoints(workdir)
  try:
    params, _ = ckpts.restore_best(like)
  except ValueError as e:
    raise ValueError(f"the best checkpoint in {workdir} does not fit the configured model "
                     f"({e})") from e
  finally:
    ckpts.close()
  return mt_model, params, tok


def _eval_sets(config, tok, split: str, limit: int = 0):
  sets = {t: experiment.load_split(config, tok, t, split) for t in experiment.EVAL_TASKS}
  if limit:
    sets = {t: (None if s is None else experiment.limit_rows(s, limit))
            for t, s in sets.items()}
  return sets


def evaluate_and_predict(config, workdir: str, mt_model, params, tok, sharder: Sharder,
                         step: int, write_metrics: bool = True,
                         dev_results: tuple | None = None,
                         predict_fns: dict | None = None) -> dict[str, float]:
  """Dev metrics of `params`, `metrics.json` (`write_metrics`), and the prediction files.

  `dev_results`: (scores, predictions) already computed for exactly these params on the
  full dev sets (the loop's last evaluation of the best step), reused instead of recomputed.
  `predict_fns`: the loop's jitted predictors, so their compiled shapes are reused.
  """
  predict_fns = predict_fns or eval_lib.make_predict_fns(mt_model)
  eval_batch = int(config.eval.batch_size)
  sharder.check_batch_size(eval_batch, "eval.batch_size")
  metrics: dict[str, Any] = {"step": int(step)}
  pred_dir = os.path.join(workdir, "predictions")
  for split in ("dev", "test"):
    sets = _eval_sets(config, tok, split)
    if split == "dev" and dev_results is not None:
      scores, preds = dev_results
    else:
      log.info("evaluating the %s sets: %s", split,
               [t for t in experiment.EVAL_TASKS if sets[t] is not None])
      scores, preds = eval_lib.evaluate_split(predict_fns, params, sets, eval_batch,
                                              experiment.eval_buckets(config), sharder)
    if split == "dev":
      metrics.update(eval_lib.summarize(scores))
    if config.eval.write_predictions and jax.process_index() == 0:
      eval_lib.write_split_predictions(pred_dir, split, sets, preds)
  if write_metrics and jax.process_index() == 0:
    eval_lib.write_json(os.path.join(workdir, "metrics.json"), metrics)
  return metrics


class _Interrupt:
  """Turns SIGTERM and a first Ctrl-C (SIGINT) into a flag the loop checks between steps:
  it saves a checkpoint and exits. A second Ctrl-C stops at once (KeyboardInterrupt)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = None  # the signal's name once one arrived
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.requested:
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name
    if signum == signal.SIGINT:
      log.warning("Ctrl-C: saving a checkpoint after this step, then exiting; press Ctrl-C "
                  "again to stop at once")

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


def _to_float(pending: list[dict]) -> list[dict[str, float]]:
  """The metrics of the steps since the last pull, in one device-to-host transfer."""
  return [{k: float(v) for k, v in m.items()} for m in jax.device_get(pending)]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes), then evaluates the best checkpoint and writes predictions."""
  os.makedirs(workdir, exist_ok=True)
  sc = experiment.step_config(config)
  num_steps = int(config.train.num_steps)
  if num_steps <= 0:
    raise experiment.ConfigError(f"--config.train.num_steps={num_steps}: expected > 0")
  mesh = make_mesh()
  sharder = Sharder(mesh)
  local_batch = sharder.check_batch_size(int(config.train.batch_size), "train.batch_size")
  tok = experiment.tokenizer(config)
  mt_model, bert_params = experiment.build_model(config)

  # Data first: a bad file fails before any compilation.
  iterators = {}
  for i, task in enumerate(sc.tasks):
    sources, mix = experiment.train_sources(config, tok, task)
    iterators[task] = data_lib.TrainIterator(
        sources=sources, mix_weights=mix, batch_size=local_batch, buckets=config.data.buckets,
        seed=config.seed + 1000 * i, shard_index=jax.process_index(),
        shard_count=jax.process_count())
  dev_sets = _eval_sets(config, tok, "dev", int(config.train.eval_limit))

  params = heads_lib.init_params(mt_model, jax.random.key(config.seed), bert_params)
  tx = make_optimizer(config, params)
  state = sharder.replicate(init_state(params, tx, sc))
  del params, bert_params

  ckpts = ckpt_lib.Checkpoints(workdir, keep=int(config.ckpt.keep))
  best_score, best_step = -math.inf, -1
  start = 0
  if ckpts.latest_step() is not None:
    state, meta = ckpts.restore_resume(state)
    start = int(meta["step"])
    for task, it_state in meta["iterators"].items():
      iterators[task].set_state(it_state)
    best_score, best_step = float(meta["best_score"]), int(meta["best_step"])
    log.info("resumed from %s at step %d (best dev average %.4f at step %d)",
             ckpts.resume.directory, start, best_score, best_step)
  save_workdir_config(config, workdir)

  steps = compile_steps(mt_model, sc, tx, sharder)
  predict_fns = eval_lib.make_predict_fns(mt_model)
  eval_batch = int(config.eval.batch_size)
  sharder.check_batch_size(eval_batch, "eval.batch_size")
  base_rng = sharder.dropout_key(config.seed + 1, experiment.dropout_rng_impl(config))
  writer = _Writer(os.path.join(workdir, "tensorboard"))
  progress = _Progress(num_steps, start, bool(config.train.progress))
  log_every = max(int(config.train.log_every), 1)
  eval_every = max(int(config.train.eval_every), 1)
  ckpt_every = max(int(config.train.ckpt_every), 1)

  def resume_meta(step, it_states):
    return {"step": step, "iterators": it_states, "best_score": best_score,
            "best_step": best_step, "config": experiment.to_dict(config)}

  full_dev = int(config.train.eval_limit) == 0
  best_dev_results = None  # (step, scores, predictions) of the best full-dev evaluation
  prefetch = Prefetcher(iterators, sc.tasks, start, num_steps, sharder)
  windows: list[dict] = []  # per metrics pull: steps, seconds (for train_stats.json)
  pending: list[dict] = []
  window_start, window_examples = time.time(), 0
  it_states = {t: it.get_state() for t, it in iterators.items()}
  step = start
  try:
    with _Interrupt() as interrupt:
      while step < num_steps:
        task, batch, it_states = next(prefetch)
        state, metrics = steps[task](state, batch, base_rng)
        step += 1
        pending.append(metrics)
        window_examples += int(config.train.batch_size)
        last = step == num_steps
        if step % log_every == 0 or last or interrupt.requested:
          host = _to_float(pending)
          pending = []
          nonfinite = int(jax.device_get(state.nonfinite))
          if nonfinite:
            raise FloatingPointError(
                f"non-finite loss or gradient at or before step {step} ({nonfinite} step(s) "
                "skipped); training stopped. The last checkpoint was saved before it, "
                f"in {ckpts.resume.directory}. Lower --config.optim.lr or check the data.")
          summary = {}
          for m in host:
            for k, v in m.items():
              summary.setdefault(k, []).append(v)
          summary = {k: float(np.mean(v)) for k, v in summary.items()}
          elapsed = time.time() - window_start
          summary["perf/examples_per_s"] = window_examples / max(elapsed, 1e-9)
          windows.append({"end_step": step, "steps": len(host), "examples": window_examples,
                          "seconds": elapsed})
          window_start, window_examples = time.time(), 0
          writer.scalars(step, summary)
          progress.update(len(host), {
              "ex/s": f"{summary['perf/examples_per_s']:.0f}",
              **{k.split("/")[1]: f"{v:.3f}" for k, v in summary.items()
                 if k.startswith("loss/") and k != "loss/total"}})
        if step % eval_every == 0 or last:
          eval_start = time.time()
          scores, preds = eval_lib.evaluate_split(predict_fns, state.params, dev_sets, eval_batch,
                                              experiment.eval_buckets(config), sharder)
          dev = eval_lib.summarize(scores)
          writer.scalars(step, dev)
          score = dev.get("dev/average", float(np.mean(list(scores.values()) or [0.0])))
          progress.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in dev.items()))
          if score > best_score:
            best_score, best_step = score, step
            ckpts.save_best(step, state.params, {"step": step, "dev": dev})
            best_dev_results = (step, scores, preds) if full_dev else None
          window_start += time.time() - eval_start  # evaluation is not training throughput
        if step % ckpt_every == 0 or last or interrupt.requested:
          save_start = time.time()
          ckpts.save_resume(step, state, resume_meta(step, it_states))
          window_start += time.time() - save_start
        if interrupt.requested and not last:
          log.warning("%s: checkpoint saved at step %d; exiting. Run the same command "
                      "to resume.", interrupt.requested, step)
          # SIGTERM (a scheduler's preemption) is a clean exit; Ctrl-C exits as shells expect.
          raise SystemExit(0 if interrupt.requested == "SIGTERM" else 130)
  finally:
    prefetch.close()
    progress.close()
    writer.close()
    ckpts.close()

  if jax.process_index() == 0:  # loop throughput per metrics window (evaluations excluded)
    eval_lib.write_json(os.path.join(workdir, "train_stats.json"), {"windows": windows})
  log.info("training done: best dev average %.4f at step %d; evaluating it", best_score,
           best_step)
  _, best_params, _ = restore_best_params(config, workdir)
  best_params = sharder.replicate(best_params)
  reuse = None
  if best_dev_results is not None and best_dev_results[0] == best_step:
    reuse = best_dev_results[1:]  # same params (restored bit-exact), same dev sets
  metrics = evaluate_and_predict(config, workdir, mt_model, best_params, tok, sharder,
                                 best_step, dev_results=reuse, predict_fns=predict_fns)
  if config.ckpt.export_hf and jax.process_index() == 0:
    from mtbert_jax import convert  # pylint: disable=import-outside-toplevel
    convert.save_pretrained(os.path.join(workdir, "hf_encoder"), mt_model.bert_config,
                            jax.device_get(best_params["bert"]),
                            vocab_from=config.model.checkpoint or None)
  return metrics


def evaluate_workdir(workdir: str, config: ml_collections.ConfigDict | None = None,
                     write_metrics: bool = True) -> dict[str, float]:
  """`--mode=eval` (metrics.json + predictions) / `predict` (predictions only) of the best
  checkpoint; the data files are those of `config` (default: the training run's)."""
  config = config or load_workdir_config(workdir)
  mt_model, params, tok = restore_best_params(config, workdir)
  sharder = Sharder(make_mesh())
  ckpts = ckpt_lib.Checkpoints(workdir)
  step = ckpts.best_step()
  ckpts.close()
  return evaluate_and_predict(config, workdir, mt_model, sharder.replicate(params), tok,
                              sharder, step, write_metrics)
