"""Data files to NumPy batches: readers, tokenize-once caching and length-bucketed batching.

Readers parse the course's tab-separated files (and the comma-separated NLI triplets and
tweets) with the `csv` module, find columns by header name, and fail with a `DataError`
naming the file and the 1-based line for any malformed row; `on_invalid="skip"` skips such
rows with a logged warning instead (the real `quora-dev.csv` has two rows with an empty
label). Each file is tokenized once per process into a `TokenizedSet` (flat token arrays
with offsets, one per input segment), optionally cached on disk as `.npz`. Batches are
dicts of int32/float32 NumPy arrays padded to one of a few bucket lengths, so a jitted step
compiles at most once per bucket: `TrainIterator` is an infinite, seeded, resumable,
shardable mixture of sets; `eval_batches` is one deterministic pass over every example.
Nothing here imports JAX.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import logging
import math
import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np

# Segment name -> suffix of its batch keys: "" gives `input_ids`, "1" gives `input_ids_1`.
SEGMENT_SUFFIX = {"": "", "1": "_1", "2": "_2", "3": "_3"}

TWEET_LABELS = {"negative": 0, "neutral": 2, "positive": 4}

_SIMILARITY_MAX = 5.0
_MIX_CHUNK = 1024  # Mixture source choices are drawn this many steps at a time.

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


def _read_table(path: str, delimiter: str, required: Sequence[str], optional: Sequence[str],
                parse_row: Callable[[dict[str, str], str], Any],
                on_invalid: str) -> list[Any]:
  """Parses every data row of a delimited file with a header row.

  Args:
    path: the file.
    delimiter: field separator ("\\t" or ",").
    required: column names the header must contain.
    optional: column names used when present.
    parse_row: `(fields by column name, location) -> parsed row`; raises `DataError`.
    on_invalid: "raise" or "skip" (skipped rows are logged as a warning).

  Returns:
    The parsed rows in file order.
  """
  _check_on_invalid(on_invalid)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"data file not found: {path}")
  sep_name = "tab" if delimiter == "\t" else repr(delimiter)
  rows, skipped = [], []
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
      raise DataError(f"{path}: line 1: expected a header row, the file is empty")
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
    for fields in reader:
      if not fields:
        continue  # A blank line holds no row.
      where = f"{path}: line {reader.line_num}"
      try:
        if len(fields) != len(header):
          raise DataError(f"{where}: expected {len(header)} {sep_name}-separated fields as in "
                          f"the header, got {len(fields)}")
        rows.append(parse_row({name: fields[i] for name, i in columns.items()}, where))
      except DataError as e:
        if on_invalid == "raise":
          raise DataError(f"{e} (on_invalid='skip' skips such rows with a warning)") from None
        skipped.append(str(e))
  if skipped:
    _LOG.warning("%s: skipped %d invalid row(s) of %d: %s", path, len(skipped),
                    len(skipped) + len(rows), "; ".join(skipped[:5]))
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


def _label_column_all_empty(path: str, delimiter: str, name: str) -> bool:
  """Whether `name` is a header column that is blank in every row (an unlabeled file).

  A test file may carry an empty label column; it then reads as unlabeled rather than
  failing on every row. A column that is blank in only some rows is an error per row.
  """
  if not os.path.isfile(path):
    return False
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f, delimiter=delimiter)
    header = [n.strip() for n in next(reader, [])]
    if name not in header:
      return False
    column = header.index(name)
    seen = False
    for fields in reader:
      if fields and len(fields) == len(header):
        seen = True
        if fields[column].strip():
          return False
    return seen


# ---------------------------------------------------------------------------------------
# Tokenized sets.


@dataclasses.dataclass
class Segment:
  """One input segment of every example: flat token and type ids with row offsets."""
  input_ids: np.ndarray  # int32 [total tokens]
  type_ids: np.ndarray  # int32 [total tokens]
  offsets: np.ndarray  # int64 [N + 1]; example i is input_ids[offsets[i]:offsets[i + 1]]

  @classmethod
  def from_lists(cls, ids: Sequence[Sequence[int]],
                 type_ids: Sequence[Sequence[int]]) -> Segment:
    lengths = np.fromiter((len(x) for x in ids), np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    flat_ids = np.fromiter(itertools.chain.from_iterable(ids), np.int32, count=total)
    flat_types = np.fromiter(itertools.chain.from_iterable(type_ids), np.int32, count=total)
    return cls(flat_ids, flat_types, offsets)

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets).astype(np.int32)

  def tokens(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and type ids of example `i`, unpadded."""
    start, end = self.offsets[i], self.offsets[i + 1]
    return self.input_ids[start:end], self.type_ids[start:end]


