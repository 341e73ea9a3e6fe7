"""Loss terms of the multitask objective: task losses, SMART, SimCSE and task weighting.

Everything here is a pure function on plain arrays, jit-able, with no Flax module inside:
`objective.py` composes a step's loss from them. Task losses take optional per-example
`weights` [B] (1 for a real example, 0 for a padding row) and reduce to
`sum(w * l) / max(sum(w), 1)`. The SMART smoothness regularizer (Jiang et al. 2020 and
section 3.3 of the paper) is generic over a `forward(perturbed_embeddings) -> output`
closure, so one implementation serves the softmax (SST), sigmoid (Quora) and regression
(STS) heads through the matching divergence (`symmetric_kl`, `symmetric_kl_binary`,
`mse_divergence`); `smart_adversarial` is SMART's projected gradient ascent and
`smart_random` the paper's variant (worst of several random perturbations in the ball).
`simcse_loss` is the (supervised or unsupervised) SimCSE InfoNCE loss of section 3.6, and
`update_loss_ema` / `loss_based_task_weights` weight tasks by their recent loss (section
3.4). Losses are computed in at least float32 whatever the compute dtype of the inputs.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
# out_p, out_q, weights -> scalar.
Divergence = Callable[..., Array]
# out_p, out_q -> [B].
DivergencePerExample = Callable[[Any, Any], Array]
Forward = Callable[[Array], Any]

# Finite stand-in for -inf on masked SimCSE columns: exp() of it is exactly 0 in float32,
# and unlike -inf it cannot turn a fully masked (padding) row into inf or NaN.
_MASKED_LOGIT = -1e9
# Cosine-similarity guard, as torch.nn.CosineSimilarity (used by official SimCSE): each
# vector's norm is clamped to at least this before dividing.
COSINE_EPS = 1e-8


def _at_least_f32(x: Array) -> Array:
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _weighted_mean(values: Array, weights: Array | None) -> Array:
  """`sum(w * v) / max(sum(w), 1)`; the plain mean when `weights` is None."""
  if weights is None:
    return jnp.mean(values)
  weights = jnp.asarray(weights, values.dtype)
  return jnp.sum(weights * values) / jnp.maximum(jnp.sum(weights), 1.0)


# ----------------------------------------------------------------------------------------
# Task losses.


def softmax_cross_entropy(logits: Array, labels: Array, weights: Array | None = None,
                          label_smoothing: float = 0.0) -> Array:
  """Mean cross entropy of logits [B, C] against integer labels [B] (SST-5 head).

  `label_smoothing` (a Python float, fixed at trace time) mixes the one-hot target with
  the uniform distribution, as `optax.smooth_labels`.
  """
  logits = _at_least_f32(logits)
  if label_smoothing:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype),
                                  label_smoothing)
    per_example = optax.softmax_cross_entropy(logits, targets)
  else:
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return _weighted_mean(per_example, weights)


def soft_cross_entropy(logits: Array, targets: Array, weights: Array | None = None) -> Array:
  """Mean cross entropy of logits [B, C] against target distributions [B, C] (a teacher's
  class probabilities)."""
  logits = _at_least_f32(logits)
  per_example = optax.softmax_cross_entropy(logits, targets.astype(logits.dtype))
  return _weighted_mean(per_example, weights)


def distillation_lambda(step: Array, num_steps: int, schedule: str, weight: float) -> Array:
  """The gold label's share lambda of the target lambda * gold + (1 - lambda) * teacher at
  `step` (Clark et al. 2019): "anneal" rises linearly from 0 at step 0 to 1 at step
  `num_steps - 1` (and stays 1 after); "fixed" is `weight`."""
  if schedule == "fixed":
    return jnp.float32(weight)
  return jnp.clip(jnp.asarray(step, jnp.float32) / max(1, num_steps - 1), 0.0, 1.0)


def distillation_loss(gold_loss: Array, teacher_loss: Array, lam: Array) -> Array:
  """lambda * gold_loss + (1 - lambda) * teacher_loss: for cross entropy (binary or not)
  exactly the loss against the mixed target lambda * gold + (1 - lambda) * teacher, as it is
  linear in the target; for squared error it differs from the error against the mixed
  score by lambda * (1 - lambda) * (gold - teacher)^2, which does not depend on the model,
  so the gradient is the same. At lambda = 1 it is `gold_loss` exactly (1 * x + 0 * y)."""
  return lam * gold_loss + (1.0 - lam) * teacher_loss


def sigmoid_binary_cross_entropy(logits: Array, labels: Array,
                                 weights: Array | None = None) -> Array:
  """Mean binary cross entropy of one logit per example [B] against 0/1 labels [B] (Quora)."""
  logits = _at_least_f32(logits)
  per_example = optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))
  return _weighted_mean(per_example, weights)


def mean_squared_error(pred: Array, target: Array, weights: Array | None = None) -> Array:
  """Mean of (pred - target)^2 over examples [B] (STS regression)."""
  pred = _at_least_f32(pred)
  per_example = optax.squared_error(pred, target.astype(pred.dtype))
  return _weighted_mean(per_example, weights)


def reduced(divergence_per_example: DivergencePerExample) -> Divergence:
  """The weighted batch mean `(out_p, out_q, weights) -> scalar` of a per-example
  divergence `(out_p, out_q) -> [B]` (SMART's adversarial variant and the Bregman term)."""
  return lambda p, q, weights=None: _weighted_mean(divergence_per_example(p, q), weights)


# ----------------------------------------------------------------------------------------
# Divergences between two outputs of the same head (SMART, Bregman proximal term).


def symmetric_kl(logits_p: Array, logits_q: Array, weights: Array | None = None,
                 reduce: bool = True) -> Array:
  """KL(p||q) + KL(q||p) with p = softmax(logits_p), q = softmax(logits_q), logits [B, C].

  Computed as sum_c (p_c - q_c) * (log p_c - log q_c) with log_softmax, which is the same
  sum, is exactly 0 for equal logits and cannot go negative by rounding (both factors of
  each term have the same sign). Returns the weighted batch mean, or [B] if not `reduce`.
  """
  log_p = jax.nn.log_softmax(_at_least_f32(logits_p), axis=-1)
  log_q = jax.nn.log_softmax(_at_least_f32(logits_q), axis=-1)
  per_example = jnp.sum((jnp.exp(log_p) - jnp.exp(log_q)) * (log_p - log_q), axis=-1)
  return _weighted_mean(per_example, weights) if reduce else per_example


def symmetric_kl_binary(logit_p: Array, logit_q: Array, weights: Array | None = None,
                        reduce: bool = True) -> Array:
  """`symmetric_kl` of the two-class distributions (1 - sigmoid(z), sigmoid(z)), logits [B].

  Equal to `symmetric_kl` on logits [0, z]; it reduces to
  (sigmoid(z_p) - sigmoid(z_q)) * (z_p - z_q) because log(p / (1 - p)) = z.
  """
  logit_p = _at_least_f32(logit_p)
  logit_q = _at_least_f32(logit_q)
  per_example = (jax.nn.sigmoid(logit_p) - jax.nn.sigmoid(logit_q)) * (logit_p - logit_q)
  return _weighted_mean(per_example, weights) if reduce else per_example


def mse_divergence(pred_p: Array, pred_q: Array, weights: Array | None = None,
                   reduce: bool = True) -> Array:
  """Squared difference of two regression outputs [B] (or [B, ...], summed per example).

  The SMART divergence for the STS head: symmetric already, 0 for equal outputs.
  """
  diff = _at_least_f32(pred_p) - _at_least_f32(pred_q)
  per_example = jnp.sum(jnp.square(diff).reshape(diff.shape[0], -1), axis=-1)
  return _weighted_mean(per_example, weights) if reduce else per_example


# ----------------------------------------------------------------------------------------
# SimCSE.


def _l2_normalize(x: Array) -> Array:
  # rsqrt of the clamped squared norm: no infinite gradient at x = 0.
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), COSINE_EPS**2))


