"""Tokenized sets and length-bucketed NumPy batches: what the jitted steps are fed.

Rows from `readers.py` are tokenized once per process into a `TokenizedSet` (flat token
arrays with offsets, one per input segment). Batches are dicts of int32/float32 NumPy
arrays padded to one of a few bucket lengths, so a jitted step compiles at most once per
bucket: `TrainIterator` is an infinite, seeded, resumable, shardable mixture of sets;
`eval_batches` is one deterministic pass over every example. Nothing here imports JAX.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mtbert_jax.readers import PairRows, SentenceRows, TripletRows

# Segment name -> suffix of its batch keys: "" gives `input_ids`, "1" gives `input_ids_1`.
SEGMENT_SUFFIX = {"": "", "1": "_1", "2": "_2", "3": "_3"}

_MIX_CHUNK = 1024  # Mixture source choices are drawn this many steps at a time.


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
  # True for another source's examples in another order (pairs as (b, a)): the task
  # sampler counts a task's examples once (`train.task_schedule`).
  reordered: bool = False
  # A teacher's targets per example (float32 [N] or [N, C], `distill.attach`), batched as
  # "teacher" beside the labels; None: no teacher.
  targets: np.ndarray | None = None

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
# Tokenize once per process.

_CACHE: dict[tuple[Any, ...], TokenizedSet] = {}


def clear_cache() -> None:
  """Empties the in-process cache of tokenized files."""
  _CACHE.clear()


def _file_key(path: str) -> tuple[str, int, int]:
  path = os.path.abspath(path)
  stat = os.stat(path)
  return path, stat.st_mtime_ns, stat.st_size


def tokenize_once(path: str, tokenizer: Any, options: tuple[Any, ...],
                  build: Callable[[], TokenizedSet]) -> TokenizedSet:
  """`build()` once per (file version, tokenizer vocabulary, `options`) in this process:
  a run reads its dev files for periodic and final evaluation."""
  vocab_file = os.path.abspath(getattr(tokenizer, "vocab_file", "") or "")
  vocab_key = _file_key(vocab_file) if os.path.isfile(vocab_file) else (vocab_file, 0, 0)
  path_key = _file_key(path) if os.path.exists(path) else (path, 0, 0)  # e.g. tfds:...
  key = (path_key, vocab_key, getattr(tokenizer, "model_max_length", None)) + options
  if key not in _CACHE:
    _CACHE[key] = build()
  return _CACHE[key]


def limit_rows(tokset: TokenizedSet, limit: int) -> TokenizedSet:
  """The first `limit` rows of a set (0: all)."""
  if not limit or limit >= len(tokset):
    return tokset
  segments = {}
  for name, seg in tokset.segments.items():
    end = int(seg.offsets[limit])
    segments[name] = Segment(seg.input_ids[:end], seg.type_ids[:end], seg.offsets[:limit + 1])
  return TokenizedSet(segments, None if tokset.labels is None else tokset.labels[:limit],
                      None if tokset.ids is None else tokset.ids[:limit],
                      tokset.lengths[:limit], tokset.pad_id, tokset.reordered,
                      None if tokset.targets is None else tokset.targets[:limit])


def select_rows(tokset: TokenizedSet, keep: np.ndarray) -> TokenizedSet:
  """The rows of a set where the boolean mask `keep` [N] is true, in their order."""
  rows = np.flatnonzero(keep)
  segments = {}
  for name, seg in tokset.segments.items():
    lengths = np.diff(seg.offsets)[rows]
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = (np.concatenate([np.arange(seg.offsets[r], seg.offsets[r + 1]) for r in rows])
              if len(rows) else np.zeros(0, np.int64))
    segments[name] = Segment(seg.input_ids[tokens], seg.type_ids[tokens], offsets)
  return TokenizedSet(segments, None if tokset.labels is None else tokset.labels[rows],
                      None if tokset.ids is None else [tokset.ids[r] for r in rows],
                      tokset.lengths[rows], tokset.pad_id, tokset.reordered,
                      None if tokset.targets is None else tokset.targets[rows])


def in_validation_split(ids: Sequence[str], fraction: float) -> np.ndarray:
  """Per row id, whether the row belongs to the validation split carved from a train file.

  A row is in it when the first 8 bytes of BLAKE2b(id), read as a number in [0, 1), fall
  below `fraction`: a function of the id alone, so the split is the same on every machine,
  in every process and in every order of the file, and a row keeps its side when rows are
  added. About `fraction` of the rows fall in it (the sizes of the course files' splits
  are in the README)."""
  cut = int(fraction * 2**64)
  return np.fromiter((int.from_bytes(hashlib.blake2b(str(i).encode("utf-8"),
                                                     digest_size=8).digest(), "big") < cut
                      for i in ids), bool, count=len(ids))


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
  if tokset.targets is not None:
    keep = valid.reshape((-1,) + (1,) * (tokset.targets.ndim - 1))
    batch["teacher"] = np.where(keep, tokset.targets[safe_rows], 0).astype(np.float32)
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
          or (first.labels is not None and tokset.labels.dtype != first.labels.dtype)
          or (tokset.targets is None) != (first.targets is None)):
        raise ValueError("mixed sources must have the same segments and label dtype, and "
                         "all or none a teacher's targets")
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


class TaskSchedule:
  """Which task each step trains, as a function of the step alone (so a resume continues
  the same sequence).

  "round_robin" (the paper): `tasks[step % T]`. "proportional": each step draws task t
  with probability n_t / sum(n), n_t its number of training examples; "temperature": with
  probability n_t^(1/T) / sum(n^(1/T)) (T5's and sentence-transformers' temperature
  sampling; T = 1 is "proportional", T -> inf uniform); "annealed" (Stickland and Murray's
  annealed sampling): with probability n_t^a / sum(n^a), the exponent a moving linearly
  from `alpha_start` at step 0 to `alpha_end` at step `num_steps - 1`, so the large task
  dominates early and the small ones get more of the late steps. Draws are seeded by
  (seed, block of `_MIX_CHUNK` steps).
  """

  MODES = ("round_robin", "proportional", "temperature", "annealed")

  def __init__(self, tasks: Sequence[str], sizes: Sequence[int], mode: str = "round_robin",
               temperature: float = 1.0, seed: int = 0, alpha_start: float = 1.0,
               alpha_end: float = 0.2, num_steps: int = 1):
    if mode not in self.MODES:
      raise ValueError(f"unknown task sampling {mode!r}")
    if len(sizes) != len(tasks) or any(n <= 0 for n in sizes):
      raise ValueError(f"need a positive size per task, got {dict(zip(tasks, sizes))}")
    self.tasks, self.mode, self.seed = tuple(tasks), mode, seed
    self._sizes = np.asarray(sizes, np.float64)
    self._alphas = (alpha_start, alpha_end, max(1, num_steps - 1))
    power = 1.0 if mode == "proportional" else 1.0 / temperature
    weights = self._sizes ** power
    # "annealed": the probabilities of step 0 (`probabilities_at` gives any step's).
    self.probabilities = (np.full(len(tasks), 1.0 / len(tasks)) if mode == "round_robin"
                          else self.probabilities_at(0) if mode == "annealed"
                          else weights / weights.sum())
    self._chunk, self._draws = -1, np.zeros(0, np.int64)

  def probabilities_at(self, step: int) -> np.ndarray:
    """Each task's probability at `step` (constant unless "annealed")."""
    if self.mode != "annealed":
      return self.probabilities
    start, end, last = self._alphas
    alpha = start + (end - start) * min(1.0, step / last)
    weights = self._sizes ** alpha
    return weights / weights.sum()

  def _draw(self, chunk: int) -> np.ndarray:
    rng = np.random.default_rng((self.seed, 2_000_003, chunk))
    if self.mode != "annealed":
      return rng.choice(len(self.tasks), size=_MIX_CHUNK, p=self.probabilities)
    # One uniform draw per step, read against that step's cumulative probabilities.
    uniform = rng.random(_MIX_CHUNK)
    first = chunk * _MIX_CHUNK
    return np.array([min(int(np.searchsorted(np.cumsum(self.probabilities_at(first + i)), u,
                                             side="right")), len(self.tasks) - 1)
                     for i, u in enumerate(uniform)], np.int64)

  def __call__(self, step: int) -> str:
    if self.mode == "round_robin":
      return self.tasks[step % len(self.tasks)]
    chunk = step // _MIX_CHUNK
    if chunk != self._chunk:
      self._draws = self._draw(chunk)
      self._chunk = chunk
    return self.tasks[int(self._draws[step % _MIX_CHUNK])]
