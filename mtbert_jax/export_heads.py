"""Each task head of a trained run as a folder that transformers or sentence-transformers
loads without mtbert_jax.

`head_form(task, heads)` is the one place that decides which standard form a task's head
takes, or why none fits (`ExportRefused`); `write_task` writes that form:

* "sequence_classification": a `transformers` BertForSequenceClassification folder. That
  class is BERT, its pooler, dropout and one linear layer, so it is exactly the run's head
  when the sentence vector is the pooler output (`heads.cls_source="pooler"`). Sentiment
  gets 5 labels with `id2label`; a pair task gets one output and is also a
  `sentence_transformers.CrossEncoder` (sigmoid of the logit for paraphrase, the raw score
  for STS, set in `config.json`).
* "st_classifier": sentiment on the mean of the tokens or the [CLS] hidden state, which
  BertForSequenceClassification cannot compute (it always applies the pooler's dense + tanh):
  a SentenceTransformer (Transformer, Pooling, Dense(H -> 5)) whose `encode` gives the logits.
* "st_cross_encoder": a cross-encoder on the mean or [CLS] vector, for the same reason a
  modular CrossEncoder (Transformer, Pooling, Dense(H -> 1) writing "scores"), which needs
  sentence-transformers 6.
* "bi_head" (paraphrase "bi", similarity "linear"): the SentenceTransformer encoder folder
  plus `head.safetensors`, the linear layer on [u; v; |u - v|; u * v] (PyTorch layout).
* "st_cosine" (similarity "cosine"): the encoder with the projection shared with SimCSE as a
  last Dense layer; the score is 5 * clip(cosine, 0, 1) of two embeddings.

The paraphrase prompt of `heads.paraphrase="prompt"` is saved as the CrossEncoder's default
prompt, which sentence-transformers 6 prepends to the first sentence of each pair (the text
the run encoded: prompt, space, sentence). The sentiment heads "squared_relu" and "mlp" are
refused: their squared ReLU is no module of either library.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from mtbert_jax import convert
from mtbert_jax import heads as heads_lib
from mtbert_jax import settings as settings_lib
from mtbert_jax import tasks as tasks_lib

# The folder of each exported task, named for readers outside this project (the task
# table's `export_folder`; a row without one is refused by `head_form`).
TASK_FOLDERS = {name: task.export_folder for name, task in tasks_lib.TABLE.items()
                if task.export_folder}
SENTIMENT_LABELS = ("negative", "somewhat negative", "neutral", "somewhat positive",
                    "positive")
# The linear layer of each task's head (`heads.MultitaskModel`).
HEAD_LAYERS = {"sst": "sentiment_out", "para": "paraphrase_out", "sts": "similarity_out"}
# What a CrossEncoder applies to the one output in `predict`: a probability for paraphrase
# (the loss is a sigmoid cross entropy), the regression score itself for STS.
CROSS_ENCODER_ACTIVATIONS = {"para": "torch.nn.modules.activation.Sigmoid",
                             "sts": "torch.nn.modules.linear.Identity"}
IDENTITY = "torch.nn.modules.linear.Identity"
PROMPT_NAME = "paraphrase"

FORMS = ("sequence_classification", "st_classifier", "st_cross_encoder", "bi_head",
         "st_cosine")


class ExportRefused(ValueError):
  """A task head that no standard transformers / sentence-transformers form expresses."""


@dataclasses.dataclass(frozen=True)
class Run:
  """What an exported folder is made of: the encoder, the heads and their settings."""
  bert_config: Any
  params: dict                 # the whole MultitaskModel tree, NumPy float32
  heads: settings_lib.HeadSettings  # cls_source resolved
  max_length: int
  vocab_from: str | None       # the checkpoint folder whose tokenizer files are copied


def head_form(task: str, heads: settings_lib.HeadSettings) -> str:
  """The form (one of `FORMS`) of `task`'s head, or ExportRefused saying what does not fit."""
  if task not in TASK_FOLDERS:
    raise ExportRefused(f"the task table gives the {task} head no exported form (its row "
                        "has no export_folder)")
  pooler = heads.cls_source == "pooler"
  if task == "sst":
    if heads.sentiment != "linear":
      raise ExportRefused(
          f"heads.sentiment={heads.sentiment!r}: its squared ReLU (relu(x)^2) is no layer of "
          "transformers or sentence-transformers; only the linear sentiment head exports")
    return "sequence_classification" if pooler else "st_classifier"
  if tasks_lib.get(task).segments(heads) == ("",):  # one joint input: a cross-encoder
    return "sequence_classification" if pooler else "st_cross_encoder"
  if task == "sts" and heads.similarity == "cosine":
    return "st_cosine"
  return "bi_head"


