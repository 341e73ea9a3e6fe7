"""The fine-tuned encoder as a folder that both HF transformers and sentence-transformers load.

`export(out_dir, ...)` writes the HF `BertModel` folder (`convert.save_pretrained`:
model.safetensors, config.json, tokenizer files) plus the sentence-transformers files that
describe how the run made a sentence vector from it: `modules.json` (Transformer, Pooling,
and for `cls_source="pooler"` a Dense layer with tanh holding BERT's pooler weights),
`sentence_bert_config.json` (the run's max length), `1_Pooling/config.json` (mean of the
tokens, or the [CLS] token) and a model card `README.md` (base checkpoint, tasks, data,
settings, dev metrics, command). `SentenceTransformer(out_dir).encode(texts)` then gives
`MultitaskModel.vector` of those texts: the vector the task heads read.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from mtbert_jax import convert
from mtbert_jax import settings as settings_lib


def _write_json(path: str, obj: Any) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2)


def export(out_dir: str, bert_config, bert_params: dict, cls_source: str,
           s: settings_lib.Settings, metrics: dict[str, Any] | None = None,
           vocab_from: str | None = None) -> str:
  """Writes the HF + sentence-transformers folder of a fine-tuned encoder."""
  if cls_source not in ("mean", "hidden", "pooler"):
    raise ValueError(f"cls_source={cls_source!r}: resolve 'auto' first")
  convert.save_pretrained(out_dir, bert_config, bert_params, vocab_from=vocab_from)
  hidden = bert_config.hidden_size
  modules = [{"idx": 0, "name": "0", "path": "",
              "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling",
              "type": "sentence_transformers.models.Pooling"}]
  _write_json(os.path.join(out_dir, "1_Pooling", "config.json"), {
      "word_embedding_dimension": hidden, "pooling_mode_cls_token": cls_source != "mean",
      "pooling_mode_mean_tokens": cls_source == "mean", "pooling_mode_max_tokens": False,
      "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
      "pooling_mode_lasttoken": False, "include_prompt": True})
  if cls_source == "pooler":  # BERT's pooler: dense + tanh over [CLS]
    modules.append({"idx": 2, "name": "2", "path": "2_Dense",
                    "type": "sentence_transformers.models.Dense"})
    _write_json(os.path.join(out_dir, "2_Dense", "config.json"), {
        "in_features": hidden, "out_features": hidden, "bias": True,
        "activation_function": "torch.nn.modules.activation.Tanh"})
    dense = bert_params["pooler"]["dense"]
    save_file({"linear.weight": np.ascontiguousarray(np.asarray(dense["kernel"], np.float32).T),
               "linear.bias": np.asarray(dense["bias"], np.float32)},
              os.path.join(out_dir, "2_Dense", "model.safetensors"))
  _write_json(os.path.join(out_dir, "modules.json"), modules)
  _write_json(os.path.join(out_dir, "sentence_bert_config.json"),
              {"max_seq_length": s.data.max_length, "do_lower_case": False})
  with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
    f.write(model_card(s, cls_source, metrics or {}))
  return out_dir


def model_card(s: settings_lib.Settings, cls_source: str, metrics: dict[str, Any]) -> str:
  pooling = {"mean": "mean of the token states", "hidden": "the [CLS] token's state",
             "pooler": "BERT's pooler (dense + tanh over [CLS])"}[cls_source]
  rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())
                   if isinstance(v, float))
  tasks = {"sst": "SST-5 sentiment", "para": "Quora paraphrase detection",
           "sts": "SemEval STS similarity", "nli": "supervised SimCSE on NLI triplets"}
  return f"""---
library_name: sentence-transformers
pipeline_tag: sentence-similarity
tags: [sentence-transformers, bert, mtbert_jax, multitask]
---

# A multitask fine-tuned BERT encoder (mtbert_jax)

Fine-tuned with mtbert_jax (JAX/Flax): one encoder trained on
{", ".join(tasks[t] for t in s.train.tasks)} at once.

- Base checkpoint: `{s.model.checkpoint or "sentence-transformers/all-MiniLM-L6-v2 (embedded)"}`
- Sentence vector: {pooling}; max length {s.data.max_length} tokens
- Training: {s.train.num_steps} steps of batch {s.train.batch_size}, AdamW lr {s.optim.lr:g}
  ({s.optim.schedule}, warm-up {s.optim.warmup_steps}), {s.model.dtype} compute, seed {s.seed};
  heads: sentiment {s.heads.sentiment}, paraphrase {s.heads.paraphrase}, similarity
  {s.heads.similarity}
- Data: {s.data.sst_train}, {s.data.para_train}, {s.data.sts_train}
  (CS224N course splits){"; NLI: " + s.data.nli if "nli" in s.train.tasks else ""}
- Command: `{" ".join(sys.argv) or "python launch.py ..."}`

## Dev metrics of the exported checkpoint

| metric | value |
|---|---|
{rows or "| (none recorded) | |"}

## Use

```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("PATH_TO_THIS_FOLDER")
vectors = model.encode(["A man is playing a guitar.", "A man plays guitar."])
```

The task heads are not part of this folder (they live in the run's orbax checkpoint).
"""
