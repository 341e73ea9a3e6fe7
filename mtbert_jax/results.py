"""The results protocol: rows x seeds of `configs/protocol.py`, mean and spread, the tables.

  python -m mtbert_jax.results --rows=quick,full --seeds=0,1,2
  python -m mtbert_jax.results --rows=ablation/baseline,ablation/smart --seeds=0,1 \\
      --group=ablation
  python -m mtbert_jax.results --tables_only        # rewrite docs/results.* from the runs

Each (row, seed) trains as its own process, the command a user would run:
`python launch.py --config=configs/protocol.py:ROW --workdir=WORKDIR/ROW/seedK
--config.seed=K`; a finished run (its `metrics.json` and `run.json`) is read back, not
repeated, and a run that was stopped resumes from its checkpoint. Then
`docs/results.json` gets every finished run's dev metrics per row (mean, standard
deviation over seeds, the seeds' values, and each run's record under "runs", so that an
invocation on another machine or workdir adds to the file instead of replacing it), the
single-task baselines (`benchmarks/single_task_baselines.py`'s JSON) under "baselines",
and `docs/results.md` the tables, grouped as the rows were (`--group`), with each row's
description, and a figure per group. Invocations may run side by side into one `--out`
(each on its own rows): every write reads the file as it is then, under a lock.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import platform
import re
import subprocess
import sys
import time
from typing import Sequence

import numpy as np
from absl import app, flags

from mtbert_jax import error_analysis

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = (("dev/sst_acc", "SST acc"), ("dev/para_acc", "Quora acc"),
           ("dev/sts_pearson", "STS r"), ("dev/average", "average"))
BASELINE_TASKS = {"sst": "dev/sst_acc", "para": "dev/para_acc", "sts": "dev/sts_pearson"}


def run_dir(workdir: str, row: str, seed: int) -> str:
  return os.path.join(workdir, row.replace("/", "__"), f"seed{seed}")


def run_one(workdir: str, row: str, seed: int, extra: list[str]) -> dict:
  """Trains (row, seed) in a subprocess unless it finished already; its run.json."""
  out = run_dir(workdir, row, seed)
  record = os.path.join(out, "run.json")
  if os.path.isfile(record):
    with open(record, encoding="utf-8") as f:
      return json.load(f)
  os.makedirs(out, exist_ok=True)
  args = [f"--workdir={out}", f"--config.seed={seed}", "--config.train.progress=false",
          *[f"--config.{s}" for s in extra]]
  cmd = [sys.executable, os.path.join(REPO, "launch.py"),
         f"--config={os.path.join(REPO, 'configs', 'protocol.py')}:{row}", *args]
  start = time.time()
  try:
    with open(os.path.join(out, "log.txt"), "a", encoding="utf-8") as log:
      log.write(f"$ {' '.join(cmd)}\n")
      log.flush()
      proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, check=False)
  finally:
    attempts = _record_attempt(out, time.time() - start)
  if proc.returncode != 0:
    raise RuntimeError(f"row {row} seed {seed} failed (exit {proc.returncode}); see "
                       f"{os.path.join(out, 'log.txt')}")
  if not os.path.isfile(os.path.join(out, "metrics.json")):
    # launch.py exits 0 on SIGTERM after saving a checkpoint (a scheduler's preemption).
    raise RuntimeError(f"row {row} seed {seed} stopped before its last step (exit 0, no "
                       f"metrics.json in {out}); run the same command to resume it")
  with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
    metrics = json.load(f)
  result = {"row": row, "seed": seed, "metrics": metrics, "seconds": float(sum(attempts)),
            "attempts": len(attempts),
            "command": " ".join(["python", "launch.py", f"--config=configs/protocol.py:{row}",
                                 *args]), "extra": extra,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "machine": machine(out)}
  tmp = record + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  os.replace(tmp, record)
  return result


def _record_attempt(run: str, seconds: float) -> list[float]:
  """Adds one training attempt's wall time to the run's attempts.json; all of them, so that
  a resumed run's minutes count its earlier attempts too."""
  path = os.path.join(run, "attempts.json")
  times = []
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      times = json.load(f)["seconds"]
  times.append(seconds)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"seconds": times}, f)
  os.replace(path + ".tmp", path)
  return times


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo on Linux), else the architecture.

  bfloat16 runs on the CPU differ between CPU models: XLA:CPU multiplies bf16 operands on
  AMX on an Intel Xeon and on AVX-512 BF16 on an AMD EPYC, kernels that need not
  accumulate in the same order, so the same code and seed can train to other numbers on
  the two (docs/results.md has a case). A run names its CPU.
  """
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine(run: str) -> str:
  """This host's CPU and, from the run's train_stats.json, the devices it trained on."""
  text = f"{cpu_model()}, {platform.machine()}, {os.cpu_count()} cores"
  stats = os.path.join(run, "train_stats.json")
  if os.path.isfile(stats):
    with open(stats, encoding="utf-8") as f:
      dev = json.load(f).get("devices")
    if dev and dev.get("backend") != "cpu":
      hosts = dev["processes"]
      text += (f"; {dev['count']} x {dev['kind']} ({dev['backend']}, {hosts} "
               f"host{'s' if hosts != 1 else ''})")
  return text


def aggregate(runs: list[dict]) -> dict:
  """Per metric: mean, sample standard deviation (ddof 1; 0 for one seed), the values."""
  out = {}
  for key, _ in METRICS:
    values = [r["metrics"][key] for r in runs if key in r["metrics"]]
    out[key] = {"mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "seeds": values}
  out["seeds"] = [r["seed"] for r in runs]
  out["minutes_per_run"] = float(np.mean([r["seconds"] for r in runs]) / 60)
  return out


def _protocol():
  """configs/protocol.py (the configs folder is beside the package, not inside it)."""
  sys.path.insert(0, REPO)
  from configs import protocol  # pylint: disable=import-outside-toplevel
  return protocol


def row_description(row: str) -> str:
  protocol = _protocol()
  if row.startswith("ablation/"):
    return f"`configs/ablation.py:{row.split('/', 1)[1]}` at the protocol budget"
  fn = protocol.RECIPES.get(row)
  doc = (fn.__doc__ or "").strip().split("\n\n")[0] if fn is not None else ""
  if row == "full":
    doc = f"= `{protocol.FULL}` (configs/full.py)"
  return " ".join(doc.split())


def _cell(stats: dict | None) -> str:
  if stats is None:
    return "-"
  if len(stats["seeds"]) > 1:
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"
  return f"{stats['mean']:.3f}"


NOTES = os.path.join(REPO, "docs", "results_notes.md")


def _shown(path: str) -> str:
  """`path` relative to the repository when inside it (docs/results_notes.md)."""
  rel = os.path.relpath(os.path.abspath(path), REPO)
  return path if rel.startswith("..") else rel


def markdown(results: dict, notes: str = NOTES, figures: dict | None = None) -> str:
  """The tables, after the text of `notes` (a markdown file; "" = none); `figures` maps a
  group to its figure's file name (beside the markdown file), shown under its table."""
  lines = [f"<!-- Written by `python -m mtbert_jax.results`; edit {_shown(notes)}, "
           "not this file. -->" if notes else
           "<!-- Written by `python -m mtbert_jax.results`. -->", "# Results", ""]
  if notes:
    if not os.path.isfile(notes):
      raise FileNotFoundError(f"--notes: {notes} is not a file (the text above the tables; "
                              "'' for none)")
    with open(notes, encoding="utf-8") as f:
      lines += [f.read().strip(), ""]
  base = results.get("baselines")
  if base:
    lines += ["## Single-task baselines (HF PyTorch, float32)", "",
              "; ".join(f"`{i.get('command', '')}` ({i.get('machine', '')}; {i.get('date', '')})"
                        for i in base.get("invocations") or [base]) + ".",
              "", "| baseline | metric | dev, mean ± std | seeds | steps of 32 |",
              "|---|---|---|---|---|"]
    for task, t in base["tasks"].items():
      steps = t["runs"][0]["steps"]
      lines.append(f"| {task} | {t['metric']} | {_cell(t)} | {len(t['seeds'])} | {steps} |")
    lines.append("")
  for group, rows in results["groups"].items():
    lines += [f"## {group}", "",
              "| row | " + " | ".join(name for _, name in METRICS)
              + " | seeds | min/run | what |", "|" + "---|" * (len(METRICS) + 4)]
    for row in rows:
      r = results["rows"][row]
      cells = [_cell(r.get(key)) for key, _ in METRICS]
      lines.append(f"| {row} | " + " | ".join(cells) + f" | {len(r['seeds'])} | "
                   f"{r['minutes_per_run']:.0f} | {r['description']} |")
    lines.append("")
    if figures and group in figures:
      lines += [f"![{group}: each row's mean, seed spread and seeds]({figures[group]})", ""]
    lines += _differences(results["rows"], rows)
    if rows and all(r.startswith("ablation/") for r in rows):
      lines += _task_correlations(results["rows"], rows)
  lines += _against_baselines(results)
  return "\n".join(lines)


