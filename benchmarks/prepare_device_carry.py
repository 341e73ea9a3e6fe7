"""Builds the git-ignored folders that `benchmarks/gpu_session.sh` expects on a GPU machine
where nothing can be installed or downloaded and only the checkout travels:

  .devdata/ckpt/     the embedded all-MiniLM-L6-v2 checkpoint, weights in float16
                     (about 45 MB; the loader casts them to float32), with its config,
                     vocabulary, tokenizer and pooling files
  .devdata/data.tgz  the course data folder (../shared/data), gzipped
  .whl/              wheels of the pure-Python packages the device image lacks

  python benchmarks/prepare_device_carry.py     # then carry [".devdata", ".whl"]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# Not in the GPU image (jax, flax, optax, orbax, chex, torch, transformers, tokenizers,
# safetensors are).
WHEELS = ("ml-collections", "tensorboardX")
CKPT_FILES = ("config.json", "vocab.txt", "tokenizer_config.json", "tokenizer.json",
              "special_tokens_map.json", "modules.json", "1_Pooling/config.json")


def main() -> None:
  from mtbert_jax import paths  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from safetensors.numpy import load_file, save_file  # pylint: disable=import-outside-toplevel

  src = paths.default_checkpoint()
  ckpt = os.path.join(REPO, ".devdata", "ckpt")
  os.makedirs(os.path.join(ckpt, "1_Pooling"), exist_ok=True)
  tensors = load_file(os.path.join(src, "model.safetensors"))
  save_file({k: v.astype(np.float16) if v.dtype == np.float32 else v
             for k, v in tensors.items()}, os.path.join(ckpt, "model.safetensors"))
  for name in CKPT_FILES:
    if os.path.exists(os.path.join(src, name)):
      shutil.copy(os.path.join(src, name), os.path.join(ckpt, name))

  data = paths.default_data_dir()
  if not os.path.isdir(os.path.join(data, "cs224n")):
    raise SystemExit(f"course data not found in {data}")
  with tarfile.open(os.path.join(REPO, ".devdata", "data.tgz"), "w:gz") as tar:
    for entry in sorted(os.listdir(data)):
      tar.add(os.path.join(data, entry), arcname=entry)

  wheels = os.path.join(REPO, ".whl")
  os.makedirs(wheels, exist_ok=True)
  subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary",
                  ":all:", "-d", wheels, *WHEELS], check=True)

  for root in (".devdata", ".whl"):
    size = sum(os.path.getsize(os.path.join(d, f))
               for d, _, files in os.walk(os.path.join(REPO, root)) for f in files)
    print(f"{root}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
  main()
