"""The model card (README.md) of each exported task folder, and the export's index.

A card says what the folder computes and how to call it (the input form, the prompt, the
output and its range), where it came from (base checkpoint, tasks and data, the run's
settings and command), the run's validation and dev metrics for that task where
`metrics.json` has them, and its limits: one pair order where the run may have averaged
two (`eval.both_orders`), and the embedded checkpoint's own pretraining on Quora and NLI.
"""

from __future__ import annotations

import sys
from typing import Any

from mtbert_jax import settings as settings_lib
from mtbert_jax import tasks as tasks_lib
from mtbert_jax.export_heads import SENTIMENT_LABELS

def _named(task: str) -> str:
  return tasks_lib.get(task).description


_EMBEDDED = "sentence-transformers/all-MiniLM-L6-v2 (embedded)"
_DOMAIN = ("- Trained on the CS224N course data (movie-review sentences, Quora questions, news "
           "and\n  forum STS pairs), English, uncased; other domains are untested.")

_FRONT = {
    "sequence_classification": ("transformers", "text-classification", "transformers"),
    "st_classifier": ("sentence-transformers", "text-classification", "sentence-transformers"),
    "st_cross_encoder": ("sentence-transformers", "text-classification", "cross-encoder"),
    "bi_head": ("sentence-transformers", "sentence-similarity", "sentence-transformers"),
    "st_cosine": ("sentence-transformers", "sentence-similarity", "sentence-transformers"),
}

_PAIR_HEAD = """import numpy as np
from safetensors.numpy import load_file
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("PATH")
head = load_file("PATH/head.safetensors")          # weight [1, 4H], bias [1]
u = model.encode(["{a}"])
v = model.encode(["{b}"])
features = np.concatenate([u, v, np.abs(u - v), u * v], axis=-1)   # [N, 4H]
{out} = features @ head["weight"].T[:, 0] + head["bias"][0]{after}"""


def _usage(task: str, form: str, prompt: str | None) -> str:
  a, b = (("How old are you?", "What is your age?") if task == "para"
          else ("A man plays a guitar.", "A man is playing guitar."))
  if form == "sequence_classification" and task == "sst":
    return """import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("PATH")
model = AutoModelForSequenceClassification.from_pretrained("PATH").eval()
inputs = tokenizer(["A gorgeous film ."], padding=True, truncation=True, return_tensors="pt")
with torch.no_grad():
  logits = model(**inputs).logits                    # [N, 5]
classes = logits.argmax(-1)                          # model.config.id2label names them"""
  if form == "st_classifier":
    return """from sentence_transformers import SentenceTransformer
model = SentenceTransformer("PATH")
logits = model.encode(["A gorgeous film ."])         # [N, 5] (not normalised vectors)
classes = logits.argmax(-1)                          # 0 negative .. 4 positive"""
  if form in ("sequence_classification", "st_cross_encoder"):
    what = ("probabilities = model.predict(pairs)       # sigmoid of the logit; > 0.5: "
            "paraphrase\nlogits = model.predict(pairs, activation_fn=torch.nn.Identity())"
            if task == "para" else "scores = model.predict(pairs)             # the 0-5 "
            "regression score (no activation)")
    text = f"""import torch
from sentence_transformers import CrossEncoder
model = CrossEncoder("PATH")
pairs = [("{a}", "{b}")]
{what}"""
    if form == "sequence_classification":
      first = f'"{prompt} " + "{a}"' if prompt else f'"{a}"'
      text += f"""
# transformers alone: one input "[CLS] first [SEP] second [SEP]"
from transformers import AutoModelForSequenceClassification, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("PATH")
raw = AutoModelForSequenceClassification.from_pretrained("PATH").eval()
inputs = tokenizer([{first}], ["{b}"], truncation=True, return_tensors="pt")
output = raw(**inputs).logits[:, 0]               # the logit or score"""
    return text
  if form == "bi_head":
    after = ("\nprobability = 1 / (1 + np.exp(-logit))          # > 0.5: paraphrase"
             if task == "para" else "")
    return _PAIR_HEAD.format(a=a, b=b, out="logit" if task == "para" else "score",
                             after=after)
  return f"""import numpy as np
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("PATH")
u, v = model.encode(["{a}"]), model.encode(["{b}"])
cosine = model.similarity_pairwise(u, v).numpy()     # the layer shared with SimCSE is inside
score = 5 * np.clip(cosine, 0, 1)                    # the run's 0-5 similarity"""


def _computes(task: str, form: str, prompt: str | None) -> str:
  if task == "sst":
    return ("5 sentiment logits per sentence (softmax for probabilities; classes "
            + ", ".join(f"{i} {name}" for i, name in enumerate(SENTIMENT_LABELS)) + ")")
  joint = form in ("sequence_classification", "st_cross_encoder")
  if joint:
    inp = ("one input `[CLS] " + (f"{prompt} " if prompt else "") + "a [SEP] b [SEP]`")
    if prompt:
      inp += (f" (the prompt `{prompt}` and a space before the first sentence: the "
              "CrossEncoder adds it as its default prompt; with transformers alone, add it "
              "yourself)")
  elif form == "st_cosine":
    inp = "each sentence encoded alone, then a projection layer (inside the folder)"
  else:
    inp = ("each sentence encoded alone (u, v), then the linear layer of `head.safetensors` "
           "on [u; v; |u - v|; u * v]")
  out = ("one logit per pair; sigmoid(logit) > 0.5 means paraphrase" if task == "para" else
         "5 * clip(cosine, 0, 1), in [0, 5]" if form == "st_cosine" else
         "one similarity score per pair (a regression toward 0-5, not clipped)")
  return f"{out}, from {inp}"