@dataclasses.dataclass
class TokenizedSet:
  """A tokenized file: per segment ("", or "1"/"2"/"3") unpadded tokens, plus labels and ids."""
  segments: dict[str, Segment]
  labels: np.ndarray | None  # int32 or float32 [N]
  ids: list[str] | None
  lengths: np.ndarray  # int32 [N], per example the longest of its segments
  pad_id: int = 0

  def __len__(self) -> int:
    return len(self.lengths)

  @classmethod
  def from_lists(cls, segments: dict[str, tuple[Sequence[Sequence[int]], Sequence[Sequence[int]]]],
                 labels: np.ndarray | None = None, ids: Sequence[str] | None = None,
                 pad_id: int = 0) -> TokenizedSet:
    """Builds a set from `{segment: (token id lists, type id lists)}`."""
    if not segments or any(name not in SEGMENT_SUFFIX for name in segments):
      raise ValueError(f"segment names must be among {list(SEGMENT_SUFFIX)}, got {list(segments)}")
    built = {name: Segment.from_lists(*lists) for name, lists in segments.items()}
    sizes = {len(seg.offsets) - 1 for seg in built.values()}
    if len(sizes) != 1:
      raise ValueError(f"segments have different numbers of examples: {sizes}")
    n = sizes.pop()
    if labels is not None and len(labels) != n:
      raise ValueError(f"{len(labels)} labels for {n} examples")
    if ids is not None and len(ids) != n:
      raise ValueError(f"{len(ids)} ids for {n} examples")
    lengths = np.max(np.stack([seg.lengths for seg in built.values()]), axis=0)
    return cls(built, labels, None if ids is None else list(ids), lengths.astype(np.int32),
               pad_id)


def tokenize_sentences(rows: SentenceRows, tokenizer: Any, max_length: int) -> TokenizedSet:
  """Single sentences as segment "": `[CLS] text [SEP]`."""
  ids, type_ids = tokenizer.encode_ids(rows.texts, max_length=max_length)
  return TokenizedSet.from_lists({"": (ids, type_ids)}, rows.labels, rows.ids,
                                 tokenizer.pad_id)


def tokenize_pairs(rows: PairRows, tokenizer: Any, max_length: int, joint: bool,
                   prompt: str | None = None) -> TokenizedSet:
  """Sentence pairs, jointly as segment "" or separately as segments "1" and "2".

  Args:
    rows: the pairs.
    tokenizer: a `tokenization.BertTokenizer`.
    max_length: token budget per encoded input (a joint pair shares it).
    joint: True: one input `[CLS] (prompt + " ") a [SEP] b [SEP]` (cross-encoder);
      False: `[CLS] a [SEP]` and `[CLS] b [SEP]` (bi-encoder).
    prompt: text prepended to the first sentence of a joint pair.
  """
  if joint:
    texts_a = rows.texts_a if not prompt else [f"{prompt} {a}" for a in rows.texts_a]
    ids, type_ids = tokenizer.encode_ids(texts_a, rows.texts_b, max_length=max_length)
    segments = {"": (ids, type_ids)}
  else:
    if prompt:
      raise ValueError("a prompt applies to joint pairs only (joint=True)")
    segments = {"1": tokenizer.encode_ids(rows.texts_a, max_length=max_length),
                "2": tokenizer.encode_ids(rows.texts_b, max_length=max_length)}
  return TokenizedSet.from_lists(segments, rows.labels, rows.ids, tokenizer.pad_id)


def tokenize_triplets(rows: TripletRows, tokenizer: Any, max_length: int) -> TokenizedSet:
  """Triplets as segments "1" (anchor), "2" (positive), "3" (negative); no labels or ids."""
  segments = {name: tokenizer.encode_ids(texts, max_length=max_length)
              for name, texts in (("1", rows.anchor), ("2", rows.positive),
                                  ("3", rows.negative))}
  return TokenizedSet.from_lists(segments, None, None, tokenizer.pad_id)


