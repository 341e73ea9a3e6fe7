"""Readers of the course's data files: rows of text and labels, with errors that say where.

The course's files are tab-separated (the NLI triplets and the tweets comma-separated),
with a header row, text fields possibly quoted (`""` for a literal quote). Readers find
columns by header name and fail with a `DataError` naming the file and the 1-based line for
any malformed row; `on_invalid="skip"` skips such rows with a logged warning instead (the
real `quora-dev.csv` has two rows with an empty label). Nothing here tokenizes or imports
JAX: `data.py` turns rows into tokenized sets and batches.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from typing import Any, Callable, Sequence

import numpy as np

TWEET_LABELS = {"negative": 0, "neutral": 2, "positive": 4}

_SIMILARITY_MAX = 5.0

_LOG = logging.getLogger(__name__)


class DataError(ValueError):
  """A data file that does not have the expected format or contents."""


# ---------------------------------------------------------------------------------------
# Rows read from files.


@dataclasses.dataclass
class SentenceRows:
  """Single sentences with optional integer labels (None for unlabeled test files)."""
  ids: list[str]
  texts: list[str]
  labels: np.ndarray | None  # int32 [N]

  def __len__(self) -> int:
    return len(self.texts)


@dataclasses.dataclass
class PairRows:
  """Sentence pairs with optional labels: int32 0/1 (paraphrase) or float32 0..5 (similarity)."""
  ids: list[str]
  texts_a: list[str]
  texts_b: list[str]
  labels: np.ndarray | None

  def __len__(self) -> int:
    return len(self.texts_a)


@dataclasses.dataclass
class TripletRows:
  """NLI triplets: `positive` entails `anchor`, `negative` contradicts it."""
  anchor: list[str]
  positive: list[str]
  negative: list[str]

  def __len__(self) -> int:
    return len(self.anchor)


def _check_on_invalid(on_invalid: str) -> None:
  if on_invalid not in ("raise", "skip"):
    raise ValueError(f"on_invalid must be 'raise' or 'skip', got {on_invalid!r}")


_BOM = "\ufeff"


def _lines(path: str):
  """(1-based line number, text) of every line of `path`, newline stripped; a line that is
  not valid UTF-8 comes as (number, DataError)."""
  if os.path.isdir(path):
    raise IsADirectoryError(f"{path} is a folder, expected a data file")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"data file not found: {path}")
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      raw = raw.rstrip(b"\r\n")
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield number, DataError(f"{path}: line {number}: not valid UTF-8 (byte {e.start + 1} "
                                f"of the line: {raw[e.start:e.start + 4]!r})")
        continue
      yield number, text.removeprefix(_BOM) if number == 1 else text


def _split(text: str, delimiter: str, where: str) -> list[str]:
  """The fields of one line. Every row of these files is one line: a quote that opens a
  field and does not close on the same line (which would swallow the following rows into
  one text) or text after a closing quote is an error, not a multi-line field."""
  try:
    return next(csv.reader([text], delimiter=delimiter, strict=True))
  except csv.Error as e:
    if "unexpected end of data" in str(e):
      raise DataError(f"{where}: a quoted field opens and does not close on this line (an "
                      "unbalanced '\"'; each row must be one line, a literal quote inside "
                      "a quoted field is written \"\")") from None
    raise DataError(f"{where}: the line does not parse as {_sep_name(delimiter)}-separated "
                    f"fields ({e})") from None


def _sep_name(delimiter: str) -> str:
  return "tab" if delimiter == "\t" else repr(delimiter)


def _read_table(path: str, delimiter: str, required: Sequence[str], optional: Sequence[str],
                parse_row: Callable[[dict[str, str], str], Any],
                on_invalid: str) -> list[Any]:
  """Parses every data row of a delimited file with a header row, one row per line.

  Args:
    path: the file.
    delimiter: field separator ("\\t" or ",").
    required: column names the header must contain.
    optional: column names used when present.
    parse_row: `(fields by column name, location) -> parsed row`; raises `DataError`.
    on_invalid: "raise", or "skip" a row that does not parse (bad quoting, field count,
      encoding or value), with one warning per file.

  Returns:
    The parsed rows in file order.
  """
  _check_on_invalid(on_invalid)
  sep_name = _sep_name(delimiter)
  lines = _lines(path)
  first = next(lines, None)
  if first is None or (isinstance(first[1], str) and not first[1].strip()):
    raise DataError(f"{path}: line 1: expected a header row, the file is empty")
  if isinstance(first[1], DataError):
    raise first[1]
  header = _split(first[1], delimiter, f"{path}: line 1")
  names = [name.strip() for name in header]
  columns = {}
  for name in list(required) + list(optional):
    found = [i for i, n in enumerate(names) if n == name]
    if len(found) > 1:
      raise DataError(f"{path}: line 1: column {name!r} appears {len(found)} times in the "
                      f"header {header}")
    if found:
      columns[name] = found[0]
    elif name in required:
      raise DataError(f"{path}: line 1: header {header} lacks the required column {name!r} "
                      f"(expected columns {list(required)}, {sep_name}-separated)")
  rows, skipped = [], []
  for number, text in lines:
    where = f"{path}: line {number}"
    try:
      if isinstance(text, DataError):
        raise text
      if not text.strip():
        continue  # A blank line holds no row.
      fields = _split(text, delimiter, where)
      if len(fields) != len(header):
        raise DataError(f"{where}: expected {len(header)} {sep_name}-separated fields as in "
                        f"the header, got {len(fields)}")
      rows.append(parse_row({name: fields[i] for name, i in columns.items()}, where))
    except DataError as e:
      if on_invalid == "raise":
        raise DataError(f"{e} (--config.data.on_invalid=skip skips such rows with a "
                        "warning)") from None
      skipped.append((number, str(e).removeprefix(where + ": ")))
  if not rows and not skipped:
    raise DataError(f"{path}: has a header but no data rows")
  if skipped:
    shown = "; ".join(f"line {n}: {msg}" for n, msg in skipped[:3])
    more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    _LOG.warning("%s: skipped %d of %d rows that do not parse (%s%s)", path, len(skipped),
                 len(skipped) + len(rows), shown, more)
  return rows


def _text(fields: dict[str, str], name: str, where: str) -> str:
  """The stripped field `name`, which must not be blank (texts and ids)."""
  text = fields[name].strip()
  if not text:
    raise DataError(f"{where}: column {name!r} is empty, expected a non-empty value")
  return text


def _number(fields: dict[str, str], name: str, where: str) -> float:
  value = fields[name].strip()
  try:
    number = float(value)
  except ValueError:
    raise DataError(f"{where}: column {name!r} is {value!r}, expected a number") from None
  if not math.isfinite(number):
    raise DataError(f"{where}: column {name!r} is {value!r}, expected a finite number")
  return number


def _class_label(fields: dict[str, str], name: str, where: str, num_classes: int) -> int:
  number = _number(fields, name, where)
  if number != int(number) or not 0 <= number < num_classes:
    raise DataError(f"{where}: column {name!r} is {fields[name].strip()!r}, expected an "
                    f"integer class in 0..{num_classes - 1}")
  return int(number)


def _labels_or_none(values: list[Any], path: str, dtype: Any) -> np.ndarray | None:
  """Labels as an array; None when the label column is absent or empty in every row."""
  if all(v is None for v in values):
    return None
  missing = [i for i, v in enumerate(values) if v is None]
  if missing:  # Cannot happen: a partly empty label column fails row by row.
    raise DataError(f"{path}: {len(missing)} rows lack a label while others have one")
  return np.asarray(values, dtype)


def read_sentiment(path: str, num_classes: int = 5, label_map: dict[int, int] | None = None,
                   on_invalid: str = "raise", tfds_dir: str | None = None) -> SentenceRows:
  """Reads a course sentiment file (columns `id`, `sentence`, optional `sentiment`).

  Args:
    path: tab-separated file (SST: 5 classes; CFIMDB: `num_classes=2`).
    num_classes: labels must be integers in `0..num_classes-1`.
    label_map: remaps every label (each must be a key), e.g. `{0: 0, 1: 4}` to mix
      CFIMDB into SST-5.
    on_invalid: "raise" a `DataError` on a bad row, or "skip" it with a logged warning.

  Returns:
    `SentenceRows`; `labels` is None when the file has no (or an all-empty) label column.
    A `tfds:NAME:SPLIT` path reads a prepared TFDS dataset instead (`tfds_dir`: its
    data_dir).
  """
  if is_tfds(path):
    return read_tfds_sentiment(path, tfds_dir, num_classes, label_map, on_invalid)

  def parse(fields: dict[str, str], where: str) -> tuple[str, str, int | None]:
    label = None
    if "sentiment" in fields and (fields["sentiment"].strip() or not all_empty_ok):
      label = _class_label(fields, "sentiment", where, num_classes)
      if label_map is not None:
        if label not in label_map:
          raise DataError(f"{where}: label {label} is not a key of label_map {label_map}")
        label = label_map[label]
    return _text(fields, "id", where), _text(fields, "sentence", where), label

  all_empty_ok = _label_column_all_empty(path, "\t", "sentiment")
  rows = _read_table(path, "\t", ["id", "sentence"], ["sentiment"], parse, on_invalid)
  return SentenceRows(ids=[r[0] for r in rows], texts=[r[1] for r in rows],
                      labels=_labels_or_none([r[2] for r in rows], path, np.int32))


def read_pairs(path: str, task: str, on_invalid: str = "raise",
               tfds_dir: str | None = None) -> PairRows:
  """Reads a course pair file (`id`, `sentence1`, `sentence2`, optional label column).

  Args:
    path: tab-separated file.
    task: "paraphrase" (label column `is_duplicate`, "0.0"/"1.0", int32) or "similarity"
      (label column `similarity`, 0..5, float32).
    on_invalid: "raise" a `DataError` on a bad row, or "skip" it with a logged warning.

  Returns:
    `PairRows`; `labels` is None when the file has no (or an all-empty) label column.
  """
  if task == "paraphrase":
    label_column = "is_duplicate"
  elif task == "similarity":
    label_column = "similarity"
  else:
    raise ValueError(f"task must be 'paraphrase' or 'similarity', got {task!r}")
  if is_tfds(path):
    return read_tfds_pairs(path, task, tfds_dir, on_invalid)

  def parse(fields: dict[str, str], where: str) -> tuple[str, str, str, float | None]:
    label = None
    if label_column in fields and (fields[label_column].strip() or not all_empty_ok):
      if task == "paraphrase":
        label = _class_label(fields, label_column, where, 2)
      else:
        label = _number(fields, label_column, where)
        if not 0.0 <= label <= _SIMILARITY_MAX:
          raise DataError(f"{where}: column {label_column!r} is {fields[label_column].strip()!r},"
                          f" expected a similarity in [0, {_SIMILARITY_MAX:g}]")
    return (_text(fields, "id", where), _text(fields, "sentence1", where),
            _text(fields, "sentence2", where), label)

  all_empty_ok = _label_column_all_empty(path, "\t", label_column)
  rows = _read_table(path, "\t", ["id", "sentence1", "sentence2"], [label_column], parse,
                        on_invalid)
  dtype = np.int32 if task == "paraphrase" else np.float32
  return PairRows(ids=[r[0] for r in rows], texts_a=[r[1] for r in rows],
                  texts_b=[r[2] for r in rows],
                  labels=_labels_or_none([r[3] for r in rows], path, dtype))


def read_triplets(path: str, on_invalid: str = "raise",
                  tfds_dir: str | None = None) -> TripletRows:
  """Reads the comma-separated SimCSE NLI file (columns `sent0`, `sent1`, `hard_neg`), or
  builds triplets (premise, an entailed, a contradicting hypothesis) from a TFDS NLI set."""
  if is_tfds(path):
    return read_tfds_triplets(path, tfds_dir, on_invalid)

  def parse(fields: dict[str, str], where: str) -> tuple[str, str, str]:
    return (_text(fields, "sent0", where), _text(fields, "sent1", where),
            _text(fields, "hard_neg", where))

  rows = _read_table(path, ",", ["sent0", "sent1", "hard_neg"], [], parse, on_invalid)
  return TripletRows(anchor=[r[0] for r in rows], positive=[r[1] for r in rows],
                     negative=[r[2] for r in rows])


def read_tweets(path: str, on_invalid: str = "raise") -> SentenceRows:
  """Reads the comma-separated tweets (`textID`, `text`, `sentiment`): labels 0/2/4."""

  def parse(fields: dict[str, str], where: str) -> tuple[str, str, int]:
    value = fields["sentiment"].strip().lower()
    if value not in TWEET_LABELS:
      raise DataError(f"{where}: column 'sentiment' is {fields['sentiment']!r}, expected one "
                      f"of {sorted(TWEET_LABELS)}")
    return _text(fields, "textID", where), _text(fields, "text", where), TWEET_LABELS[value]

  rows = _read_table(path, ",", ["textID", "text", "sentiment"], [], parse, on_invalid)
  return SentenceRows(ids=[r[0] for r in rows], texts=[r[1] for r in rows],
                      labels=np.asarray([r[2] for r in rows], np.int32))


def _label_column_all_empty(path: str, delimiter: str, name: str) -> bool:
  """Whether `name` is a header column that is blank in every row (an unlabeled file).

  A test file may carry an empty label column; it then reads as unlabeled rather than
  failing on every row. A column that is blank in only some rows is an error per row.
  Lines that do not parse are left to `_read_table` to report.
  """
  if not os.path.isfile(path):
    return False
  header, seen = None, False
  for number, text in _lines(path):
    if isinstance(text, DataError) or not text.strip():
      continue
    try:
      fields = _split(text, delimiter, "")
    except DataError:
      continue
    if header is None:
      header = [n.strip() for n in fields]
      if name not in header:
        return False
      column = header.index(name)
      continue
    if len(fields) == len(header):
      seen = True
      if fields[column].strip():
        return False
    del number
  return seen


# ---------------------------------------------------------------------------------------
# TensorFlow Datasets (optional: pip install -e ".[tfds]"; no TensorFlow needed).

TFDS_PREFIX = "tfds:"


def is_tfds(path: str) -> bool:
  return path.startswith(TFDS_PREFIX)


def parse_tfds(spec: str) -> tuple[str, str]:
  """"tfds:glue/qqp:train" -> ("glue/qqp", "train"); the split may be any TFDS split
  expression such as "train[:10%]"."""
  body = spec[len(TFDS_PREFIX):]
  name, sep, split = body.rpartition(":")
  if not sep or not name or not split:
    raise DataError(f"{spec}: expected tfds:NAME[/CONFIG]:SPLIT, e.g. tfds:glue/qqp:train")
  return name, split


def _tfds_examples(spec: str, data_dir: str | None):
  """The examples of a prepared TFDS dataset as dicts of NumPy values, in the dataset's
  order, through `tfds.data_source` (ArrayRecord files: no TensorFlow)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError(f"{spec}: reading TFDS datasets needs the optional extra: "
                    "pip install -e '.[tfds]' (tensorflow-datasets and array_record, no "
                    "TensorFlow)") from e
  name, split = parse_tfds(spec)
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir or None)
  except Exception as e:  # TFDS raises many types for a missing or unprepared dataset
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f"{spec}: cannot open the TFDS dataset {name!r}, split {split!r} under "
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
  _check_on_invalid(on_invalid)
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
          raise DataError(f"{spec}: features {sorted(keys)} lack premise/hypothesis/label")
        label = int(ex["label"])
        if label in (0, 2):
          group = groups.setdefault(_str(ex["premise"]).strip(), {})
          group.setdefault("pos" if label == 0 else "neg", _str(ex["hypothesis"]).strip())
        continue
      if kind == "pairs":
        names = next((p for p in _PAIR_FEATURES if set(p) <= keys), None)
        if names is None or "label" not in keys:
          raise DataError(f"{spec}: features {sorted(keys)} lack a sentence pair "
                          f"({' or '.join('/'.join(p) for p in _PAIR_FEATURES)}) and label")
        texts = [_str(ex[n]).strip() for n in names]
      else:
        name = "text" if "text" in keys else "sentence" if "sentence" in keys else None
        if name is None or "label" not in keys:
          raise DataError(f"{spec}: features {sorted(keys)} lack text (or sentence) and "
                          "label")
        texts = [_str(ex[name]).strip()]
      if not all(texts):
        raise DataError(f"{where}: an empty text")
      label = ex["label"]
      ids.append(_str(ex["idx"]) if "idx" in ex else str(i))
      a.append(texts[0])
      b.append(texts[-1])
      labels.append(label)
    except DataError as e:
      if on_invalid == "raise" or keys is None or "lack" in str(e):
        raise
      skipped.append(str(e))
  if kind == "triplets":
    kept = [(p, g["pos"], g["neg"]) for p, g in groups.items() if len(g) == 2]
    if not kept:
      raise DataError(f"{spec}: no premise has both an entailment and a contradiction")
    return TripletRows([t[0] for t in kept], [t[1] for t in kept], [t[2] for t in kept])
  if not ids:
    raise DataError(f"{spec}: the split has no examples")
  if skipped:
    _LOG.warning("%s: skipped %d of %d examples (%s)", spec, len(skipped),
                 len(skipped) + len(ids), "; ".join(skipped[:3]))
  values = np.asarray(labels, np.float64)
  return ids, a, b, None if np.all(values == -1) else values


