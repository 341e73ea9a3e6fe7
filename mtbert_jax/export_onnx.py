"""ONNX graphs of exported task folders, through the standard PyTorch path.

Each folder is loaded by the library it was written for (transformers for a
BertForSequenceClassification folder, sentence-transformers for the others), wrapped as a
module of the three token tensors, and traced by `torch.onnx.export` (the dynamo exporter)
with a dynamic batch and sequence length into `onnx/full_model.onnx`: inputs `input_ids`,
`attention_mask`, `token_type_ids` (int64 [B, L], from the folder's tokenizer) and one
output, the whole folder's computation: "logits" [B, 5] (sentiment), "logit" [B] (paraphrase
cross-encoder, before the sigmoid), "score" [B] (STS cross-encoder) or "sentence_embedding"
[B, H] (a bi-encoder: the vector its head reads, the head applied outside as the card says).
The name is not sentence-transformers' `onnx/model.onnx`, which that library's ONNX backend
reads as the bare transformer. Needs `pip install -e ".[onnx]"` (torch, transformers,
sentence-transformers, onnx, onnxscript; onnxruntime to run the graphs).
"""

from __future__ import annotations

import os

ONNX_FILE = os.path.join("onnx", "full_model.onnx")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def output_name(task: str, form: str) -> str:
  if task == "sst":
    return "logits"
  if form in ("sequence_classification", "st_cross_encoder"):
    return "logit" if task == "para" else "score"
  return "sentence_embedding"


def _torch():
  try:
    import onnx  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import onnxscript  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"ONNX export needs torch, onnx and onnxscript ({e}): "
                      'pip install -e ".[onnx]"') from e
  return torch


def load_module(folder: str, task: str, form: str):
  """The folder as a torch module `(input_ids, attention_mask, token_type_ids) -> output`,
  in eval mode, and its tokenizer."""
  torch = _torch()
  model_kwargs = {"attn_implementation": "eager"}  # plain softmax attention traces simply
  if form == "sequence_classification":
    import transformers  # pylint: disable=import-outside-toplevel
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        folder, **model_kwargs).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    squeeze = task != "sst"

    def run(input_ids, attention_mask, token_type_ids):
      logits = model(input_ids=input_ids, attention_mask=attention_mask,
                     token_type_ids=token_type_ids).logits
      return logits[:, 0] if squeeze else logits
  else:
    import sentence_transformers as st  # pylint: disable=import-outside-toplevel
    cls = st.CrossEncoder if form == "st_cross_encoder" else st.SentenceTransformer
    model = cls(folder, device="cpu", model_kwargs=model_kwargs).eval()
    tokenizer = model.tokenizer
    key = "scores" if form == "st_cross_encoder" else "sentence_embedding"

    def run(input_ids, attention_mask, token_type_ids):
      out = model({"input_ids": input_ids, "attention_mask": attention_mask,
                   "token_type_ids": token_type_ids})[key]
      return out[:, 0] if key == "scores" else out

  class Graph(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
      return run(input_ids, attention_mask, token_type_ids)

  return Graph().eval(), tokenizer


def write_onnx(folder: str, task: str, form: str) -> str:
  """Traces the folder's computation to `folder/onnx/full_model.onnx`; returns its path."""
  torch = _torch()
  module, tokenizer = load_module(folder, task, form)
  # Two examples of different lengths, so neither dimension is traced as a constant.
  texts = ["an example input of some length .", "a short one ."]
  if task == "sst" or form not in ("sequence_classification", "st_cross_encoder"):
    example = tokenizer(texts, padding=True, return_tensors="pt")
  else:
    example = tokenizer(texts, texts[::-1], padding=True, return_tensors="pt")
  args = tuple(example[name].to(torch.int64) for name in INPUTS)
  batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
  path = os.path.join(folder, ONNX_FILE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with torch.no_grad():
    torch.onnx.export(module, args, path, input_names=list(INPUTS),
                      output_names=[output_name(task, form)], dynamo=True, verbose=False,
                      dynamic_shapes={name: {0: batch, 1: length} for name in INPUTS},
                      external_data=False)
  return path