def _difference(row: dict, ref: dict, key: str) -> str:
  """`row`'s mean minus `ref`'s; starred when larger in size than the larger of the two
  seed standard deviations (both rows with 2+ seeds: one seed has no spread to read a
  difference against)."""
  if key not in row or key not in ref:
    return "-"
  diff = row[key]["mean"] - ref[key]["mean"]
  both = len(row[key]["seeds"]) > 1 and len(ref[key]["seeds"]) > 1
  beyond = both and abs(diff) > max(row[key]["std"], ref[key]["std"])
  return f"{diff:+.3f}{' *' if beyond else ''}"


def _differences(table: dict, rows: list[str]) -> list[str]:
  """Each row of a group against the group's first row (its reference: `sched` for the
  recipe search, `ablation/baseline` for the ablation), so that each delta can be read
  against the seed noise."""
  if len(rows) < 2:
    return []
  ref = table[rows[0]]
  lines = [f"Differences from `{rows[0]}` (mean minus mean; * where larger than the larger "
           "seed std of the two rows, both with 2+ seeds):", "",
           "| row | " + " | ".join(name for _, name in METRICS) + " | seeds |",
           "|" + "---|" * (len(METRICS) + 2)]
  for row in rows[1:]:
    cells = [_difference(table[row], ref, key) for key, _ in METRICS]
    lines.append(f"| {row} | " + " | ".join(cells) + f" | {len(table[row]['seeds'])} |")
  return lines + [""]


