"""Readers of the course's data files: rows of text and labels, with errors that say where.

The course's files are tab-separated (the NLI triplets and the tweets comma-separated),
with a header row, text fields possibly quoted (`""` for a literal quote). Readers find
columns by header name and fail with a `DataError` naming the file and the 1-based line for
any malformed row; `on_invalid="skip"` skips such rows with a logged warning instead (the
real `quora-dev.csv` has two rows with an empty label). Nothing here tokenizes, imports
JAX or imports the rest of the package: `tfds_source.py` makes the same rows from TFDS
datasets, `data.py` chooses between the two by the path and turns rows into tokenized sets
and batches.
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

SIMILARITY_MAX = 5.0

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


def check_on_invalid(on_invalid: str) -> None:
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
      if "\x00" in text:
        yield number, DataError(
            f"{path}: line {number}: {text.count(chr(0))} NUL bytes in a line of {len(text)} "
            "characters (a zero-filled block, as an interrupted write leaves, may have "
            "merged several rows into this line)")
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
    optional: column names used when present; one that is blank in every row is left out
      (a test file may carry an empty label column: it reads as unlabeled, while a column
      blank in only some rows fails on those rows).
    parse_row: `(fields by column name, location) -> parsed row`; raises `DataError`.
    on_invalid: "raise", or "skip" a row that does not parse (bad quoting, field count,
      encoding or value), with one warning per file.

  Returns:
    The parsed rows in file order.
  """
  check_on_invalid(on_invalid)
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
  # Every line split first: which optional columns are blank throughout decides how the
  # rows parse.
  split_lines: list[tuple[int, int, list[str] | DataError]] = []
  for number, text in lines:
    if isinstance(text, DataError):
      split_lines.append((number, 0, text))
      continue
    if not text.strip():
      continue  # A blank line holds no row.
    where = f"{path}: line {number}"
    try:
      fields = _split(text, delimiter, where)
      if len(fields) != len(header):
        raise DataError(f"{where}: expected {len(header)} {sep_name}-separated fields as in "
                        f"the header, got {len(fields)}")
    except DataError as e:
      fields = e
    split_lines.append((number, len(text), fields))
  well_formed = [f for _, _, f in split_lines if not isinstance(f, DataError)]
  for name in optional:
    if name in columns and well_formed and not any(f[columns[name]].strip()
                                                   for f in well_formed):
      del columns[name]
  rows, skipped, sizes = [], [], []
  for number, size, fields in split_lines:
    where = f"{path}: line {number}"
    try:
      if isinstance(fields, DataError):
        raise fields
      rows.append(parse_row({name: fields[i] for name, i in columns.items()}, where))
      sizes.append((number, size))
    except DataError as e:
      if on_invalid == "raise":
        raise DataError(f"{e} (--config.data.on_invalid=skip skips such rows with a "
                        "warning)") from None
      skipped.append((number, str(e).removeprefix(where + ": ")))
  if not rows and not skipped:
    raise DataError(f"{path}: has a header but no data rows")
  rows = _drop_overlong(path, rows, sizes, skipped, on_invalid)
  if skipped:  # one line per file; rows with the same problem share one mention
    by_message: dict[str, list[int]] = {}
    for number, msg in sorted(skipped):
      by_message.setdefault(msg, []).append(number)
    shown = "; ".join(
        f"{len(ns)} line{'s' if len(ns) > 1 else ''} ({', '.join(map(str, ns[:_SHOWN]))}"
        f"{', ...' if len(ns) > _SHOWN else ''}): {msg}"
        for msg, ns in list(by_message.items())[:3])
    more = f"; {len(by_message) - 3} other problems" if len(by_message) > 3 else ""
    _LOG.warning("%s: skipped %d of %d rows that do not parse (%s%s)", path, len(skipped),
                 len(skipped) + len(rows), shown, more)
  return rows


_SHOWN = 10  # line numbers named per problem in the skip warning (with the count of all)
# A row this many times longer than the file's median row, and over _LONG_MIN characters,
# is not a row but several merged (a lost line break); a course row is at most ~30x.
_LONG_FACTOR, _LONG_MIN = 50, 2000


