"""Dropout masks from the unrolled Threefry-2x32 hash (mtbert_jax/dropout.py)."""

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import pytest

from mtbert_jax import dropout


def test_threefry_matches_jax_hash():
  """Bit for bit JAX's own Threefry-2x32 (the primitive behind jax.random's default keys)."""
  rng = np.random.default_rng(0)
  for _ in range(3):
    key = rng.integers(0, 2**32, size=2, dtype=np.uint32)
    x = rng.integers(0, 2**32, size=(2, 1000), dtype=np.uint32)
    ref = jex.random.threefry_2x32(jnp.asarray(key), jnp.asarray(x))
    ours = jax.jit(dropout.threefry2x32)(key[0], key[1], jnp.asarray(x[0]), jnp.asarray(x[1]))
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
  out = jax.jit(dropout.threefry2x32, static_argnums=4)(
      k1, k2, jnp.asarray([x1]), jnp.asarray([x2]), rounds)
  assert [int(o[0]) for o in out] == [int(w) for w in words(expected)]


def test_threefry_rounds_are_checked():
  with pytest.raises(ValueError, match="rounds must be in"):
    dropout.threefry2x32(np.uint32(0), np.uint32(0), jnp.zeros(2, jnp.uint32),
                         jnp.zeros(2, jnp.uint32), 0)


def test_mask_follows_its_definition():
  """Element i (row-major) keeps iff word i % 2 of hash(key, (i // 2, 0)) >= rate * 2^32,
  the hash being Threefry-2x32 with MASK_ROUNDS rounds."""
  key = jax.random.key(7)
  shape, rate = (3, 4, 10), 0.3
  mask = np.asarray(dropout.keep_mask(key, rate, shape)).reshape(-1)
  k = np.asarray(jax.random.key_data(key))
  counters = np.arange(mask.size // 2, dtype=np.uint32)
  words = np.asarray(jax.jit(dropout.threefry2x32, static_argnums=4)(
      k[0], k[1], jnp.asarray(counters), jnp.zeros_like(counters), dropout.MASK_ROUNDS))
  bits = words.T.reshape(-1)  # element 2c <- word 0 of counter c, element 2c+1 <- word 1
  np.testing.assert_array_equal(mask, bits >= np.uint32(round(rate * 2**32)))


@pytest.mark.parametrize("shape", [(), (7,), (5, 3), (2, 3, 5), (4, 2, 6, 6)])
def test_mask_shapes_odd_and_even(shape):
  mask = dropout.keep_mask(jax.random.key(0), 0.5, shape)
  assert mask.shape == shape and mask.dtype == jnp.bool_


def test_keep_rate_and_independence():
  """Over 2^20 draws the kept fraction is 1 - rate within 5 standard errors (5 * 4.7e-4 for
  rate 0.1; a wrong threshold such as 0.1 * 2^31 is off by 0.05). The two elements drawn
  from one hash (words 0 and 1) and neighbouring rows are uncorrelated within 5 standard
  errors of a correlation (5 / sqrt(n/2) = 0.007)."""
  rate, shape = 0.1, (1024, 1024)
  mask = np.asarray(dropout.keep_mask(jax.random.key(3), rate, shape)).astype(np.float64)
  n = mask.size
  assert abs(mask.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
  pairs = mask.reshape(-1, 2)
  assert abs(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]) < 5 / np.sqrt(n / 2)
  assert abs(np.corrcoef(mask[:-1].ravel(), mask[1:].ravel())[0, 1]) < 5 / np.sqrt(n / 2)
  # Another key gives another mask, the same key the same one.
  other = np.asarray(dropout.keep_mask(jax.random.key(4), rate, shape))
  again = np.asarray(dropout.keep_mask(jax.random.key(3), rate, shape))
  np.testing.assert_array_equal(again, mask.astype(bool))
  assert (other != mask.astype(bool)).mean() > 0.1


def test_other_prng_implementations_fall_back_to_bernoulli():
  key = jax.random.key(0, impl="rbg")
  mask = dropout.keep_mask(key, 0.25, (64, 64))
  np.testing.assert_array_equal(mask, jax.random.bernoulli(key, 0.75, (64, 64)))


def test_module_is_inverted_dropout():
  x = jnp.arange(1.0, 4097.0).reshape(64, 64)
  layer = dropout.Dropout(0.25)
  rngs = {"dropout": jax.random.key(1)}
  y = layer.apply({}, x, deterministic=False, rngs=rngs)
  kept = np.asarray(y) != 0
  np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
  assert 0.7 < kept.mean() < 0.8
  np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)
  np.testing.assert_array_equal(dropout.Dropout(1.0).apply({}, x, deterministic=False), 0 * x)


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
    probs = dropout.Dropout(0.3).apply({}, jax.nn.softmax(s, axis=-1), deterministic=False,
                                       rngs=rngs)
    return jnp.sum(probs.astype(dtype).astype(jnp.float32) * weights)

  layer = dropout.ProbsDropout(0.3, dtype)
  out = layer.apply({}, jax.nn.softmax(scores, axis=-1), rngs=rngs)
  ref_out = dropout.Dropout(0.3).apply({}, jax.nn.softmax(scores, axis=-1),
                                       deterministic=False, rngs=rngs)
  assert out.dtype == dtype
  np.testing.assert_array_equal(out, ref_out.astype(dtype))  # same masks, same values
  mask = np.asarray(dropout.Dropout(0.3).apply({}, jnp.ones(scores.shape), deterministic=False,
                                               rngs=rngs)) != 0
  probs = np.asarray(jax.nn.softmax(scores, axis=-1))
  assert (mask & (probs == 0)).any()  # the case in question: kept, but zero in the output
  got = jax.grad(loss)(scores, layer)
  want = jax.grad(reference)(scores)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * float(np.abs(want).max()))
  assert float(np.abs(want).max()) > 0
