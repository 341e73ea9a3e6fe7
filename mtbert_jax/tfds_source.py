"""TensorFlow Datasets as a data source: `tfds:NAME[/CONFIG]:SPLIT` in any data field.

Optional (`pip install -e ".[tfds]"`: tensorflow-datasets and array_record, no
TensorFlow): datasets are read through `tfds.data_source`, so they must be prepared in
ArrayRecord format. Rows are made from the features, by name, into the readers' row types
(`readers.py`), and from there take the course files' path. `data.read_*` read a `tfds:`
path here and any other path with `readers.py`.
"""

from __future__ import annotations

import logging

import numpy as np

from mtbert_jax import readers

log = logging.getLogger(__name__)

PREFIX = "tfds:"  # a data path of this form names a TFDS dataset


def is_tfds(path: str) -> bool:
  return path.startswith(PREFIX)


def parse_tfds(spec: str) -> tuple[str, str]:
  """"tfds:glue/qqp:train" -> ("glue/qqp", "train"); the split may be any TFDS split
  expression such as "train[:10%]"."""
  body = spec[len(PREFIX):]
  name, sep, split = body.rpartition(":")
  if not sep or not name or not split:
    raise readers.DataError(f"{spec}: expected tfds:NAME[/CONFIG]:SPLIT, e.g. tfds:glue/qqp:train")
  return name, split


def _tfds_examples(spec: str, data_dir: str | None):
  """The examples of a prepared TFDS dataset as dicts of NumPy values, in the dataset's
  order, through `tfds.data_source` (ArrayRecord files: no TensorFlow)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise readers.DataError(f"{spec}: reading TFDS datasets needs the optional extra: "
                            "pip install -e '.[tfds]' (tensorflow-datasets and array_record, no "
                            "TensorFlow)") from e
  name, split = parse_tfds(spec)
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir or None)
  except Exception as e:  # TFDS raises many types for a missing or unprepared dataset
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise readers.DataError(f"{spec}: cannot open the TFDS dataset {name!r}, split {split!r} under "
                            f"data_dir {data_dir or '(TFDS default)'} ({first}). Prepare it first "
                            "(tfds build, or download_and_prepare) in ArrayRecord format; "
                            "--config.data.tfds_dir sets the folder") from None
  for i in range(len(source)):
    yield i, source[i]


def _str(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# Feature names of the datasets users reach for, by the row type they make.
_PAIR_FEATURES = (("question1", "question2"), ("sentence1", "sentence2"))


def _tfds_rows(spec: str, kind: str, data_dir: str | None, on_invalid: str):
  """Rows of a TFDS dataset, by its feature names: pairs from question1/question2 (QQP)
  or sentence1/sentence2 (STS-B, MRPC) with `label`; sentences from `text` or `sentence`
  with `label`; triplets from premise/hypothesis/label (SNLI, MultiNLI: 0 entailment, 2
  contradiction). A label of -1 (GLUE's unlabeled test splits) in every example reads as
  unlabeled."""
  readers.check_on_invalid(on_invalid)
  ids, a, b, labels, skipped = [], [], [], [], []
  groups: dict[str, dict[str, str]] = {}
  keys = None
  for i, ex in _tfds_examples(spec, data_dir):
    where = f"{spec}: example {i}"
    try:
      if keys is None:
        keys = set(ex)
      if kind == "triplets":
        if not {"premise", "hypothesis", "label"} <= keys:
          raise readers.DataError(f"{spec}: features {sorted(keys)} lack premise/hypothesis/label")
        label = int(ex["label"])
        if label in (0, 2):
          group = groups.setdefault(_str(ex["premise"]).strip(), {})
          group.setdefault("pos" if label == 0 else "neg", _str(ex["hypothesis"]).strip())
        continue
      if kind == "pairs":
        names = next((p for p in _PAIR_FEATURES if set(p) <= keys), None)
        if names is None or "label" not in keys:
          raise readers.DataError(f"{spec}: features {sorted(keys)} lack a sentence pair "
                                  f"({' or '.join('/'.join(p) for p in _PAIR_FEATURES)}) and label")
        texts = [_str(ex[n]).strip() for n in names]
      else:
        name = "text" if "text" in keys else "sentence" if "sentence" in keys else None
        if name is None or "label" not in keys:
          raise readers.DataError(f"{spec}: features {sorted(keys)} lack text (or sentence) and "
                                  "label")
        texts = [_str(ex[name]).strip()]
      if not all(texts):
        raise readers.DataError(f"{where}: an empty text")
      label = ex["label"]
      ids.append(_str(ex["idx"]) if "idx" in ex else str(i))
      a.append(texts[0])
      b.append(texts[-1])
      labels.append(label)
    except readers.DataError as e:
      if on_invalid == "raise" or keys is None or "lack" in str(e):
        raise
      skipped.append(str(e))
  if kind == "triplets":
    kept = [(p, g["pos"], g["neg"]) for p, g in groups.items() if len(g) == 2]
    if not kept:
      raise readers.DataError(f"{spec}: no premise has both an entailment and a contradiction")
    return readers.TripletRows([t[0] for t in kept], [t[1] for t in kept], [t[2] for t in kept])
  if not ids:
    raise readers.DataError(f"{spec}: the split has no examples")
  if skipped:
    log.warning("%s: skipped %d of %d examples (%s)", spec, len(skipped),
                 len(skipped) + len(ids), "; ".join(skipped[:3]))
  values = np.asarray(labels, np.float64)
  return ids, a, b, None if np.all(values == -1) else values


def _check_tfds_labels(spec: str, labels: np.ndarray, low: float, high: float,
                       integer: bool) -> None:
  bad = np.flatnonzero((labels < low) | (labels > high) |
                       ((labels != np.round(labels)) if integer else False))
  if len(bad):
    raise readers.DataError(f"{spec}: example {bad[0]}: label {float(labels[bad[0]]):g}, expected "
                            f"{'an integer class' if integer else 'a value'} in {low:g}..{high:g} "
                            f"({len(bad)} such examples)")


def read_sentiment(spec: str, data_dir: str | None, num_classes: int = 5,
                   label_map: dict[int, int] | None = None,
                   on_invalid: str = "raise") -> readers.SentenceRows:
  ids, texts, _, labels = _tfds_rows(spec, "sentences", data_dir, on_invalid)
  if labels is not None:
    _check_tfds_labels(spec, labels, 0, num_classes - 1, True)
    labels = labels.astype(np.int32)
    if label_map is not None:
      labels = np.asarray([label_map[int(v)] for v in labels], np.int32)
  return readers.SentenceRows(ids, texts, labels)


def read_pairs(spec: str, task: str, data_dir: str | None,
               on_invalid: str = "raise") -> readers.PairRows:
  ids, a, b, labels = _tfds_rows(spec, "pairs", data_dir, on_invalid)
  if labels is not None:
    if task == "paraphrase":
      _check_tfds_labels(spec, labels, 0, 1, True)
      labels = labels.astype(np.int32)
    else:
      _check_tfds_labels(spec, labels, 0, readers.SIMILARITY_MAX, False)
      labels = labels.astype(np.float32)
  return readers.PairRows(ids, a, b, labels)


def read_triplets(spec: str, data_dir: str | None, on_invalid: str = "raise"
                  ) -> readers.TripletRows:
  return _tfds_rows(spec, "triplets", data_dir, on_invalid)