def simcse_loss(anchor: Array, positive: Array, temperature: float,
                hard_negative: Array | None = None, weights: Array | None = None) -> Array:
  """SimCSE InfoNCE loss on embeddings [B, H] (Gao et al. 2021; paper eqs. 4 and 5).

  As the official implementation: logits = concat([cos(anchor_i, positive_j),
  cos(anchor_i, hard_negative_j)], axis=1) / temperature, of shape [B, B] or [B, 2B], then
  cross entropy with label i for row i; the mean over rows is returned. Anchor i's
  positive is positive i; its negatives are the other B - 1 positives and, when given,
  all B hard negatives of the batch. Unsupervised SimCSE passes two dropout views of the
  same sentences as `anchor` and `positive`.

  Cosine similarity clamps each vector's norm to at least `COSINE_EPS` (1e-8), as
  `torch.nn.CosineSimilarity`.

  `weights` [B] (1 real, 0 padding row): padding rows contribute nothing as anchors, and
  their positive and hard-negative columns are masked with a large negative logit
  (-1e9, exp() of it is 0), so they are no one's negatives either: the loss equals the
  loss on the sub-batch of real rows.
  """
  anchor = _l2_normalize(_at_least_f32(anchor))
  candidates = positive if hard_negative is None else jnp.concatenate(
      [positive, hard_negative], axis=0)  # [B or 2B, H]
  candidates = _l2_normalize(_at_least_f32(candidates))
  logits = anchor @ candidates.T / temperature  # [B, B or 2B]
  if weights is not None:
    column_is_real = jnp.tile(jnp.asarray(weights) > 0, candidates.shape[0] // anchor.shape[0])
    logits = jnp.where(column_is_real[None, :], logits, _MASKED_LOGIT)
  labels = jnp.arange(anchor.shape[0])
  per_anchor = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return _weighted_mean(per_anchor, weights)


# ----------------------------------------------------------------------------------------
# SMART smoothness-inducing regularizer.
#
# Perturbations live on token embeddings [..., L, H]; "per example" means per leading index,
# i.e. norms are taken over the last two axes (the whole sentence, as mt-dnn's
# sentence-level norm). `mask` [..., L] is 1 on real tokens and 0 on padding. Noise is
# kept in at least float32: with bf16 compute a 1e-5 perturbation of O(1) embeddings
# rounds away inside the model, so SMART wants float32 embeddings into the stack.


def _check_norm(norm: str) -> None:
  if norm not in ("inf", "l2"):
    raise ValueError(f"norm must be 'inf' or 'l2', got {norm!r}")


def _apply_mask(noise: Array, mask: Array | None) -> Array:
  if mask is None:
    return noise
  return noise * mask[..., None].astype(noise.dtype)


def _per_example_norm(x: Array, norm: str) -> Array:
  """Norm over the last two axes, kept as [..., 1, 1] for broadcasting."""
  if norm == "inf":
    return jnp.max(jnp.abs(x), axis=(-2, -1), keepdims=True)
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True))


