"""The Flax BERT encoder: shapes, entry points, masking, jit, dropout, dtypes, config checks,
and numerical parity with HF transformers' PyTorch `BertModel` on the real checkpoint.

Every test that runs the encoder runs it with both kernel sets (`BertConfig.kernels`): the
plain Flax layers every backend gets by default, and the XLA:CPU forms of xla_cpu.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtbert_jax import model
from mtbert_jax import xla_cpu

KERNELS = ("flax", "xla_cpu")


def encode_and_pool(bert: model.BertModel, input_ids, attention_mask, token_type_ids=None,
                    deterministic=True):
  """(last hidden state [B, L, H], pooler output [B, H]), both float32: HF `BertModel`'s
  two outputs, for parity. Called as `bert.apply(..., method=encode_and_pool)`."""
  hidden = bert.encode(bert.embed(input_ids, token_type_ids, deterministic), attention_mask,
                       deterministic)
  return hidden.astype(jnp.float32), bert.pool(hidden).astype(jnp.float32)


def _batch(cfg, batch=3, length=12, seed=0):
  """Random ids with ragged right padding (row r has length - 3r real tokens) and pairs."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, cfg.vocab_size, size=(batch, length), dtype=np.int32)
  lengths = np.array([length - 3 * r for r in range(batch)])
  mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
  types = (np.arange(length)[None, :] >= lengths[:, None] // 2).astype(np.int32) * mask
  ids = np.where(mask == 1, ids, cfg.pad_token_id).astype(np.int32)
  return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)


@pytest.fixture(params=KERNELS)
def tiny(tiny_config, request):
  """(config, module, params, (ids, mask, types)) for the tiny random encoder, once per
  kernel set."""
  cfg = tiny_config.replace(kernels=request.param)
  params = model.init_params(cfg, jax.random.key(0))
  return cfg, model.BertModel(cfg), params, _batch(cfg)


def test_output_shapes_and_dtypes(tiny):
  cfg, bert, params, (ids, mask, types) = tiny
  hidden = bert.apply({"params": params}, ids, mask, types)
  assert hidden.shape == (3, 12, cfg.hidden_size)
  assert hidden.dtype == jnp.float32
  hidden2, pooled = bert.apply({"params": params}, ids, mask, types,
                               method=encode_and_pool)
  assert pooled.shape == (3, cfg.hidden_size)
  assert pooled.dtype == jnp.float32
  np.testing.assert_array_equal(hidden2, hidden)
  assert np.all(np.abs(pooled) <= 1.0)  # tanh


def test_init_params_shapes(tiny_config):
  params = model.init_params(tiny_config, jax.random.key(1))
  assert set(params) == {"embeddings", "encoder", "pooler"}
  assert set(params["encoder"]) == {"layer_0", "layer_1"}
  layer = params["encoder"]["layer_0"]
  assert layer["intermediate"]["dense"]["kernel"].shape == (32, 37)
  assert layer["output"]["dense"]["kernel"].shape == (37, 32)
  assert params["embeddings"]["word_embeddings"]["embedding"].shape == (99, 32)
  assert params["embeddings"]["position_embeddings"]["embedding"].shape == (64, 32)
  assert params["embeddings"]["token_type_embeddings"]["embedding"].shape == (2, 32)


def test_entry_points_compose_to_call(tiny):
  _, bert, params, (ids, mask, types) = tiny
  variables = {"params": params}
  embeddings = bert.apply(variables, ids, types, method=model.BertModel.embed)
  assert embeddings.shape == (3, 12, 32)
  hidden = bert.apply(variables, embeddings, mask, method=model.BertModel.encode)
  pooled = bert.apply(variables, hidden, method=model.BertModel.pool)
  np.testing.assert_array_equal(hidden, bert.apply(variables, ids, mask, types))
  _, pooled_ref = bert.apply(variables, ids, mask, types,
                             method=encode_and_pool)
  np.testing.assert_array_equal(pooled, pooled_ref)


def test_defaults_are_full_mask_and_type_zero(tiny):
  _, bert, params, (ids, _, _) = tiny
  variables = {"params": params}
  explicit = bert.apply(variables, ids, jnp.ones_like(ids), jnp.zeros_like(ids))
  np.testing.assert_array_equal(bert.apply(variables, ids), explicit)