def _task_correlations(table: dict, rows: list[str]) -> list[str]:
  """The paper's Table 3 at the protocol budget: Pearson correlation of the three tasks'
  dev metrics across the ablation rows (each row's mean over its seeds, one point a row)."""
  keys = list(BASELINE_TASKS.values())
  points = [{k: table[r][k]["mean"] for k in keys if k in table[r]} for r in rows]
  corr, n = error_analysis.correlation_table(points, keys)
  if n < 3:
    return [f"Table 3 (task correlations across these rows) needs 3 rows or more; {n} so far.",
            ""]
  names = list(BASELINE_TASKS)
  lines = [f"Table 3 at this budget: Pearson correlation of the tasks' dev metrics across "
           f"the {n} rows above (each row's mean over its seeds).", "",
           "|  | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  for i, name in enumerate(names):
    lines.append(f"| {name} | " + " | ".join("-" if np.isnan(v) else f"{v:.2f}"
                                             for v in corr[i]) + " |")
  return lines + [""]


def _against_baselines(results: dict) -> list[str]:
  """The final recipe's row against each single-task baseline: the difference of the means
  and whether it exceeds the larger of the two seed standard deviations (the issue's bar
  for a claimed improvement)."""
  base = results.get("baselines")
  name = "full" if "full" in results["rows"] else _protocol().FULL
  row = results["rows"].get(name)
  if not base or row is None:
    return []
  lines = [f"## The final recipe (`{name}`) against the single-task baselines", "",
           "| task | baseline | multitask | difference | larger std | beats it by more |",
           "|---|---|---|---|---|---|"]
  for task, key in BASELINE_TASKS.items():
    t = base["tasks"].get(task)
    if t is None or key not in row:
      continue
    diff = row[key]["mean"] - t["mean"]
    spread = max(row[key]["std"], t["std"])
    lines.append(f"| {task} | {_cell(t)} | {_cell(row[key])} | {diff:+.3f} | {spread:.3f} | "
                 f"{'yes' if diff > spread else 'no'} |")
  return lines + [""]


def collect(workdir: str, previous: dict, source: str = "the previous results") -> dict:
  """Every finished run, aggregated per row; groups kept from `previous`.

  The runs are those that `previous` (the JSON written last time, read from `source`)
  records under each row's "runs", and those under `workdir`; a run under `workdir`
  replaces a recorded one of the same row and seed. So the tables keep the runs of other
  machines, sessions and deleted workdirs: a fresh `--workdir` adds to a results file and
  never shrinks it.
  """
  runs: dict[tuple[str, int], dict] = {}
  for row, recorded in previous.get("rows", {}).items():
    if "runs" not in recorded:
      raise ValueError(f"{source}: row {row!r} has no per-run records (\"runs\"), so it "
                       "cannot be merged with new runs without losing them; rerun its "
                       "seeds into --workdir, or remove the row from the file")
    for run in recorded["runs"]:
      runs[(row, run["seed"])] = run
  if os.path.isdir(workdir):
    for name in sorted(os.listdir(workdir)):
      if not os.path.isdir(os.path.join(workdir, name)):
        continue
      for seed_dir in sorted(os.listdir(os.path.join(workdir, name))):
        record = os.path.join(workdir, name, seed_dir, "run.json")
        if os.path.isfile(record):
          with open(record, encoding="utf-8") as f:
            run = json.load(f)
          runs[(run["row"], run["seed"])] = run
  rows: dict[str, list[dict]] = {}
  for key in sorted(runs):
    rows.setdefault(key[0], []).append(runs[key])
  out = {"protocol": "configs/protocol.py", "rows": {}, "groups": previous.get("groups", {})}
  for row, row_runs in rows.items():
    out["rows"][row] = dict(aggregate(row_runs), description=row_description(row),
                            commands=[r["command"] for r in row_runs],
                            finished=[r["finished"] for r in row_runs],
                            machine=row_runs[0]["machine"], runs=row_runs)
  return out


def figure_name(out: str, group: str) -> str:
  """The file of a group's figure: OUT_<group as a slug>.png, beside OUT.md."""
  slug = re.sub(r"[^a-z0-9]+", "-", group.lower()).strip("-")
  return f"{os.path.basename(out)}_{slug}.png"


def figure_results(plt, table: dict, rows: Sequence[str], baselines: dict | None,
                   path: str, title: str) -> str:
  """The results protocol's rows of one group (docs/results.json's "rows"), a panel a
  metric: each row's mean (a diamond) with its seed standard deviation as an error bar and
  each seed as a dot, the group's first row (its reference) as a dotted line and each
  single-task baseline's mean as a dashed one. The ablation group's figure is the paper's
  Figure 3 with the seed noise in view."""
  fig, axes = plt.subplots(1, len(METRICS), figsize=(3.1 * len(METRICS), 0.45 * len(rows) + 1.6),
                           sharey=True)
  y = np.arange(len(rows))[::-1]
  for a, (key, name) in zip(axes, METRICS):
    stats = [table[r].get(key) for r in rows]
    means = np.array([s["mean"] if s else np.nan for s in stats])
    stds = np.array([s["std"] if s else 0.0 for s in stats])
    a.errorbar(means, y, xerr=stds, fmt="D", color="black", ms=5, capsize=3,
               label="mean ± seed std")
    for yi, s in zip(y, stats):
      if s:
        a.plot(s["seeds"], [yi] * len(s["seeds"]), "o", color="#3182bd", ms=3, alpha=0.8,
               label="one seed")
    a.grid(axis="x", alpha=0.3)
    if np.isfinite(means[0]):
      a.axvline(means[0], color="grey", ls=":", lw=1, label=f"{rows[0]} (reference)")
    task = next((t for t, k in BASELINE_TASKS.items() if k == key), None)
    base = (baselines or {}).get("tasks", {}).get(task) if task else None
    if base:
      a.axvline(base["mean"], color="#e6550d", ls="--", lw=1, label="single-task baseline")
    # The differences, not the values from zero, are what matter: the axis spans the
    # values (seeds, error bars, baseline) with a margin.
    values = [v for s in stats if s for v in (*s["seeds"], s["mean"] - s["std"],
                                              s["mean"] + s["std"])]
    values += [base["mean"]] if base else []
    low, high = min(values), max(values)
    pad = 0.15 * max(high - low, 0.01)
    a.set_xlim(low - pad, high + pad)
    a.set(xlabel=f"dev {name}", yticks=y, yticklabels=rows)
  handles = {}
  for a in axes:
    for h, l in zip(*a.get_legend_handles_labels()):
      handles.setdefault(l, h)
  fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles),
             fontsize=8, frameon=False)
  fig.suptitle(title)
  fig.tight_layout(rect=(0, 0.08, 1, 1))
  fig.savefig(path, metadata={"Software": None})
  plt.close("all")
  return path