def _tiny(x: Array) -> Array:
  return jnp.asarray(jnp.finfo(x.dtype).tiny, x.dtype)


def project(noise: Array, epsilon: float, norm: str = "inf",
            mask: Array | None = None) -> Array:
  """Projects each example's noise [..., L, H] into the `epsilon`-ball of `norm`.

  inf: clip every entry to [-epsilon, epsilon]. l2: rescale examples whose l2 norm over
  (L, H) exceeds epsilon to norm epsilon; the others are unchanged. Positions where `mask`
  [..., L] is 0 are set to 0.
  """
  _check_norm(norm)
  noise = _apply_mask(noise, mask)
  if norm == "inf":
    return jnp.clip(noise, -epsilon, epsilon)
  length = _per_example_norm(noise, "l2")
  return noise * jnp.minimum(1.0, epsilon / jnp.maximum(length, _tiny(length)))


def _ascent_direction(grad: Array, norm: str) -> Array:
  # Unit-`norm` direction per example, as mt-dnn's _norm_grad: g / max|g| or g / ||g||_2.
  # The guard is the smallest normal float rather than mt-dnn's 1e-6: near the clean input
  # the gradients are tiny (the divergence is quadratic there) and a 1e-6 guard would
  # shrink the step; any nonzero gradient still gives a unit direction, a zero one gives 0.
  scale = _per_example_norm(grad, norm)
  return grad / jnp.maximum(scale, _tiny(scale))


