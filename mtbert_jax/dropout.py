"""Dropout with masks from an unrolled Threefry-2x32 hash (the hash of JAX's default PRNG).

Why not `flax.linen.Dropout`: its mask comes from `jax.random.bernoulli`, which on CPU
lowers Threefry as a rolled 5-iteration `while` loop per mask (XLA cannot fuse across the
loop). Here the hash is written out round by round in `jnp`, so XLA fuses the whole mask
(counters, rounds, threshold) into the elementwise kernel that applies it. On the
2-core CPU the 19 dropout masks of the MiniLM train step (batch 32, seq 64), computed on
their own, took about 21 ms instead of 130 ms with 20 rounds (docs/performance.md).

The hash is Random123's Threefry-2x32 with `MASK_ROUNDS` = 13 rounds: the fewest that its
authors found "Crush-resistant" (passing all of TestU01's BigCrush; Salmon et al. 2011,
"Parallel random numbers: as easy as 1, 2, 3", Table 2); 20, what JAX uses, is their
default with a safety margin. The hash is most of a mask's cost, and 13 rounds made the
MiniLM bf16 train step 3% faster (docs/performance.md). `threefry2x32` computes any round
count; tests/test_dropout.py checks 20 rounds bit for bit against
`jax.extend.random.threefry_2x32` and 13 and 20 against Random123's known-answer vectors.
Element `i` of a mask (row-major index) draws word `i % 2` of the hash of counter `i // 2`
under the mask's key, and is kept when that word is >= round(rate * 2**32): the drop
probability is `rate` to within 2**-33 (`jax.random.bernoulli` compares a 23-bit uniform).
The counters are computed from the array's own axes (iota), so a mask sharded along its
leading axes is generated where it lives. Keys of other PRNG implementations (`rbg`,
`unsafe_rbg`) fall back to `jax.random.bernoulli`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotl(x: Array, r: int) -> Array:
  return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


MASK_ROUNDS = 13  # Threefry rounds of the dropout masks (module docstring)


def threefry2x32(key1: Array, key2: Array, x1: Array, x2: Array,
                 rounds: int = 20) -> tuple[Array, Array]:
  """Threefry-2x32 with `rounds` rounds (Random123's threefry2x32_R; 20 is JAX's hash) of
  the counter words (x1, x2) under the key (key1, key2).

  All arguments uint32; the key words are scalars, x1 and x2 arrays of one shape. The key
  is injected after every fourth round. Unrolled, so that under `jit` the whole hash fuses
  into its consumer.
  """
  if not 1 <= rounds <= 32:
    raise ValueError(f"threefry2x32: rounds must be in [1, 32], got {rounds}")
  ks = (key1, key2, key1 ^ key2 ^ np.uint32(0x1BD11BDA))
  x1, x2 = x1 + ks[0], x2 + ks[1]
  for r in range(rounds):
    x1 = x1 + x2
    x2 = _rotl(x2, _ROTATIONS[(r // 4) % 2][r % 4]) ^ x1
    if r % 4 == 3:  # key injection number (r + 1) // 4
      i = r // 4
      x1 = x1 + ks[(i + 1) % 3]
      x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x1, x2


def _is_threefry(key: Array) -> bool:
  return (jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
          and jax.random.key_data(key).shape == (2,)
          and "threefry" in str(jax.random.key_impl(key)))


def keep_mask(key: Array, rate: float, shape: tuple[int, ...]) -> Array:
  """Boolean mask of `shape`, each entry False with probability `rate` (independently)."""
  if not _is_threefry(key):
    return jax.random.bernoulli(key, 1.0 - rate, shape)
  shape = tuple(shape)
  if math.prod(shape) > 2**32:
    raise ValueError(f"dropout mask of shape {shape}: at most 2**32 elements are supported")
  # Row-major index i of each element; it draws word i % 2 of the hash of counter i // 2.
  # Evaluating the hash once per element (twice per counter) and picking the word is
  # cheaper on CPU than hashing each counter once and interleaving the two words.
  strides = np.cumprod((1,) + shape[:0:-1])[::-1] if shape else ()
  index = sum((jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
               for axis, stride in enumerate(strides)), jnp.zeros(shape, jnp.uint32))
  data = jax.random.key_data(key)
  w1, w2 = threefry2x32(data[0], data[1], index >> np.uint32(1), jnp.zeros_like(index),
                        MASK_ROUNDS)
  bits = jnp.where((index & np.uint32(1)) == 0, w1, w2)
  threshold = np.uint32(min(round(rate * 2.0**32), 2**32 - 1))
  return bits >= threshold


def _apply_mask(x: Array, keep: Array, keep_prob: float) -> Array:
  """Inverted dropout with a given mask: kept entries scaled by 1 / keep_prob, others 0."""
  return jax.lax.select(keep, x / keep_prob, jnp.zeros_like(x))


class Dropout(nn.Module):
  """`flax.linen.Dropout` (inverted dropout, same arguments) with `keep_mask` masks."""
  rate: float
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, inputs: Array, deterministic: bool) -> Array:
    if deterministic or self.rate == 0.0:
      return inputs
    if self.rate == 1.0:
      return jnp.zeros_like(inputs)
    keep_prob = 1.0 - self.rate
    keep = keep_mask(self.make_rng(self.rng_collection), self.rate, inputs.shape)
    return _apply_mask(inputs, keep, keep_prob)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dropout_probs(probs: Array, keep: Array, keep_prob: float, dtype) -> Array:
  return _apply_mask(probs, keep, keep_prob).astype(dtype)


def _dropout_probs_fwd(probs, keep, keep_prob, dtype):
  out = _dropout_probs(probs, keep, keep_prob, dtype)
  return out, out


def _dropout_probs_bwd(keep_prob, dtype, out, g):
  del dtype
  g = g.astype(jnp.float32)
  return _apply_mask(g, out != 0, keep_prob), None


_dropout_probs.defvjp(_dropout_probs_fwd, _dropout_probs_bwd)


class ProbsDropout(nn.Module):
  """Dropout of softmax probabilities (attention), the result cast to `dtype`; same masks
  as `Dropout`. The backward pass takes the mask from the output (nonzero = kept) instead
  of hashing it again. That gives the same gradient of the softmax's input: where the
  output is zero but the mask kept the entry, the probability itself is zero (or below
  ~1e-40 in bfloat16), and the softmax backward multiplies that entry's gradient, and its
  share of the row sum, by the probability. The output is kept for the next matmul's
  backward anyway, so the mask costs no memory."""
  rate: float
  dtype: Any = jnp.float32
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, probs: Array) -> Array:
    if self.rate == 0.0:
      return probs.astype(self.dtype)
    if self.rate == 1.0:
      return jnp.zeros(probs.shape, self.dtype)
    keep = keep_mask(self.make_rng(self.rng_collection), self.rate, probs.shape)
    return _dropout_probs(probs.astype(jnp.float32), keep, 1.0 - self.rate, self.dtype)