def draw_figures(out: str, results: dict) -> dict[str, str]:
  """A figure per group of rows (`figure_results`); {group: file name}."""
  from mtbert_jax import report  # pylint: disable=import-outside-toplevel
  plt = report._pyplot()  # pylint: disable=protected-access
  names = {}
  folder = os.path.dirname(out) or "."
  for group, rows in results["groups"].items():
    if rows:
      names[group] = figure_name(out, group)
      figure_results(plt, results["rows"], rows, results.get("baselines"),
                     os.path.join(folder, names[group]), f"{group}: dev metrics")
  # A group that no longer has rows leaves no figure behind (files named as figure_name
  # names them only: another --out's figures beside these have a "_" in the slug's place).
  stale = re.compile(re.escape(os.path.basename(out)) + r"_[a-z0-9]+(-[a-z0-9]+)*\.png")
  for name in os.listdir(folder):
    if stale.fullmatch(name) and name not in names.values():
      os.remove(os.path.join(folder, name))
  return names


def write(out: str, results: dict, notes: str = NOTES, figures: dict | None = None) -> None:
  for path, text in ((out + ".json", json.dumps(results, indent=2)),
                     (out + ".md", markdown(results, notes, figures))):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text + "\n")
    os.replace(tmp, path)


UNFILED = "rows in no group"