def random_in_ball(rng: Array, shape: tuple[int, ...], epsilon: float, norm: str = "inf",
                   mask: Array | None = None, dtype: Any = jnp.float32) -> Array:
  """Random perturbations [..., L, H], uniform in each example's `epsilon`-ball.

  inf: each entry uniform in [-epsilon, epsilon]. l2: a uniformly random direction
  (normalized Gaussian) scaled to radius epsilon * u^(1/d), u ~ U(0, 1), d the number of
  unmasked entries of the example: uniform in the ball (in BERT's d ~ 10^4 dimensions
  that is all but on the sphere of radius epsilon). Masked positions are 0.
  """
  _check_norm(norm)
  if norm == "inf":
    return _apply_mask(jax.random.uniform(rng, shape, dtype, -epsilon, epsilon), mask)
  direction_rng, radius_rng = jax.random.split(rng)
  direction = _apply_mask(jax.random.normal(direction_rng, shape, dtype), mask)
  direction = direction / jnp.maximum(_per_example_norm(direction, "l2"), _tiny(direction))
  if mask is None:
    dim = jnp.asarray(shape[-2] * shape[-1], dtype)
  else:
    dim = jnp.sum(mask, axis=-1).astype(dtype)[..., None, None] * shape[-1]
  u = jax.random.uniform(radius_rng, shape[:-2] + (1, 1), dtype)
  return direction * epsilon * u ** (1.0 / jnp.maximum(dim, 1.0))


def smart_adversarial(forward: Forward, embeddings: Array, clean_out: Any, rng: Array, *,
                      divergence: Divergence, num_steps: int = 1, step_size: float = 1e-3,
                      epsilon: float = 1e-5, noise_std: float = 1e-5, norm: str = "inf",
                      mask: Array | None = None, weights: Array | None = None) -> Array:
  """SMART smoothness regularizer with an adversarial perturbation (Jiang et al. 2020).

  `forward(perturbed_embeddings [B, L, H]) -> output` runs the rest of the model from the
  token embeddings (a closure over the parameters and the batch; keep its dropout rng
  fixed, or deterministic, so the divergence measures the perturbation). `clean_out` is
  `forward(embeddings)`, computed by the caller and reused here. `divergence(out_p, out_q,
  weights) -> scalar` is `symmetric_kl`, `symmetric_kl_binary` or `mse_divergence`.

  Algorithm: noise = noise_std * N(0, 1) (zero at masked tokens); `num_steps` times,
  g = grad over noise of divergence(forward(embeddings + noise), stop_gradient(clean_out)),
  noise = project(noise + step_size * g / ||g||, epsilon) with ||g|| the per-example
  `norm` ("inf": max|g|, "l2": the l2 norm, over (L, H)); then the noise is frozen
  (stop_gradient) and the result is divergence(forward(embeddings + noise), clean_out),
  with gradients flowing into the parameters through both outputs (SMART's symmetric loss).
  Never negative for the divergences above; 0 when epsilon = noise_std = 0.

  `num_steps` and `norm` are fixed at trace time (a Python loop: K is 1 or 2 in practice).
  As in mt-dnn the initial noise is not projected, so `num_steps=0` gives the divergence at
  plain Gaussian noise; after any ascent step the noise lies in the epsilon-ball.
  """
  _check_norm(norm)
  target = jax.lax.stop_gradient(clean_out)
  base = jax.lax.stop_gradient(embeddings)
  noise_dtype = _at_least_f32(embeddings).dtype
  noise = _apply_mask(noise_std * jax.random.normal(rng, embeddings.shape, noise_dtype), mask)

  def adversarial_divergence(noise: Array) -> Array:
    return divergence(forward(base + noise), target, weights)

  for _ in range(num_steps):
    grad = _apply_mask(jax.grad(adversarial_divergence)(noise), mask)
    noise = project(noise + step_size * _ascent_direction(grad, norm), epsilon, norm, mask)
  noise = jax.lax.stop_gradient(noise)
  return divergence(forward(embeddings + noise), clean_out, weights)