def _metric_rows(task: str, metrics: dict[str, Any]) -> str:
  metric = tasks_lib.get(task).metric
  keys = [f"{split}/{name}" for split in ("valid", "dev") for name in (metric, "average")]
  rows = [f"| {k} | {metrics[k]:.4f} |" for k in keys if isinstance(metrics.get(k), float)]
  return "\n".join(rows) or "| (none recorded) | |"


def task_card(task: str, form: str, s: settings_lib.Settings, heads: settings_lib.HeadSettings,
              metrics: dict[str, Any], prompt: str | None, files: str) -> str:
  """The README.md of one exported task folder."""
  library, pipeline, tag = _FRONT[form]
  if form == "sequence_classification" and task != "sst":  # also a CrossEncoder
    library, tag = "sentence-transformers", "cross-encoder"
  embedded = not s.model.checkpoint
  pooling = {"mean": "the mean of the token states", "hidden": "the [CLS] token's state",
             "pooler": "BERT's pooler (dense + tanh over [CLS])"}[heads.cls_source]
  both = ("the run's metrics average each pair's output over both orders, (a, b) and "
          "(b, a) (`eval.both_orders=true`): to reproduce them, average this model's "
          "outputs on the two orders" if s.eval.both_orders else
          "the run's metrics score each pair in the order given (`eval.both_orders=false`); "
          "mtbert_jax can also average a pair's output over both orders, this model does not")
  order_note = "" if task == "sst" else (
      f"- One order: this model scores a pair as given, (a, b); {both}.\n")
  pretraining = ("- all-MiniLM-L6-v2 was itself trained (contrastively) on over a billion "
                 "sentence pairs, Quora duplicate questions and NLI pairs among them, so its "
                 "Quora and STS figures are not independent of its pretraining.\n"
                 if embedded else "")
  extra = "; NLI: " + s.data.nli if "nli" in s.train.tasks else ""
  valid = (f"{s.data.valid_fraction:g} of each train file (the checkpoint was selected on it)"
           if s.data.valid_fraction else "none (the checkpoint was selected on dev)")
  return f"""---
library_name: {library}
pipeline_tag: {pipeline}
tags: [{tag}, bert, mtbert_jax, multitask]
---

# {_named(task)} head of a multitask fine-tuned BERT (mtbert_jax)

Exported from an mtbert_jax (JAX/Flax) run that trained one encoder on
{", ".join(_named(t) for t in s.train.tasks)} at once. This folder holds the encoder and
the {_named(task)} head, and computes {_computes(task, form, prompt)}.

## Use

```python
{_usage(task, form, prompt).replace("PATH", "PATH_TO_THIS_FOLDER")}
```

Files: {files}

## Training

- Base checkpoint: `{s.model.checkpoint or _EMBEDDED}`
- Sentence vector: {pooling}; inputs truncated to {s.data.max_length} tokens
- Heads: sentiment {heads.sentiment}, paraphrase {heads.paraphrase}, similarity
  {heads.similarity}; head dropout {s.heads.dropout:g}
- {s.train.num_steps} steps of batch {s.train.batch_size} ({s.train.sampling}), AdamW lr
  {s.optim.lr:g} ({s.optim.schedule}, warm-up {s.optim.warmup_steps}), {s.model.dtype}
  compute, seed {s.seed}; SMART weight {s.smart.weight:g}, EMA decay {s.optim.ema_decay:g}
- Data (CS224N course splits): {s.data.sst_train}, {s.data.para_train},
  {s.data.sts_train}{extra}; validation split: {valid}
- Command: `{" ".join(sys.argv) or "python launch.py --mode=export ..."}`

## Metrics of the exported checkpoint (mtbert_jax's evaluation)

| metric | value |
|---|---|
{_metric_rows(task, metrics)}

## Limitations

{order_note}{pretraining}{_DOMAIN}
"""


def describe(task: str, form: str) -> str:
  """One line on what a folder of `form` is, for the index and the command's output."""
  return {
      "sequence_classification": ("transformers AutoModelForSequenceClassification"
                                  + ("" if task == "sst" else ", also a CrossEncoder")),
      "st_classifier": "SentenceTransformer whose encode() gives the 5 logits",
      "st_cross_encoder": "CrossEncoder (sentence-transformers 6)",
      "bi_head": "SentenceTransformer encoder + head.safetensors on [u; v; |u-v|; u*v]",
      "st_cosine": "SentenceTransformer with the STS projection; 5 * clip(cosine, 0, 1)",
  }[form]


def index(folders: dict[str, tuple[str, str]], refused: dict[str, str]) -> str:
  """The export folder's README.md: each task's folder and form, each refused head's reason."""
  lines = ["# mtbert_jax export", "",
           "One folder per task, each loadable without mtbert_jax (its README.md says how).", ""]
  lines += [f"- `{folder}/`: {_named(task)}: {describe(task, form)}"
            for task, (folder, form) in folders.items()]
  lines += [f"- {_named(task)}: not exported: {reason}" for task, reason in refused.items()]
  return "\n".join(lines) + "\n"