def update(out: str, workdir: str, filed: dict[str, str], notes: str = NOTES,
           baselines: dict | None = None, figures: bool = False) -> tuple[dict, dict]:
  """Rewrites OUT.json and OUT.md (and with `figures` the groups' figures) from OUT.json as
  it is now and the runs under `workdir`, filing each row of `filed` under its group (moved
  from any other group; rows without a finished run are left out of the groups, rows of
  runs filed nowhere go under UNFILED). Holds an exclusive lock on OUT.lock throughout, so
  that invocations running side by side into one OUT add to each other's tables instead
  of writing over them. (results, figures)."""
  with open(out + ".lock", "a", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    previous = {}
    if os.path.isfile(out + ".json"):
      with open(out + ".json", encoding="utf-8") as f:
        previous = json.load(f)
    groups = previous.setdefault("groups", {})
    for row, group in filed.items():
      if row in groups.get(group, []):
        continue
      for rows in groups.values():
        if row in rows:
          rows.remove(row)
      groups.setdefault(group, []).append(row)
    results = collect(workdir, previous, out + ".json")
    results["groups"] = {g: [r for r in rows if r in results["rows"]]
                         for g, rows in results["groups"].items()}
    # A finished run whose row no invocation filed (e.g. run into another --out) is shown,
    # not hidden: `--rows=ROW --group=G` files it (its runs are read back, not repeated).
    results["groups"].pop(UNFILED, None)
    grouped = {r for rows in results["groups"].values() for r in rows}
    for row in results["rows"]:
      if row not in grouped:
        results["groups"].setdefault(UNFILED, []).append(row)
    results["baselines"] = baselines
    names = draw_figures(out, results) if figures else {}
    write(out, results, notes, names)
  return results, names


def main(argv):
  del argv
  if _NOTES.value and not os.path.isfile(_NOTES.value):
    raise app.UsageError(f"--notes={_NOTES.value}: no such file (the markdown written above "
                         "the tables; --notes= for none)")
  if _FIGURES.value:  # before any run: a missing matplotlib should not wait hours to show
    from mtbert_jax import report  # pylint: disable=import-outside-toplevel
    try:
      report._pyplot()  # pylint: disable=protected-access
    except report.ReportError as e:
      raise app.UsageError(f"{e}; or --nofigures for the tables alone") from None
  out, workdir = _OUT.value, _WORKDIR.value
  filed = {} if _TABLES_ONLY.value else {row: _GROUP.value for row in _ROWS.value}
  if not _TABLES_ONLY.value:
    for row in _ROWS.value:
      for seed in _SEEDS.value:
        result = run_one(workdir, row, int(seed), _SET.value)
        print(f"{row} seed {seed}: " + ", ".join(
            f"{k}={result['metrics'][k]:.4f}" for k, _ in METRICS), flush=True)
        # The tables after every run, so a long invocation shows what it has so far.
        update(out, workdir, filed, _NOTES.value, _read_baselines())
  results, figures = update(out, workdir, filed, _NOTES.value, _read_baselines(),
                            _FIGURES.value)
  print(markdown(results, _NOTES.value, figures))


def _read_baselines() -> dict | None:
  if not os.path.isfile(_BASELINES.value):
    return None
  with open(_BASELINES.value, encoding="utf-8") as f:
    return json.load(f)


if __name__ == "__main__":
  # The flags exist only when this module is the program, so that importing it (tests,
  # other tools with flags of the same names) defines none.
  _ROWS = flags.DEFINE_list("rows", [], "rows of configs/protocol.py (recipes, ablation/<row>)")
  _SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds of every row")
  _GROUP = flags.DEFINE_string("group", "recipes", "table the rows belong to in docs/results.md")
  _WORKDIR = flags.DEFINE_string("workdir", "runs/results", "folder of the runs")
  _OUT = flags.DEFINE_string("out", "docs/results", "writes OUT.json and OUT.md")
  _BASELINES = flags.DEFINE_string("baselines", "docs/baselines.json",
                                   "benchmarks/single_task_baselines.py's output")
  _SET = flags.DEFINE_multi_string("set", [], "extra --config.X=Y flags for every run")
  _NOTES = flags.DEFINE_string("notes", NOTES, "markdown file written above the tables; "
                               "'' = none (e.g. runs of another budget or machine)")
  _TABLES_ONLY = flags.DEFINE_bool("tables_only", False, "only rewrite the tables")
  _FIGURES = flags.DEFINE_bool("figures", True, "also draw a figure per group (OUT_GROUP.png, "
                               "matplotlib: the [report] extra), shown in OUT.md")
  app.run(main)
