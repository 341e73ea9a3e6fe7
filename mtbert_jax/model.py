"""The BERT encoder as Flax linen modules, named after the HF PyTorch modules.

`BertModel` has three entry points, used through `apply(..., method=...)`:
`embed` (token ids -> input embeddings, the point where SMART perturbs), `encode`
(embeddings -> last hidden state) and `pool` (dense + tanh over [CLS]); `__call__` chains
`embed` and `encode`. Sizes come from the frozen `BertConfig`, read from an HF
`config.json`. `dtype` is the compute dtype (float32 or bfloat16), parameters are stored in
`param_dtype` (float32); softmax and LayerNorm statistics run in float32 either way.

Attention goes through `jax.nn.dot_product_attention` whenever no attention-probability
dropout is active: its XLA implementation with the padding mask by default, or cuDNN's
fused (flash) kernel with `BertConfig.attention_impl="cudnn"` (GPU, bfloat16/float16 only;
the padding is then passed as per-sequence key lengths, so masks must be right-padded, as
the tokenizer makes them). JAX's own default (`implementation=None`) is the XLA path, so
cuDNN has to be asked for. With dropout on the attention probabilities (HF BERT's
`attention_probs_dropout_prob` during training) the explicit softmax path runs, which is
what HF PyTorch computes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtbert_jax import dropout as dropout_lib

Array = jax.Array
DType = Any


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Encoder sizes, as in an HF BERT `config.json` (defaults: bert-base-uncased)."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  initializer_range: float = 0.02
  # How attention runs without attention dropout (a runtime choice, not saved to
  # config.json): "xla" (any backend and dtype) | "cudnn" (fused kernel; GPU, bf16/fp16).
  attention_impl: str = "xla"

  def __post_init__(self):
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl={self.attention_impl!r}: expected one of "
                       f"{list(ATTENTION_IMPLS)}")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                       f"num_attention_heads={self.num_attention_heads}")
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; "
                       f"expected one of {sorted(_ACTIVATIONS)}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "BertConfig":
    """Reads the fields this encoder uses from an HF config dict; others are ignored."""
    if d.get("model_type", "bert") != "bert":
      raise ValueError(f"model_type={d.get('model_type')!r}: only BERT checkpoints are supported")
    if d.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"position_embedding_type={d['position_embedding_type']!r}: "
                       "only absolute position embeddings are supported")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names and v is not None})

  @classmethod
  def from_json_file(cls, path: str) -> "BertConfig":
    if not os.path.isfile(path):
      raise FileNotFoundError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
      try:
        d = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    return cls.from_dict(d)

  def to_hf_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    del d["attention_impl"]
    d.update(model_type="bert", architectures=["BertModel"],
             position_embedding_type="absolute")
    return d

  def replace(self, **kwargs) -> "BertConfig":
    return dataclasses.replace(self, **kwargs)


ATTENTION_IMPLS = ("xla", "cudnn")

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
  return (0.5 * x32 * (1.0 + jax.lax.erf(x32 * np.float32(1 / np.sqrt(2))))).astype(x.dtype)


def _gelu_erf_fwd(x):
  return gelu_erf(x), x


def _gelu_erf_bwd(x, g):
  x32 = x.astype(jnp.float32)
  cdf = 0.5 * (1.0 + jax.lax.erf(x32 * np.float32(1 / np.sqrt(2))))
  pdf = jnp.exp(-0.5 * x32 * x32) * np.float32(1 / np.sqrt(2 * np.pi))
  return ((g.astype(jnp.float32) * (cdf + x32 * pdf)).astype(x.dtype),)


gelu_erf.defvjp(_gelu_erf_fwd, _gelu_erf_bwd)


_ACTIVATIONS = {
    "gelu": gelu_erf,   # HF "gelu" is the exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


_HALF_DTYPES = (jnp.bfloat16, jnp.float16)


@jax.custom_vjp
def mixed_dense(x: Array, w: Array, b: Array) -> Array:
  """x [..., K] @ w [K, N] + b [N] with 16-bit `x` and float32 master weights `w`, `b`.

  Mixed precision as PyTorch autocast computes a linear layer: the kernel rounded to x's
  dtype, the products summed in float32, the bias added to that sum, the result rounded to
  x's dtype. The backward pass multiplies 16-bit operands the same way; the weight and bias
  gradients stay float32 sums (they update float32 weights).

  Why by hand, rather than `nn.Dense(dtype=bfloat16)`: XLA:CPU runs a bf16 matmul on its
  native kernels (AMX or AVX-512 BF16, through YNNPACK) only when asked for the float32
  accumulator and when the left operand is contracted along its last axis; otherwise it
  converts both operands to float32 first, at a sixth of the speed. JAX's own backward
  breaks both conditions (it multiplies the float32 cotangent, and contracts the rows of
  the activations for the weight gradient). Here the activations are moved to [K, ...]
  first, a transpose of three or more axes that XLA does not fold back into the dot, and
  the bias gradient is a product with rows of ones (measured faster in the step than a
  float32 sum of the bf16 cotangent).
  """
  return _mixed_dense_fwd(x, w, b)[0]


def _dot_f32(a: Array, b: Array, contracting: tuple) -> Array:
  return jax.lax.dot_general(a, b, (contracting, ((), ())), preferred_element_type=jnp.float32)


def _mixed_dense_fwd(x, w, b):
  w16 = w.astype(x.dtype)
  y = _dot_f32(x, w16, ((x.ndim - 1,), (0,))) + b.astype(jnp.float32)
  return y.astype(x.dtype), (x, w16, w, b)  # w and b live on as parameters anyway


def _mixed_dense_bwd(res, g):
  x, w16, w, b = res
  g = g.astype(x.dtype)
  dx = _dot_f32(g, w16, ((g.ndim - 1,), (1,))).astype(x.dtype)
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

  The attention counterpart of `mixed_dense`, for the same reason: XLA:CPU multiplies
  16-bit operands on its native kernels only when asked for a float32 result and when the
  left operand is contracted along its last axis, batch axes leading. The two backward
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
    if self.dtype in _HALF_DTYPES:
      return mixed_dense(x.astype(self.dtype), kernel, bias)
    x, kernel, bias = (t.astype(self.dtype) for t in (x, kernel, bias))
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    return y + bias


def _dense(cfg: BertConfig, features: int, dtype: DType, param_dtype: DType, name: str):
  return Dense(features, dtype=dtype, param_dtype=param_dtype, name=name,
               kernel_init=nn.initializers.normal(cfg.initializer_range))


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


def _layer_norm(cfg: BertConfig, dtype: DType, param_dtype: DType, name: str = "LayerNorm"):
  # float32 keeps flax's LayerNorm: there the closed-form backward measured 2.5% slower.
  cls = LayerNorm if dtype in _HALF_DTYPES else nn.LayerNorm
  return cls(epsilon=cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, name=name)


class BertEmbeddings(nn.Module):
  """Word + position + token type embeddings, then LayerNorm and dropout."""
  config: BertConfig
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, input_ids: Array, token_type_ids: Array, deterministic: bool) -> Array:
    cfg = self.config
    init = nn.initializers.normal(cfg.initializer_range)
    embed = lambda n, name: nn.Embed(n, cfg.hidden_size, embedding_init=init, dtype=self.dtype,
                                     param_dtype=self.param_dtype, name=name)
    length = input_ids.shape[-1]
    if length > cfg.max_position_embeddings:
      raise ValueError(f"sequence length {length} exceeds max_position_embeddings="
                       f"{cfg.max_position_embeddings}")
    position_ids = jnp.arange(length)[None, :]
    x = (embed(cfg.vocab_size, "word_embeddings")(input_ids)
         + embed(cfg.max_position_embeddings, "position_embeddings")(position_ids)
         + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids))  # [B, L, H]
    x = _layer_norm(cfg, self.dtype, self.param_dtype)(x)
    return dropout_lib.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class BertSelfAttention(nn.Module):
  config: BertConfig
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array, deterministic: bool) -> Array:
    cfg = self.config
    batch, length, _ = x.shape
    heads, head_dim = cfg.num_attention_heads, cfg.head_dim
    split = lambda t: t.reshape(batch, length, heads, head_dim)  # [B, L, N, D]
    q = split(_dense(cfg, cfg.hidden_size, self.dtype, self.param_dtype, "query")(x))
    k = split(_dense(cfg, cfg.hidden_size, self.dtype, self.param_dtype, "key")(x))
    v = split(_dense(cfg, cfg.hidden_size, self.dtype, self.param_dtype, "value")(x))
    half = self.dtype in _HALF_DTYPES
    attn_mask = mask[:, None, None, :].astype(bool)  # [B, 1, 1, L]: key positions to attend
    dropout = cfg.attention_probs_dropout_prob
    if deterministic or dropout == 0.0:
      if cfg.attention_impl == "xla":
        out = jax.nn.dot_product_attention(q, k, v, mask=attn_mask)  # [B, L, N, D]
      else:
        out = fused_attention(q, k, v, mask, cfg.attention_impl)
    else:
      if half:  # one group per (example, head): [B * N, L, D], a copy XLA keeps
        q, k, v = (jnp.swapaxes(t, 1, 2).reshape(batch * heads, length, head_dim)
                   for t in (q, k, v))
        scores = mixed_bmm(q, k, True).reshape(batch, heads, length, length)
      else:
        scores = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32)
      scores = jnp.where(attn_mask, scores / jnp.sqrt(head_dim), jnp.finfo(jnp.float32).min)
      probs = jax.nn.softmax(scores, axis=-1)  # [B, N, L, L], float32
      probs = dropout_lib.Dropout(dropout)(probs, deterministic=False).astype(self.dtype)
      if half:
        out = mixed_bmm(probs.reshape(batch * heads, length, length), v, False)
        out = jnp.swapaxes(out.astype(self.dtype).reshape(batch, heads, length, head_dim), 1, 2)
      else:
        out = jnp.einsum("bnqk,bknd->bqnd", probs, v)
    return out.reshape(batch, length, cfg.hidden_size)


def fused_attention(q: Array, k: Array, v: Array, mask: Array, implementation: str) -> Array:
  """`jax.nn.dot_product_attention` with the padding given as key lengths (what cuDNN's
  fused kernel takes): the number of ones of each row of a right-padded `mask` [B, L]."""
  lengths = jnp.sum(mask.astype(jnp.int32), axis=-1)  # [B]
  return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths,
                                      implementation=implementation)


class BertSelfOutput(nn.Module):
  """Dense, dropout, residual, LayerNorm (shared shape of attention.output and output)."""
  config: BertConfig
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, hidden: Array, residual: Array, deterministic: bool) -> Array:
    cfg = self.config
    hidden = _dense(cfg, cfg.hidden_size, self.dtype, self.param_dtype, "dense")(hidden)
    hidden = dropout_lib.Dropout(cfg.hidden_dropout_prob)(hidden, deterministic=deterministic)
    return _layer_norm(cfg, self.dtype, self.param_dtype)(hidden + residual)


class BertAttention(nn.Module):
  config: BertConfig
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array, deterministic: bool) -> Array:
    kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
    attended = BertSelfAttention(**kw, name="self")(x, mask, deterministic)
    return BertSelfOutput(**kw, name="output")(attended, x, deterministic)


class BertLayer(nn.Module):
  config: BertConfig
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array, deterministic: bool) -> Array:
    cfg = self.config
    kw = dict(config=cfg, dtype=self.dtype, param_dtype=self.param_dtype)
    x = BertAttention(**kw, name="attention")(x, mask, deterministic)
    hidden = _ACTIVATIONS[cfg.hidden_act](BertIntermediate(**kw, name="intermediate")(x))
    return BertSelfOutput(**kw, name="output")(hidden, x, deterministic)


class BertIntermediate(nn.Module):
  """`intermediate.dense`: the feed-forward expansion (activation applied by the caller)."""
  config: BertConfig
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _dense(self.config, self.config.intermediate_size, self.dtype, self.param_dtype,
                  "dense")(x)  # [B, L, I]


class BertEncoder(nn.Module):
  """The stack of layers, named `layer_0` ... `layer_{N-1}`; optional rematerialisation."""
  config: BertConfig
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: Array, mask: Array, deterministic: bool) -> Array:
    layer_cls = nn.remat(BertLayer, static_argnums=(3,)) if self.remat else BertLayer
    for i in range(self.config.num_hidden_layers):
      x = layer_cls(self.config, self.dtype, self.param_dtype, name=f"layer_{i}")(
          x, mask, deterministic)
    return x


class BertPooler(nn.Module):
  config: BertConfig
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, hidden: Array) -> Array:
    cls = hidden[:, 0]  # [B, H]
    cls = _dense(self.config, self.config.hidden_size, self.dtype, self.param_dtype,
                 "dense")(cls)
    return jnp.tanh(cls)


class BertModel(nn.Module):
  """BERT: `embed` -> `encode` (-> `pool`). `__call__` returns the last hidden state."""
  config: BertConfig
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  remat: bool = False

  def setup(self):
    kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
    self.embeddings = BertEmbeddings(**kw)
    self.encoder = BertEncoder(**kw, remat=self.remat)
    self.pooler = BertPooler(**kw)

  def embed(self, input_ids: Array, token_type_ids: Array | None = None,
            deterministic: bool = True) -> Array:
    """Input embeddings after LayerNorm and dropout: [B, L, H]."""
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    return self.embeddings(input_ids, token_type_ids, deterministic)

  def encode(self, embeddings: Array, attention_mask: Array,
             deterministic: bool = True) -> Array:
    """Transformer stack over (possibly perturbed) embeddings: [B, L, H]."""
    return self.encoder(embeddings.astype(self.dtype), attention_mask, deterministic)

  def pool(self, hidden: Array) -> Array:
    """The pooler output, dense + tanh over [CLS]: [B, H]."""
    return self.pooler(hidden)

  def __call__(self, input_ids: Array, attention_mask: Array | None = None,
               token_type_ids: Array | None = None, deterministic: bool = True) -> Array:
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    hidden = self.encode(self.embed(input_ids, token_type_ids, deterministic), attention_mask,
                         deterministic)
    if self.is_initializing():
      self.pool(hidden)  # create the pooler's parameters too
    return hidden.astype(jnp.float32)

  def encode_and_pool(self, input_ids: Array, attention_mask: Array,
                      token_type_ids: Array | None = None,
                      deterministic: bool = True) -> tuple[Array, Array]:
    """(last hidden state [B, L, H], pooler output [B, H]), both float32."""
    hidden = self.encode(self.embed(input_ids, token_type_ids, deterministic), attention_mask,
                         deterministic)
    return hidden.astype(jnp.float32), self.pool(hidden).astype(jnp.float32)


def init_params(cfg: BertConfig, rng: Array, seq_len: int = 8) -> dict:
  """Randomly initialised parameters (HF's normal(0.02) init), for tests and from-scratch use."""
  ids = jnp.zeros((1, seq_len), jnp.int32)
  return BertModel(cfg).init(rng, ids, jnp.ones_like(ids), ids)["params"]
