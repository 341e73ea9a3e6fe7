"""The XLA:CPU kernels (mtbert_jax/xla_cpu.py): mixed-precision matmuls, LayerNorm and softmax
against float32 references, and the dropout masks of the unrolled Threefry-2x32 hash."""

import flax.linen as nn
import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import pytest

from mtbert_jax import xla_cpu


def test_threefry_matches_jax_hash():
  """Bit for bit JAX's own Threefry-2x32 (the primitive behind jax.random's default keys)."""
  rng = np.random.default_rng(0)
  for _ in range(3):
    key = rng.integers(0, 2**32, size=2, dtype=np.uint32)
    x = rng.integers(0, 2**32, size=(2, 1000), dtype=np.uint32)
    ref = jex.random.threefry_2x32(jnp.asarray(key), jnp.asarray(x))
    ours = jax.jit(xla_cpu.threefry2x32)(key[0], key[1], jnp.asarray(x[0]), jnp.asarray(x[1]))
    np.testing.assert_array_equal(np.stack(ours), np.asarray(ref))


# Random123's known-answer vectors (random123/tests/kat_vectors): rounds, counter words,
# key words, the two output words.
_KAT = [
    (13, "00000000 00000000", "00000000 00000000", "9d1c5ec6 8bd50731"),
    (13, "ffffffff ffffffff", "ffffffff ffffffff", "fd36d048 2d17272c"),
    (13, "243f6a88 85a308d3", "13198a2e 03707344", "ba3e4725 f27d669e"),
    (20, "00000000 00000000", "00000000 00000000", "6b200159 99ba4efe"),
    (20, "243f6a88 85a308d3", "13198a2e 03707344", "c4923a9c 483df7a0"),
]


@pytest.mark.parametrize("rounds,counter,key,expected", _KAT)
def test_threefry_known_answers(rounds, counter, key, expected):
  words = lambda s: [np.uint32(int(w, 16)) for w in s.split()]
  (x1, x2), (k1, k2) = words(counter), words(key)
  out = jax.jit(xla_cpu.threefry2x32, static_argnums=4)(
      k1, k2, jnp.asarray([x1]), jnp.asarray([x2]), rounds)
  assert [int(o[0]) for o in out] == [int(w) for w in words(expected)]


def test_threefry_rounds_are_checked():
  with pytest.raises(ValueError, match="rounds must be in"):
    xla_cpu.threefry2x32(np.uint32(0), np.uint32(0), jnp.zeros(2, jnp.uint32),
                         jnp.zeros(2, jnp.uint32), 0)


