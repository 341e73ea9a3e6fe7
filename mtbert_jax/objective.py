"""The loss of one training step: the task's loss and the extension terms, composed.

A step trains one task (a row of `tasks.py`). `forward` encodes the task's input segments
in one encoder pass (the segments stacked along the batch axis) and applies its output
method; the terms below share that forward pass and its dropout masks:

* `task_term`: the task's own loss (cross entropy, MSE, supervised SimCSE for "nli");
  `distilled_task_term` in its place for a task with a teacher (`distill.teachers`):
  lambda * that loss + (1 - lambda) * the loss against the teacher's targets;
* `smart_term`: SMART's smoothness regularizer on the input embeddings (section 3.3);
* `bregman_term`: SMART's Bregman proximal term against an EMA of the parameters;
* `simcse_unsup_term`: unsupervised SimCSE between two dropout views of the sentences.

Each term is a pure function `term(ctx) -> (loss, metrics)` of a `Context` (model,
settings, task, parameters, batch, rngs, and the shared forward pass). `step_terms` picks
the terms a task uses with their weights; a term whose weight is zero is not in the list,
so it is never traced and the baseline step pays nothing for the extensions. `loss` sums
`weight * term` in that order.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from mtbert_jax import losses
from mtbert_jax import tasks as tasks_lib
from mtbert_jax.heads import MultitaskModel
from mtbert_jax.settings import Settings

Array = jax.Array
_SEGMENT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def stack_segments(batch: dict, suffixes: tuple[str, ...]) -> dict[str, Array]:
  """The inputs of segments `suffixes` (e.g. `_1`, `_2`) stacked along the batch axis, so
  one encoder pass encodes all of them: {input_ids, attention_mask, token_type_ids}."""
  if suffixes == ("",):
    return {k: batch[k] for k in _SEGMENT_KEYS}
  return {k: jnp.concatenate([batch[f"{k}{s}"] for s in suffixes]) for k in _SEGMENT_KEYS}


def _apply(model: MultitaskModel, params, method, *args, rng: Array | None = None):
  return model.apply({"params": params}, *args, rngs={} if rng is None else {"dropout": rng},
                     method=method)


@dataclasses.dataclass(frozen=True)
class Rngs:
  """The step's dropout keys, one per use (fixed split: the same masks on every rerun)."""
  embed: Array
  encode: Array
  head: Array
  smart: Array
  view: Array

  @classmethod
  def split(cls, rng: Array) -> "Rngs":
    return cls(*jax.random.split(rng, 5))


@dataclasses.dataclass(frozen=True)
class Forward:
  """One forward pass of a task's batch: what the terms share."""
  inputs: dict[str, Array]   # the stacked segments
  embeddings: Array          # [S*B, L, H] input embeddings (where SMART perturbs)
  vectors: Array             # [S*B, H] sentence vectors
  out: Any                   # the task's output (logits, logit, score, embeddings)


def head(model: MultitaskModel, params, task: tasks_lib.Task, vectors: Array,
         rng: Array | None) -> Any:
  """The task's output of stacked sentence vectors (dropout on when `rng` is given)."""
  return _apply(model, params, task.output, vectors, rng is None, rng=rng)


def forward(model: MultitaskModel, params, task: tasks_lib.Task, batch: dict,
            rngs: Rngs) -> Forward:
  """Embeds, encodes and applies the head to the task's segments of `batch`, dropout on."""
  inputs = stack_segments(batch, task.segments(model.heads))
  embeddings = _apply(model, params, MultitaskModel.embed, inputs["input_ids"],
                      inputs["token_type_ids"], False, rng=rngs.embed)
  vectors = _apply(model, params, MultitaskModel.vector_from_embeddings, embeddings,
                   inputs["attention_mask"], False, rng=rngs.encode)
  return Forward(inputs, embeddings, vectors, head(model, params, task, vectors, rngs.head))


def from_embeddings(model: MultitaskModel, params, task: tasks_lib.Task, mask: Array,
                    rngs: Rngs) -> Callable[[Array], Any]:
  """embeddings -> task output with the step's dropout masks fixed (SMART, Bregman)."""
  def fwd(embeddings):
    vectors = _apply(model, params, MultitaskModel.vector_from_embeddings, embeddings, mask,
                     False, rng=rngs.encode)
    return head(model, params, task, vectors, rngs.head)
  return fwd


@dataclasses.dataclass(frozen=True)
class Context:
  """What every term of a step's loss reads."""
  model: MultitaskModel
  settings: Settings
  task: tasks_lib.Task
  params: Any
  batch: dict
  rngs: Rngs
  fwd: Forward
  ema_params: Any = None


# ------------------------------------------------------------------------------------------
# The terms.


def task_term(ctx: Context) -> tuple[Array, dict]:
  loss = ctx.task.loss(ctx.fwd.out, ctx.batch.get("labels"), ctx.batch["weights"],
                       ctx.settings)
  return loss, {f"loss/{ctx.task.name}": loss}