# ---------------------------------------------------------------------------------------
# Tokenize once: in-process and optional on-disk cache.

_CACHE: dict[tuple[Any, ...], TokenizedSet] = {}


def clear_cache() -> None:
  """Empties the in-process cache of tokenized files."""
  _CACHE.clear()


def _file_key(path: str) -> tuple[str, int, int]:
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"data file not found: {path}")
  stat = os.stat(path)
  return path, stat.st_mtime_ns, stat.st_size


def _cached(path: str, tokenizer: Any, options: tuple[Any, ...],
            build: Callable[[], TokenizedSet], cache_dir: str | None) -> TokenizedSet:
  """`build()` once per (file version, tokenizer, options), in memory and in `cache_dir`."""
  vocab_file = os.path.abspath(getattr(tokenizer, "vocab_file", "") or "")
  vocab_key = _file_key(vocab_file) if os.path.isfile(vocab_file) else (vocab_file, 0, 0)
  key = (_file_key(path), vocab_key, getattr(tokenizer, "model_max_length", None)) + options
  if key in _CACHE:
    return _CACHE[key]
  npz_file = None
  if cache_dir:
    digest = hashlib.sha1(repr(key).encode()).hexdigest()[:16]
    npz_file = os.path.join(cache_dir, f"{os.path.basename(path)}.{digest}.npz")
  if npz_file and os.path.isfile(npz_file):
    tokset = _load_npz(npz_file)
  else:
    tokset = build()
    if npz_file:
      os.makedirs(cache_dir, exist_ok=True)
      _save_npz(tokset, npz_file)
  _CACHE[key] = tokset
  return tokset


def _save_npz(tokset: TokenizedSet, npz_file: str) -> None:
  arrays = {"lengths": tokset.lengths, "pad_id": np.int64(tokset.pad_id)}
  for name, seg in tokset.segments.items():
    arrays[f"seg{name}/input_ids"] = seg.input_ids
    arrays[f"seg{name}/type_ids"] = seg.type_ids
    arrays[f"seg{name}/offsets"] = seg.offsets
  if tokset.labels is not None:
    arrays["labels"] = tokset.labels
  if tokset.ids is not None:
    arrays["ids"] = np.asarray(tokset.ids, dtype=str)
  tmp_file = f"{npz_file}.tmp{os.getpid()}.npz"
  np.savez(tmp_file, **arrays)
  os.replace(tmp_file, npz_file)  # Atomic: readers never see a partial file.


def _load_npz(npz_file: str) -> TokenizedSet:
  with np.load(npz_file, allow_pickle=False) as z:
    names = sorted({k[3:].split("/")[0] for k in z.files if k.startswith("seg")})
    segments = {name: Segment(z[f"seg{name}/input_ids"], z[f"seg{name}/type_ids"],
                              z[f"seg{name}/offsets"]) for name in names}
    labels = z["labels"] if "labels" in z.files else None
    ids = z["ids"].tolist() if "ids" in z.files else None
    return TokenizedSet(segments, labels, ids, z["lengths"], int(z["pad_id"]))


def load_and_tokenize_sentiment(path: str, tokenizer: Any, max_length: int, *,
                                num_classes: int = 5, label_map: dict[int, int] | None = None,
                                on_invalid: str = "raise",
                                cache_dir: str | None = None) -> TokenizedSet:
  """`read_sentiment` then `tokenize_sentences`, cached."""
  label_items = None if label_map is None else tuple(sorted(label_map.items()))
  return _cached(path, tokenizer, ("sentiment", num_classes, label_items, on_invalid,
                                   max_length),
                 lambda: tokenize_sentences(
                     read_sentiment(path, num_classes, label_map, on_invalid), tokenizer,
                     max_length), cache_dir)