def test_attention_mask_masks_padded_positions(tiny):
  cfg, bert, params, (ids, mask, types) = tiny
  variables = {"params": params}
  padded = np.asarray(mask) == 0
  assert padded.any()
  rng = np.random.default_rng(1)
  other_ids = np.where(padded, rng.integers(1, cfg.vocab_size, ids.shape), ids)
  other_types = np.where(padded, 1 - np.asarray(types), types)
  reference = np.asarray(bert.apply(variables, ids, mask, types))
  changed = np.asarray(bert.apply(variables, jnp.asarray(other_ids, jnp.int32), mask,
                                  jnp.asarray(other_types, jnp.int32)))
  keep = ~padded
  np.testing.assert_allclose(changed[keep], reference[keep], rtol=0, atol=1e-6)
  # The same change without the mask must show, or the check above proves nothing.
  full = jnp.ones_like(mask)
  unmasked_ref = np.asarray(bert.apply(variables, ids, full, types))
  unmasked_changed = np.asarray(bert.apply(variables, jnp.asarray(other_ids, jnp.int32), full,
                                           jnp.asarray(other_types, jnp.int32)))
  assert np.abs(unmasked_changed[keep] - unmasked_ref[keep]).max() > 1e-3


def test_jit_matches_eager(tiny):
  _, bert, params, (ids, mask, types) = tiny
  eager = bert.apply({"params": params}, ids, mask, types)
  jitted = jax.jit(lambda p, i, m, t: bert.apply({"params": p}, i, m, t))(params, ids, mask,
                                                                           types)
  np.testing.assert_allclose(jitted, eager, rtol=0, atol=1e-5)


def test_remat_matches_plain_outputs_and_grads(tiny):
  cfg, bert, params, (ids, mask, types) = tiny
  remat_bert = model.BertModel(cfg, remat=True)

  def loss(module, p):
    hidden, pooled = module.apply({"params": p}, ids, mask, types,
                                  method=encode_and_pool)
    return jnp.mean(hidden ** 2) + jnp.mean(pooled)

  value, grads = jax.jit(jax.value_and_grad(lambda p: loss(bert, p)))(params)
  remat_value, remat_grads = jax.jit(jax.value_and_grad(lambda p: loss(remat_bert, p)))(params)
  np.testing.assert_allclose(remat_value, value, rtol=1e-6)
  # Rematerialisation recomputes the forward pass inside the backward one, and XLA may
  # fuse it differently: float32 rounding differences (~3e-7 of the largest gradient
  # measured), not bit equality. A wrong recomputation would be off by O(1) of it.
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * scale),
               remat_grads, grads)
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)


def test_dropout(tiny):
  _, bert, params, (ids, mask, types) = tiny
  variables = {"params": params}

  def train_apply(seed):
    return np.asarray(bert.apply(variables, ids, mask, types, deterministic=False,
                                 rngs={"dropout": jax.random.key(seed)}))

  first, again, other = train_apply(0), train_apply(0), train_apply(1)
  np.testing.assert_array_equal(first, again)
  assert np.abs(first - other).max() > 1e-3
  inference = np.asarray(bert.apply(variables, ids, mask, types))
  np.testing.assert_array_equal(bert.apply(variables, ids, mask, types, deterministic=True),
                                inference)
  assert np.abs(first - inference).max() > 1e-3
  with pytest.raises(Exception, match="dropout"):  # training mode needs a dropout rng
    bert.apply(variables, ids, mask, types, deterministic=False)


