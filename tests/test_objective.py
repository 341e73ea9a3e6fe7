"""The heads, the loss of a step (objective.py) and the jitted train step, on a tiny encoder.

The extension terms are checked structurally: a zero weight leaves the step's program
exactly the baseline's (the jaxprs are equal, so the baseline pays nothing), and a weight
w adds w times the term's own gradient. Every task's step runs in float32 and bfloat16
with both kernel sets.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from mtbert_jax import heads as heads_lib
from mtbert_jax import model as model_lib
from mtbert_jax import objective
from mtbert_jax import settings as settings_lib
from mtbert_jax import tasks as tasks_lib
from mtbert_jax import train

KERNELS = ("flax", "xla_cpu")


def make_settings(**overrides) -> settings_lib.Settings:
  """configs/base.py with overrides like `smart__weight=1.0`."""
  c = base.get_config()
  for key, value in overrides.items():
    group, field = key.split("__")
    c[group][field] = value
  return settings_lib.from_dict(c.to_dict())


def _heads(**kw) -> settings_lib.HeadSettings:
  d = dict(sentiment="linear", paraphrase="bi", similarity="linear", dropout=0.2,
           cls_source="pooler")
  return settings_lib.HeadSettings(**{**d, **kw})


def _model(cfg, dtype=jnp.float32, **head_kw):
  return heads_lib.MultitaskModel(cfg, _heads(**head_kw), dtype=dtype)


def _fixture(tiny_config, overrides=None, head_kw=None, kernels="flax", dtype=jnp.float32):
  s = make_settings(**(overrides or {}))
  m = _model(tiny_config.replace(kernels=kernels), dtype, **(head_kw or {}))
  params = tasks_lib.init_params(m, jax.random.key(0))
  return s, m, params, train.make_optimizer(s, params, tiny_config.num_hidden_layers)


def _batch(task: str, batch: int = 4, length: int = 12, vocab: int = 99, seed: int = 0,
           joint: bool = False):
  rng = np.random.default_rng(seed)
  suffixes = {"sst": [""], "para": ["_1", "_2"], "sts": ["_1", "_2"],
              "nli": ["_1", "_2", "_3"]}[task]
  if joint:
    suffixes = [""]
  out = {}
  for s in suffixes:
    lengths = rng.integers(3, length + 1, batch)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    out[f"input_ids{s}"] = (rng.integers(1, vocab, (batch, length)) * mask).astype(np.int32)
    out[f"attention_mask{s}"] = mask
    out[f"token_type_ids{s}"] = np.zeros((batch, length), np.int32)
  if task == "sst":
    out["labels"] = rng.integers(0, 5, batch).astype(np.int32)
  elif task == "para":
    out["labels"] = rng.integers(0, 2, batch).astype(np.int32)
  elif task == "sts":
    out["labels"] = rng.uniform(0, 5, batch).astype(np.float32)
  out["weights"] = np.ones(batch, np.float32)
  return out


# ---------------------------------------------------------------------------------------------
# Heads.


@pytest.mark.parametrize("head_kw", [
    {}, dict(sentiment="squared_relu", paraphrase="prompt", similarity="cosine",
             cls_source="hidden"),
    dict(sentiment="mlp", paraphrase="cross", similarity="cross", cls_source="mean")])
def test_head_shapes_and_ranges(tiny_config, head_kw):
  m = _model(tiny_config, **head_kw)
  params = tasks_lib.init_params(m, jax.random.key(0))
  ids = jax.random.randint(jax.random.key(1), (3, 10), 1, tiny_config.vocab_size)
  mask = jnp.ones_like(ids)
  v = m.apply({"params": params}, ids, mask, jnp.zeros_like(ids), True, method=m.vector)
  assert v.shape == (3, tiny_config.hidden_size) and v.dtype == jnp.float32
  apply = lambda method, x: m.apply({"params": params}, x, True, method=method)
  logits = apply(m.sst_output, v)
  assert logits.shape == (3, 5)
  if head_kw.get("sentiment") == "squared_relu":
    assert (logits >= 0).all()
  assert ("sentiment_hidden" in params) == (head_kw.get("sentiment") == "mlp")
  pair = jnp.concatenate([v, v[::-1]])
  para_in = pair if head_kw.get("paraphrase", "bi") == "bi" else v  # joint: one vector a pair
  assert apply(m.para_output, para_in).shape == (3,)
  sts_in = v if head_kw.get("similarity") == "cross" else pair
  score = apply(m.sts_output, sts_in)
  assert score.shape == (3,)
  if head_kw.get("similarity") == "cosine":
    assert ((score >= 0) & (score <= 5)).all()
    same = apply(m.sts_output, jnp.concatenate([v, v]))
    np.testing.assert_allclose(same, 5.0, rtol=1e-5)  # cos(u, u) = 1 -> 5
  assert apply(m.nli_output, jnp.concatenate([v, v, v])).shape == (9, tiny_config.hidden_size)


def test_head_settings_reject_unknown_modes():
  with pytest.raises(settings_lib.ConfigError, match="heads.paraphrase='siamese'"):
    _heads(paraphrase="siamese")
  with pytest.raises(ValueError, match="resolve 'auto'"):
    _model(model_lib.BertConfig(num_hidden_layers=1), cls_source="auto").init(
        jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32),
        jnp.zeros((1, 4), jnp.int32), True, method=heads_lib.MultitaskModel.vector)


# ---------------------------------------------------------------------------------------------
# The loss: terms and their weights.


def _loss_fn(s, m, task, batch, terms=None):
  spec = tasks_lib.get(task)
  return lambda p: objective.loss(m, s, spec, p, batch, jax.random.key(3), terms=terms)[0]


_EXTENSIONS = {"smart__variant": "adversarial", "smart__tasks": ("sst", "para", "sts")}


@pytest.mark.parametrize("task,head_kw", [("sst", {}), ("para", {"paraphrase": "prompt"}),
                                          ("sts", {"similarity": "cosine"})])
def test_zero_weight_extensions_give_the_baseline_program(tiny_config, task, head_kw):
  """SMART, Bregman and unsupervised SimCSE at weight 0 are not traced at all: the loss's
  jaxpr, and so its gradient program, is the baseline's, token for token."""
  s0, m, params, _ = _fixture(tiny_config, head_kw=head_kw)
  off, _, _, _ = _fixture(tiny_config, {**_EXTENSIONS, "smart__weight": 0.0,
                                        "smart__bregman_weight": 0.0,
                                        "simcse__unsup_weight": 0.0}, head_kw)
  on, _, _, _ = _fixture(tiny_config, {**_EXTENSIONS, "smart__weight": 1.0}, head_kw)
  batch = _batch(task, joint=head_kw.get("paraphrase") == "prompt")
  jaxpr = lambda s: str(jax.make_jaxpr(jax.grad(_loss_fn(s, m, task, batch)))(params))
  assert jaxpr(off) == jaxpr(s0)
  assert jaxpr(on) != jaxpr(s0)  # the comparison can tell a term that is there


