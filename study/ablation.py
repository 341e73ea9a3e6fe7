"""The short ablation table: the rows of `configs/ablation.py` at one small budget, each
row's dev metrics against the baseline row's.

  python -m study.ablation --workdir=runs/ablation --rows=all --steps=1500 --batch_size=64
  python -m study.ablation --workdir=runs/ablation --rows=baseline,smart --steps=300 \\
      --batch_size=32 --set=data.max_length=64 --set=data.buckets=32,64

Each row trains in `WORKDIR/<row>` as its own process (`runs.train_run`: `python launch.py
--config=configs/ablation.py:ROW --workdir=WORKDIR/ROW --config.train.num_steps=STEPS ...`),
with the same seed, budget and batch size and the `--set` fields (written as after
`--config.`); a finished row is not run again (its `ablation_row.json` is read back) and a
stopped one resumes from its checkpoint. Then `WORKDIR/ablation.md` (a markdown table: each
evaluated task's dev metric and their average, each with its delta to the baseline) and
`WORKDIR/ablation.json` are written. One seed a row: the same rows with seeds, at the
results protocol's budget, are `python -m study.results --rows=ablation/ROW,...`.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags

from configs import ablation
from mtbert_jax import tasks as tasks_lib
from study import runs as runs_lib

# (metric key, label) of the table's columns: each evaluated task's dev metric, then their
# average.
COLUMNS = tuple((f"dev/{tasks_lib.get(name).metric}", tasks_lib.get(name).metric_label)
                for name in tasks_lib.EVAL_TASKS) + (("dev/average", "Average"),)

RECORD = "ablation_row.json"


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


def row_args(steps: int, batch_size: int, overrides: list[str]) -> list[str]:
  """launch.py's flags of every row: the budget, one evaluation at the end, no prediction
  files, then the `--set` fields."""
  fields = [f"train.num_steps={steps}", f"train.eval_every={steps}",
            f"train.ckpt_every={max(steps // 3, 1)}", f"train.batch_size={batch_size}",
            "eval.write_predictions=false", "train.progress=false", *overrides]
  return [f"--config.{field}" for field in fields]


def run_rows(workdir: str, rows: list[str], steps: int, batch_size: int,
             overrides: list[str]) -> dict[str, dict]:
  """Trains every row not done yet; {row: its record (metrics, steps, batch size, seconds,
  overrides)}."""
  results = {}
  for row in rows:
    row_dir = os.path.join(workdir, row)
    done = os.path.join(row_dir, RECORD)
    if os.path.isfile(done):
      with open(done, encoding="utf-8") as f:
        results[row] = json.load(f)
      logging.info("row %s: already done, read back", row)
      continue
    metrics, attempts = runs_lib.train_run(row_dir, f"ablation.py:{row}",
                                           row_args(steps, batch_size, overrides), f"row {row}")
    results[row] = {"metrics": metrics, "steps": steps, "batch_size": batch_size,
                    "seconds": float(sum(attempts)), "overrides": overrides}
    with open(done, "w", encoding="utf-8") as f:
      json.dump(results[row], f, indent=2)
  return results


def main(argv):
  del argv
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
  _SET = flags.DEFINE_multi_string("set", [], "extra config fields for every row, as after "
                                   "--config. (e.g. --set=data.max_length=64)")
  logging.basicConfig(level=logging.INFO, stream=sys.stderr)
  app.run(main)
