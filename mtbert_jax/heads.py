"""Task heads over the shared BERT encoder, and the multitask model that holds them.

`MultitaskModel` owns one `BertModel` (parameters under `bert/`) and small float32 heads:

* sentiment: dropout, linear to 5 logits; the paper's head adds a squared ReLU on top.
* paraphrase, "bi": dropout, linear on [u; v; |u-v|; u*v] of the two sentences' vectors
  (the baseline);
  "prompt": the paper's cross-encoder, one input `[CLS] prompt + s1 [SEP] s2 [SEP]`, its
  vector through dropout and a linear layer to one logit (sigmoid in the loss).
* similarity, "linear": dropout, linear on [u; v; |u-v|; u*v] (the baseline, a 0-5
  regression);
  "cosine": the paper's head, each vector through the `sts_proj` layer shared with the
  NLI/SimCSE task, cosine similarity clamped to [0, 1], times 5.

A sentence vector is the pooler output (the course's minBERT convention) or the raw [CLS]
hidden state (`cls_source`). Entry points take embeddings, so SMART can perturb them, or ids.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtbert_jax import dropout as dropout_lib
from mtbert_jax import model as model_lib

Array = jax.Array

PARAPHRASE_PROMPT = "Are these two sentences paraphrases ?"


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  sentiment: str = "linear"      # "linear" | "squared_relu" (paper)
  paraphrase: str = "bi"         # "bi" (baseline) | "prompt" (paper cross-encoder)
  similarity: str = "linear"     # "linear" (baseline) | "cosine" (paper, shared sts_proj)
  dropout: float = 0.2           # dropout before every head's linear layer
  cls_source: str = "pooler"     # "pooler" (dense+tanh over [CLS]) | "hidden" ([CLS] state)
                                 # | "mean" (masked mean of the last hidden states)
  num_sentiment_classes: int = 5

  def __post_init__(self):
    for field, allowed in (("sentiment", ("linear", "squared_relu")),
                           ("paraphrase", ("bi", "prompt")),
                           ("similarity", ("linear", "cosine")),
                           ("cls_source", ("pooler", "hidden", "mean"))):
      if getattr(self, field) not in allowed:
        raise ValueError(f"heads.{field}={getattr(self, field)!r}; expected one of {allowed}")


def cosine_similarity(u: Array, v: Array, eps: float = 1e-8) -> Array:
  """Row-wise cosine similarity [B]; `eps` keeps zero vectors finite (as torch's default)."""
  num = jnp.sum(u * v, axis=-1)
  den = jnp.maximum(jnp.linalg.norm(u, axis=-1) * jnp.linalg.norm(v, axis=-1), eps)
  return num / den


def pair_features(u: Array, v: Array) -> Array:
  """[u; v; |u - v|; u * v]: the two vectors and their interactions (Sentence-BERT's
  classification input), so a linear layer can tell "same" from "different"."""
  return jnp.concatenate([u, v, jnp.abs(u - v), u * v], axis=-1)  # [B, 4H]


class MultitaskModel(nn.Module):
  """One encoder, three task heads (plus the projection SimCSE shares with STS)."""
  bert_config: model_lib.BertConfig
  heads: HeadConfig = HeadConfig()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: bool = False

  def setup(self):
    self.bert = model_lib.BertModel(self.bert_config, dtype=self.dtype,
                                    param_dtype=self.param_dtype, remat=self.remat)
    self.head_dropout = dropout_lib.Dropout(self.heads.dropout)
    dense = lambda n, name: nn.Dense(n, param_dtype=self.param_dtype, name=name,
                                     kernel_init=nn.initializers.normal(0.02))
    self.sentiment_out = dense(self.heads.num_sentiment_classes, "sentiment_out")
    self.paraphrase_out = dense(1, "paraphrase_out")
    self.similarity_out = dense(1, "similarity_out")
    self.sts_proj = dense(self.bert_config.hidden_size, "sts_proj")

  # -- encoder ------------------------------------------------------------------------------
  def embed(self, input_ids: Array, token_type_ids: Array, deterministic: bool) -> Array:
    return self.bert.embed(input_ids, token_type_ids, deterministic)  # [B, L, H]

  def vector_from_embeddings(self, embeddings: Array, attention_mask: Array,
                             deterministic: bool) -> Array:
    """The sentence vector [B, H] (float32) of (possibly perturbed) input embeddings."""
    hidden = self.bert.encode(embeddings, attention_mask, deterministic)  # [B, L, H]
    if self.is_initializing() and self.heads.cls_source != "pooler":
      self.bert.pool(hidden)  # the pooler's parameters exist whatever the sentence vector
    if self.heads.cls_source == "pooler":
      return self.bert.pool(hidden).astype(jnp.float32)
    if self.heads.cls_source == "mean":  # the sentence-transformers pooling (e.g. MiniLM)
      mask = attention_mask[..., None].astype(jnp.float32)  # [B, L, 1]
      total = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1)
      return total / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    return hidden[:, 0].astype(jnp.float32)

  def vector(self, input_ids: Array, attention_mask: Array, token_type_ids: Array,
             deterministic: bool) -> Array:
    return self.vector_from_embeddings(
        self.embed(input_ids, token_type_ids, deterministic), attention_mask, deterministic)

  # -- heads on sentence vectors ------------------------------------------------------------
  def sentiment_logits(self, v: Array, deterministic: bool) -> Array:
    logits = self.sentiment_out(self.head_dropout(v, deterministic=deterministic))  # [B, 5]
    if self.heads.sentiment == "squared_relu":
      logits = jnp.square(jax.nn.relu(logits))
    return logits

  def paraphrase_logit(self, u: Array, v: Array | None, deterministic: bool) -> Array:
    """One logit [B]: from the joint vector `u` ("prompt") or from `u`, `v` ("bi")."""
    x = u if self.heads.paraphrase == "prompt" else pair_features(u, v)
    return self.paraphrase_out(self.head_dropout(x, deterministic=deterministic))[:, 0]

  def sts_embedding(self, v: Array) -> Array:
    """The projection shared by the cosine STS head and the SimCSE tasks: [B, H]."""
    return self.sts_proj(v)

  def similarity_score(self, u: Array, v: Array, deterministic: bool) -> Array:
    """Predicted similarity in [0, 5] for "cosine"; an unbounded regression for "linear"."""
    if self.heads.similarity == "cosine":
      u = self.sts_embedding(self.head_dropout(u, deterministic=deterministic))
      v = self.sts_embedding(self.head_dropout(v, deterministic=deterministic))
      return 5.0 * jnp.clip(cosine_similarity(u, v), 0.0, 1.0)
    x = pair_features(u, v)
    return self.similarity_out(self.head_dropout(x, deterministic=deterministic))[:, 0]

  def __call__(self, input_ids: Array, attention_mask: Array, token_type_ids: Array,
               deterministic: bool = True) -> dict[str, Array]:
    """Runs every head once on one batch of sentences (used to initialise all parameters)."""
    v = self.vector(input_ids, attention_mask, token_type_ids, deterministic)
    u = v[::-1]
    self.sts_embedding(v)  # SimCSE uses the projection whatever the STS head
    return {"sentiment": self.sentiment_logits(v, deterministic),
            "paraphrase": self.paraphrase_logit(u, v, deterministic),
            "similarity": self.similarity_score(u, v, deterministic)}


def init_params(mt_model: MultitaskModel, rng: Array, bert_params: dict | None = None) -> dict:
  """Head parameters initialised at random; the encoder's from `bert_params` when given."""
  ids = jnp.zeros((2, 8), jnp.int32)
  params = jax.jit(lambda r: mt_model.init(r, ids, jnp.ones_like(ids), ids))(rng)["params"]
  params = dict(params)
  if bert_params is not None:
    ref = jax.tree_util.tree_structure(params["bert"])
    if jax.tree_util.tree_structure(bert_params) != ref:
      raise ValueError("pretrained encoder parameters do not match the configured encoder")
    params["bert"] = jax.tree_util.tree_map(jnp.asarray, bert_params)
  return params
