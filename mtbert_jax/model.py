"""The BERT encoder as Flax linen modules, named after the HF PyTorch modules.

`BertModel` has three entry points, used through `apply(..., method=...)`: `embed` (token
ids -> input embeddings, the point where SMART perturbs), `encode` (embeddings -> last
hidden state) and `pool` (dense + tanh over [CLS]); `__call__` chains `embed` and
`encode`. Sizes come from the frozen `BertConfig`, read from an HF `config.json`. `dtype`
is the compute dtype (float32 or bfloat16), parameters are stored in `param_dtype`
(float32); softmax and LayerNorm statistics run in float32 either way.

The layers are plain Flax (`nn.Dense`, `nn.LayerNorm`, `nn.Dropout`, `jax.nn.softmax`)
unless `BertConfig.kernels` is "xla_cpu": then the few helpers below (`_dense`,
`_layer_norm`, `_dropout`, the GELU and the attention with dropout) take their
XLA:CPU forms from `xla_cpu.py`, which compute the same functions in a shape that CPU's
kernels run fast. Nothing else in the encoder depends on the choice.

Attention goes through `jax.nn.dot_product_attention` whenever no attention-probability
dropout is active: XLA's implementation with the padding mask by default, or cuDNN's
fused (flash) kernel with `BertConfig.attention_impl="cudnn"` (GPU, bfloat16/float16
only; the padding is then passed as per-sequence key lengths, so masks must be
right-padded, as the tokenizer makes them). With dropout on the attention probabilities
(HF BERT's `attention_probs_dropout_prob` during training) the explicit softmax path runs,
which is what HF PyTorch computes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtbert_jax import xla_cpu

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
  # Runtime choices, not saved to config.json. How attention runs without attention
  # dropout: "xla" (any backend and dtype) | "cudnn" (fused kernel; GPU, bf16/fp16).
  attention_impl: str = "xla"
  # The layers' implementation: "flax" (plain Flax, every backend) | "xla_cpu" (xla_cpu.py).
  kernels: str = "flax"

  def __post_init__(self):
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl={self.attention_impl!r}: expected one of "
                       f"{list(ATTENTION_IMPLS)}")
    if self.kernels not in KERNELS:
      raise ValueError(f"kernels={self.kernels!r}: expected one of {list(KERNELS)}")
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
    del d["attention_impl"], d["kernels"]
    d.update(model_type="bert", architectures=["BertModel"],
             position_embedding_type="absolute")
    return d

  def replace(self, **kwargs) -> "BertConfig":
    return dataclasses.replace(self, **kwargs)


ATTENTION_IMPLS = ("xla", "cudnn")
KERNELS = ("flax", "xla_cpu")

# HF "gelu" is the exact erf form.
_ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
}


def _xla_cpu_half(cfg: BertConfig, dtype: DType) -> bool:
  return cfg.kernels == "xla_cpu" and dtype in xla_cpu.HALF_DTYPES


def _dense(cfg: BertConfig, features: int, dtype: DType, param_dtype: DType, name: str):
  cls = xla_cpu.Dense if _xla_cpu_half(cfg, dtype) else nn.Dense
  return cls(features, dtype=dtype, param_dtype=param_dtype, name=name,
             kernel_init=nn.initializers.normal(cfg.initializer_range))


def _layer_norm(cfg: BertConfig, dtype: DType, param_dtype: DType, name: str = "LayerNorm"):
  cls = xla_cpu.LayerNorm if _xla_cpu_half(cfg, dtype) else nn.LayerNorm
  return cls(epsilon=cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, name=name)


def _dropout(cfg: BertConfig, rate: float):
  return xla_cpu.Dropout(rate) if cfg.kernels == "xla_cpu" else nn.Dropout(rate)


def _activation(cfg: BertConfig, x: Array) -> Array:
  if cfg.kernels == "xla_cpu" and cfg.hidden_act == "gelu":
    return xla_cpu.gelu_erf(x)
  return _ACTIVATIONS[cfg.hidden_act](x)


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
    return _dropout(cfg, cfg.hidden_dropout_prob)(x, deterministic=deterministic)


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
    attn_mask = mask[:, None, None, :].astype(bool)  # [B, 1, 1, L]: key positions to attend
    rate = cfg.attention_probs_dropout_prob
    if deterministic or rate == 0.0:
      if cfg.attention_impl == "xla":
        out = jax.nn.dot_product_attention(q, k, v, mask=attn_mask)  # [B, L, N, D]
      else:
        out = fused_attention(q, k, v, mask, cfg.attention_impl)
    elif cfg.kernels == "xla_cpu":
      out = xla_cpu.attention_with_dropout(q, k, v, attn_mask,
                                           xla_cpu.ProbsDropout(rate, self.dtype), self.dtype)
    else:
      scores = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32)
      scores = jnp.where(attn_mask, scores / jnp.sqrt(head_dim), jnp.finfo(jnp.float32).min)
      probs = nn.Dropout(rate)(jax.nn.softmax(scores), deterministic=False)  # [B, N, L, L]
      out = jnp.einsum("bnqk,bknd->bqnd", probs.astype(self.dtype), v)
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
    hidden = _dropout(cfg, cfg.hidden_dropout_prob)(hidden, deterministic=deterministic)
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
    hidden = _activation(cfg, BertIntermediate(**kw, name="intermediate")(x))
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


def init_params(cfg: BertConfig, rng: Array, seq_len: int = 8) -> dict:
  """Randomly initialised parameters (HF's normal(0.02) init), for tests and from-scratch use."""
  ids = jnp.zeros((1, seq_len), jnp.int32)
  return BertModel(cfg).init(rng, ids, jnp.ones_like(ids), ids)["params"]
