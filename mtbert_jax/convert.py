"""HF BERT checkpoints (PyTorch names) to and from the Flax parameter tree.

The mapping is one readable name table, `_hf_names`: every Flax leaf has exactly one HF
tensor, with an explicit transpose for dense kernels (PyTorch `Linear.weight` is
`[out, in]`, Flax `Dense.kernel` is `[in, out]`). Loading checks every shape and fails on a
missing or mis-shaped tensor, naming the key and both shapes; tensors it does not use (the
`cls.*` pre-training heads, the `position_ids` buffer, anything else) are listed in a log
line. Saving writes `model.safetensors`, `config.json` and `vocab.txt`, loadable by HF
`BertModel.from_pretrained`; load(save(params)) is bit-exact.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Iterator

import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from mtbert_jax import model as model_lib
from mtbert_jax import paths

log = logging.getLogger(__name__)

# Prefixes under which checkpoints store the encoder: BertModel (none), BertFor* ("bert.").
_PREFIXES = ("", "bert.")
# Tensors known not to belong to the encoder; they are reported, not errors.
_KNOWN_EXTRAS = ("cls.", "embeddings.position_ids", "qa_outputs.", "classifier.")


class CheckpointError(ValueError):
  """A checkpoint that does not fit the configured encoder."""


def _hf_names(cfg: model_lib.BertConfig) -> Iterator[tuple[tuple[str, ...], str, bool]]:
  """(Flax path, HF name, transpose?) for every parameter of `BertModel(cfg)`."""
  def dense(flax_path, hf):
    yield flax_path + ("kernel",), hf + ".weight", True
    yield flax_path + ("bias",), hf + ".bias", False

  def layer_norm(flax_path, hf):
    yield flax_path + ("scale",), hf + ".weight", False
    yield flax_path + ("bias",), hf + ".bias", False

  for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    yield ("embeddings", name, "embedding"), f"embeddings.{name}.weight", False
  yield from layer_norm(("embeddings", "LayerNorm"), "embeddings.LayerNorm")
  for i in range(cfg.num_hidden_layers):
    f, h = ("encoder", f"layer_{i}"), f"encoder.layer.{i}"
    for proj in ("query", "key", "value"):
      yield from dense(f + ("attention", "self", proj), f"{h}.attention.self.{proj}")
    yield from dense(f + ("attention", "output", "dense"), f"{h}.attention.output.dense")
    yield from layer_norm(f + ("attention", "output", "LayerNorm"),
                          f"{h}.attention.output.LayerNorm")
    yield from dense(f + ("intermediate", "dense"), f"{h}.intermediate.dense")
    yield from dense(f + ("output", "dense"), f"{h}.output.dense")
    yield from layer_norm(f + ("output", "LayerNorm"), f"{h}.output.LayerNorm")
  yield from dense(("pooler", "dense"), "pooler.dense")


def _expected_shapes(cfg: model_lib.BertConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  import jax  # pylint: disable=import-outside-toplevel
  shapes = jax.eval_shape(lambda: model_lib.init_params(cfg, jax.random.key(0)))
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}


def _rename_legacy(name: str) -> str:
  # Original TF-converted checkpoints call LayerNorm parameters gamma/beta.
  return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta",
                                                                      "LayerNorm.bias")


def read_state_dict(ckpt_dir: str) -> dict[str, np.ndarray]:
  """All tensors of an HF folder as NumPy arrays (safetensors preferred, else PyTorch .bin)."""
  st_file = os.path.join(ckpt_dir, "model.safetensors")
  bin_file = os.path.join(ckpt_dir, "pytorch_model.bin")
  if os.path.isfile(st_file):
    try:
      tensors = load_file(st_file)
    except Exception as e:  # safetensors raises its own error types
      raise CheckpointError(f"{st_file}: cannot be read as safetensors ({e})") from e
  elif os.path.isfile(bin_file):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(f"{bin_file} is a PyTorch file: install torch to read it, or convert "
                        "the folder to model.safetensors") from e
    state = torch.load(bin_file, map_location="cpu", weights_only=True)
    tensors = {k: v.float().numpy() if v.is_floating_point() else v.numpy()
               for k, v in state.items()}
  else:
    raise FileNotFoundError(f"{ckpt_dir}: no model.safetensors or pytorch_model.bin")
  return {_rename_legacy(k): v for k, v in tensors.items()}


def state_dict_to_params(cfg: model_lib.BertConfig, tensors: dict[str, np.ndarray],
                         source: str = "checkpoint") -> dict:
  """Maps HF tensors onto the Flax parameter tree of `BertModel(cfg)` (float32)."""
  prefix = next((p for p in _PREFIXES if f"{p}embeddings.word_embeddings.weight" in tensors),
                None)
  if prefix is None:
    raise CheckpointError(f"{source}: no embeddings.word_embeddings.weight under any of the "
                          f"prefixes {list(_PREFIXES)}; is this a BERT checkpoint?")
  expected = _expected_shapes(cfg)
  flat, used, problems = {}, set(), []
  for flax_path, hf_name, transpose in _hf_names(cfg):
    key = prefix + hf_name
    want = expected[flax_path]
    if key not in tensors:
      problems.append(f"missing tensor {key} (expected shape {want})")
      continue
    value = np.asarray(tensors[key])
    value = value.T if transpose else value
    if tuple(value.shape) != want:
      got = tuple(tensors[key].shape)
      problems.append(f"tensor {key} has shape {got}, expected "
                      f"{want[::-1] if transpose else want}")
      continue
    flat[flax_path] = value.astype(np.float32)
    used.add(key)
  if problems:
    raise CheckpointError(f"{source} does not fit the encoder config ({cfg.num_hidden_layers} "
                          f"layers, hidden {cfg.hidden_size}):\n  " + "\n  ".join(problems))
  unused = sorted(set(tensors) - used)
  if unused:
    known = [k for k in unused if k.removeprefix(prefix).startswith(_KNOWN_EXTRAS)
             or k.startswith(_KNOWN_EXTRAS)]
    other = [k for k in unused if k not in known]
    if known:  # pre-training heads and buffers of the format: expected, not news
      log.debug("%s: ignoring %d tensors that are not part of the encoder: %s", source,
                len(known), _abbreviate(known))
    if other:
      log.warning("%s: %d unused tensors: %s", source, len(other), _abbreviate(other))
  return traverse_util.unflatten_dict(flat)


def _abbreviate(names: list[str], limit: int = 8) -> str:
  shown = ", ".join(names[:limit])
  return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_pretrained(ckpt_dir: str | None = None) -> tuple[model_lib.BertConfig, dict]:
  """(config, Flax params) from an HF BERT folder; `None` loads the embedded default."""
  ckpt_dir = paths.resolve_checkpoint(ckpt_dir)
  cfg = model_lib.BertConfig.from_json_file(os.path.join(ckpt_dir, "config.json"))
  params = state_dict_to_params(cfg, read_state_dict(ckpt_dir), source=ckpt_dir)
  return cfg, params


def params_to_state_dict(cfg: model_lib.BertConfig, params: dict) -> dict[str, np.ndarray]:
  """The HF (`BertModel`, no prefix) tensors of a Flax encoder parameter tree."""
  flat = traverse_util.flatten_dict(params)
  out = {}
  for flax_path, hf_name, transpose in _hf_names(cfg):
    if flax_path not in flat:
      raise CheckpointError(f"parameter {'/'.join(flax_path)} missing from the tree")
    value = np.asarray(flat[flax_path], dtype=np.float32)
    out[hf_name] = np.ascontiguousarray(value.T if transpose else value)
  return out


def save_pretrained(out_dir: str, cfg: model_lib.BertConfig, params: dict,
                    vocab_from: str | None = None) -> str:
  """Writes an HF folder (model.safetensors, config.json, vocab.txt and tokenizer config)."""
  os.makedirs(out_dir, exist_ok=True)
  weights = os.path.join(out_dir, "model.safetensors")
  save_file(params_to_state_dict(cfg, params), weights, metadata={"format": "pt"})
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(weights, 0o666 & ~umask)  # safetensors writes 0600; the other files get umask
  with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(cfg.to_hf_dict(), f, indent=2, sort_keys=True)
  src = paths.resolve_checkpoint(vocab_from)
  for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
    if os.path.isfile(os.path.join(src, name)):
      shutil.copyfile(os.path.join(src, name), os.path.join(out_dir, name))
  if not os.path.isfile(os.path.join(out_dir, "vocab.txt")):
    raise FileNotFoundError(f"{src}: no vocab.txt to copy next to the saved weights")
  return out_dir