def test_explicit_softmax_attention_equals_fused_path(tiny):
  """The explicit-softmax path (taken only when attention dropout is active) against the
  fused `jax.nn.dot_product_attention` path.

  A dropout rate of 0 cannot reach the explicit path (the code then takes the fused one),
  and a tiny rate such as 1e-9 only works because 1 - 1e-9 rounds to 1.0 in float32, an
  accident of the dropout implementation. Instead: keep attention dropout at 0.5 so the
  explicit path is taken with deterministic=False, and make every dropout module
  (`nn.Dropout`, `xla_cpu.Dropout`, `xla_cpu.ProbsDropout`) the identity through
  `nn.intercept_methods`. The interceptor also records the shapes it saw, proving that the
  [B, N, L, L] attention-probability dropout really ran.
  """
  cfg, _, params, (ids, mask, types) = tiny
  cfg = cfg.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
  bert = model.BertModel(cfg)
  seen = []

  def dropout_is_identity(next_fun, args, kwargs, context):
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    if isinstance(context.module, (nn.Dropout, xla_cpu.Dropout)):
      seen.append((context.module.rate, args[0].shape))
      return args[0]
    if isinstance(context.module, xla_cpu.ProbsDropout):  # the attention probabilities
      seen.append((context.module.rate, args[0].shape))
      return args[0].astype(context.module.dtype)
    return next_fun(*args, **kwargs)

  fused = bert.apply({"params": params}, ids, mask, types, deterministic=True)
  with nn.intercept_methods(dropout_is_identity):
    explicit = bert.apply({"params": params}, ids, mask, types, deterministic=False,
                          rngs={"dropout": jax.random.key(0)})
  heads = cfg.num_attention_heads
  assert seen.count((0.5, (3, heads, 12, 12))) == cfg.num_hidden_layers
  np.testing.assert_allclose(explicit, fused, rtol=0, atol=1e-5)


def test_bfloat16_compute(tiny):
  cfg, bert, params, (ids, mask, types) = tiny
  bf16 = model.BertModel(cfg, dtype=jnp.bfloat16)  # the fixture's kernel set
  bf16_params = bf16.init(jax.random.key(0), ids, mask, types)["params"]
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16_params))
  assert jax.tree.structure(bf16_params) == jax.tree.structure(params)
  variables = {"params": params}
  embeddings = bf16.apply(variables, ids, types, method=model.BertModel.embed)
  assert embeddings.dtype == jnp.bfloat16  # the compute really is bf16
  hidden, pooled = bf16.apply(variables, ids, mask, types,
                              method=encode_and_pool)
  assert hidden.dtype == jnp.float32 and pooled.dtype == jnp.float32
  ref_hidden, ref_pooled = bert.apply(variables, ids, mask, types,
                                      method=encode_and_pool)
  # LayerNorm outputs of magnitude ~1-4; bf16 keeps 8 significant bits (relative step
  # 2^-8 = 0.4%), so a few rounding steps through 2 layers stay well under 0.1.
  diff = float(np.abs(np.asarray(hidden) - np.asarray(ref_hidden)).max())
  print(f"\ntiny config bf16 vs f32: hidden max abs diff {diff:.3g}")
  assert 0 < diff < 0.1
  np.testing.assert_allclose(pooled, ref_pooled, rtol=0, atol=0.05)


def test_config_from_dict_checks():
  ok = model.BertConfig.from_dict({"model_type": "bert", "hidden_size": 64,
                                   "num_attention_heads": 4, "some_unused_field": 1,
                                   "num_hidden_layers": None})
  assert ok.hidden_size == 64 and ok.num_hidden_layers == 12
  with pytest.raises(ValueError, match="roberta"):
    model.BertConfig.from_dict({"model_type": "roberta"})
  with pytest.raises(ValueError, match="not a multiple"):
    model.BertConfig.from_dict({"hidden_size": 30, "num_attention_heads": 4})
  with pytest.raises(ValueError, match="relative_key"):
    model.BertConfig.from_dict({"position_embedding_type": "relative_key"})
  with pytest.raises(ValueError, match="swish"):
    model.BertConfig.from_dict({"hidden_act": "swish"})


def test_config_json_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.json"):
    model.BertConfig.from_json_file(str(tmp_path / "nope.json"))
  bad = tmp_path / "config.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    model.BertConfig.from_json_file(str(bad))


def test_config_hf_dict_round_trip(tiny_config):
  d = tiny_config.to_hf_dict()
  assert d["model_type"] == "bert"
  assert model.BertConfig.from_dict(d) == tiny_config


def test_sequence_longer_than_max_positions_raises(tiny):
  cfg, bert, params, _ = tiny
  ids = jnp.ones((1, cfg.max_position_embeddings + 1), jnp.int32)
  with pytest.raises(ValueError, match="max_position_embeddings"):
    bert.apply({"params": params}, ids)
  ok = jnp.ones((1, cfg.max_position_embeddings), jnp.int32)
  out = jax.eval_shape(lambda: bert.apply({"params": params}, ok))  # the limit itself is fine
  assert out.shape == (1, cfg.max_position_embeddings, 32)


# --- parity with HF transformers on the real checkpoint -------------------------------

