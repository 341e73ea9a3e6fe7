"""The ablation table: run the rows of `configs/ablation.py`, tabulate dev metrics vs baseline.

  python -m mtbert_jax.analysis --workdir=runs/ablation --rows=all \\
      --steps=1500 --batch_size=64

Each row trains in `WORKDIR/<row>` with the same seed, budget and batch size (a finished row
is not run again: its `metrics.json` is read back), then `WORKDIR/ablation.md` (a markdown
table: dev SST accuracy, Quora accuracy, STS Pearson, their average, each with its delta to
the baseline) and `WORKDIR/ablation.json` are written.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from absl import app, flags

COLUMNS = (("dev/sst_acc", "SST acc"), ("dev/para_acc", "Quora acc"),
           ("dev/sts_pearson", "STS r"), ("dev/average", "Average"))


def _override(config, assignment: str) -> None:
  key, _, value = assignment.partition("=")
  node = config
  *parents, leaf = key.split(".")
  for part in parents:
    node = node[part]
  old = node[leaf]
  if isinstance(old, bool):
    new = value.lower() in ("1", "true", "yes")
  elif isinstance(old, (int, float, str)):
    new = type(old)(value)
  elif isinstance(old, tuple):
    new = tuple(type(old[0])(v) if old else v for v in value.split(","))
  else:
    raise ValueError(f"--set={assignment}: cannot override a {type(old).__name__}")
  node[leaf] = new


def markdown_table(results: dict[str, dict], baseline: str = "baseline") -> str:
  """Rows of dev metrics, each with its difference to the baseline row."""
  head = "| row | " + " | ".join(name for _, name in COLUMNS) + " | steps | train s |"
  lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
  base = results.get(baseline)
  for row, r in results.items():
    cells = []
    for key, _ in COLUMNS:
      value = r["metrics"].get(key)
      if value is None:
        cells.append("-")
        continue
      cell = f"{value:.3f}"
      if base is not None and row != baseline and key in base["metrics"]:
        cell += f" ({value - base['metrics'][key]:+.3f})"
      cells.append(cell)
    lines.append(f"| {row} | " + " | ".join(cells) + f" | {r['steps']} | "
                 f"{r['seconds']:.0f} |")
  return "\n".join(lines)


def run_rows(workdir: str, rows: list[str], steps: int, batch_size: int,
             overrides: list[str]) -> dict[str, dict]:
  from configs import ablation  # pylint: disable=import-outside-toplevel
  from mtbert_jax import settings, train  # pylint: disable=import-outside-toplevel
  results = {}
  for row in rows:
    row_dir = os.path.join(workdir, row)
    done = os.path.join(row_dir, "ablation_row.json")
    if os.path.isfile(done):
      with open(done, encoding="utf-8") as f:
        results[row] = json.load(f)
      logging.info("row %s: already done, read back", row)
      continue
    config = ablation.get_config(row)
    config.train.num_steps = steps
    config.train.eval_every = steps
    config.train.ckpt_every = max(steps // 3, 1)
    config.train.batch_size = batch_size
    config.eval.write_predictions = False
    for assignment in overrides:
      _override(config, assignment)
    start = time.time()
    metrics = train.train_and_evaluate(settings.from_dict(config.to_dict()), row_dir)
    results[row] = {"metrics": metrics, "steps": steps, "batch_size": batch_size,
                    "seconds": time.time() - start, "overrides": overrides}
    with open(done, "w", encoding="utf-8") as f:
      json.dump(results[row], f, indent=2)
  return results


def main(argv):
  del argv
  from mtbert_jax import runtime  # pylint: disable=import-outside-toplevel
  runtime.quiet_library_logs()
  from configs import ablation  # pylint: disable=import-outside-toplevel
  rows = list(ablation.ROWS) if _ROWS.value == "all" else _ROWS.value.split(",")
  for row in rows:
    if row not in ablation.ROWS:
      raise app.UsageError(f"--rows: unknown row {row!r}; expected some of {ablation.ROWS}")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  results = run_rows(_WORKDIR.value, rows, _STEPS.value, _BATCH.value, _SET.value)
  table = markdown_table(results)
  with open(os.path.join(_WORKDIR.value, "ablation.md"), "w", encoding="utf-8") as f:
    f.write(table + "\n")
  with open(os.path.join(_WORKDIR.value, "ablation.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  print(table)


if __name__ == "__main__":
  # The flags exist only when this module is the program, so that importing it (tests,
  # other tools with flags of the same names) defines none.
  _WORKDIR = flags.DEFINE_string("workdir", "runs/ablation", "folder of the rows' workdirs")
  _ROWS = flags.DEFINE_string("rows", "all", "comma-separated rows of configs/ablation.py, or all")
  _STEPS = flags.DEFINE_integer("steps", 1500, "train.num_steps of every row")
  _BATCH = flags.DEFINE_integer("batch_size", 64, "train.batch_size of every row")
  _SET = flags.DEFINE_multi_string("set", [], "extra config overrides for every row, "
                                   "e.g. --set=data.max_length=64")
  # No malloc tuning here (mtbert_jax/runtime.py): rows compile many programs in one process,
  # and with trimming off the freed compile memory is never returned to the OS.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  logging.basicConfig(level=logging.INFO, stream=sys.stderr)
  app.run(main)