def _check_tfds_labels(spec: str, labels: np.ndarray, low: float, high: float,
                       integer: bool) -> None:
  bad = np.flatnonzero((labels < low) | (labels > high) |
                       ((labels != np.round(labels)) if integer else False))
  if len(bad):
    raise DataError(f"{spec}: example {bad[0]}: label {float(labels[bad[0]]):g}, expected "
                    f"{'an integer class' if integer else 'a value'} in {low:g}..{high:g} "
                    f"({len(bad)} such examples)")


def read_tfds_sentiment(spec: str, data_dir: str | None, num_classes: int = 5,
                        label_map: dict[int, int] | None = None,
                        on_invalid: str = "raise") -> SentenceRows:
  ids, texts, _, labels = _tfds_rows(spec, "sentences", data_dir, on_invalid)
  if labels is not None:
    _check_tfds_labels(spec, labels, 0, num_classes - 1, True)
    labels = labels.astype(np.int32)
    if label_map is not None:
      labels = np.asarray([label_map[int(v)] for v in labels], np.int32)
  return SentenceRows(ids, texts, labels)


def read_tfds_pairs(spec: str, task: str, data_dir: str | None,
                    on_invalid: str = "raise") -> PairRows:
  ids, a, b, labels = _tfds_rows(spec, "pairs", data_dir, on_invalid)
  if labels is not None:
    if task == "paraphrase":
      _check_tfds_labels(spec, labels, 0, 1, True)
      labels = labels.astype(np.int32)
    else:
      _check_tfds_labels(spec, labels, 0, _SIMILARITY_MAX, False)
      labels = labels.astype(np.float32)
  return PairRows(ids, a, b, labels)


def read_tfds_triplets(spec: str, data_dir: str | None, on_invalid: str = "raise"
                       ) -> TripletRows:
  return _tfds_rows(spec, "triplets", data_dir, on_invalid)
