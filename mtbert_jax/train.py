"""Train state, optimizer, the jitted multitask train step, and the training loop.

One optimizer step trains one task: round robin over `train.tasks` (the paper's
schedule) or sampled by dataset size (`train.sampling`, `data.TaskSchedule`). The step's
loss comes from `objective.loss` (the task's loss plus the extension terms with non-zero
weights), scaled by the task weight (fixed, or following each task's recent loss). Each
task's step is jitted once per bucket shape, with the state replicated and the batch
sharded over a `Mesh` of all devices (data parallel, any number of hosts), and the state
donated.

The loop pulls metrics to the host every `log_every` steps only, evaluates on dev every
`eval_every` steps (the weights, or with `optim.ema_decay` their moving average; keeping
the best checkpoint by the dev average), saves a resumable checkpoint every `ckpt_every`
steps and on SIGTERM or Ctrl-C, and resumes from the latest one when started again with
the same command.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtbert_jax import checkpoint as ckpt_lib
from mtbert_jax import console
from mtbert_jax import data as data_lib
from mtbert_jax import distill
from mtbert_jax import evaluate as eval_lib
from mtbert_jax import experiment
from mtbert_jax import health as health_lib
from mtbert_jax import heads as heads_lib
from mtbert_jax import losses
from mtbert_jax import objective
from mtbert_jax import settings as settings_lib
from mtbert_jax import sharding
from mtbert_jax import tasks as tasks_lib
from mtbert_jax import workdir as workdir_lib
from mtbert_jax.settings import OptimSettings, Settings

log = logging.getLogger(__name__)


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  loss_ema: jax.Array          # [T] moving average of each task's loss (task weighting)
  ema_params: Any              # EMA of params: the Bregman term's (smart.bregman_decay) or
                               # the evaluated weights (optim.ema_decay); None if neither
  nonfinite: jax.Array         # count of steps skipped for a NaN/inf loss or gradient


def eval_params(state: TrainState, s: Settings):
  """The weights that are evaluated and kept as the best checkpoint: their moving average
  with `optim.ema_decay`, else the weights themselves."""
  return state.ema_params if s.optim.ema_decay > 0 else state.params


def ema_decay(s: Settings, step: jax.Array) -> float | jax.Array:
  """The decay of `TrainState.ema_params` at update `step` (0-based). The Bregman term's
  teacher: `smart.bregman_decay`. The evaluated average: min(optim.ema_decay,
  (1 + step) / (10 + step)), as TensorFlow's ExponentialMovingAverage with num_updates, so
  that the first steps follow the weights instead of keeping the initial (partly random)
  heads in the average for thousands of steps."""
  if s.optim.ema_decay == 0:
    return s.smart.bregman_decay
  t = step.astype(jnp.float32)
  return jnp.minimum(jnp.float32(s.optim.ema_decay), (1.0 + t) / (10.0 + t))


# ------------------------------------------------------------------------------------------
# Optimizer.


def _decay_mask(params):
  """AdamW weight decay on kernels and embeddings, not on biases and LayerNorm scales."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {k: k[-1] in ("kernel", "embedding") for k in flat})


def learning_rate_schedule(optim: OptimSettings, num_steps: int) -> optax.Schedule:
  lr, warmup = optim.lr, optim.warmup_steps
  if optim.schedule == "constant":
    after = optax.constant_schedule(lr)
  elif optim.schedule == "linear":
    after = optax.linear_schedule(lr, 0.0, max(num_steps - warmup, 1))
  else:  # "cosine"
    after = optax.cosine_decay_schedule(lr, max(num_steps - warmup, 1))
  if warmup <= 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def layer_lr_scales(params, num_layers: int, decay: float):
  """Layer-wise learning-rate decay (as ELECTRA and BEiT): encoder layer i (0-based) scaled
  by decay^(L - i), the embeddings by decay^(L + 1), the pooler and the heads by 1."""
  def scale(path, _):
    names = [getattr(p, "key", str(p)) for p in path]
    if names[0] != "bert" or names[1] == "pooler":
      return 1.0
    if names[1] == "embeddings":
      return decay ** (num_layers + 1)
    layer = int(names[2].removeprefix("layer_"))  # bert/encoder/layer_i/...
    return decay ** (num_layers - layer)
  return jax.tree_util.tree_map_with_path(scale, params)


