"""Predictions for an input file of any length: `--mode=predict --predict_input=FILE`.

`read_inputs` reads sentences or pairs with their ids from a .tsv/.csv with a header or a
.jsonl file, one row at a time, with errors naming file and line; `predict_file` streams
them through `Predictor.stream` into an `id<TAB>prediction` TSV written under a temporary
name and renamed when complete; `predict_file_workdir` does that with a workdir's best
checkpoint under its lock.
"""

from __future__ import annotations

import collections
import csv
import json
import logging
import os
from typing import Any, Iterator, Sequence

from mtbert_jax import checkpoint as ckpt_lib
from mtbert_jax import settings as settings_lib
from mtbert_jax import workdir as workdir_lib
from mtbert_jax.evaluate import Predictor, StreamChunk, STREAM_CHUNK, restore_best
from mtbert_jax.readers import DataError
from mtbert_jax.settings import Settings

log = logging.getLogger(__name__)

INPUT_COLUMNS = {"sst": ("sentence",), "para": ("sentence1", "sentence2"),
                 "sts": ("sentence1", "sentence2")}
OUTPUT_HEADERS = {"sst": ("id", "predicted", "p0", "p1", "p2", "p3", "p4"),
                  "para": ("id", "predicted", "probability"), "sts": ("id", "similarity")}


def _decoded_lines(path: str) -> Iterator[tuple[int, str]]:
  """(1-based number, text with its line ending) of each line; invalid UTF-8 is a
  `DataError` naming the line."""
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataError(f"{path}: line {number}: not valid UTF-8 (byte "
                                 f"{e.start + 1} of the line)") from None
      yield number, text.removeprefix("\ufeff") if number == 1 else text


def _checked_row(path: str, number: int, task: str, example_id: Any,
                 texts: Sequence[Any]) -> tuple[str, Any]:
  where = f"{path}: line {number}"
  if isinstance(example_id, bool) or not isinstance(example_id, (str, int)):
    raise DataError(f"{where}: the id is a {type(example_id).__name__}, expected a "
                             "string or an integer")
  example_id = str(example_id)
  if not example_id.strip() or any(c in example_id for c in "\t\r\n"):
    raise DataError(f"{where}: the id {example_id!r} is empty or holds a tab or a "
                             "line break")
  for name, text in zip(INPUT_COLUMNS[task], texts):
    if not isinstance(text, str):
      raise DataError(f"{where}: {name!r} is a {type(text).__name__}, expected a "
                               "string")
    if not text.strip():
      raise DataError(f"{where}: {name!r} is empty, expected a sentence")
  return example_id, texts[0] if task == "sst" else (texts[0], texts[1])


def read_inputs(path: str, task: str) -> Iterator[tuple[str, Any]]:
  """(id, sentence or (sentence1, sentence2)) for each row of `path`, one line at a time:
  a `.tsv` or `.csv` file with a header holding `id` and `INPUT_COLUMNS[task]` (parsed by
  the csv module; other columns are ignored), or a `.jsonl` file of one object per line
  with those keys. A row that does not parse, lacks a column or has an empty text is a
  `DataError` naming the file and line; blank lines are skipped."""
  if os.path.isdir(path):
    raise IsADirectoryError(f"--predict_input={path} is a folder, expected a file")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--predict_input={path}: no such file")
  ext = os.path.splitext(path)[1].lower()
  if ext not in (".tsv", ".csv", ".jsonl"):
    raise DataError(f"{path}: expected a .tsv, .csv or .jsonl file, got {ext!r}")
  names = ("id",) + INPUT_COLUMNS[task]
  lines = _decoded_lines(path)
  if ext == ".jsonl":
    for number, text in lines:
      if not text.strip():
        continue
      try:
        row = json.loads(text)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {number}: not valid JSON ({e.msg}, column "
                                 f"{e.colno})") from None
      if not isinstance(row, dict):
        raise DataError(f"{path}: line {number}: a {type(row).__name__}, expected "
                                 f"an object with the keys {list(names)}")
      missing = [n for n in names if n not in row]
      if missing:
        raise DataError(f"{path}: line {number}: no {missing} key (expected "
                                 f"{list(names)})")
      yield _checked_row(path, number, task, row["id"], [row[n] for n in names[1:]])
    return
  numbers: list[int] = []  # the lines the csv module read for the current row

  def numbered():
    for number, text in lines:
      numbers.append(number)
      yield text
  reader = csv.reader(numbered(), delimiter="\t" if ext == ".tsv" else ",", strict=True)
  try:
    header = next(reader, None)
    if header is None:
      raise DataError(f"{path}: line 1: expected a header row, the file is empty")
    header = [h.strip() for h in header]
    missing = [n for n in names if n not in header]
    if missing:
      raise DataError(f"{path}: line 1: the header {header} lacks the column(s) "
                               f"{missing} (expected {list(names)})")
    where = [header.index(n) for n in names]
    numbers.clear()
    for row in reader:
      number = numbers[0]  # a quoted field may span lines: the row's first one
      numbers.clear()
      if not row:
        continue
      if len(row) != len(header):
        raise DataError(f"{path}: line {number}: {len(row)} fields, the header has "
                                 f"{len(header)}")
      yield _checked_row(path, number, task, row[where[0]], [row[i] for i in where[1:]])
  except csv.Error as e:
    raise DataError(f"{path}: line {numbers[0] if numbers else 1}: the line does "
                             f"not parse ({e})") from None