# Perturbations large enough to move the tiny encoder's outputs (the defaults' epsilon of
# 5e-3 leaves a gradient of ~1e-9 here, which would make the comparison vacuous).
_BIG = {"smart__epsilon": 1.0, "smart__step_size": 1.0, "smart__noise_std": 0.3}


@pytest.mark.parametrize("overrides,name,task,head_kw", [
    ({**_BIG, "smart__weight": 0.5, "smart__variant": "adversarial"}, "smart", "sst", {}),
    ({**_BIG, "smart__weight": 0.5, "smart__num_samples": 2}, "smart", "sst", {}),
    ({**_BIG, "smart__weight": 0.5, "smart__tasks": ("sts",)}, "smart", "sts",
     {"similarity": "cosine"}),
    ({"simcse__unsup_weight": 0.5}, "simcse_unsup", "para", {}),
])
def test_a_weight_adds_that_multiple_of_the_terms_gradient(tiny_config, overrides, name,
                                                           task, head_kw):
  """grad(task + w * term) - grad(task) = w * grad(term), the terms sharing one forward
  pass (same dropout masks). float32, a sum of two gradients in another order: 1e-5 of
  the largest gradient entry."""
  s, m, params, _ = _fixture(tiny_config, overrides, head_kw)
  spec = tasks_lib.get(task)
  terms = dict((n, (n, w, f)) for n, w, f in objective.step_terms(s, spec))
  assert set(terms) == {"task", name} and terms[name][1] == 0.5
  batch = _batch(task)
  grad = lambda ts: jax.grad(_loss_fn(s, m, task, batch, ts))(params)
  both = grad([terms["task"], terms[name]])
  alone = grad([terms["task"]])
  term = grad([(name, 1.0, terms[name][2])])
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(both))
  extra = max(float(np.abs(t).max()) for t in jax.tree.leaves(term))
  # The term must move the gradient well above the tolerance, or the test proves nothing.
  assert 0.5 * extra > 10 * 1e-5 * scale, (extra, scale)
  jax.tree.map(lambda b, a, t: np.testing.assert_allclose(b - a, 0.5 * t, rtol=0,
                                                          atol=1e-5 * scale),
               both, alone, term)