def prompt_of(task: str, heads: settings_lib.HeadSettings) -> str | None:
  """The text the run put before the first sentence of a joint pair (None: none)."""
  return tasks_lib.get(task).prompt(heads)


# ------------------------------------------------------------------------------------------
# Files.


def _write_json(path: str, obj: Any) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2)


def _save_tensors(path: str, tensors: dict[str, np.ndarray]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, path,
            metadata={"format": "pt"})
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, 0o666 & ~umask)  # safetensors writes 0600; the other files get umask


def _linear(layer: dict) -> dict[str, np.ndarray]:
  """A Flax Dense layer as PyTorch `nn.Linear` tensors (weight [out, in])."""
  return {"weight": np.asarray(layer["kernel"], np.float32).T,
          "bias": np.asarray(layer["bias"], np.float32)}


def _dense_config(linear: dict[str, np.ndarray], output_name: str | None = None) -> dict:
  out_features, in_features = linear["weight"].shape
  config = {"in_features": int(in_features), "out_features": int(out_features), "bias": True,
            "activation_function": IDENTITY}
  if output_name:  # sentence-transformers 6: the feature the layer writes
    config.update(module_input_name="sentence_embedding", module_output_name=output_name)
  return config


def _set_max_length(out_dir: str, max_length: int) -> None:
  """The run's token budget as the tokenizer's `model_max_length`, so the folder's tokenizer
  truncates (with truncation=True) where the run did."""
  path = os.path.join(out_dir, "tokenizer_config.json")
  config = {"do_lower_case": True, "tokenizer_class": "BertTokenizer"}
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  config["model_max_length"] = max_length
  _write_json(path, config)


def write_sentence_transformer(out_dir: str, run: Run,
                               extra: tuple[tuple[dict, str | None], ...] = ()) -> str:
  """The encoder as an HF BertModel folder that is also a SentenceTransformer: Transformer,
  Pooling (mean or [CLS]), BERT's pooler as a Dense layer with tanh when the vector is the
  pooler output, then each `extra` (linear tensors, output feature name or None) as a Dense
  layer without activation."""
  cls_source = run.heads.cls_source
  if cls_source not in ("mean", "hidden", "pooler"):
    raise ValueError(f"cls_source={cls_source!r}: resolve 'auto' first")
  bert_params = run.params["bert"]
  convert.save_pretrained(out_dir, run.bert_config, bert_params, vocab_from=run.vocab_from)
  _set_max_length(out_dir, run.max_length)
  hidden = run.bert_config.hidden_size
  modules = [{"idx": 0, "name": "0", "path": "",
              "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling",
              "type": "sentence_transformers.models.Pooling"}]
  _write_json(os.path.join(out_dir, "1_Pooling", "config.json"), {
      "word_embedding_dimension": hidden, "pooling_mode_cls_token": cls_source != "mean",
      "pooling_mode_mean_tokens": cls_source == "mean", "pooling_mode_max_tokens": False,
      "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
      "pooling_mode_lasttoken": False, "include_prompt": True})
  dense_layers = []
  if cls_source == "pooler":  # BERT's pooler: dense + tanh over [CLS]
    dense_layers.append((_linear(bert_params["pooler"]["dense"]),
                         {"in_features": hidden, "out_features": hidden, "bias": True,
                          "activation_function": "torch.nn.modules.activation.Tanh"}))
  dense_layers += [(linear, _dense_config(linear, name)) for linear, name in extra]
  for linear, config in dense_layers:
    idx = len(modules)
    path = f"{idx}_Dense"
    modules.append({"idx": idx, "name": str(idx), "path": path,
                    "type": "sentence_transformers.models.Dense"})
    _write_json(os.path.join(out_dir, path, "config.json"), config)
    _save_tensors(os.path.join(out_dir, path, "model.safetensors"),
                  {f"linear.{k}": v for k, v in linear.items()})
  _write_json(os.path.join(out_dir, "modules.json"), modules)
  _write_json(os.path.join(out_dir, "sentence_bert_config.json"),
              {"max_seq_length": run.max_length, "do_lower_case": False})
  return out_dir