def _output_line(task: str, example_id: str, chunk: StreamChunk, i: int) -> str:
  fields = [example_id]
  if task == "sst":
    fields += [str(int(chunk.predictions[i]))] + [repr(float(p)) for p in chunk.probabilities[i]]
  elif task == "para":
    fields += [str(int(chunk.predictions[i])), repr(float(chunk.probabilities[i]))]
  else:
    fields.append(repr(float(chunk.predictions[i])))
  return "\t".join(fields) + "\n"


def predict_file(predictor: Predictor, task: str, input_path: str, output_path: str,
                 chunk_size: int = STREAM_CHUNK, progress: bool = False) -> int:
  """Streams `input_path` (`read_inputs`) through `predictor` into `output_path`, a TSV of
  `OUTPUT_HEADERS[task]`: the id, then for sst the class and its 5 probabilities, for para
  the 0/1 and the probability, for sts the score (floats written exactly, by `repr`).
  Written to a temporary name renamed at the end (removed on an error), so no partial file
  looks complete. Returns the number of rows; a file without rows is a `DataError`."""
  ids: collections.deque = collections.deque()  # the ids of the chunk being predicted

  def items():
    for example_id, item in read_inputs(input_path, task):
      ids.append(example_id)
      yield item
  tmp = f"{output_path}.tmp{os.getpid()}"
  count = 0
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write("\t".join(OUTPUT_HEADERS[task]) + "\n")
      for chunk in predictor.stream(task, items(), chunk_size, progress):
        for i in range(len(chunk.predictions)):
          f.write(_output_line(task, ids.popleft(), chunk, i))
        count += len(chunk.predictions)
    if not count:
      raise DataError(f"{input_path}: no rows to predict")
    os.replace(tmp, output_path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return count


def input_output_path(workdir: str, task: str, input_path: str) -> str:
  """The default output of `predict_file_workdir`: WORKDIR/predictions/<stem>-<task>-output.tsv."""
  stem = os.path.splitext(os.path.basename(input_path))[0]
  return os.path.join(workdir, "predictions", f"{stem}-{task}-output.tsv")


def predict_file_workdir(workdir: str, task: str, input_path: str,
                         output_path: str | None = None, s: Settings | None = None,
                         progress: bool = False) -> tuple[str, int]:
  """`--mode=predict --predict_input=FILE`: `predict_file` with the best checkpoint, the
  run's lengths, `eval.batch_size` and `eval.both_orders` (`s` as in `evaluate_workdir`:
  default the run's, else checked against it). Returns (output path, rows written)."""
  if task not in INPUT_COLUMNS:
    raise settings_lib.ConfigError(f"--predict_task={task}: expected one of "
                                   f"{sorted(INPUT_COLUMNS)}")
  workdir = workdir_lib.prepare(workdir, create=False)
  next(read_inputs(input_path, task), None)  # a missing file or column: before the restore
  output_path = os.path.abspath(output_path or input_output_path(workdir, task, input_path))
  if os.path.isdir(output_path):
    raise IsADirectoryError(f"--predict_output={output_path} is a folder, expected a file name")
  os.makedirs(os.path.dirname(output_path), exist_ok=True)
  with workdir_lib.lock(workdir, "predict"):
    s = ckpt_lib.run_settings(workdir, s)
    mt_model, params, tok = restore_best(s, workdir)
    predictor = Predictor(mt_model, params, tok, s.data.max_length, s.eval_buckets,
                          s.eval.batch_size, s.eval.both_orders)
    count = predict_file(predictor, task, input_path, output_path, progress=progress)
  log.info("wrote %s (%d rows)", output_path, count)
  return output_path, count
