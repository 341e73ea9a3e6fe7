"""Task heads over the shared BERT encoder, and the multitask model that holds them.

`MultitaskModel` owns one `BertModel` (parameters under `bert/`) and small float32 heads.
Each task has one output method that takes the sentence vectors of all of its input
segments, stacked along the batch axis (`tasks.py` says which segments a task encodes):

* `sst_output` [B, H] -> 5 logits: "linear" (dropout, linear, the baseline); the paper's
  "squared_relu" (the square of a ReLU of those logits, as its section 3.2 reads); "mlp"
  (dropout, a hidden layer of width H with a squared ReLU, dropout, linear).
* `para_output` -> one logit: "bi" takes [u; v] (two sentences, [2B, H]) and a linear layer
  on [u; v; |u-v|; u*v]; "prompt" is the paper's cross-encoder: one input
  `[CLS] prompt + s1 [SEP] s2 [SEP]` ([B, H]), dropout and a linear layer; "cross" the
  same without the prompt, `[CLS] s1 [SEP] s2 [SEP]` (the single-task baseline's form).
* `sts_output` -> a 0-5 similarity: "linear" on [u; v; |u-v|; u*v] (an unbounded
  regression, the baseline); "cosine", the paper's head: each vector through the
  `sts_proj` layer shared with the NLI/SimCSE task, cosine similarity clamped to [0, 1],
  times 5; "cross": a cross-encoder over the joint pair ([B, H]), dropout, linear.
* `nli_output` [3B, H] -> the `sts_proj` embeddings that supervised SimCSE compares.
* `cfimdb_output` [B, H] -> 2 logits of binary movie-review sentiment (dropout, linear).

A sentence vector is the pooler output (the course's minBERT convention), the raw [CLS]
hidden state, or the masked mean of the tokens (`cls_source`). Encoder entry points take
embeddings, so SMART can perturb them, or ids.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtbert_jax import model as model_lib
from mtbert_jax import settings as settings_lib
from mtbert_jax import xla_cpu

Array = jax.Array

PARAPHRASE_PROMPT = "Are these two sentences paraphrases ?"
NUM_SENTIMENT_CLASSES = 5


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
  """One encoder, the task heads (plus the projection SimCSE shares with STS).

  `heads.cls_source` must be resolved ("auto" is the config's, `experiment.build_model`
  turns it into the checkpoint's pooling)."""
  bert_config: model_lib.BertConfig
  heads: settings_lib.HeadSettings
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: bool = False

  def setup(self):
    if self.heads.cls_source not in ("pooler", "hidden", "mean"):
      raise ValueError(f"heads.cls_source={self.heads.cls_source!r}: resolve 'auto' first")
    self.bert = model_lib.BertModel(self.bert_config, dtype=self.dtype,
                                    param_dtype=self.param_dtype, remat=self.remat)
    rate = self.heads.dropout
    self.head_dropout = (xla_cpu.Dropout(rate) if self.bert_config.kernels == "xla_cpu"
                         else nn.Dropout(rate))
    dense = lambda n, name: nn.Dense(n, param_dtype=self.param_dtype, name=name,
                                     kernel_init=nn.initializers.normal(0.02))
    hidden = self.bert_config.hidden_size
    self.sentiment_hidden = dense(hidden, "sentiment_hidden")
    self.sentiment_out = dense(NUM_SENTIMENT_CLASSES, "sentiment_out")
    self.paraphrase_out = dense(1, "paraphrase_out")
    self.similarity_out = dense(1, "similarity_out")
    self.sts_proj = dense(hidden, "sts_proj")
    self.cfimdb_out = dense(2, "cfimdb_out")

  def _drop(self, x: Array, deterministic: bool) -> Array:
    return self.head_dropout(x, deterministic=deterministic)

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

  # -- one output method per task, on the stacked vectors of its segments -------------------
  def sst_output(self, v: Array, deterministic: bool) -> Array:
    """Sentiment logits [B, 5] of sentence vectors [B, H]."""
    if self.heads.sentiment == "mlp":
      v = jnp.square(nn.relu(self.sentiment_hidden(self._drop(v, deterministic))))
    logits = self.sentiment_out(self._drop(v, deterministic))
    if self.heads.sentiment == "squared_relu":
      logits = jnp.square(nn.relu(logits))
    return logits

  def para_output(self, vectors: Array, deterministic: bool) -> Array:
    """One paraphrase logit [B] (sigmoid in the loss): of [B, H] joint vectors ("prompt",
    "cross") or of the two sentences' vectors stacked, [2B, H] ("bi")."""
    x = vectors
    if not self.heads.paraphrase_joint:
      x = pair_features(*jnp.split(vectors, 2))
    return self.paraphrase_out(self._drop(x, deterministic))[:, 0]

  def sts_embedding(self, v: Array) -> Array:
    """The projection shared by the cosine STS head and the SimCSE tasks: [B, H]."""
    return self.sts_proj(v)

  def sts_output(self, vectors: Array, deterministic: bool) -> Array:
    """Predicted similarity [B]: in [0, 5] for "cosine"; an unbounded regression for
    "linear" and "cross". Input: [2B, H] (two sentences) or [B, H] joint ("cross")."""
    if self.heads.similarity_joint:
      return self.similarity_out(self._drop(vectors, deterministic))[:, 0]
    u, v = jnp.split(vectors, 2)
    if self.heads.similarity == "cosine":
      u = self.sts_embedding(self._drop(u, deterministic))
      v = self.sts_embedding(self._drop(v, deterministic))
      return 5.0 * jnp.clip(cosine_similarity(u, v), 0.0, 1.0)
    return self.similarity_out(self._drop(pair_features(u, v), deterministic))[:, 0]

  def cfimdb_output(self, v: Array, deterministic: bool) -> Array:
    """Binary review-sentiment logits [B, 2] of sentence vectors [B, H]: dropout, linear."""
    return self.cfimdb_out(self._drop(v, deterministic))

  def nli_output(self, vectors: Array, deterministic: bool) -> Array:
    """The shared projection of anchor, positive and negative vectors [3B, H] (SimCSE)."""
    del deterministic  # no head dropout: SimCSE's views differ by the encoder's dropout
    return self.sts_embedding(vectors)