def load_and_tokenize_pairs(path: str, task: str, tokenizer: Any, max_length: int, *,
                            joint: bool, prompt: str | None = None, on_invalid: str = "raise",
                            cache_dir: str | None = None) -> TokenizedSet:
  """`read_pairs` then `tokenize_pairs`, cached."""
  return _cached(path, tokenizer, ("pairs", task, on_invalid, max_length, joint, prompt),
                 lambda: tokenize_pairs(read_pairs(path, task, on_invalid), tokenizer,
                                        max_length, joint, prompt), cache_dir)


def load_and_tokenize_triplets(path: str, tokenizer: Any, max_length: int, *,
                               on_invalid: str = "raise",
                               cache_dir: str | None = None) -> TokenizedSet:
  """`read_triplets` then `tokenize_triplets`, cached."""
  return _cached(path, tokenizer, ("triplets", on_invalid, max_length),
                 lambda: tokenize_triplets(read_triplets(path, on_invalid), tokenizer,
                                           max_length), cache_dir)


def load_and_tokenize_tweets(path: str, tokenizer: Any, max_length: int, *,
                             on_invalid: str = "raise",
                             cache_dir: str | None = None) -> TokenizedSet:
  """`read_tweets` then `tokenize_sentences`, cached."""
  return _cached(path, tokenizer, ("tweets", on_invalid, max_length),
                 lambda: tokenize_sentences(read_tweets(path, on_invalid), tokenizer,
                                            max_length), cache_dir)


# ---------------------------------------------------------------------------------------
# Batching.


def _check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
  buckets = tuple(int(b) for b in buckets)
  if not buckets or any(b <= 0 for b in buckets) or list(buckets) != sorted(set(buckets)):
    raise ValueError(f"buckets must be strictly increasing positive lengths, got {buckets}")
  return buckets