def _parity_batches(real_sentences, real_tokenizer):
  """32 single sentences and 32 pairs, spread over the length range, padded batches."""
  singles = sorted(real_sentences.singles, key=len)
  singles = [singles[i] for i in np.linspace(0, len(singles) - 1, 32).astype(int)]
  pairs = sorted(real_sentences.pairs, key=lambda p: len(p[0]) + len(p[1]))
  pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, 32).astype(int)]
  return {
      "single": real_tokenizer.batch_encode(singles, max_length=128),
      "pair": real_tokenizer.batch_encode([a for a, _ in pairs], [b for _, b in pairs],
                                          max_length=128),
  }


def _hf_outputs(hf_bert, batch):
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    out = hf_bert(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()})
  return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def _flax_outputs(cfg, params, batch, dtype, kernels):
  bert = model.BertModel(cfg.replace(kernels=kernels), dtype=dtype)
  fn = jax.jit(lambda p, b: bert.apply({"params": p}, b["input_ids"], b["attention_mask"],
                                       b["token_type_ids"],
                                       method=encode_and_pool))
  hidden, pooled = fn(params, {k: jnp.asarray(v) for k, v in batch.items()})
  return np.asarray(hidden), np.asarray(pooled)


@pytest.fixture(scope="module")
def parity_setup(real_checkpoint, real_tokenizer, real_sentences, hf_bert):
  batches = _parity_batches(real_sentences, real_tokenizer)
  refs = {name: _hf_outputs(hf_bert, b) for name, b in batches.items()}
  return real_checkpoint, batches, refs


@pytest.mark.slow
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("kind", ["single", "pair"])
def test_parity_with_hf_float32(parity_setup, kind, kernels):
  (cfg, params), batches, refs = parity_setup
  batch = batches[kind]
  assert batch["attention_mask"].min() == 0  # the batch does exercise padding
  if kind == "pair":
    assert batch["token_type_ids"].max() == 1
  ref_hidden, ref_pooled = refs[kind]
  hidden, pooled = _flax_outputs(cfg, params, batch, jnp.float32, kernels)
  real = batch["attention_mask"] == 1
  hidden_diff = float(np.abs(hidden[real] - ref_hidden[real]).max())
  pooled_diff = float(np.abs(pooled - ref_pooled).max())
  print(f"\nfloat32 parity ({kernels}, {kind}, {batch['input_ids'].shape}): hidden max abs diff "
        f"{hidden_diff:.3g} (max |hidden| {np.abs(ref_hidden[real]).max():.3g}), "
        f"pooler max abs diff {pooled_diff:.3g}")
  # Same float32 arithmetic in a different order: ~5e-6 measured on CPU.
  assert hidden_diff <= 1e-4
  assert pooled_diff <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("kind", ["single", "pair"])
def test_parity_with_hf_bfloat16(parity_setup, kind, kernels):
  (cfg, params), batches, refs = parity_setup
  batch = batches[kind]
  ref_hidden, ref_pooled = refs[kind]
  hidden, pooled = _flax_outputs(cfg, params, batch, jnp.bfloat16, kernels)
  real = batch["attention_mask"] == 1
  errors = np.abs(hidden[real] - ref_hidden[real])
  scale = float(np.abs(ref_hidden[real]).max())
  hidden_diff, hidden_mean = float(errors.max()), float(errors.mean())
  pooled_diff = float(np.abs(pooled - ref_pooled).max())
  print(f"\nbfloat16 parity ({kernels}, {kind}, {batch['input_ids'].shape}): hidden max abs diff "
        f"{hidden_diff:.3g} = {hidden_diff / scale:.2%} of max |hidden| {scale:.3g}, "
        f"mean abs diff {hidden_mean:.3g}; pooler max abs diff {pooled_diff:.3g}")
  # bf16 keeps 8 significant bits: each rounding is off by up to 2^-9 ~ 0.2% relative.
  # Activations are rounded to bf16 after every matmul, GELU and LayerNorm, ~10 times a
  # layer over 6 layers; the errors partly cancel and LayerNorm rescales them, so the
  # worst element stays within a few percent of the largest activation. The bound: max
  # abs error <= 3% of max |hidden|, and a mean abs error that is 20x tighter, so a
  # systematic error (a wrong mask, a skipped LayerNorm) cannot hide below the max bound.
  assert hidden_diff <= 0.03 * scale
  assert hidden_mean <= 0.0015 * scale
  # The pooler is tanh(dense([CLS])), bounded by 1: the same few-percent budget, absolute.
  assert pooled_diff <= 0.03