# ---------------------------------------------------------------------------------------------
# The train step.

_SAME = (12, 12, 12)  # one batch length, three steps


@pytest.mark.parametrize("overrides,task,head_kw,lengths", [
    ({"smart__weight": 1.0, "smart__num_samples": 2}, "sst", {}, (12, 12, 16, 12, 16)),
    ({"smart__weight": 1.0, "smart__variant": "adversarial"}, "sst", {"sentiment": "mlp"}, _SAME),
    ({"smart__weight": 1.0, "smart__tasks": ("sts",)}, "sts", {"similarity": "cosine"}, _SAME),
    ({"smart__weight": 1.0, "smart__tasks": ("para",)}, "para", {"paraphrase": "prompt"}, _SAME),
    ({"smart__bregman_weight": 1.0}, "sts", {"similarity": "cross"}, _SAME),
    ({"simcse__unsup_weight": 1.0}, "sst", {}, _SAME),
    ({"train__tasks": ("sst", "para", "sts", "nli")}, "nli", {"similarity": "cosine"}, _SAME),
    ({"weighting__mode": "loss"}, "para", {}, _SAME),
    ({"optim__layer_decay": 0.8}, "sst", {}, _SAME),
])
def test_extension_steps_finite_and_compile_once_per_shape(tiny_config, overrides, task,
                                                           head_kw, lengths):
  """Every extension's step is finite and traced once per batch length. One case
  alternates two lengths (two traces, no more); the others repeat one length, which checks
  the same property (one trace) at half the compile time."""
  s, m, params, tx = _fixture(tiny_config, overrides, head_kw)
  state = train.init_state(params, tx, s)
  def fn(state, batch, key):
    return train.train_step(state, batch, key, task=task, mt_model=m, s=s, tx=tx)

  step = jax.jit(chex.assert_max_traces(fn, n=len(set(lengths))))  # one per batch length
  key = jax.random.key(0)
  joint = (head_kw.get("paraphrase") == "prompt" and task == "para") or (
      head_kw.get("similarity") == "cross" and task == "sts")
  for seed, length in enumerate(lengths):
    state, metrics = step(state, _batch(task, length=length, seed=seed, joint=joint), key)
    for k, v in metrics.items():
      assert np.isfinite(v), (k, v)
  assert int(state.nonfinite) == 0 and int(state.step) == len(lengths)
  chex.clear_trace_counter()


# Pairs at the tiny shape with both kernel sets; the MiniLM-shaped layer only with the
# xla_cpu kernels, whose hand-chosen bf16 dot layouts are what an unsupported shape breaks
# (plain Flax bf16 at that shape is the same nn.Dense program the tiny shape runs).
@pytest.mark.parametrize("shape,tasks,kernels", [("tiny", ("para", "sts"), "flax"),
                                                 ("tiny", ("para", "sts"), "xla_cpu"),
                                                 ("minilm_layer", ("sst", "nli"), "xla_cpu")])
