"""Flax layers with hand-written backward passes, for 16-bit compute on XLA:CPU.

XLA:CPU multiplies bf16 operands on its native kernels (AMX or AVX-512 BF16, through
YNNPACK) only when a dot asks for a float32 result, contracts its left operand along the
last axis with batch axes leading, and is not a matrix-vector product; otherwise it
converts both operands to float32 first (several times slower), or, for some layouts,
fails at run time with "UNIMPLEMENTED: Unsupported element type for DotThunk". JAX's
autodiff of a bf16 matmul breaks those rules in the backward pass (it multiplies the
float32 cotangent, and contracts rows of the activations for the weight gradient), and
XLA folds a plain two-axis transpose back into the dot. So the matmuls here have custom
VJPs that keep every product in an accepted form; LayerNorm and GELU have closed-form
backward passes because their autodiff materialises float32 broadcasts and intermediates.
float32 compute goes through the plain expressions (`Dense` is then `nn.Dense`'s
arithmetic). Figures: docs/performance.md; gradients are tested against float32
references in tests/test_model.py.
"""

from __future__ import annotations

import functools
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
  unnormalised exponentials as well). The attention softmax of the MiniLM train step,
  bf16: -1.2% step time (docs/performance.md)."""
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
  (measured faster in the step than a float32 sum of the bf16 cotangent).
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
  """`nn.Dense` (same parameters `kernel` [in, out] and `bias`), computed by `mixed_dense`
  when `dtype` is bfloat16 or float16; in float32 exactly what `nn.Dense` computes."""
  features: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    if self.dtype in HALF_DTYPES:
      return mixed_dense(x.astype(self.dtype), kernel, bias)
    x, kernel, bias = (t.astype(self.dtype) for t in (x, kernel, bias))
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    return y + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
  """LayerNorm over the last axis, statistics and arithmetic in float32, result in x's dtype.

  The backward is the closed form, dx = rstd * (gs - mean(gs) - xhat * mean(gs * xhat))
  with gs = g * scale, from the saved input and per-row statistics: on XLA:CPU autodiff
  of the same expression materialises broadcasts of the scale and of the statistics: the
  bf16 MiniLM step ran 3.4% slower with `nn.LayerNorm` (docs/performance.md). Used for
  16-bit compute only.
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
