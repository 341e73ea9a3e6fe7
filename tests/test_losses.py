"""Tests of `mtbert_jax.losses`: NumPy references for the divergences and SimCSE, and
properties of SMART (zero at zero perturbation, never negative, ascent increases the
divergence, perturbations stay in the ball) and of the task weights.

Computations run in float32 and references in float64 NumPy; tolerances are stated where
they are used (1e-5 relative / 1e-6 absolute unless said otherwise, a few float32 ulps of
O(1) sums).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtbert_jax import losses

RTOL = 1e-5
ATOL = 1e-6


# ----------------------------------------------------------------------------------------
# NumPy references, written independently of the implementation.


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_symmetric_kl(logits_p, logits_q):
  log_p, log_q = np_log_softmax(logits_p), np_log_softmax(logits_q)
  p, q = np.exp(log_p), np.exp(log_q)
  kl_pq = (p * (log_p - log_q)).sum(-1)
  kl_qp = (q * (log_q - log_p)).sum(-1)
  return kl_pq + kl_qp  # [B]


def np_cos(a, b):
  return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def np_simcse(anchor, positive, temperature, hard_negative=None, real=None):
  anchor, positive = np.asarray(anchor, np.float64), np.asarray(positive, np.float64)
  batch = anchor.shape[0]
  real = np.ones(batch, bool) if real is None else np.asarray(real, bool)
  total, count = 0.0, 0
  for i in range(batch):
    if not real[i]:
      continue
    candidates = [np_cos(anchor[i], positive[j]) / temperature
                  for j in range(batch) if real[j]]
    if hard_negative is not None:
      candidates += [np_cos(anchor[i], np.asarray(hard_negative[j], np.float64)) / temperature
                     for j in range(batch) if real[j]]
    numerator = np_cos(anchor[i], positive[i]) / temperature
    total += -(numerator - np.log(np.sum(np.exp(candidates))))
    count += 1
  return total / count


# ----------------------------------------------------------------------------------------
# Task losses.


def test_task_losses_match_references_and_ignore_padding():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 5)).astype(np.float32)
  labels = rng.integers(0, 5, size=6)
  weights = np.array([1, 1, 1, 1, 0, 0], np.float32)
  expected = -np_log_softmax(logits)[np.arange(6), labels]
  np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels), expected.mean(),
                             rtol=RTOL)
  np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels, weights),
                             expected[:4].mean(), rtol=RTOL)
  targets = 0.9 * np.eye(5)[labels] + 0.1 / 5
  smoothed = -(targets * np_log_softmax(logits)).sum(-1)
  np.testing.assert_allclose(
      losses.softmax_cross_entropy(logits, labels, weights, label_smoothing=0.1),
      smoothed[:4].mean(), rtol=RTOL)

  z, y = logits[:, 0], (labels % 2).astype(np.float32)
  p = 1 / (1 + np.exp(-z.astype(np.float64)))
  bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
  np.testing.assert_allclose(losses.sigmoid_binary_cross_entropy(z, y, weights),
                             bce[:4].mean(), rtol=RTOL)

  pred, target = logits[:, 1], logits[:, 2]
  np.testing.assert_allclose(losses.mean_squared_error(pred, target, weights),
                             ((pred - target)[:4].astype(np.float64)**2).mean(), rtol=RTOL)
  # An all-padding batch gives 0, not NaN.
  assert float(losses.mean_squared_error(pred, target, np.zeros(6, np.float32))) == 0.0


# ----------------------------------------------------------------------------------------
# Divergences.


def test_symmetric_kl_matches_numpy_and_is_a_symmetric_nonnegative_divergence():
  rng = np.random.default_rng(1)
  logits_p = 2 * rng.normal(size=(16, 5)).astype(np.float32)
  logits_q = 2 * rng.normal(size=(16, 5)).astype(np.float32)
  expected = np_symmetric_kl(logits_p, logits_q)
  per_example = losses.symmetric_kl(logits_p, logits_q, reduce=False)
  assert per_example.shape == (16,)
  np.testing.assert_allclose(per_example, expected, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(losses.symmetric_kl(logits_p, logits_q), expected.mean(),
                             rtol=RTOL)
  weights = (np.arange(16) < 10).astype(np.float32)
  np.testing.assert_allclose(losses.symmetric_kl(logits_p, logits_q, weights),
                             expected[:10].mean(), rtol=RTOL)
  # Symmetric, exactly.
  np.testing.assert_array_equal(per_example,
                                losses.symmetric_kl(logits_q, logits_p, reduce=False))
  # Exactly 0 for equal logits, also when shifted by a constant (same distribution).
  assert float(losses.symmetric_kl(logits_p, logits_p)) == 0.0
  np.testing.assert_allclose(losses.symmetric_kl(logits_p, logits_p + 3.0), 0.0, atol=1e-6)
  # Never negative, even for nearly equal logits where rounding could bite.
  near = logits_p + 1e-6 * rng.normal(size=logits_p.shape).astype(np.float32)
  assert np.all(np.asarray(losses.symmetric_kl(logits_p, near, reduce=False)) >= 0)
  assert np.all(np.asarray(per_example) >= 0)


def test_symmetric_kl_binary_equals_two_class_softmax():
  rng = np.random.default_rng(2)
  z_p = 3 * rng.normal(size=(32,)).astype(np.float32)
  z_q = 3 * rng.normal(size=(32,)).astype(np.float32)
  two_class = lambda z: jnp.stack([jnp.zeros_like(z), z], axis=-1)  # noqa: E731
  binary = losses.symmetric_kl_binary(z_p, z_q, reduce=False)
  np.testing.assert_allclose(
      binary, losses.symmetric_kl(two_class(z_p), two_class(z_q), reduce=False),
      rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(binary, np_symmetric_kl(two_class(z_p), two_class(z_q)),
                             rtol=RTOL, atol=ATOL)
  assert float(losses.symmetric_kl_binary(z_p, z_p)) == 0.0
  assert np.all(np.asarray(binary) >= 0)


def test_mse_divergence():
  pred_p = jnp.array([0.0, 1.0, 2.0])
  pred_q = jnp.array([1.0, 1.0, 4.0])
  np.testing.assert_allclose(losses.mse_divergence(pred_p, pred_q, reduce=False), [1, 0, 4])
  np.testing.assert_allclose(losses.mse_divergence(pred_p, pred_q, jnp.array([1., 1., 0.])),
                             0.5)


# ----------------------------------------------------------------------------------------
# SimCSE.


@pytest.mark.parametrize("with_hard_negative", [False, True])
def test_simcse_matches_numpy_reference(with_hard_negative):
  rng = np.random.default_rng(3)
  anchor, positive, negative = (rng.normal(size=(6, 8)).astype(np.float32) for _ in range(3))
  hard = negative if with_hard_negative else None
  got = losses.simcse_loss(anchor, positive, 0.05, hard_negative=hard)
  np.testing.assert_allclose(got, np_simcse(anchor, positive, 0.05, hard), rtol=RTOL)


def test_simcse_falls_when_views_agree():
  rng = np.random.default_rng(4)
  anchor = rng.normal(size=(8, 16)).astype(np.float32)
  random_positive = rng.normal(size=(8, 16)).astype(np.float32)
  agreeing = float(losses.simcse_loss(anchor, anchor, 0.05))
  random = float(losses.simcse_loss(anchor, random_positive, 0.05))
  assert agreeing < random - 1.0
  # Closer views, lower loss: the positive moving towards the anchor.
  halfway = float(losses.simcse_loss(anchor, 0.5 * (anchor + random_positive), 0.05))
  assert agreeing < halfway < random


@pytest.mark.parametrize("with_hard_negative", [False, True])
def test_simcse_padding_rows_are_neither_anchors_nor_negatives(with_hard_negative):
  rng = np.random.default_rng(5)
  anchor, positive, negative = (rng.normal(size=(7, 8)).astype(np.float32) for _ in range(3))
  real = np.array([1, 0, 1, 1, 0, 1, 0], np.float32)
  hard = negative if with_hard_negative else None
  keep = real > 0
  got = losses.simcse_loss(anchor, positive, 0.1, hard_negative=hard, weights=real)
  sub = losses.simcse_loss(anchor[keep], positive[keep], 0.1,
                           hard_negative=None if hard is None else hard[keep])
  np.testing.assert_allclose(got, sub, rtol=RTOL)
  np.testing.assert_allclose(got, np_simcse(anchor, positive, 0.1, hard, real), rtol=RTOL)
  # Padding rows may hold anything, zeros included, without NaNs in value or gradient.
  anchor[~keep] = 0.0
  positive[~keep] = 0.0
  value, grad = jax.jit(jax.value_and_grad(losses.simcse_loss), static_argnums=2)(
      jnp.asarray(anchor), positive, 0.1, hard_negative=hard, weights=real)
  np.testing.assert_allclose(value, sub, rtol=RTOL)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(np.asarray(grad)[~keep], 0.0)


# ----------------------------------------------------------------------------------------
# SMART.

B, L, H, C = 4, 6, 8, 5


def tiny_params(seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return {"hidden": jax.random.normal(k1, (H, 16)) / np.sqrt(H),
          "out": jax.random.normal(k2, (16, C)) / np.sqrt(16) * 3.0}


def tiny_forward(params, embeddings, mask):
  """Token-wise tanh layer, masked mean pool, linear: [B, L, H] -> logits [B, C]."""
  hidden = jnp.tanh(embeddings @ params["hidden"])  # [B, L, 16]
  pooled = jnp.sum(hidden * mask[..., None], 1) / jnp.sum(mask, 1, keepdims=True)  # [B, 16]
  return pooled @ params["out"]  # [B, C]


def tiny_batch(seed=0):
  rng = jax.random.PRNGKey(100 + seed)
  embeddings = jax.random.normal(rng, (B, L, H))
  mask = jnp.array([[1] * L, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4, [1] * L], jnp.float32)
  return embeddings, mask


def adversarial(params, embeddings, mask, rng, divergence=losses.symmetric_kl, **kwargs):
  forward = functools.partial(tiny_forward, params, mask=mask)
  return losses.smart_adversarial(forward, embeddings, forward(embeddings), rng, mask=mask,
                                  divergence=divergence, **kwargs)


# Jitted once per static configuration: eager dispatch would dominate the test time.
jit_adversarial = jax.jit(adversarial, static_argnames=("divergence", "num_steps", "norm"))


@functools.partial(jax.jit, static_argnames=("num_samples", "norm", "samples_per_pass"))
def jit_random(params, embeddings, mask, rng, **kwargs):
  forward = functools.partial(tiny_forward, params, mask=mask)
  return losses.smart_random(
      forward, embeddings, forward(embeddings), rng, mask=mask,
      divergence_per_example=functools.partial(losses.symmetric_kl, reduce=False), **kwargs)


jit_random_in_ball = jax.jit(losses.random_in_ball, static_argnames=("shape", "norm"))


@jax.jit
def divergence_at(params, embeddings, mask, noise):
  forward = functools.partial(tiny_forward, params, mask=mask)
  return losses.symmetric_kl(forward(embeddings + noise), forward(embeddings), reduce=False)


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_smart_zero_perturbation_gives_zero(norm):
  params, (embeddings, mask) = tiny_params(), tiny_batch()
  # Eager: the clean and perturbed forwards are the same kernels, so exactly 0.
  value = adversarial(params, embeddings, mask, jax.random.PRNGKey(0), epsilon=0.0,
                      noise_std=0.0, norm=norm)
  assert float(value) == 0.0
  value = jit_random(params, embeddings, mask, jax.random.PRNGKey(0), num_samples=1,
                     epsilon=0.0, norm=norm)
  assert float(value) == 0.0


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_smart_adversarial_is_nonnegative_and_ascent_increases_divergence(norm):
  params, (embeddings, mask) = tiny_params(), tiny_batch()
  # Radius large enough that the projection does not undo the steps.
  radius = 1.0 if norm == "inf" else 3.0
  kwargs = dict(noise_std=1e-2, step_size=0.05, epsilon=radius, norm=norm)
  values = []
  for seed in range(3):
    rng = jax.random.PRNGKey(seed)
    # num_steps=0 is the divergence at the initial noise (same rng, same noise).
    at_init, one, three = (float(jit_adversarial(params, embeddings, mask, rng, num_steps=k,
                                                 **kwargs)) for k in (0, 1, 3))
    assert 0.0 <= at_init < one < three
    values.append(one)
  assert min(values) > 0.0


@pytest.mark.parametrize("divergence,head", [
    (losses.symmetric_kl_binary, lambda logits: logits[:, 0]),
    (losses.mse_divergence, lambda logits: jnp.tanh(logits[:, 0])),
])
def test_smart_adversarial_other_heads(divergence, head):
  params, (embeddings, mask) = tiny_params(), tiny_batch()
  forward = lambda e: head(tiny_forward(params, e, mask))  # noqa: E731
  values = [float(losses.smart_adversarial(
      forward, embeddings, forward(embeddings), jax.random.PRNGKey(0), divergence=divergence,
      num_steps=k, noise_std=1e-2, step_size=0.05, epsilon=1.0, mask=mask)) for k in (0, 2)]
  assert 0.0 <= values[0] < values[1]


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_project_keeps_noise_in_ball_and_zero_at_masked_tokens(norm):
  _, mask = tiny_batch()
  noise = 3.0 * jax.random.normal(jax.random.PRNGKey(7), (B, L, H))
  noise = noise.at[0].multiply(1e-4)  # one example already inside the ball
  epsilon = 0.5
  projected = np.asarray(losses.project(noise, epsilon, norm, mask))
  masked = np.asarray(mask) == 0
  np.testing.assert_array_equal(projected[masked], 0.0)
  if norm == "inf":
    assert np.abs(projected).max() <= epsilon
    np.testing.assert_array_equal(projected[~masked],
                                  np.clip(np.asarray(noise)[~masked], -epsilon, epsilon))
  else:
    lengths = np.sqrt((projected.astype(np.float64)**2).sum(axis=(1, 2)))
    assert np.all(lengths <= epsilon * (1 + 1e-6))
    np.testing.assert_allclose(lengths[1:], epsilon, rtol=1e-6)  # rescaled to the sphere
    np.testing.assert_array_equal(projected[0], np.asarray(noise)[0] * np.asarray(mask)[0,
                                                                                     :, None])


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_random_in_ball_stays_in_ball(norm):
  _, mask = tiny_batch()
  epsilon = 0.3
  noise = np.asarray(jit_random_in_ball(jax.random.PRNGKey(1), (5, B, L, H), epsilon, norm,
                                        mask))
  masked = np.broadcast_to(np.asarray(mask) == 0, (5, B, L))
  np.testing.assert_array_equal(noise[masked], 0.0)
  if norm == "inf":
    assert np.abs(noise).max() <= epsilon and np.abs(noise).max() > 0.9 * epsilon
  else:
    lengths = np.sqrt((noise.astype(np.float64)**2).sum(axis=(-2, -1)))
    assert np.all(lengths <= epsilon * (1 + 1e-6)) and np.all(lengths > 0)


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_smart_adversarial_final_noise_in_ball_and_masked(norm, monkeypatch):
  params, (embeddings, mask) = tiny_params(), tiny_batch()
  seen = []

  def recording_forward(perturbed):
    seen.append(perturbed - embeddings)
    return tiny_forward(params, perturbed, mask)

  epsilon = 1e-2
  losses.smart_adversarial(recording_forward, embeddings,
                           tiny_forward(params, embeddings, mask), jax.random.PRNGKey(3),
                           divergence=losses.symmetric_kl, num_steps=2, step_size=0.1,
                           epsilon=epsilon, noise_std=1e-3, norm=norm, mask=mask)
  final = np.asarray(seen[-1], np.float64)
  masked = np.asarray(mask) == 0
  np.testing.assert_allclose(final[masked], 0.0, atol=1e-6)  # float32 (e + n) - e rounding
  if norm == "inf":
    assert np.abs(final).max() <= epsilon * (1 + 1e-4)
  else:
    assert np.sqrt((final**2).sum(axis=(1, 2))).max() <= epsilon * (1 + 1e-4)


def test_smart_gradients_are_finite_and_reach_the_parameters():
  params, (embeddings, mask) = tiny_params(), tiny_batch()
  grads = jax.grad(jit_adversarial)(params, embeddings, mask, jax.random.PRNGKey(0),
                                    num_steps=1, noise_std=1e-2, step_size=0.05, epsilon=0.5)
  for leaf in jax.tree_util.tree_leaves(grads):
    assert np.all(np.isfinite(leaf))
    assert np.abs(leaf).max() > 0


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_smart_random_is_the_worst_sample_per_example(norm):
  params, (embeddings, mask) = tiny_params(), tiny_batch()
  rng, epsilon = jax.random.PRNGKey(11), 0.2
  # One sample: the divergence at that sample.
  got = jit_random(params, embeddings, mask, rng, num_samples=1, epsilon=epsilon, norm=norm)
  noise = jit_random_in_ball(rng, (1, B, L, H), epsilon, norm, mask)[0]
  np.testing.assert_allclose(got, divergence_at(params, embeddings, mask, noise).mean(),
                             rtol=RTOL)
  if norm != "inf":
    return  # the reduction below does not depend on the norm
  # Several samples: per example the worst one, then the batch mean; chunking the
  # samples through forward changes nothing.
  noises = jit_random_in_ball(rng, (5, B, L, H), epsilon, norm, mask)
  per_sample = np.stack([divergence_at(params, embeddings, mask, n) for n in noises])
  for chunk in (None, 2):
    got = jit_random(params, embeddings, mask, rng, num_samples=5, epsilon=epsilon,
                     norm=norm, samples_per_pass=chunk)
    np.testing.assert_allclose(got, per_sample.max(axis=0).mean(), rtol=RTOL)
  assert float(got) > per_sample.mean(axis=1).max()  # strictly worse than any one draw


def test_smart_jit_compiles_once_and_matches_eager():
  params, (embeddings, mask) = tiny_params(), tiny_batch()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def regularizers(params, embeddings, rng):
    forward = functools.partial(tiny_forward, params, mask=mask)
    clean = forward(embeddings)
    adv = losses.smart_adversarial(forward, embeddings, clean, rng,
                                   divergence=losses.symmetric_kl, num_steps=2,
                                   step_size=0.05, epsilon=0.5, noise_std=1e-2, mask=mask)
    rand = losses.smart_random(
        forward, embeddings, clean, rng, num_samples=3, epsilon=0.5, mask=mask,
        divergence_per_example=functools.partial(losses.symmetric_kl, reduce=False))
    return adv, rand

  chex.clear_trace_counter()
  for seed in range(2):
    rng = jax.random.PRNGKey(seed)
    adv, rand = regularizers(params, embeddings, rng)
    eager_adv = adversarial(params, embeddings, mask, rng, num_steps=2, step_size=0.05,
                            epsilon=0.5, noise_std=1e-2)
    np.testing.assert_allclose(adv, eager_adv, rtol=1e-4)
    assert float(adv) > 0 and float(rand) > 0
  # Zero perturbation under jit: 0 up to float32 rounding of fused kernels.
  zero = jit_adversarial(params, embeddings, mask, jax.random.PRNGKey(0), epsilon=0.0,
                         noise_std=0.0)
  assert 0.0 <= float(zero) < 1e-6


def test_bregman_proximal_stops_gradient_into_the_ema_output():
  out, ema_out = jnp.array([[1.0, 0.0, 2.0]]), jnp.array([[0.0, 1.0, 0.5]])
  value, (grad_out, grad_ema) = jax.value_and_grad(
      losses.bregman_proximal, argnums=(0, 1))(out, ema_out, losses.symmetric_kl)
  np.testing.assert_allclose(value, np_symmetric_kl(out, ema_out).mean(), rtol=RTOL)
  assert np.abs(grad_out).max() > 0
  np.testing.assert_array_equal(grad_ema, 0.0)


# ----------------------------------------------------------------------------------------
# Task weighting.


def test_task_weights_mean_one_monotone_and_uniform_at_high_temperature():
  ema = jnp.array([0.2, 1.5, 0.7])
  weights = np.asarray(losses.loss_based_task_weights(ema))
  np.testing.assert_allclose(weights.mean(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(weights, 3 * np.asarray(ema) / np.asarray(ema).sum(), rtol=1e-6)
  assert weights[1] > weights[2] > weights[0]
  sharp = np.asarray(losses.loss_based_task_weights(ema, temperature=0.5))
  assert sharp[1] > weights[1] and sharp[0] < weights[0]  # ema^2: sharper
  np.testing.assert_allclose(losses.loss_based_task_weights(ema, temperature=1e9), 1.0,
                             rtol=1e-6)
  # ema = 0 (a bad start) still gives finite weights of mean 1.
  zero_start = np.asarray(losses.loss_based_task_weights(jnp.zeros(3)))
  assert np.all(np.isfinite(zero_start))
  np.testing.assert_allclose(zero_start.mean(), 1.0, rtol=1e-6)


def test_update_loss_ema():
  ema = losses.update_loss_ema(jnp.ones(3), 1, jnp.float32(3.0), decay=0.9)
  np.testing.assert_allclose(ema, [1.0, 1.2, 1.0], rtol=1e-6)  # only task 1 moves
  # From ones the weights start uniform.
  np.testing.assert_allclose(losses.loss_based_task_weights(jnp.ones(4)), 1.0, rtol=1e-6)


def test_task_weights_carry_no_gradient_and_a_zero_weight_drops_its_term():
  x = jnp.array([0.3, -1.2])

  def task_losses(x):
    return jnp.stack([jnp.sum(x**2), jnp.sum(jnp.sin(x)), jnp.sum(jnp.exp(x))])

  def total(x, static_weights):
    per_task = task_losses(x)
    # Weights computed from the current losses: their gradient must not leak in.
    ema = jnp.ones(3)
    for t in range(3):
      ema = losses.update_loss_ema(ema, t, per_task[t], decay=0.5)
    weights = losses.loss_based_task_weights(ema)
    return jnp.sum(static_weights * weights * per_task), weights

  static = jnp.array([1.0, 1.0, 0.0])
  grad, weights = jax.grad(total, has_aux=True)(x, static)
  jacobian = jax.jacobian(task_losses)(x)  # [T, 2]
  expected = weights[0] * jacobian[0] + weights[1] * jacobian[1]
  np.testing.assert_allclose(grad, expected, rtol=1e-6)

  def without_third(x):
    per_task = task_losses(x)
    return jnp.sum(weights[:2] * per_task[:2])

  np.testing.assert_allclose(grad, jax.grad(without_third)(x), rtol=1e-6)
