"""Kernels for XLA:CPU: mixed-precision matmuls, LayerNorm, GELU, softmax and dropout.

The plain Flax path (`nn.Dense(dtype=...)`, `nn.LayerNorm`, `nn.Dropout` with
`jax.random`) is what every backend runs by default; these kernels replace it on the CPU
backend only (`model.kernels`: "auto" picks them where JAX runs on the CPU, "xla_cpu"
forces them, "flax" turns them off; `docs/performance.md` has the measurements that chose
them, `docs/architecture.md` where they plug in). They compute the same functions; what
differs is the form XLA:CPU is given:

* Matmuls in 16-bit compute (`mixed_dense`, `mixed_bmm`). XLA:CPU multiplies bf16 operands
  on its native kernels (AVX-512 BF16 or AMX, through YNNPACK) only when a dot asks for a
  float32 result, contracts its left operand along the last axis with batch axes leading,
  and is not a matrix-vector product; otherwise it converts both operands to float32 first
  or, for some layouts, fails at run time ("UNIMPLEMENTED: Unsupported element type for
  DotThunk"). JAX's autodiff of a bf16 matmul breaks those rules in the backward pass (it
  multiplies the float32 cotangent, and contracts rows of the activations for the weight
  gradient), and XLA folds a plain two-axis transpose back into the dot. The custom VJPs
  here keep every product in an accepted form, with float32 accumulation (as PyTorch
  autocast).
* LayerNorm and GELU in 16-bit compute, the softmax in both dtypes: closed-form backward
  passes, because their autodiff materialises float32 broadcasts and intermediates.
* Dropout masks from an unrolled Threefry-2x32 hash: `jax.random.bernoulli` lowers
  Threefry on CPU as a rolled `while` loop per mask, which XLA cannot fuse; written out
  round by round, the whole mask (counters, rounds, threshold) fuses into the kernel that
  applies it.

Gradients are tested against float32 references and the hash against JAX's and
Random123's known answers (tests/test_model.py, tests/test_xla_cpu.py).
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
DType = Any


HALF_DTYPES = (jnp.bfloat16, jnp.float16)


@jax.custom_vjp
def gelu_erf(x: Array) -> Array:
  """HF's "gelu", x * (1 + erf(x / sqrt 2)) / 2, in float32 for 16-bit inputs.

  The formula PyTorch uses. `jax.nn.gelu(approximate=False)` computes the same function
  through erfc, which XLA expands into two polynomial branches, an exp and a division:
  slower on CPU, for accuracy in the far negative tail, where the function is ~0 anyway.
  The derivative, Phi(x) + x phi(x), is one pass over the saved input (autodiff keeps
  float32 intermediates, twice the size of a bf16 input).
  """
  x32 = x.astype(jnp.float32)
  return (x32 * _normal_cdf(x32)).astype(x.dtype)


def _normal_cdf(x32: Array) -> Array:
  return 0.5 * (1.0 + jax.lax.erf(x32 * np.float32(1 / np.sqrt(2))))


def _gelu_erf_fwd(x):
  return gelu_erf(x), x


def _gelu_erf_bwd(x, g):
  # The barrier keeps XLA from merging this Phi(x) with the forward pass's: merged, the
  # forward writes Phi(x) out in float32 for the backward to read (twice the bytes of x).
  x32 = jax.lax.optimization_barrier(x).astype(jnp.float32)
  pdf = jnp.exp(-0.5 * x32 * x32) * np.float32(1 / np.sqrt(2 * np.pi))
  return ((g.astype(jnp.float32) * (_normal_cdf(x32) + x32 * pdf)).astype(x.dtype),)


gelu_erf.defvjp(_gelu_erf_fwd, _gelu_erf_bwd)


@jax.custom_vjp
def softmax(x: Array) -> Array:
  """Softmax over the last axis (float32 in, float32 out), with the closed-form backward
  p * (g - sum(g * p)) from the saved output, and one reciprocal per row instead of a
  division per element (`jax.nn.softmax` divides, and its autodiff keeps the
  unnormalised exponentials as well)."""
  e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
  return e * (1.0 / jnp.sum(e, axis=-1, keepdims=True))


def _softmax_fwd(x):
  p = softmax(x)
  return p, p


def _softmax_bwd(p, g):
  return (p * (g - jnp.sum(g * p, axis=-1, keepdims=True)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


@jax.custom_vjp
def mixed_dense(x: Array, w: Array, b: Array) -> Array:
  """x [..., K] @ w [K, N] + b [N] with 16-bit `x` and float32 master weights `w`, `b`.

  Mixed precision as PyTorch autocast computes a linear layer: the kernel rounded to x's
  dtype, the products summed in float32, the bias added to that sum, the result rounded to
  x's dtype. The backward pass multiplies 16-bit operands the same way; the weight and bias
  gradients stay float32 sums (they update float32 weights).

  The weight gradient moves the activations to [K, ...] first, a transpose of three or
  more axes that XLA does not fold back into the dot (two-dimensional activations take the
  plain, float32-converted product), and the bias gradient is a product with rows of ones
  (XLA:CPU otherwise sums the bf16 cotangent in a separate float32 pass).
  """
  return _mixed_dense_fwd(x, w, b)[0]


def _dot_f32(a: Array, b: Array, contracting: tuple) -> Array:
  return jax.lax.dot_general(a, b, (contracting, ((), ())), preferred_element_type=jnp.float32)


def _mixed_dense_fwd(x, w, b):
  y = _dot_f32(x, w.astype(x.dtype), ((x.ndim - 1,), (0,))) + b.astype(jnp.float32)
  return y.astype(x.dtype), (x, w, b)  # w and b live on as parameters anyway


def _mixed_dense_bwd(res, g):
  x, w, b = res
  g = g.astype(x.dtype)
  dx = _dot_f32(g, w.astype(x.dtype), ((g.ndim - 1,), (1,))).astype(x.dtype)
  lead = tuple(range(x.ndim - 1))  # the axes summed over for the weight gradient
  if x.ndim >= 3:
    dw = _dot_f32(jnp.moveaxis(x, -1, 0), g, (tuple(a + 1 for a in lead), lead))
  else:
    dw = _dot_f32(x, g, (lead, lead))
  # The bias gradient as a product with 8 rows of ones: a single row would be a
  # matrix-vector product, which XLA:CPU does not give YNNPACK (it would convert g to f32).
  ones = jnp.ones((8,) + g.shape[:-1], g.dtype)
  db = _dot_f32(ones, g, (tuple(a + 1 for a in lead), lead))[0]
  return dx, dw.astype(w.dtype), db.astype(b.dtype)


mixed_dense.defvjp(_mixed_dense_fwd, _mixed_dense_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def mixed_bmm(a: Array, b: Array, transpose_b: bool) -> Array:
  """Batched matmul of two 16-bit operands over their leading axis, float32 result:
  a @ b^T for a [G, M, K], b [G, P, K] (attention scores) when `transpose_b`, else a @ b
  for b [G, K, P] (attention output).

  The attention counterpart of `mixed_dense` (see the module docstring). The two backward
  products that contract the rows of both operands (a^T b) split the row axis in two
  (`_contract_rows`), which keeps XLA from folding the transpose back into the product."""
  return _bmm_f32(a, b, 2, 2 if transpose_b else 1)


def _bmm_f32(a: Array, b: Array, contract_a, contract_b) -> Array:
  contract_a, contract_b = np.atleast_1d(contract_a), np.atleast_1d(contract_b)
  return jax.lax.dot_general(a, b, ((tuple(contract_a), tuple(contract_b)), ((0,), (0,))),
                             preferred_element_type=jnp.float32)


def _contract_rows(a: Array, b: Array) -> Array:
  """sum_i a[g, i, j] * b[g, i, d] -> [G, J, D], float32."""
  groups, rows, cols = a.shape
  split = next((f for f in (8, 4, 2, 16) if rows % f == 0 and rows > f), None)
  if split is None:  # rows without a small factor: the plain (slower) product
    return _bmm_f32(a, b, 1, 1)
  a4 = jnp.transpose(a.reshape(groups, split, rows // split, cols), (0, 3, 1, 2))
  b4 = b.reshape(groups, split, rows // split, b.shape[-1])
  return _bmm_f32(a4, b4, (2, 3), (1, 2))


def _mixed_bmm_fwd(a, b, transpose_b):
  return mixed_bmm(a, b, transpose_b), (a, b)


def _mixed_bmm_bwd(transpose_b, res, g):
  a, b = res
  g = g.astype(a.dtype)
  if transpose_b:  # out[m, p] = sum_k a[m, k] b[p, k]
    da, db = _bmm_f32(g, b, 2, 1), _contract_rows(g, a)
  else:            # out[m, p] = sum_k a[m, k] b[k, p]
    da, db = _bmm_f32(g, b, 2, 2), _contract_rows(a, g)
  return da.astype(a.dtype), db.astype(b.dtype)


mixed_bmm.defvjp(_mixed_bmm_fwd, _mixed_bmm_bwd)


class Dense(nn.Module):
  """`nn.Dense` (same parameters `kernel` [in, out] and `bias`) in 16-bit compute, by
  `mixed_dense`. float32 compute needs no special form: `nn.Dense` is used there."""
  features: int
  dtype: DType = jnp.bfloat16
  param_dtype: DType = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    return mixed_dense(x.astype(self.dtype), kernel, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
  """LayerNorm over the last axis, statistics and arithmetic in float32, result in x's dtype.

  The backward is the closed form, dx = rstd * (gs - mean(gs) - xhat * mean(gs * xhat))
  with gs = g * scale, from the saved input and per-row statistics: on XLA:CPU autodiff
  of the same expression materialises broadcasts of the scale and of the statistics. Used
  for 16-bit compute only (in float32 `nn.LayerNorm` is as fast).
  """
  return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  centered = x32 - mean
  rstd = jax.lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + eps)
  y = centered * rstd * scale.astype(jnp.float32) + bias.astype(jnp.float32)
  return y.astype(x.dtype), (x, mean, rstd, scale, bias)


def _layer_norm_bwd(eps, res, g):
  del eps
  x, mean, rstd, scale, bias = res
  xhat = (x.astype(jnp.float32) - mean) * rstd
  g32 = g.astype(jnp.float32)
  gs = g32 * scale.astype(jnp.float32)
  dx = rstd * (gs - jnp.mean(gs, axis=-1, keepdims=True)
               - xhat * jnp.mean(gs * xhat, axis=-1, keepdims=True))
  rows = tuple(range(x.ndim - 1))
  dscale = jnp.sum(g32 * xhat, axis=rows).astype(scale.dtype)
  return dx.astype(x.dtype), dscale, jnp.sum(g32, axis=rows).astype(bias.dtype)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
  """`nn.LayerNorm` (same parameters `scale` and `bias`) computed by `layer_norm`."""
  epsilon: float = 1e-12
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = (x.shape[-1],)
    scale = self.param("scale", nn.initializers.ones, features, self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, features, self.param_dtype)
    return layer_norm(x.astype(self.dtype), scale, bias, self.epsilon)


# ------------------------------------------------------------------------------------------
# Dropout.
#
# The hash is Random123's Threefry-2x32 with `MASK_ROUNDS` = 13 rounds: the fewest that its
# authors found "Crush-resistant" (passing all of TestU01's BigCrush; Salmon et al. 2011,
# "Parallel random numbers: as easy as 1, 2, 3", Table 2); 20, what JAX uses, is their
# default with a safety margin, and the hash is most of a mask's cost. `threefry2x32`
# computes any round count. Element `i` of a mask (row-major index) draws word `i % 2` of
# the hash of counter `i // 2` under the mask's key, and is kept when that word is
# >= round(rate * 2**32): the drop probability is `rate` to within 2**-33. The counters
# come from the array's own axes (iota), so a mask sharded along its leading axes is
# generated where it lives. Keys of other PRNG implementations (`rbg`, `unsafe_rbg`) fall
# back to `jax.random.bernoulli`.


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


# ------------------------------------------------------------------------------------------
# Attention with dropout on the probabilities.


def attention_with_dropout(q: Array, k: Array, v: Array, attn_mask: Array,
                           probs_dropout: ProbsDropout, dtype: DType) -> Array:
  """softmax(q k^T / sqrt(d), masked) with dropout, times v: [B, L, N, D] in and out.

  16-bit compute runs the two products as `mixed_bmm` over one group per (example, head),
  [B * N, L, D] operands (a copy XLA keeps); float32 as plain einsums. The softmax is
  `softmax` (float32), its dropout `probs_dropout`, a `ProbsDropout` the caller
  constructed (so the mask's rng follows the caller's module path)."""
  batch, length, heads, head_dim = q.shape
  half = dtype in HALF_DTYPES
  if half:
    q, k, v = (jnp.swapaxes(t, 1, 2).reshape(batch * heads, length, head_dim)
               for t in (q, k, v))
    scores = mixed_bmm(q, k, True).reshape(batch, heads, length, length)
  else:
    scores = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32)
  scores = jnp.where(attn_mask, scores / jnp.sqrt(head_dim), jnp.finfo(jnp.float32).min)
  probs = probs_dropout(softmax(scores))  # [B, N, L, L]
  if half:
    out = mixed_bmm(probs.reshape(batch * heads, length, length), v, False)
    return jnp.swapaxes(out.astype(dtype).reshape(batch, heads, length, head_dim), 1, 2)
  return jnp.einsum("bnqk,bknd->bqnd", probs, v)