def _scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiplies each update by its leaf of `scales` (a fixed tree of floats)."""
  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map(lambda u, c: u * c, updates, scales), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(s: Settings, params, num_layers: int = 0) -> optax.GradientTransformation:
  """AdamW with the configured schedule (and clipping, layer-wise decay, frozen encoder)."""
  optim = s.optim
  tx = optax.adamw(learning_rate_schedule(optim, s.train.num_steps), b1=optim.b1, b2=optim.b2,
                   eps=optim.eps, weight_decay=optim.weight_decay, mask=_decay_mask)
  chain = [optax.clip_by_global_norm(optim.grad_clip)] if optim.grad_clip > 0 else []
  chain.append(tx)
  if optim.layer_decay < 1.0:  # scales lr and the decoupled weight decay alike
    chain.append(_scale_by_tree(layer_lr_scales(params, num_layers, optim.layer_decay)))
  tx = optax.chain(*chain)
  if s.train.mode == "pretrain":  # frozen encoder: heads only
    labels = {k: ("frozen" if k == "bert" else "train") for k in params}
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx


def init_state(params, tx: optax.GradientTransformation, s: Settings) -> TrainState:
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
      loss_ema=jnp.ones((len(s.train.tasks),), jnp.float32),
      # A copy: the state is donated to the step, and two leaves must not share a buffer.
      ema_params=(jax.tree_util.tree_map(jnp.copy, params)
                  if s.smart.bregman_weight > 0 or s.optim.ema_decay > 0 else None),
      nonfinite=jnp.zeros((), jnp.int32))


# ------------------------------------------------------------------------------------------
# The step.


def _task_weight(s: Settings, state: TrainState, task_index: int, task: str) -> jax.Array:
  if s.weighting.mode == "loss":
    return losses.loss_based_task_weights(state.loss_ema, s.weighting.temperature)[task_index]
  if s.weighting.mode == "fixed":
    return jnp.float32(s.weighting.fixed_weight(task))
  return jnp.float32(1.0)


def train_step(state: TrainState, batch: dict, base_rng: jax.Array, *, task: str,
               mt_model: heads_lib.MultitaskModel, s: Settings,
               tx: optax.GradientTransformation) -> tuple[TrainState, dict]:
  """One optimizer step on one task's batch. Non-finite updates are skipped and counted."""
  task_index = s.train.tasks.index(task)
  spec = tasks_lib.get(task)
  rng = jax.random.fold_in(base_rng, state.step)
  params = state.params
  if s.train.mode == "pretrain":
    frozen = lambda p: {**p, "bert": jax.lax.stop_gradient(p["bert"])}
  else:
    frozen = lambda p: p
  weight = _task_weight(s, state, task_index, task)
  if task in s.distill.by_task:
    batch = dict(batch, distill_lambda=losses.distillation_lambda(
        state.step, s.train.num_steps, s.distill.schedule, s.distill.weight))

  def loss_fn(p):
    loss, metrics = objective.loss(mt_model, s, spec, frozen(p), batch, rng, state.ema_params)
    return weight * loss, (loss, metrics)

  (weighted, (loss, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  # Each squared norm as a dot product of the leaf with itself: XLA:CPU computes a plain
  # sum of squares as a separate square (a float32 copy of the embedding gradient) and
  # then a reduction.
  grad_norm = jnp.sqrt(sum(jnp.einsum("...,...->", g, g)
                           for g in jax.tree_util.tree_leaves(grads)))
  finite = jnp.isfinite(weighted) & jnp.isfinite(grad_norm)
  updates, new_opt_state = tx.update(grads, state.opt_state, params)
  new_params = optax.apply_updates(params, updates)
  keep = lambda new, old: jax.tree_util.tree_map(
      lambda n, o: jnp.where(finite, n, o), new, old)
  new_ema = state.loss_ema
  if s.weighting.mode == "loss":
    new_ema = losses.update_loss_ema(state.loss_ema, task_index,
                                     metrics.get(f"loss/{task}", loss), s.weighting.ema_decay)
  ema_params = state.ema_params
  if ema_params is not None:
    d = ema_decay(s, state.step)
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


def compile_steps(mt_model: heads_lib.MultitaskModel, s: Settings, tx, sharder: sharding.Sharder
                  ) -> dict[str, Callable]:
  """A jitted step per task; each compiles once per bucket shape."""
  steps = {}
  for task in s.train.tasks:
    fn = functools.partial(train_step, task=task, mt_model=mt_model, s=s, tx=tx)
    steps[task] = jax.jit(fn, in_shardings=(sharder.replicated, sharder.batch,
                                            sharder.replicated),
                          out_shardings=(sharder.replicated, sharder.replicated),
                          donate_argnums=(0,))
  return steps


# ------------------------------------------------------------------------------------------
# The run.


def _to_float(pending: list[dict]) -> list[dict[str, float]]:
  """The metrics of the steps since the last pull, in one device-to-host transfer."""
  return [{k: float(v) for k, v in m.items()} for m in jax.device_get(pending)]


def _mean_metrics(host: list[dict[str, float]]) -> dict[str, float]:
  summary: dict[str, list[float]] = {}
  for m in host:
    for k, v in m.items():
      summary.setdefault(k, []).append(v)
  return {k: float(np.mean(v)) for k, v in summary.items()}


def task_schedule(s: Settings, iterators: dict[str, data_lib.TrainIterator]
                  ) -> data_lib.TaskSchedule:
  scale = dict(s.train.sampling_scale)
  sizes = [scale.get(t, 1.0) * sum(len(src) for src in iterators[t].sources
                                   if not src.reordered)
           for t in s.train.tasks]
  return data_lib.TaskSchedule(s.train.tasks, sizes, s.train.sampling,
                               s.train.sampling_temperature, seed=s.seed,
                               alpha_start=s.train.sampling_alpha_start,
                               alpha_end=s.train.sampling_alpha_end,
                               num_steps=s.train.num_steps)


# Steps the host may dispatch ahead of the device. JAX dispatches asynchronously, and
# without a bound the host loop of a busy CPU ran ~45 steps (minutes) ahead, all of which
# had to finish before a SIGTERM's checkpoint could be saved. With 2 the device always has
# the next step queued (no idle time) and a signal is acted on after at most 2 more steps,
# plus an evaluation if one is running then (it finishes first).
MAX_IN_FLIGHT = 2


def _iterators(s: Settings, tok, local_batch: int,
               workdir: str) -> dict[str, data_lib.TrainIterator]:
  """Per task its training batches; a task with a teacher (`distill.teachers`) carries the
  teacher's targets, computed here before the first step or read from `workdir`'s cache."""
  iterators = {}
  for i, task in enumerate(s.train.tasks):
    sources, mix = experiment.train_sources(s, tok, task)
    sources = distill.attach_all(s, workdir, task, sources)
    too_small = [len(src) for src in sources if len(src) < s.train.batch_size]
    if too_small:
      raise settings_lib.ConfigError(
          f"--config.train.batch_size={s.train.batch_size} is larger than the {too_small[0]} "
          f"training examples of task {task!r} (a batch never repeats an example)")
    iterators[task] = data_lib.TrainIterator(
        sources=sources, mix_weights=mix, batch_size=local_batch, buckets=s.data.buckets,
        seed=s.seed + 1000 * i, shard_index=jax.process_index(),
        shard_count=jax.process_count())
  return iterators


def device_summary() -> dict:
  """What the run trained on: backend, device kind, devices and hosts (train_stats.json,
  so that a result names its accelerator)."""
  return {"backend": jax.default_backend(), "kind": jax.devices()[0].device_kind,
          "count": jax.device_count(), "processes": jax.process_count()}


def train_and_evaluate(s: Settings, workdir: str) -> dict[str, float]:
  """Trains (or resumes), then evaluates the best checkpoint and writes predictions.

  Holds the workdir's lock throughout; a workdir trained with other settings is refused
  (`workdir.check_contract`)."""
  workdir = workdir_lib.prepare(workdir, create=True)
  # Signals are caught from here on: one that arrives while data loads or steps compile
  # stops the run after its first step, with a checkpoint.
  with (workdir_lib.lock(workdir, "train") if jax.process_index() == 0
        else contextlib.nullcontext(), health_lib.Interrupt() as interrupt):
    if workdir_lib.has_settings(workdir):
      workdir_lib.check_contract(workdir, s, "resume")
    ckpt_lib.check_saved_config(workdir, s, "resume")
    if s.ckpt.export_hf:
      export_dir = os.path.join(workdir, "hf_encoder")
      if os.path.exists(export_dir) and (not os.path.isdir(export_dir)
                                         or os.listdir(export_dir)):
        raise workdir_lib.WorkdirError(
            f"--config.ckpt.export_hf: {export_dir} exists and is not an empty folder; the "
            "export would mix with what is there (move or delete it first)")
    return _train_and_evaluate(s, workdir, interrupt)


def _train_and_evaluate(s: Settings, workdir: str,
                        interrupt: health_lib.Interrupt) -> dict[str, float]:
  sharder = sharding.Sharder(sharding.make_mesh())
  local_batch = sharder.check_batch_size(s.train.batch_size, "train.batch_size")
  sharder.check_batch_size(s.eval.batch_size, "eval.batch_size")
  tok = experiment.tokenizer(s)
  mt_model, bert_params = experiment.build_model(s)

  # Data first: a bad file fails before any compilation.
  iterators = _iterators(s, tok, local_batch, workdir)
  # The loop's evaluations (and the best checkpoint) read the validation split if there is
  # one, else dev.
  split = experiment.eval_split(s)
  eval_sets = experiment.eval_sets(s, tok, split, s.train.eval_limit)

  health_lib.check_finite_weights(bert_params, experiment.checkpoint_dir(s))
  params = tasks_lib.init_params(mt_model, jax.random.key(s.seed), bert_params)
  tx = make_optimizer(s, params, mt_model.bert_config.num_hidden_layers)
  state = sharder.replicate(init_state(params, tx, s))
  del params, bert_params

  ckpts = ckpt_lib.Checkpoints(workdir, keep=s.ckpt.keep)
  health = health_lib.Health(str(ckpts.resume.directory))
  best_score, best_step = -math.inf, -1
  start = 0
  if ckpts.latest_step() is not None:
    state, meta = ckpts.restore_resume(state)
    start = int(meta["step"])
    for task, it_state in meta["iterators"].items():
      iterators[task].set_state(it_state)
    best_score, best_step = float(meta["best_score"]), int(meta["best_step"])
    health = health_lib.Health(str(ckpts.resume.directory), last_saved=start)
    if start > s.train.num_steps:
      raise settings_lib.ConfigError(
          f"--config.train.num_steps={s.train.num_steps}: the run in {workdir} is at step "
          f"{start} already; a resumed run keeps or raises its step budget, never lowers it")
    log.info("resumed from %s at step %d (best %s average %.4f at step %d)",
             ckpts.resume.directory, start, split, best_score, best_step)
  if jax.process_index() == 0:
    workdir_lib.save_settings(workdir, s)

  steps = compile_steps(mt_model, s, tx, sharder)
  output_fns = eval_lib.make_output_fns(mt_model, s.eval.dtype)
  base_rng = sharder.dropout_key(s.seed + 1, s.train.rng_impl)
  writer = console.Writer(os.path.join(workdir, "tensorboard"))
  history = console.History(os.path.join(workdir, "history.jsonl"), start)
  num_steps = s.train.num_steps
  progress = console.Progress(num_steps, start, s.train.progress)

  def resume_meta(step, it_states):
    return {"step": step, "iterators": it_states, "best_score": best_score,
            "best_step": best_step, "config": settings_lib.to_dict(s)}

  full_eval = s.train.eval_limit == 0
  best_results = None  # (step, scores, outputs) of the best evaluation on the whole split
  prefetch = sharding.Prefetcher(iterators, task_schedule(s, iterators), start, num_steps,
                                 sharder)
  windows: list[dict] = []  # per metrics pull: steps, seconds (for train_stats.json)
  pending: list[dict] = []   # the metrics of the steps since the last pull
  in_flight: list[dict] = []  # the metrics of the last dispatched steps (`MAX_IN_FLIGHT`)
  window = {"start": time.time(), "examples": 0}
  it_states = {t: it.get_state() for t, it in iterators.items()}
  compiled: set[tuple[str, int]] = set()

  def pull(step: int) -> None:
    """Metrics of the steps since the last pull to the host (one transfer), the run's
    health checked on them, then logged: before any evaluation or save, so a diverged
    state never becomes a checkpoint."""
    host = _to_float(pending)
    pending.clear()
    summary = _mean_metrics(host)
    health.check(step, int(jax.device_get(state.nonfinite)), host, summary,
                 first_window=not windows)
    elapsed = time.time() - window["start"]
    summary["perf/examples_per_s"] = window["examples"] / max(elapsed, 1e-9)
    windows.append({"end_step": step, "steps": len(host), "examples": window["examples"],
                    "seconds": elapsed})
    window.update(start=time.time(), examples=0)
    writer.scalars(step, summary)
    history.add(step, "train", summary)
    progress.update(len(host), {
        "ex/s": f"{summary['perf/examples_per_s']:.0f}",
        **{k.split("/")[1]: f"{v:.3f}" for k, v in summary.items()
           if k.startswith("loss/") and k != "loss/total"}})

  step = start
  try:
    while step < num_steps:
      task, batch, it_states = next(prefetch)
      shape = (task, next(v.shape[1] for k, v in batch.items() if k.startswith("input_ids")))
      if shape not in compiled:  # the first step of a task and length compiles it
        progress.write(f"compiling the {task} step for length {shape[1]} (once per task and "
                       "padded length)")
        compile_start = time.time()
      state, metrics = steps[task](state, batch, base_rng)
      if shape not in compiled:
        compiled.add(shape)
        progress.write(f"compiled the {task} step for length {shape[1]} in "
                       f"{time.time() - compile_start:.0f} s")
        window["start"] += time.time() - compile_start  # compilation is not throughput
      step += 1
      pending.append(metrics)
      in_flight.append(metrics)
      if len(in_flight) > MAX_IN_FLIGHT:  # the host waits for the device, see MAX_IN_FLIGHT
        jax.block_until_ready(in_flight.pop(0))
      window["examples"] += s.train.batch_size
      last = step == num_steps
      evaluate = step % s.train.eval_every == 0 or last
      periodic_save = step % s.train.ckpt_every == 0 or last
      if step % s.train.log_every == 0 or evaluate or periodic_save or interrupt.requested:
        pull(step)
      if evaluate:
        eval_start = time.time()
        scores, outputs = eval_lib.evaluate_split(output_fns, eval_params(state, s), eval_sets,
                                                s.eval.batch_size, s.eval_buckets, sharder,
                                                split)
        evaluated = tasks_lib.summarize(scores, split)
        writer.scalars(step, evaluated)
        history.add(step, split, evaluated)
        score = evaluated.get(f"{split}/average", float(np.mean(list(scores.values()) or [0.0])))
        progress.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}"
                                                    for k, v in evaluated.items()))
        if score > best_score:
          best_score, best_step = score, step
          ckpts.save_best(step, eval_params(state, s), {"step": step, split: evaluated,
                                                        "config": settings_lib.to_dict(s)})
          best_results = (step, scores, outputs) if full_eval else None
        window["start"] += time.time() - eval_start  # evaluation is not training throughput
      # Decided after the evaluation: a signal that arrives during it saves this step.
      if periodic_save or interrupt.requested:
        if pending:  # the signal came after this step's pull was decided
          pull(step)
        save_start = time.time()
        ckpts.save_resume(step, state, resume_meta(step, it_states))
        health.last_saved = step
        window["start"] += time.time() - save_start
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
    workdir_lib.write_json(os.path.join(workdir, "train_stats.json"),
                           {"devices": device_summary(), "windows": windows})
  log.info("training done: best %s average %.4f at step %d; evaluating it", split,
           best_score, best_step)
  best_params = sharder.replicate(eval_lib.best_params(mt_model, workdir))
  reuse = None
  if best_results is not None and best_results[0] == best_step:
    reuse = {split: best_results[1:]}  # same params (restored bit-exact), same sets
  metrics = eval_lib.evaluate_and_predict(s, workdir, mt_model, best_params, tok, sharder,
                                          best_step, results=reuse, output_fns=output_fns)
  if s.ckpt.export_hf and jax.process_index() == 0:
    from mtbert_jax import export  # pylint: disable=import-outside-toplevel
    path = export.export(os.path.join(workdir, "hf_encoder"), mt_model.bert_config,
                         jax.device_get(best_params["bert"]), mt_model.heads.cls_source, s,
                         metrics, vocab_from=s.model.checkpoint or None)
    log.info("wrote %s: loadable by transformers.BertModel and SentenceTransformer", path)
  return metrics