def _write_sequence_classification(out_dir: str, task: str, run: Run) -> None:
  """BertForSequenceClassification: `bert.*` encoder tensors, `classifier.*` the head."""
  cfg, head = run.bert_config, _linear(run.params[HEAD_LAYERS[task]])
  convert.save_pretrained(out_dir, cfg, run.params["bert"], vocab_from=run.vocab_from)
  _set_max_length(out_dir, run.max_length)
  tensors = {f"bert.{k}": v for k, v in
             convert.params_to_state_dict(cfg, run.params["bert"]).items()}
  tensors.update({"classifier.weight": head["weight"], "classifier.bias": head["bias"]})
  _save_tensors(os.path.join(out_dir, "model.safetensors"), tensors)
  config = cfg.to_hf_dict()
  config["architectures"] = ["BertForSequenceClassification"]
  if task == "sst":
    labels = SENTIMENT_LABELS
    config["problem_type"] = "single_label_classification"
  else:
    labels = ("paraphrase",) if task == "para" else ("similarity",)
    config["sentence_transformers"] = {"activation_fn": CROSS_ENCODER_ACTIVATIONS[task]}
  config["id2label"] = {str(i): name for i, name in enumerate(labels)}
  config["label2id"] = {name: i for i, name in enumerate(labels)}
  _write_json(os.path.join(out_dir, "config.json"), config)


def _write_cross_encoder_config(out_dir: str, task: str, run: Run) -> None:
  """`config_sentence_transformers.json`: a CrossEncoder, its activation and prompt."""
  config: dict[str, Any] = {"model_type": "CrossEncoder",
                            "activation_fn": CROSS_ENCODER_ACTIVATIONS[task]}
  prompt = prompt_of(task, run.heads)
  if prompt:  # sentence-transformers prepends it verbatim: the run's "prompt a"
    config.update(prompts={PROMPT_NAME: prompt + " "}, default_prompt_name=PROMPT_NAME)
  _write_json(os.path.join(out_dir, "config_sentence_transformers.json"), config)


def write_task(out_dir: str, task: str, form: str, run: Run) -> str:
  """Writes `task`'s head in `form` (from `head_form`) to `out_dir` (without model card)."""
  if form == "sequence_classification":
    _write_sequence_classification(out_dir, task, run)
    if task != "sst":  # the CrossEncoder's modules, so that version 6 reads its prompt
      _write_json(os.path.join(out_dir, "modules.json"), [
          {"idx": 0, "name": "0", "path": "",
           "type": "sentence_transformers.base.modules.transformer.Transformer"}])
      _write_json(os.path.join(out_dir, "sentence_bert_config.json"), {
          "transformer_task": "sequence-classification",
          "modality_config": {"text": {"method": "forward", "method_output_name": "logits"}},
          "module_output_name": "scores"})
      _write_cross_encoder_config(out_dir, task, run)
  elif form == "st_classifier":
    write_sentence_transformer(out_dir, run, ((_linear(run.params[HEAD_LAYERS[task]]), None),))
  elif form == "st_cross_encoder":
    write_sentence_transformer(out_dir, run,
                               ((_linear(run.params[HEAD_LAYERS[task]]), "scores"),))
    _write_cross_encoder_config(out_dir, task, run)
  elif form == "bi_head":
    write_sentence_transformer(out_dir, run)
    _save_tensors(os.path.join(out_dir, "head.safetensors"),
                  _linear(run.params[HEAD_LAYERS[task]]))
  elif form == "st_cosine":
    write_sentence_transformer(out_dir, run, ((_linear(run.params["sts_proj"]), None),))
    _write_json(os.path.join(out_dir, "config_sentence_transformers.json"),
                {"similarity_fn_name": "cosine"})
  else:
    raise ValueError(f"unknown export form {form!r}; expected one of {FORMS}")
  return out_dir


assert heads_lib.NUM_SENTIMENT_CLASSES == len(SENTIMENT_LABELS)