def bucket_for(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket length >= `length`."""
  for bucket in buckets:
    if length <= bucket:
      return bucket
  raise ValueError(f"an example of {length} tokens exceeds the largest bucket {buckets[-1]} "
                   f"(buckets {tuple(buckets)}): raise it or lower max_length")


def _bucket_indices(tokset: TokenizedSet, buckets: tuple[int, ...]) -> np.ndarray:
  """Per example the index into `buckets` of its bucket."""
  which = np.searchsorted(np.asarray(buckets), tokset.lengths, side="left")
  if len(which) and which.max() >= len(buckets):
    bucket_for(int(tokset.lengths.max()), buckets)  # Raises with the message.
  return which


def make_batch(tokset: TokenizedSet, rows: np.ndarray, length: int) -> dict[str, np.ndarray]:
  """The batch of examples `rows` (-1: a padding row of weight 0) padded to `length`."""
  rows = np.asarray(rows, np.int64)
  valid = rows >= 0
  safe_rows = np.where(valid, rows, 0)
  positions = np.arange(length)
  batch = {}
  for name, seg in tokset.segments.items():
    starts = seg.offsets[safe_rows]
    lengths = np.where(valid, seg.offsets[safe_rows + 1] - starts, 0)
    if len(lengths) and lengths.max() > length:
      raise ValueError(f"an example of {lengths.max()} tokens does not fit length {length}")
    mask = positions[None, :] < lengths[:, None]  # [B, L]
    flat = np.where(mask, starts[:, None] + positions[None, :], 0)
    if not len(seg.input_ids):
      flat = np.zeros_like(flat)
      source_ids = source_types = np.zeros(1, np.int32)
    else:
      source_ids, source_types = seg.input_ids, seg.type_ids
    suffix = SEGMENT_SUFFIX[name]
    batch[f"input_ids{suffix}"] = np.where(mask, source_ids[flat], tokset.pad_id).astype(np.int32)
    batch[f"attention_mask{suffix}"] = mask.astype(np.int32)
    batch[f"token_type_ids{suffix}"] = np.where(mask, source_types[flat], 0).astype(np.int32)
  if tokset.labels is not None:
    batch["labels"] = np.where(valid, tokset.labels[safe_rows], 0).astype(tokset.labels.dtype)
  batch["weights"] = valid.astype(np.float32)
  batch["index"] = np.where(valid, rows, -1).astype(np.int32)
  return batch


def eval_batches(tokset: TokenizedSet, batch_size: int,
                 buckets: Sequence[int]) -> Iterator[dict[str, np.ndarray]]:
  """One deterministic pass over every example exactly once, bucket by bucket.

  Within a bucket examples keep file order; each bucket's last batch is padded with
  weight-0 rows (`index` -1) to `batch_size`, so every batch has shape `[batch_size, L]`
  with L a bucket length.
  """
  buckets = _check_buckets(buckets)
  which = _bucket_indices(tokset, buckets)
  for b, length in enumerate(buckets):
    members = np.flatnonzero(which == b)
    for start in range(0, len(members), batch_size):
      rows = np.full(batch_size, -1, np.int64)
      chunk = members[start:start + batch_size]
      rows[:len(chunk)] = chunk
      yield make_batch(tokset, rows, length)


class _SourceStream:
  """Endless full batches of one set, epoch by epoch, each epoch a function of its number.

  Epoch e shuffles all examples with `default_rng((seed, source, e))`, groups them by
  bucket (stable) and cuts each bucket into full global batches. A bucket's remainder
  (< one global batch) moves up into the next bucket (the examples fit its longer
  padding); the final remainder becomes one more batch, filled up with other examples of
  this epoch drawn without replacement, so every example is seen in every epoch, a few
  twice, and never twice in one batch. The batch order is then shuffled. Since a plan
  depends only on (seed, source, epoch), (epoch, position) is a complete state.
  """

  def __init__(self, tokset: TokenizedSet, global_batch: int, buckets: tuple[int, ...],
               seed: int, source: int):
    self.which = _bucket_indices(tokset, buckets)  # Raises first on too long examples.
    if len(tokset) < global_batch:
      raise ValueError(f"a data set of {len(tokset)} examples cannot fill a global batch of "
                       f"{global_batch} without repeating examples in it")
    self.tokset = tokset
    self.global_batch = global_batch
    self.buckets = buckets
    self.seed = seed
    self.source = source
    self.epoch, self.position = 0, 0
    self._plan_epoch = -1
    self._set_plan(0)

  def _build(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows [num_batches, global_batch], bucket index per batch) of `epoch`."""
    rng = np.random.default_rng((self.seed, self.source, epoch))
    pool = rng.permutation(len(self.tokset))
    which = self.which[pool]
    rows, bucket_of_batch = [], []
    remainder = np.zeros(0, np.int64)
    for b in range(len(self.buckets)):
      members = np.concatenate([remainder, pool[which == b]])
      full = len(members) // self.global_batch * self.global_batch
      rows.append(members[:full].reshape(-1, self.global_batch))
      bucket_of_batch.append(np.full(full // self.global_batch, b, np.int64))
      remainder = members[full:]
    if len(remainder):
      bucket = int(self.which[remainder].max())
      unused = np.ones(len(self.tokset), bool)
      unused[remainder] = False
      fits = unused & (self.which <= bucket)
      if fits.sum() < self.global_batch - len(remainder):  # Pad to the largest bucket.
        bucket, fits = len(self.buckets) - 1, unused
      fill = rng.choice(np.flatnonzero(fits), self.global_batch - len(remainder),
                        replace=False)
      rows.append(np.concatenate([remainder, fill])[None])
      bucket_of_batch.append(np.array([bucket], np.int64))
    rows_arr = np.concatenate(rows)
    order = rng.permutation(len(rows_arr))
    return rows_arr[order], np.concatenate(bucket_of_batch)[order]

  def _set_plan(self, epoch: int) -> None:
    if epoch != self._plan_epoch:
      self._rows, self._bucket = self._build(epoch)
      self._plan_epoch = epoch

  def next(self) -> tuple[np.ndarray, int]:
    """The rows of the next global batch and its padded length."""
    rows = self._rows[self.position]
    length = self.buckets[self._bucket[self.position]]
    self.position += 1
    if self.position == len(self._rows):  # Keeps the state canonical: the next batch.
      self.epoch, self.position = self.epoch + 1, 0
      self._set_plan(self.epoch)
    return rows, length

  def restore(self, epoch: int, position: int) -> None:
    self._set_plan(epoch)
    if not 0 <= position < len(self._rows):
      raise ValueError(f"position {position} is outside epoch {epoch} of "
                       f"{len(self._rows)} batches")
    self.epoch, self.position = epoch, position


class TrainIterator:
  """Infinite, seeded, resumable training batches from a mixture of tokenized sets.

  Every batch comes from one source, chosen per step with probability proportional to
  `mix_weights` (seeded by `(seed, step)`), and from one length bucket, padded to it. Batches
  are always full (all weights 1, `index` >= 0) and every source's epoch covers each of its
  examples at least once (a bucket's leftovers move up a bucket and the last few share a
  batch topped up with repeats; see `_SourceStream`). A source with fewer examples than the
  global batch is an error. With `shard_count` hosts, all hosts build the same global batch
  of `batch_size * shard_count` rows and host `shard_index` yields its contiguous slice.
  """

  def __init__(self, sources: Sequence[TokenizedSet], mix_weights: Sequence[float] | None,
               batch_size: int, buckets: Sequence[int], seed: int = 0, shard_index: int = 0,
               shard_count: int = 1):
    """Builds the iterator at step 0.

    Args:
      sources: sets with the same segments and label dtype (e.g. SST, CFIMDB, tweets).
      mix_weights: per source the relative chance that a batch comes from it (None: equal).
      batch_size: rows per batch on this host.
      buckets: strictly increasing padded lengths; the longest example must fit the last.
      seed: everything random derives from it.
      shard_index: this host's slice of the global batch.
      shard_count: number of hosts; the global batch is `batch_size * shard_count`.
    """
    if isinstance(sources, TokenizedSet):
      sources = [sources]
    sources = list(sources)
    if not sources:
      raise ValueError("TrainIterator needs at least one source")
    if batch_size <= 0:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= shard_index < shard_count:
      raise ValueError(f"shard_index {shard_index} not in [0, shard_count={shard_count})")
    mix_weights = [1.0] * len(sources) if mix_weights is None else list(mix_weights)
    if (len(mix_weights) != len(sources) or any(w < 0 for w in mix_weights)
        or sum(mix_weights) <= 0):
      raise ValueError(f"mix_weights must be {len(sources)} non-negative numbers with a "
                       f"positive sum, got {mix_weights}")
    first = sources[0]
    for tokset in sources[1:]:
      if (set(tokset.segments) != set(first.segments)
          or (tokset.labels is None) != (first.labels is None)
          or (first.labels is not None and tokset.labels.dtype != first.labels.dtype)):
        raise ValueError("mixed sources must have the same segments and label dtype")
    self.sources = sources
    self.batch_size = batch_size
    self.buckets = _check_buckets(buckets)
    self.seed = seed
    self.shard_index, self.shard_count = shard_index, shard_count
    self._probs = np.asarray(mix_weights, np.float64) / sum(mix_weights)
    self._streams = [_SourceStream(tokset, batch_size * shard_count, self.buckets, seed, i)
                     for i, tokset in enumerate(sources)]
    self.step = 0
    self._choice_chunk, self._choices = -1, np.zeros(0, np.int64)

  def _source_for(self, step: int) -> int:
    if len(self.sources) == 1:
      return 0
    chunk = step // _MIX_CHUNK
    if chunk != self._choice_chunk:
      rng = np.random.default_rng((self.seed, 1_000_003, chunk))
      self._choices = rng.choice(len(self.sources), size=_MIX_CHUNK, p=self._probs)
      self._choice_chunk = chunk
    return int(self._choices[step % _MIX_CHUNK])

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    source = self._source_for(self.step)
    rows, length = self._streams[source].next()
    self.step += 1
    start = self.shard_index * self.batch_size
    return make_batch(self.sources[source], rows[start:start + self.batch_size], length)

  def get_state(self) -> dict[str, int]:
    """A small JSON-serializable state; `set_state` of it continues with the same batches."""
    state = {"step": self.step, "num_sources": len(self.sources)}
    for i, stream in enumerate(self._streams):
      state[f"epoch_{i}"] = stream.epoch
      state[f"position_{i}"] = stream.position
    return state

  def set_state(self, state: dict[str, int]) -> None:
    if int(state["num_sources"]) != len(self.sources):
      raise ValueError(f"state is for {state['num_sources']} sources, this iterator has "
                       f"{len(self.sources)}")
    for i, stream in enumerate(self._streams):
      stream.restore(int(state[f"epoch_{i}"]), int(state[f"position_{i}"]))
    self.step = int(state["step"])