def smart_random(forward: Forward, embeddings: Array, clean_out: Any, rng: Array, *,
                 divergence_per_example: DivergencePerExample, num_samples: int = 7,
                 epsilon: float = 5e-3, norm: str = "inf", mask: Array | None = None,
                 weights: Array | None = None,
                 samples_per_pass: int | None = None) -> Array:
  """The paper's SMART variant (eq. 2): worst of `num_samples` random perturbations.

  Draws `num_samples` perturbations per example with `random_in_ball` (uniform in the
  `epsilon`-ball of `norm`, zero at masked tokens), computes
  `divergence_per_example(forward(embeddings + noise), clean_out)` -> [B] for each, keeps
  the largest per example and returns its weighted batch mean. Gradients flow into the
  parameters through both outputs (through the worst sample). Pass e.g.
  `functools.partial(symmetric_kl, reduce=False)`.

  `samples_per_pass=None` runs all samples through `forward` at once with `jax.vmap` (one
  wide forward, the fastest on an accelerator, costing num_samples times the activation
  memory); a smaller value runs them in sequential chunks of that many
  (`jax.lax.map(..., batch_size=...)`) to save memory.
  """
  noises = random_in_ball(rng, (num_samples,) + embeddings.shape, epsilon, norm, mask,
                          _at_least_f32(embeddings).dtype)  # [S, B, L, H]

  def sample_divergence(noise: Array) -> Array:
    return divergence_per_example(forward(embeddings + noise), clean_out)  # [B]

  if samples_per_pass is None or samples_per_pass >= num_samples:
    per_sample = jax.vmap(sample_divergence)(noises)  # [S, B]
  else:
    per_sample = jax.lax.map(sample_divergence, noises, batch_size=samples_per_pass)
  return _weighted_mean(jnp.max(per_sample, axis=0), weights)


def bregman_proximal(out: Any, ema_out: Any, divergence: Divergence,
                     weights: Array | None = None) -> Array:
  """SMART's Bregman proximal point term: divergence(out, stop_gradient(ema_out), weights).

  `ema_out` is the same head's output under the slowly moving (EMA, "mean teacher")
  parameters on the same batch; the term keeps each update close to that previous iterate
  in output space. Only `out` receives gradients.
  """
  return divergence(out, jax.lax.stop_gradient(ema_out), weights)


# ----------------------------------------------------------------------------------------
# Task weighting (paper section 3.4).


def update_loss_ema(ema: Array, index: int | Array, loss: Array, decay: float) -> Array:
  """ema [T] with entry `index` moved towards `loss`: decay * ema_i + (1 - decay) * loss,
  with no gradient through the loss; the other tasks' entries are unchanged (one step
  trains one task).

  Start from `jnp.ones(T)` (uniform weights until the losses are seen), never from zeros,
  whose log is -inf (`loss_based_task_weights` clamps to the smallest normal float anyway,
  so zeros give finite but meaningless weights).
  """
  loss = jax.lax.stop_gradient(jnp.asarray(loss, ema.dtype))
  return ema.at[index].set(decay * ema[index] + (1.0 - decay) * loss)


def loss_based_task_weights(ema: Array, temperature: float = 1.0) -> Array:
  """Task weights [T] that follow each task's recent loss, so harder tasks get more weight.

      w_t = T * softmax(log(ema) / temperature)_t = T * ema_t^(1/tau) / sum_s ema_s^(1/tau)

  Proportional to ema_t^(1/temperature) and of mean 1, so the overall loss scale is kept;
  temperature -> inf gives uniform weights, temperature = 1 weights proportional to the
  loss itself. The weights carry no gradient (stop_gradient).
  """
  ema = _at_least_f32(ema)
  log_ema = jnp.log(jnp.maximum(ema, _tiny(ema)))
  weights = ema.shape[-1] * jax.nn.softmax(log_ema / temperature, axis=-1)
  return jax.lax.stop_gradient(weights)