def distilled_task_term(ctx: Context) -> tuple[Array, dict]:
  """The task loss against the mix lambda * gold + (1 - lambda) * teacher: the batch's
  "teacher" targets (`distill.attach`) and its "distill_lambda" (`train.train_step`, from
  the step and `losses.distillation_lambda`)."""
  batch, task = ctx.batch, ctx.task
  gold = task.loss(ctx.fwd.out, batch.get("labels"), batch["weights"], ctx.settings)
  teacher = task.soft_loss(ctx.fwd.out, batch["teacher"], batch["weights"], ctx.settings)
  lam = batch["distill_lambda"]
  return losses.distillation_loss(gold, teacher, lam), {
      f"loss/{task.name}": gold, f"loss/teacher_{task.name}": teacher, "distill/lambda": lam}


def smart_term(ctx: Context) -> tuple[Array, dict]:
  """SMART on the task's input embeddings: worst of random perturbations ("random", the
  paper) or projected ascent ("adversarial"), symmetric divergence of the outputs."""
  sm, weights = ctx.settings.smart, ctx.batch["weights"]
  mask = ctx.fwd.inputs["attention_mask"]
  fwd = from_embeddings(ctx.model, ctx.params, ctx.task, mask, ctx.rngs)
  if sm.variant == "random":
    reg = losses.smart_random(fwd, ctx.fwd.embeddings, ctx.fwd.out, ctx.rngs.smart,
                              divergence_per_example=ctx.task.divergence,
                              num_samples=sm.num_samples, epsilon=sm.epsilon, norm=sm.norm,
                              mask=mask, weights=weights)
  else:
    reg = losses.smart_adversarial(fwd, ctx.fwd.embeddings, ctx.fwd.out, ctx.rngs.smart,
                                   divergence=losses.reduced(ctx.task.divergence),
                                   num_steps=sm.num_steps, step_size=sm.step_size,
                                   epsilon=sm.epsilon, noise_std=sm.noise_std, norm=sm.norm,
                                   mask=mask, weights=weights)
  return reg, {"loss/smart": reg}


def bregman_term(ctx: Context) -> tuple[Array, dict]:
  """Divergence of the output from the EMA parameters' output on the same batch."""
  inputs = ctx.fwd.inputs
  ema = ctx.ema_params
  ema_embeddings = _apply(ctx.model, ema, MultitaskModel.embed, inputs["input_ids"],
                          inputs["token_type_ids"], False, rng=ctx.rngs.embed)
  ema_out = from_embeddings(ctx.model, ema, ctx.task, inputs["attention_mask"],
                            ctx.rngs)(ema_embeddings)
  reg = losses.bregman_proximal(ctx.fwd.out, ema_out, losses.reduced(ctx.task.divergence),
                                ctx.batch["weights"])
  return reg, {"loss/bregman": reg}


def simcse_unsup_term(ctx: Context) -> tuple[Array, dict]:
  """InfoNCE between the step's sentence vectors and a second encoding of the same
  sentences under new dropout masks, through the shared STS projection."""
  inputs, model, params = ctx.fwd.inputs, ctx.model, ctx.params
  z1 = _apply(model, params, MultitaskModel.sts_embedding, ctx.fwd.vectors)
  v2 = _apply(model, params, MultitaskModel.vector, inputs["input_ids"], inputs["attention_mask"],
              inputs["token_type_ids"], False, rng=ctx.rngs.view)
  z2 = _apply(model, params, MultitaskModel.sts_embedding, v2)
  segments = len(ctx.task.segments(model.heads))
  reg = losses.simcse_loss(z1, z2, ctx.settings.simcse.temperature,
                           weights=jnp.tile(ctx.batch["weights"], segments))
  return reg, {"loss/simcse_unsup": reg}


Term = Callable[[Context], tuple[Array, dict]]


def step_terms(s: Settings, task: tasks_lib.Task) -> list[tuple[str, float, Term]]:
  """(name, weight, term) of every term of `task`'s step with a non-zero weight."""
  distilled = task.name in s.distill.by_task
  terms = [("task", task.loss_scale(s), distilled_task_term if distilled else task_term)]
  if task.divergence is not None:
    if s.smart.weight > 0 and task.name in s.smart.tasks:
      terms.append(("smart", s.smart.weight, smart_term))
    if s.smart.bregman_weight > 0:
      terms.append(("bregman", s.smart.bregman_weight, bregman_term))
  if s.simcse.unsup_weight > 0 and not task.contrastive:
    terms.append(("simcse_unsup", s.simcse.unsup_weight, simcse_unsup_term))
  return terms


def loss(model: MultitaskModel, s: Settings, task: tasks_lib.Task, params, batch: dict, rng: Array,
         ema_params=None, terms: list[tuple[str, float, Term]] | None = None
         ) -> tuple[Array, dict[str, Array]]:
  """sum(weight * term) over `terms` (default: `step_terms(s, task)`), and the terms'
  metrics. The task weight (`weighting`) is applied by the caller."""
  terms = step_terms(s, task) if terms is None else terms
  rngs = Rngs.split(rng)
  ctx = Context(model, s, task, params, batch, rngs, forward(model, params, task, batch, rngs),
                ema_params)
  total, metrics = None, {}
  for _, weight, term in terms:
    value, term_metrics = term(ctx)
    contribution = value if weight == 1.0 else weight * value
    total = contribution if total is None else total + contribution
    metrics.update(term_metrics)
  return total, metrics
