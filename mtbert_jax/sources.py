"""Rows of a data path: a course file, or a prepared TFDS dataset for a `tfds:` path.

Every data field of the config takes either: the task table reads its files through these
functions, which hand a `tfds:NAME[/CONFIG]:SPLIT` path to `tfds_source.py` (with
`data.tfds_dir`, the datasets' folder) and any other path to `readers.py`. Both give the
same row types (`readers.SentenceRows`, `PairRows`, `TripletRows`) and the same
`readers.DataError`; `readers.py` itself knows nothing of TFDS.
"""

from __future__ import annotations

from mtbert_jax import readers
from mtbert_jax import tfds_source


def read_sentiment(path: str, num_classes: int = 5, label_map: dict[int, int] | None = None,
                   on_invalid: str = "raise",
                   tfds_dir: str | None = None) -> readers.SentenceRows:
  """`readers.read_sentiment` of a file, or the same rows of a TFDS dataset."""
  if tfds_source.is_tfds(path):
    return tfds_source.read_sentiment(path, tfds_dir, num_classes, label_map, on_invalid)
  return readers.read_sentiment(path, num_classes, label_map, on_invalid)


def read_pairs(path: str, task: str, on_invalid: str = "raise",
               tfds_dir: str | None = None) -> readers.PairRows:
  """`readers.read_pairs` of a file, or the same rows of a TFDS dataset."""
  if tfds_source.is_tfds(path):
    return tfds_source.read_pairs(path, task, tfds_dir, on_invalid)
  return readers.read_pairs(path, task, on_invalid)


def read_triplets(path: str, on_invalid: str = "raise",
                  tfds_dir: str | None = None) -> readers.TripletRows:
  """`readers.read_triplets` of a file, or triplets (premise, an entailed, a contradicting
  hypothesis) built from a TFDS NLI dataset."""
  if tfds_source.is_tfds(path):
    return tfds_source.read_triplets(path, tfds_dir, on_invalid)
  return readers.read_triplets(path, on_invalid)