def _drop_overlong(path: str, rows: list, sizes: list[tuple[int, int]],
                   skipped: list[tuple[int, str]], on_invalid: str) -> list:
  """`rows` without those whose line is far longer than the file's others."""
  if len(sizes) < 10:
    return rows
  median = float(np.median([n for _, n in sizes]))
  limit = max(_LONG_FACTOR * median, _LONG_MIN)
  keep = []
  for row, (number, size) in zip(rows, sizes):
    if size <= limit:
      keep.append(row)
      continue
    msg = (f"a row of {size} characters, over {_LONG_FACTOR}x the file's median row "
           f"({median:.0f}): several rows merged by a lost line break?")
    if on_invalid == "raise":
      raise DataError(f"{path}: line {number}: {msg} (--config.data.on_invalid=skip skips "
                      "such rows with a warning)")
    skipped.append((number, msg))
  return keep


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


def _labels_or_none(values: list[Any], dtype: Any) -> np.ndarray | None:
  """Labels as an array; None when the file has no label column (absent, or blank in every
  row: `_read_table` leaves it out, so every row has a label or none has)."""
  return None if not values or values[0] is None else np.asarray(values, dtype)


def read_sentiment(path: str, num_classes: int = 5, label_map: dict[int, int] | None = None,
                   on_invalid: str = "raise") -> SentenceRows:
  """Reads a course sentiment file (columns `id`, `sentence`, optional `sentiment`).

  Args:
    path: tab-separated file (SST: 5 classes; CFIMDB: `num_classes=2`).
    num_classes: labels must be integers in `0..num_classes-1`.
    label_map: remaps every label (each must be a key), e.g. `{0: 0, 1: 4}` to mix
      CFIMDB into SST-5.
    on_invalid: "raise" a `DataError` on a bad row, or "skip" it with a logged warning.

  Returns:
    `SentenceRows`; `labels` is None when the file has no (or an all-empty) label column.
  """

  def parse(fields: dict[str, str], where: str) -> tuple[str, str, int | None]:
    label = None
    if "sentiment" in fields:
      label = _class_label(fields, "sentiment", where, num_classes)
      if label_map is not None:
        if label not in label_map:
          raise DataError(f"{where}: label {label} is not a key of label_map {label_map}")
        label = label_map[label]
    return _text(fields, "id", where), _text(fields, "sentence", where), label

  rows = _read_table(path, "\t", ["id", "sentence"], ["sentiment"], parse, on_invalid)
  _warn_duplicate_ids(path, [r[0] for r in rows])
  return SentenceRows(ids=[r[0] for r in rows], texts=[r[1] for r in rows],
                      labels=_labels_or_none([r[2] for r in rows], np.int32))


def read_pairs(path: str, task: str, on_invalid: str = "raise") -> PairRows:
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

  def parse(fields: dict[str, str], where: str) -> tuple[str, str, str, float | None]:
    label = None
    if label_column in fields:
      if task == "paraphrase":
        label = _class_label(fields, label_column, where, 2)
      else:
        label = _number(fields, label_column, where)
        if not 0.0 <= label <= SIMILARITY_MAX:
          raise DataError(f"{where}: column {label_column!r} is {fields[label_column].strip()!r},"
                          f" expected a similarity in [0, {SIMILARITY_MAX:g}]")
    return (_text(fields, "id", where), _text(fields, "sentence1", where),
            _text(fields, "sentence2", where), label)

  rows = _read_table(path, "\t", ["id", "sentence1", "sentence2"], [label_column], parse,
                     on_invalid)
  _warn_duplicate_ids(path, [r[0] for r in rows])
  dtype = np.int32 if task == "paraphrase" else np.float32
  return PairRows(ids=[r[0] for r in rows], texts_a=[r[1] for r in rows],
                  texts_b=[r[2] for r in rows],
                  labels=_labels_or_none([r[3] for r in rows], dtype))


def read_triplets(path: str, on_invalid: str = "raise") -> TripletRows:
  """Reads the comma-separated SimCSE NLI file (columns `sent0`, `sent1`, `hard_neg`)."""

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


def _warn_duplicate_ids(path: str, ids: list[str]) -> None:
  """A warning naming the ids that occur more than once: each row is still read (and
  predicted: a prediction file then has as many rows with that id), but an id is meant to
  name one row."""
  seen, repeated = set(), {}
  for i in ids:
    if i in seen:
      repeated[i] = repeated.get(i, 1) + 1
    seen.add(i)
  if repeated:
    shown = ", ".join(f"{i!r} ({n}x)" for i, n in list(repeated.items())[:_SHOWN])
    _LOG.warning("%s: %d id(s) occur more than once (%s%s); their rows are all kept", path,
                 len(repeated), shown, ", ..." if len(repeated) > _SHOWN else "")