def test_bfloat16_steps_of_every_task_run_and_match_float32(tiny_config, shape, tasks,
                                                           kernels):
  """The bf16 step of every task with either kernel set (xla_cpu's dot layouts must be
  ones XLA:CPU accepts: an unsupported one is an UNIMPLEMENTED error at run time, not a
  slowdown): sentence pairs at the tiny shape; single sentences with SMART and
  unsupervised SimCSE, and NLI triplets, at one layer of the MiniLM shape (hidden 384, 12
  heads, length 64), dropout on. The first step's total loss agrees with the float32
  step's within 5% (bf16 rounding, same dropout masks)."""
  cfg = tiny_config
  length = 12
  if shape == "minilm_layer":
    cfg = model_lib.BertConfig(vocab_size=99, hidden_size=384, num_hidden_layers=1,
                               num_attention_heads=12, intermediate_size=1536,
                               max_position_embeddings=64)
    length = 64
  overrides = {"train__tasks": ("sst", "para", "sts", "nli"), "smart__weight": 1.0,
               "smart__variant": "adversarial", "smart__tasks": ("sst",),
               "simcse__unsup_weight": 1.0}
  results = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    s, m, params, tx = _fixture(cfg, overrides, {"similarity": "cosine"}, kernels, dtype)
    state = train.init_state(params, tx, s)
    for task in tasks:
      step = jax.jit(functools.partial(train.train_step, task=task, mt_model=m, s=s, tx=tx))
      _, metrics = step(state, _batch(task, batch=4, length=length), jax.random.key(1))
      for k, v in metrics.items():
        assert np.isfinite(v), (dtype, task, k, v)
      results[dtype, task] = float(metrics["loss/total"])
  for task in tasks:
    f32, bf16 = results[jnp.float32, task], results[jnp.bfloat16, task]
    assert abs(bf16 - f32) <= 0.05 * abs(f32), (task, f32, bf16)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
@pytest.mark.parametrize("kernels", KERNELS)
def test_dropout_key_impl_is_used_and_steps_are_finite(tiny_config, impl, kernels):
  from mtbert_jax import sharding  # pylint: disable=import-outside-toplevel
  s, m, params, tx = _fixture(tiny_config, {"train__rng_impl": impl}, kernels=kernels)
  key = sharding.Sharder(sharding.make_mesh()).dropout_key(1, s.train.rng_impl)
  assert str(jax.random.key_impl(key)).endswith(impl)
  step = jax.jit(functools.partial(train.train_step, task="sst", mt_model=m, s=s, tx=tx))
  state, metrics = step(train.init_state(params, tx, s), _batch("sst"), key)
  assert all(np.isfinite(v) for v in metrics.values())
  with pytest.raises(settings_lib.ConfigError, match="train.rng_impl"):
    make_settings(train__rng_impl="philox")


def test_pretrain_mode_freezes_encoder(tiny_config):
  s, m, params, tx = _fixture(tiny_config, {"train__mode": "pretrain"})
  state = train.init_state(params, tx, s)
  new, _ = jax.jit(functools.partial(train.train_step, task="sst", mt_model=m, s=s, tx=tx))(
      state, _batch("sst"), jax.random.key(0))
  jax.tree_util.tree_map(np.testing.assert_array_equal, new.params["bert"], params["bert"])
  assert not np.array_equal(new.params["sentiment_out"]["kernel"],
                            params["sentiment_out"]["kernel"])


def test_nonfinite_loss_skips_update(tiny_config):
  s, m, params, tx = _fixture(tiny_config)
  state = train.init_state(params, tx, s)
  batch = _batch("sts")
  batch["labels"][0] = np.nan
  new, _ = jax.jit(functools.partial(train.train_step, task="sts", mt_model=m, s=s, tx=tx))(
      state, batch, jax.random.key(0))
  assert int(new.nonfinite) == 1
  jax.tree_util.tree_map(np.testing.assert_array_equal, new.params, params)


def test_layer_decay_scales_each_layers_update(tiny_config):
  """With layer_decay d on a 2-layer encoder, the first AdamW update (of size ~lr on every
  entry, since Adam normalises it) is scaled by d^3 on embeddings, d^2 on layer_0, d on
  layer_1 and 1 on the heads: the ratio to the undecayed update is exactly that."""
  s1, m, params, tx1 = _fixture(tiny_config)
  sd, _, _, txd = _fixture(tiny_config, {"optim__layer_decay": 0.5})
  grads = jax.tree.map(jnp.ones_like, params)
  u1, _ = tx1.update(grads, tx1.init(params), params)
  ud, _ = txd.update(grads, txd.init(params), params)
  expected = {("bert", "embeddings"): 0.125, ("bert", "encoder", "layer_0"): 0.25,
              ("bert", "encoder", "layer_1"): 0.5, ("bert", "pooler"): 1.0,
              ("sentiment_out",): 1.0}
  for prefix, factor in expected.items():
    a, b = u1, ud
    for key in prefix:
      a, b = a[key], b[key]
    jax.tree.map(lambda x, y: np.testing.assert_allclose(y, factor * x, rtol=1e-6), a, b)
  del s1, sd