def test_mask_follows_its_definition():
  """Element i (row-major) keeps iff word i % 2 of hash(key, (i // 2, 0)) >= rate * 2^32,
  the hash being Threefry-2x32 with MASK_ROUNDS rounds."""
  key = jax.random.key(7)
  shape, rate = (3, 4, 10), 0.3
  mask = np.asarray(xla_cpu.keep_mask(key, rate, shape)).reshape(-1)
  k = np.asarray(jax.random.key_data(key))
  counters = np.arange(mask.size // 2, dtype=np.uint32)
  words = np.asarray(jax.jit(xla_cpu.threefry2x32, static_argnums=4)(
      k[0], k[1], jnp.asarray(counters), jnp.zeros_like(counters), xla_cpu.MASK_ROUNDS))
  bits = words.T.reshape(-1)  # element 2c <- word 0 of counter c, element 2c+1 <- word 1
  np.testing.assert_array_equal(mask, bits >= np.uint32(round(rate * 2**32)))


@pytest.mark.parametrize("shape", [(), (7,), (5, 3), (2, 3, 5), (4, 2, 6, 6)])
def test_mask_shapes_odd_and_even(shape):
  mask = xla_cpu.keep_mask(jax.random.key(0), 0.5, shape)
  assert mask.shape == shape and mask.dtype == jnp.bool_


def test_keep_rate_and_independence():
  """Over 2^20 draws the kept fraction is 1 - rate within 5 standard errors (5 * 4.7e-4 for
  rate 0.1; a wrong threshold such as 0.1 * 2^31 is off by 0.05). The two elements drawn
  from one hash (words 0 and 1) and neighbouring rows are uncorrelated within 5 standard
  errors of a correlation (5 / sqrt(n/2) = 0.007)."""
  rate, shape = 0.1, (1024, 1024)
  mask = np.asarray(xla_cpu.keep_mask(jax.random.key(3), rate, shape)).astype(np.float64)
  n = mask.size
  assert abs(mask.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
  pairs = mask.reshape(-1, 2)
  assert abs(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]) < 5 / np.sqrt(n / 2)
  assert abs(np.corrcoef(mask[:-1].ravel(), mask[1:].ravel())[0, 1]) < 5 / np.sqrt(n / 2)
  # Another key gives another mask, the same key the same one.
  other = np.asarray(xla_cpu.keep_mask(jax.random.key(4), rate, shape))
  again = np.asarray(xla_cpu.keep_mask(jax.random.key(3), rate, shape))
  np.testing.assert_array_equal(again, mask.astype(bool))
  assert (other != mask.astype(bool)).mean() > 0.1


def test_other_prng_implementations_fall_back_to_bernoulli():
  key = jax.random.key(0, impl="rbg")
  mask = xla_cpu.keep_mask(key, 0.25, (64, 64))
  np.testing.assert_array_equal(mask, jax.random.bernoulli(key, 0.75, (64, 64)))


def test_module_is_inverted_dropout():
  x = jnp.arange(1.0, 4097.0).reshape(64, 64)
  layer = xla_cpu.Dropout(0.25)
  rngs = {"dropout": jax.random.key(1)}
  y = layer.apply({}, x, deterministic=False, rngs=rngs)
  kept = np.asarray(y) != 0
  np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
  assert 0.7 < kept.mean() < 0.8
  np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)
  np.testing.assert_array_equal(xla_cpu.Dropout(1.0).apply({}, x, deterministic=False), 0 * x)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_probs_dropout_has_the_gradient_of_masked_dropout(dtype):
  """ProbsDropout reads its backward mask off its output; the gradient of the softmax
  input must equal that of `Dropout` with the same mask, also where masked keys give
  probabilities of exactly zero (kept by the mask, zero in the output). Softmax and
  products in float32 on both sides, so the results agree to float32 rounding (1e-6)."""
  rng = np.random.default_rng(0)
  scores = jnp.asarray(rng.standard_normal((4, 3, 16, 16)) * 3, jnp.float32)
  visible = jnp.arange(16) < jnp.asarray([16, 9, 12, 5])[:, None]  # key padding per row
  scores = jnp.where(visible[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
  weights = jnp.asarray(rng.standard_normal(scores.shape), jnp.float32)
  rngs = {"dropout": jax.random.key(5)}

  def loss(s, layer):
    probs = layer.apply({}, jax.nn.softmax(s, axis=-1), rngs=rngs)
    return jnp.sum(probs.astype(jnp.float32) * weights)

  def reference(s):
    probs = xla_cpu.Dropout(0.3).apply({}, jax.nn.softmax(s, axis=-1), deterministic=False,
                                       rngs=rngs)
    return jnp.sum(probs.astype(dtype).astype(jnp.float32) * weights)

  layer = xla_cpu.ProbsDropout(0.3, dtype)
  out = layer.apply({}, jax.nn.softmax(scores, axis=-1), rngs=rngs)
  ref_out = xla_cpu.Dropout(0.3).apply({}, jax.nn.softmax(scores, axis=-1),
                                       deterministic=False, rngs=rngs)
  assert out.dtype == dtype
  np.testing.assert_array_equal(out, ref_out.astype(dtype))  # same masks, same values
  mask = np.asarray(xla_cpu.Dropout(0.3).apply({}, jnp.ones(scores.shape), deterministic=False,
                                               rngs=rngs)) != 0
  probs = np.asarray(jax.nn.softmax(scores, axis=-1))
  assert (mask & (probs == 0)).any()  # the case in question: kept, but zero in the output
  got = jax.grad(loss)(scores, layer)
  want = jax.grad(reference)(scores)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * float(np.abs(want).max()))
  assert float(np.abs(want).max()) > 0


@pytest.mark.parametrize("x_shape", [(4, 16, 24), (16, 24)])
def test_mixed_dense_forward_and_gradients(x_shape):
  """`mixed_dense` against the same arithmetic spelled out in float32: operands rounded to
  bf16, exact products, float32 sums. Products of two bf16 numbers are exact in float32, so
  the float32 results (weight and bias gradients) differ only by summation order: 1e-5 of
  their scale. Results rounded to bf16 (output, input gradient) may land one bf16 step
  (2^-8 relative, 0.4%) apart when the float32 sums straddle a rounding boundary."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((24, 40)), jnp.float32)
  b = jnp.asarray(rng.standard_normal(40), jnp.float32)
  g = jnp.asarray(rng.standard_normal(x_shape[:-1] + (40,)), jnp.bfloat16)
  f32 = lambda t: np.asarray(t, np.float32)
  w16 = f32(w.astype(jnp.bfloat16))
  y, vjp = jax.vjp(xla_cpu.mixed_dense, x, w, b)
  dx, dw, db = vjp(g)
  assert (y.dtype, dx.dtype, dw.dtype, db.dtype) == (jnp.bfloat16, jnp.bfloat16,
                                                     jnp.float32, jnp.float32)
  rows_x, rows_g = f32(x).reshape(-1, 24), f32(g).reshape(-1, 40)
  one_step = lambda ref: dict(rtol=2**-8, atol=2**-8 * np.abs(ref).max())
  ref_y = f32(x) @ w16 + f32(b)
  np.testing.assert_allclose(f32(y), ref_y, **one_step(ref_y))
  ref_dx = f32(g) @ w16.T
  np.testing.assert_allclose(f32(dx), ref_dx, **one_step(ref_dx))
  ref_dw, ref_db = rows_x.T @ rows_g, rows_g.sum(0)
  np.testing.assert_allclose(dw, ref_dw, rtol=0, atol=1e-5 * np.abs(ref_dw).max())
  np.testing.assert_allclose(db, ref_db, rtol=0, atol=1e-5 * np.abs(ref_db).max())


@pytest.mark.parametrize("transpose_b", [True, False])
@pytest.mark.parametrize("rows", [16, 13])  # 13: no small factor, the unsplit product
def test_mixed_bmm_forward_and_gradients(transpose_b, rows):
  """`mixed_bmm` against float32 arithmetic on the bf16-rounded operands (exact products,
  float32 sums). The float32 output differs only by summation order (1e-5 of its scale);
  the gradients, rounded to bf16, may be one bf16 step (2^-8 relative) apart."""
  rng = np.random.default_rng(1)
  a = jnp.asarray(rng.standard_normal((6, rows, 8)), jnp.bfloat16)
  b_shape = (6, 10, 8) if transpose_b else (6, 8, 10)
  b = jnp.asarray(rng.standard_normal(b_shape), jnp.bfloat16)
  g = jnp.asarray(rng.standard_normal((6, rows, 10)), jnp.float32)
  f32 = lambda t: np.asarray(t, np.float32)
  spec = "gmk,gpk->gmp" if transpose_b else "gmk,gkp->gmp"
  out, vjp = jax.vjp(lambda a, b: xla_cpu.mixed_bmm(a, b, transpose_b), a, b)
  da, db = vjp(g)
  assert (out.dtype, da.dtype, db.dtype) == (jnp.float32, jnp.bfloat16, jnp.bfloat16)
  ref = np.einsum(spec, f32(a), f32(b))
  np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
  g16 = f32(jnp.asarray(g, jnp.bfloat16))  # the backward multiplies the bf16 cotangent
  ref_da, ref_db = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), f32(a), f32(b))[1](g16)
  for got, want in ((da, ref_da), (db, ref_db)):
    want = np.asarray(want)
    np.testing.assert_allclose(f32(got), want, rtol=2**-8, atol=2**-8 * np.abs(want).max())


def test_layer_norm_matches_flax_values_and_gradients():
  """The closed-form backward against autodiff of flax's LayerNorm, in float32: the same
  function, so only float32 rounding differs (1e-5 of each result's scale)."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((3, 5, 16)) * 3 + 1, jnp.float32)
  g = jnp.asarray(rng.standard_normal((3, 5, 16)), jnp.float32)
  flax_ln = nn.LayerNorm(epsilon=1e-12)
  params = flax_ln.init(jax.random.key(0), x)
  params = jax.tree.map(lambda p: p + jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
  scale, bias = params["params"]["scale"], params["params"]["bias"]
  ours, vjp = jax.vjp(lambda x, s, b: xla_cpu.layer_norm(x, s, b, 1e-12), x, scale, bias)
  ref, ref_vjp = jax.vjp(lambda x, s, b: flax_ln.apply({"params": {"scale": s, "bias": b}}, x),
                         x, scale, bias)
  for got, want in zip((ours,) + vjp(g), (ref,) + ref_vjp(g)):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def test_dense_has_flax_dense_parameters_and_its_bf16_result():
  """Same parameter tree as `nn.Dense`; the output within one bf16 step of nn.Dense's bf16
  result (both round float32-accurate sums to bf16)."""
  x = jax.random.normal(jax.random.key(0), (3, 5, 8))
  ours = xla_cpu.Dense(6, dtype=jnp.bfloat16)
  params = ours.init(jax.random.key(1), x)
  assert jax.tree.structure(params) == jax.tree.structure(nn.Dense(6).init(jax.random.key(1), x))
  ref = np.asarray(nn.Dense(6, dtype=jnp.float32).apply(params, x.astype(jnp.bfloat16)
                                                        .astype(jnp.float32)))
  got = np.asarray(ours.apply(params, x), np.float32)
  np.testing.assert_allclose(got, ref, rtol=2**-7, atol=2**-7 * np.abs(ref).max())


def test_softmax_matches_jax_values_and_gradients():
  """The closed-form softmax backward against autodiff of `jax.nn.softmax`, with masked
  (finfo.min) entries as the attention uses them: float32 rounding only (1e-6)."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((4, 6, 16)) * 4, jnp.float32)
  x = x.at[:, :, 11:].set(jnp.finfo(jnp.float32).min)
  g = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  ours, vjp = jax.vjp(xla_cpu.softmax, x)
  ref, ref_vjp = jax.vjp(lambda t: jax.nn.softmax(t, axis=-1), x)
  np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
  np.testing.assert_allclose(vjp(g)[0], ref_vjp(g)[0], rtol=0,
                             atol=1e-6 * float(np.abs(ref_vjp(g)[0]).max()))
  assert float(jnp.abs(ours[:, :, 11:]).max()) == 0.0
