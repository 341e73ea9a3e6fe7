"""What a run shows and logs: the progress display, TensorBoard event files, the final table.

Everything here writes on host 0 only (process index 0), so a multi-host run prints once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import jax

log = logging.getLogger(__name__)


def _interactive() -> bool:
  return sys.stderr.isatty()


def _clock(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
  """Training progress on stderr: a tqdm bar (step, examples/s, losses, ETA) on a terminal;
  when stderr is a file or a pipe (a log, nohup, a batch job) or `train.progress=False`,
  one log line per metrics pull instead (a bar draws nothing useful into a file)."""

  def __init__(self, total: int, initial: int, enabled: bool):
    self.bar = None
    self.total, self.step, self.start, self.initial = total, initial, time.time(), initial
    if enabled and _interactive() and jax.process_index() == 0:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, unit="step",
                      file=sys.stderr)

  def update(self, n: int, postfix: dict[str, str]):
    self.step += n
    if self.bar is not None:
      self.bar.set_postfix(postfix, refresh=False)
      self.bar.update(n)
    elif jax.process_index() == 0:
      done = self.step - self.initial
      eta = (time.time() - self.start) / max(done, 1) * (self.total - self.step)
      log.info("step %d/%d (%d%%) %s, ETA %s", self.step, self.total,
               100 * self.step // max(self.total, 1),
               " ".join(f"{k}={v}" for k, v in postfix.items()), _clock(eta))

  def write(self, msg: str):
    if self.bar is not None:
      self.bar.write(msg)
    elif jax.process_index() == 0:
      log.info("%s", msg)

  def close(self):
    if self.bar is not None:
      self.bar.close()


class Counter:
  """Progress of a pass over `total` examples (an evaluation): a tqdm bar on a terminal,
  else a log line at the start, every `every` seconds, and at the end."""

  def __init__(self, label: str, total: int, unit: str = "examples", every: float = 20.0):
    self.label, self.total, self.unit, self.every = label, total, unit, every
    self.done, self.start = 0, time.time()
    self.last = self.start
    self.bar = None
    if jax.process_index() != 0:
      return
    if _interactive():
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      self.bar = tqdm(total=total, desc=label, unit=unit[:-1] if unit.endswith("s") else unit,
                      dynamic_ncols=True, file=sys.stderr, leave=False)
    else:
      log.info("%s: %d %s", label, total, unit)

  def update(self, n: int):
    self.done += n
    if self.bar is not None:
      self.bar.update(n)
    elif jax.process_index() == 0 and time.time() - self.last >= self.every:
      self.last = time.time()
      rate = self.done / max(self.last - self.start, 1e-9)
      log.info("%s: %s/%s %s, ETA %s", self.label, f"{self.done:,}", f"{self.total:,}",
               self.unit, _clock((self.total - self.done) / max(rate, 1e-9)))

  def close(self):
    if self.bar is not None:
      self.bar.close()
    if jax.process_index() == 0:
      seconds = time.time() - self.start
      log.info("%s: %s %s in %.0f s (%.0f/s)", self.label, f"{self.done:,}", self.unit,
               seconds, self.done / max(seconds, 1e-9))


class Writer:
  """TensorBoard event files (tensorboardX: no TensorFlow needed) on host 0."""

  def __init__(self, logdir: str):
    self.writer = None
    if jax.process_index() != 0:
      return
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    except ImportError:
      log.warning("tensorboardX is not installed: no TensorBoard event files")
      return
    self.writer = SummaryWriter(logdir)

  def scalars(self, step: int, values: dict[str, float]):
    if self.writer is not None:
      for k, v in values.items():
        self.writer.add_scalar(k, v, step)
      self.writer.flush()

  def close(self):
    if self.writer is not None:
      self.writer.close()


class History:
  """`WORKDIR/history.jsonl`: one JSON line per metrics pull (`{"step", "train": {...}}`)
  and per dev evaluation (`{"step", "dev": {...}}`), for curves and the report. A resumed
  run first drops the lines after its checkpoint's step, so the file always describes one
  uninterrupted run."""

  def __init__(self, path: str, start: int):
    self.path = path if jax.process_index() == 0 else None
    if self.path is None:
      return
    kept = []
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        for line in f:
          try:
            if json.loads(line)["step"] <= start:
              kept.append(line)
          except (ValueError, KeyError):
            continue  # a line cut short by a kill
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(tmp, path)

  def add(self, step: int, kind: str, values: dict[str, float]):
    if self.path is not None:
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, kind: values}, sort_keys=True) + "\n")


def read_history(path: str) -> list[dict]:
  """The entries of a history.jsonl ([] when there is none). A last line cut short (a run
  killed while writing it) is left out with a warning, as a resumed run drops it; a bad
  line before the last is an error naming it."""
  if not os.path.isfile(path):
    return []
  with open(path, encoding="utf-8") as f:
    lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
  entries = []
  for i, (number, line) in enumerate(lines):
    try:
      entries.append(json.loads(line))
    except ValueError as e:
      if i == len(lines) - 1:
        log.warning("%s: line %d is cut short (a run killed while writing it?); left out",
                    path, number)
        break
      raise ValueError(f"{path}: line {number} is not JSON ({e})") from None
  return entries


def format_table(metrics: dict[str, float]) -> str:
  rows = [(k, v) for k, v in sorted(metrics.items()) if isinstance(v, float)]
  width = max((len(k) for k, _ in rows), default=10)
  lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
  lines += [f"{k:<{width}}  {v:.4f}" for k, v in rows]
  return "\n".join(lines)


# What a run writes, in the order a user looks for it.
_OUTPUTS = ("metrics.json", "predictions", "report", "hf_encoder", "best", "checkpoints",
            "tensorboard", "history.jsonl", "train_stats.json", "config.json")


def written_files(workdir: str, since: float, step: int | None = None) -> str:
  """The lines that end a run: what it wrote (or updated) in `workdir` since `since`."""
  lines = [f"best step {step}; wrote in {workdir}:" if step is not None else
           f"wrote in {workdir}:"]
  for name in _OUTPUTS:
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
      continue
    if os.path.isdir(path):
      files = sorted(f for f in os.listdir(path)
                     if os.path.getmtime(os.path.join(path, f)) >= since - 1)
      if files:
        shown = ", ".join(files[:6]) + (f", ... ({len(files) - 6} more)" if len(files) > 6
                                         else "")
        lines.append(f"  {name}/  {shown}")
    elif os.path.getmtime(path) >= since - 1:
      lines.append(f"  {name}")
  return "\n".join(lines)