def test_fused_attention_key_lengths_equal_the_padding_mask(tiny_config):
  # attention_impl="cudnn" passes the padding as key lengths; on the XLA implementation the
  # same call must equal the masked attention for right-padded masks (what the tokenizer
  # makes). Tolerance 1e-6: float32, the same softmax up to summation order.
  rng = np.random.default_rng(0)
  b, length, heads, dim = 3, 11, 4, 8
  q, k, v = (jnp.asarray(rng.normal(size=(b, length, heads, dim)), jnp.float32)
             for _ in range(3))
  lengths = np.array([11, 6, 1])
  mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
  expected = jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(mask, bool)[:, None, None])
  got = model.fused_attention(q, k, v, jnp.asarray(mask), "xla")
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-6)


def test_runtime_fields_are_checked_and_not_saved(tiny_config):
  with pytest.raises(ValueError, match="attention_impl='flash'"):
    tiny_config.replace(attention_impl="flash")
  with pytest.raises(ValueError, match="kernels='tpu'"):
    tiny_config.replace(kernels="tpu")
  d = tiny_config.replace(attention_impl="cudnn", kernels="xla_cpu").to_hf_dict()
  assert "attention_impl" not in d and "kernels" not in d


@pytest.mark.parametrize("dtype,tolerance", [
    # float32: the same function, float32 rounding in another order (GELU through erf
    # against erfc, a softmax with one reciprocal per row; ~1e-7 of each gradient's scale
    # measured): 1e-5.
    (jnp.float32, 1e-5),
    # bfloat16: both round activations to bf16 after each layer, not at the same points
    # (xla_cpu keeps float32 sums up to the bias add, GELU's and LayerNorm's results in
    # float32 longer): a few bf16 steps (2^-8 = 0.4% each) through 2 layers, ~2% measured:
    # 5% of the scale. A wrong backward formula is off by O(100%).
    (jnp.bfloat16, 0.05)])
def test_kernel_sets_give_the_same_gradients(tiny_config, dtype, tolerance):
  """Outputs and parameter gradients of the encoder with the flax and xla_cpu kernels,
  dropout off (the two draw different masks): the two implementations of one function.
  The loss projects hidden states and pooler output on fixed random directions, so every
  gradient is of order one (a loss such as mean(hidden^2) after LayerNorm is nearly
  constant and leaves only rounding noise in the gradients)."""
  ids, mask, types = _batch(tiny_config)
  rng = np.random.default_rng(5)
  directions = (jnp.asarray(rng.standard_normal(ids.shape + (32,)), jnp.float32)
                * mask[..., None], jnp.asarray(rng.standard_normal((3, 32)), jnp.float32))
  params = model.init_params(tiny_config, jax.random.key(0))
  results = {}
  for kernels in KERNELS:
    bert = model.BertModel(tiny_config.replace(kernels=kernels), dtype=dtype)

    def loss(p, bert=bert):
      hidden, pooled = bert.apply({"params": p}, ids, mask, types,
                                  method=encode_and_pool)
      return jnp.sum(hidden * directions[0]) + jnp.sum(pooled * directions[1]), hidden

    (_, hidden), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    results[kernels] = (np.asarray(hidden), jax.device_get(grads))
  (h_flax, g_flax), (h_cpu, g_cpu) = results["flax"], results["xla_cpu"]
  np.testing.assert_allclose(h_cpu, h_flax, rtol=0, atol=tolerance * np.abs(h_flax).max())
  # Each leaf against its own scale, floored at 1e-4 of the largest gradient: the key
  # bias's gradient is zero in exact arithmetic (softmax ignores a constant shift of all
  # scores), so both sides hold only rounding noise there.
  floor = 1e-4 * max(float(np.abs(g).max()) for g in jax.tree.leaves(g_flax))
  for path, a in jax.tree_util.tree_flatten_with_path(g_flax)[0]:
    b = g_cpu
    for key in path:
      b = b[key.key]
    scale = max(float(np.abs(a).max()), floor)
    np.testing.assert_allclose(b, a, rtol=0, atol=tolerance * scale,
                               err_msg=jax.tree_util.keystr(path))
