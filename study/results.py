"""The results protocol: rows x seeds of `configs/protocol.py`, mean and spread, the tables.

  python -m study.results --rows=quick,full --seeds=0,1,2
  python -m study.results --rows=ablation/baseline,ablation/smart --seeds=0,1 \\
      --group=ablation
  python -m study.results --tables_only        # rewrite docs/results.* from the runs

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
import re
from typing import Sequence

import numpy as np
from absl import app, flags

from configs import protocol
from mtbert_jax import error_analysis
from mtbert_jax import tasks as tasks_lib
from study import runs as runs_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_dir(workdir: str, row: str, seed: int) -> str:
  return os.path.join(workdir, row.replace("/", "__"), f"seed{seed}")


def run_one(workdir: str, row: str, seed: int, extra: list[str]) -> dict:
  """Trains (row, seed) in a subprocess unless it finished already; its run.json."""
  out = run_dir(workdir, row, seed)
  record = os.path.join(out, "run.json")
  if os.path.isfile(record):
    with open(record, encoding="utf-8") as f:
      return json.load(f)
  args = [f"--config.seed={seed}", "--config.train.progress=false",
          *[f"--config.{s}" for s in extra]]
  metrics, attempts = runs_lib.train_run(out, f"protocol.py:{row}", args,
                                         f"row {row} seed {seed}")
  result = {"row": row, "seed": seed, "metrics": metrics, "seconds": float(sum(attempts)),
            "attempts": len(attempts),
            "command": " ".join(["python", "launch.py", f"--config=configs/protocol.py:{row}",
                                 f"--workdir={out}", *args]), "extra": extra,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "machine": runs_lib.machine(out)}
  tmp = record + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  os.replace(tmp, record)
  return result


def aggregate(runs: list[dict]) -> dict:
  """Per metric: mean, sample standard deviation (ddof 1; 0 for one seed), the values."""
  out = {}
  keys = sorted({k for r in runs for k in r["metrics"] if "/" in k})
  for key in keys:
    values = [r["metrics"][key] for r in runs if key in r["metrics"]]
    out[key] = {"mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "seeds": values}
  out["seeds"] = [r["seed"] for r in runs]
  out["minutes_per_run"] = float(np.mean([r["seconds"] for r in runs]) / 60)
  return out


def row_description(row: str) -> str:
  if row.startswith("ablation/"):
    return f"`configs/ablation.py:{row.split('/', 1)[1]}` at the protocol budget"
  fn = protocol.RECIPES.get(row) or protocol.SINGLE_TASK.get(row)
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


# (task, metric key, label) of the tables' columns: each evaluated task's row of the task
# table, then their average.
COLUMNS = tuple((name, tasks_lib.get(name).metric, tasks_lib.get(name).metric_label)
                for name in tasks_lib.EVAL_TASKS) + ((None, "average", "average"),)


def split_of(table: dict, rows: Sequence[str]) -> str:
  """The split a group's table shows: "valid" when its rows were scored on the validation
  split (the protocol's selection runs), else "dev" (runs without one)."""
  keys = {k for r in rows for k in table[r] if "/" in k}
  return "valid" if any(k.startswith("valid/") for k in keys) else "dev"


def markdown(results: dict, notes: str = NOTES, figures: dict | None = None) -> str:
  """docs/results.md: the verdict table first (when there is one), the text of `notes` (a
  markdown file; "" = none), the selection, the untuned external baselines, then a table a
  group on the split its rows were scored on; `figures` maps a group to its figure's file
  name (beside the markdown file), shown under its table."""
  lines = [f"<!-- Written by `python -m study.results` / `study.verdict`; edit "
           f"{_shown(notes)}, not this file. -->" if notes else
           "<!-- Written by `python -m study.results`. -->", "# Results", ""]
  lines += verdict_lines(results)
  if notes:
    if not os.path.isfile(notes):
      raise FileNotFoundError(f"--notes: {notes} is not a file (the text above the tables; "
                              "'' for none)")
    with open(notes, encoding="utf-8") as f:
      lines += [f.read().strip(), ""]
  lines += selection_lines(results)
  lines += contrast_lines(results)
  base = results.get("baselines")
  if base:
    lines += ["## External anchor, untuned: HF PyTorch single-task fine-tunes (float32)", "",
              "Not part of the verdict: constant rate 5e-5, BERT's pooler over [CLS], pairs in "
              "one order, the whole train files (no validation split), dev scored for every "
              "seed. " + "; ".join(f"`{i.get('command', '')}` ({i.get('machine', '')}; CPU: "
                                   f"{i.get('cpu_model', 'not recorded')}; {i.get('date', '')})"
                                   for i in base.get("invocations") or [base]) + ".",
              "", "| baseline | metric | dev, mean ± std | seeds | steps of 32 |",
              "|---|---|---|---|---|"]
    for task, t in base["tasks"].items():
      steps = t["runs"][0]["steps"]
      lines.append(f"| {task} | {t['metric']} | {_cell(t)} | {len(t['seeds'])} | {steps} |")
    lines.append("")
  for group, rows in results["groups"].items():
    split = split_of(results["rows"], rows)
    lines += [f"## {group} ({split})", "",
              "| row | " + " | ".join(f"{split} {name}" for _, _, name in COLUMNS)
              + " | seeds | min/run | what |", "|" + "---|" * (len(COLUMNS) + 4)]
    for row in rows:
      r = results["rows"][row]
      cells = [_cell(r.get(f"{split}/{key}")) for _, key, _ in COLUMNS]
      lines.append(f"| {row} | " + " | ".join(cells) + f" | {len(r['seeds'])} | "
                   f"{r['minutes_per_run']:.0f} | {r['description']} |")
    lines.append("")
    if figures and group in figures:
      lines += [f"![{group}: each row's mean, seed spread and seeds]({figures[group]})", ""]
    if rows and all(r.startswith("ablation/") for r in rows):
      lines += _task_correlations(results["rows"], rows, split)
  return "\n".join(lines)


# study/verdict.py's key, in "selection" and "verdict", of the row with teachers.
WITH_TEACHERS = "multitask with teachers"


def verdict_lines(results: dict) -> list[str]:
  """The verdict table (study/verdict.py's "verdict" record): per task, the multitask row
  against the chosen single-task row on dev, the difference with its 95% interval and
  Welch's test; a difference is called only where the interval excludes 0. Then the same
  table for the chosen row with teachers, when there is one, labelled with its cost."""
  v = results.get("verdict")
  if not v or not v.get("tasks"):
    return []
  lines = [f"## Verdict: one multitask model (`{v['multitask']}`) against the best single-task "
           "model of each task", "",
           f"Dev sets, scored once for these rows only; rows chosen on the validation split "
           f"(below). Interval: {v['confidence']:.0%} percentile bootstrap over dev examples "
           f"(paired) and seeds, {v['bootstrap_samples']:,} replicates "
           f"(`mtbert_jax/compare.py`). {v['machine']}, {v['date']}.", ""]
  lines += _verdict_table(v["tasks"])
  teachers = v.get(WITH_TEACHERS)
  if teachers and teachers["tasks"]:
    lines += [f"### Beyond the budget: `{teachers['row']}`, distilled from single-task "
              "teachers", "",
              "Its teachers are the single-task rows' runs of the same seed, so it costs the "
              "budget twice (the teachers' steps, then its own); it is not among the "
              "equal-budget rows above. Same interval and test.", ""]
    lines += _verdict_table(teachers["tasks"])
    if teachers.get("against_multitask"):
      lines += [f"What the teachers added: `{teachers['row']}` against `{v['multitask']}` "
                "(the same row without them), dev, same interval and test.", ""]
      lines += _verdict_table(teachers["against_multitask"], "without teachers",
                              "with teachers")
  return lines


def _verdict_table(tasks: dict, reference: str = "single-task",
                   row: str = "multitask") -> list[str]:
  """A verdict record's rows ("single": the reference row, "multitask": the row set
  against it) as a table whose columns name them `reference` and `row`."""
  lines = [f"| task | {reference} row | {reference}, mean ± sd | {row}, mean ± sd | "
           "difference [95% interval] | Welch p | seeds | verdict |",
           "|---|---|---|---|---|---|---|---|"]
  for task, t in tasks.items():
    single, multi = np.asarray(t["single_task"]), np.asarray(t["multitask"])
    sd = lambda x: f" ± {np.std(x, ddof=1):.3f}" if len(x) > 1 else ""  # noqa: E731
    p = "-" if t["welch_p"] != t["welch_p"] else f"{t['welch_p']:.3f}"
    lines.append(f"| {task} ({t['metric']}) | `{t['single']}` | {single.mean():.3f}{sd(single)} | "
                 f"{multi.mean():.3f}{sd(multi)} | {t['difference']:+.4f} "
                 f"[{t['low']:+.4f}, {t['high']:+.4f}] | {p} | "
                 f"{len(multi)} / {len(single)} | {t['verdict']} |")
  return lines + [""]


def selection_lines(results: dict) -> list[str]:
  """Which rows were compared for each choice, on which split and metric, and the choice."""
  chosen = results.get("selection")
  if not chosen:
    return []
  lines = [f"## Selection on the validation split ({chosen.get('date', '')})", "",
           "| choice | metric | seeds | rows compared (mean over those seeds) | chosen |",
           "|---|---|---|---|---|"]
  def line(name: str, c: dict) -> str:
    compared = ", ".join(f"`{r}` {v:.4f}" for r, v in sorted(c["compared"].items(),
                                                             key=lambda kv: -kv[1]))
    seeds = c.get("seeds") if isinstance(c.get("seeds"), list) else "each row's own"
    return f"| {name} | {c['metric']} | {seeds} | {compared} | `{c['chosen']}` |"

  for name, c in chosen.items():
    if not isinstance(c, dict):
      continue
    if "search" in c:  # two stages: the search, then its choice against the candidates
      lines.append(line(f"{name}, search", c["search"]))
      name = f"{name}, against the candidates"
    lines.append(line(name, c))
  return lines + [""]


def contrast_lines(results: dict) -> list[str]:
  """study/verdict.py's "contrasts": each row against its reference on the validation
  split, per task, with its interval (over examples, and seeds where there are several)."""
  contrasts = results.get("contrasts")
  if not contrasts:
    return []
  lines = ["## Candidates against their reference row on the validation split", "",
           "Each row minus the reference on the seeds both have (`python -m study.verdict "
           "--contrast=ROW`); 95% percentile bootstrap over validation examples (paired) "
           "and seeds. With one seed the interval counts the examples' noise alone, not the "
           "seeds', so it is too narrow for a claim; no dev score is read.", "",
           "| row | reference | task | row, per seed | reference, per seed | "
           "difference [95% interval] | seeds | verdict |", "|---|---|---|---|---|---|---|---|"]
  for row, c in contrasts.items():
    for task, t in c["tasks"].items():
      values = lambda x: ", ".join(f"{v:.3f}" for v in x)  # noqa: E731
      lines.append(f"| `{row}` | `{c['reference']}` | {task} ({t['metric']}) | "
                   f"{values(t['row'])} | {values(t['reference'])} | "
                   f"{t['difference']:+.4f} [{t['low']:+.4f}, {t['high']:+.4f}] | "
                   f"{', '.join(map(str, c['seeds']))} | "
                   f"{t['verdict'] if len(c['seeds']) > 1 else 'one seed: no claim'} |")
  return lines + [""]


def _task_correlations(table: dict, rows: list[str], split: str) -> list[str]:
  """The paper's Table 3 at the protocol budget: Pearson correlation of the tasks'
  metrics across the ablation rows (each row's mean over its seeds, one point a row)."""
  keys = [f"{split}/{key}" for task, key, _ in COLUMNS if task]
  points = [{k: table[r][k]["mean"] for k in keys if k in table[r]} for r in rows]
  corr, n = error_analysis.correlation_table(points, keys)
  if n < 3:
    return [f"Table 3 (task correlations across these rows) needs 3 rows or more; {n} so far.",
            ""]
  names = [task for task, _, _ in COLUMNS if task]
  lines = [f"Table 3 at this budget: Pearson correlation of the tasks' {split} metrics "
           f"across the {n} rows above (each row's mean over its seeds).", "",
           "|  | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  for i, name in enumerate(names):
    lines.append(f"| {name} | " + " | ".join("-" if np.isnan(v) else f"{v:.2f}"
                                             for v in corr[i]) + " |")
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
  _one_machine(runs, workdir, source)
  rows: dict[str, list[dict]] = {}
  for key in sorted(runs):
    rows.setdefault(key[0], []).append(runs[key])
  out = {"protocol": "configs/protocol.py", "rows": {}, "groups": previous.get("groups", {})}
  for key in ("selection", "verdict", "contrasts"):  # study/verdict.py's records
    if key in previous:
      out[key] = previous[key]
  for row, row_runs in rows.items():
    out["rows"][row] = dict(aggregate(row_runs), description=row_description(row),
                            commands=[r["command"] for r in row_runs],
                            finished=[r["finished"] for r in row_runs],
                            machine=row_runs[0]["machine"], runs=row_runs)
  return out


def _one_machine(runs: dict[tuple[str, int], dict], workdir: str, source: str) -> None:
  """Raises unless the runs all computed on one kind of hardware (`runs.compute_of`):
  bfloat16 results differ between CPU models, so one file's tables, selection and verdict
  compare the runs of one machine; another machine's runs take their own --out. Records
  that do not name their CPU (the first protocol's oldest) are not counted."""
  where: dict[str, list[str]] = {}
  for (row, seed), run in sorted(runs.items()):
    compute = runs_lib.compute_of(run.get("machine", ""))
    if compute:
      where.setdefault(compute, []).append(f"{row} seed {seed}")
  if len(where) > 1:
    names = "; ".join(f"{c!r}: {', '.join(r[:3])}{' ...' if len(r) > 3 else ''} "
                      f"({len(r)} runs)" for c, r in where.items())
    raise ValueError(f"{source} and the runs under {workdir} computed on more than one "
                     f"machine ({names}); bfloat16 results differ between CPU models, so "
                     "one results file compares the runs of one: give the other machine's "
                     "runs their own --out (e.g. docs/results_<machine>)")


def figure_name(out: str, group: str) -> str:
  """The file of a group's figure: OUT_<group as a slug>.png, beside OUT.md."""
  slug = re.sub(r"[^a-z0-9]+", "-", group.lower()).strip("-")
  return f"{os.path.basename(out)}_{slug}.png"


def figure_results(plt, table: dict, rows: Sequence[str], baselines: dict | None,
                   path: str, title: str) -> str:
  """The results protocol's rows of one group (docs/results.json's "rows"), a panel a
  metric with the rows that have it (a single-task row appears on its task's panel only):
  each row's mean (a diamond) with its seed standard deviation as an error bar and each
  seed as a dot, the panel's first row (its reference) as a dotted line and, on dev, each
  single-task baseline's mean as a dashed one. The ablation group's figure is the paper's
  Figure 3 with the seed noise in view."""
  from matplotlib import ticker  # pylint: disable=import-outside-toplevel
  split = split_of(table, rows)
  panels = [(task, key, name, [r for r in rows if f"{split}/{key}" in table[r]])
            for task, key, name in COLUMNS]
  panels = [p for p in panels if p[3]]
  most = max(len(p[3]) for p in panels)
  fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 0.45 * most + 1.8),
                           squeeze=False)
  for a, (task, key, name, shown) in zip(axes[0], panels):
    stats = [table[r][f"{split}/{key}"] for r in shown]
    y = np.arange(len(shown))[::-1]
    means = np.array([s["mean"] for s in stats])
    stds = np.array([s["std"] for s in stats])
    a.errorbar(means, y, xerr=stds, fmt="D", color="black", ms=5, capsize=3,
               label="mean ± seed std")
    for yi, s in zip(y, stats):
      a.plot(s["seeds"], [yi] * len(s["seeds"]), "o", color="#3182bd", ms=3, alpha=0.8,
             label="one seed")
    a.grid(axis="x", alpha=0.3)
    a.axvline(means[0], color="grey", ls=":", lw=1, label="the panel's first row")
    # The untuned external baselines were scored on dev: a line only on dev panels.
    base = (baselines or {}).get("tasks", {}).get(task) if task and split == "dev" else None
    if base:
      a.axvline(base["mean"], color="#e6550d", ls="--", lw=1, label="single-task baseline")
    # The differences, not the values from zero, are what matter: the axis spans the
    # values (seeds, error bars, baseline) with a margin.
    values = [v for s in stats for v in (*s["seeds"], s["mean"] - s["std"],
                                         s["mean"] + s["std"])]
    values += [base["mean"]] if base else []
    low, high = min(values), max(values)
    pad = 0.15 * max(high - low, 0.01)
    a.set_xlim(low - pad, high + pad)
    a.set_ylim(-0.6, len(shown) - 0.4)
    a.xaxis.set_major_locator(ticker.MaxNLocator(4))
    a.xaxis.set_major_formatter(ticker.FormatStrFormatter("%.3f"))
    a.set(xlabel=f"{split} {name}", yticks=y, yticklabels=shown)
  handles = {}
  for a in axes[0]:
    for h, l in zip(*a.get_legend_handles_labels()):
      handles.setdefault(l, h)
  fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles),
             fontsize=8, frameon=False)
  fig.suptitle(title)
  fig.tight_layout(rect=(0, 0.1, 1, 1))
  fig.savefig(path, metadata={"Software": None})
  plt.close("all")
  return path


def draw_figures(out: str, results: dict) -> dict[str, str]:
  """A figure per group of rows (`figure_results`); {group: file name}."""
  from mtbert_jax import report  # pylint: disable=import-outside-toplevel
  plt = report.pyplot()
  names = {}
  folder = os.path.dirname(out) or "."
  for group, rows in results["groups"].items():
    if rows:
      names[group] = figure_name(out, group)
      figure_results(plt, results["rows"], rows, results.get("baselines"),
                     os.path.join(folder, names[group]),
                     f"{group}: {split_of(results['rows'], rows)} metrics")
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
           baselines: dict | None = None, figures: bool = False,
           extra: dict | None = None) -> tuple[dict, dict]:
  """Rewrites OUT.json and OUT.md (and with `figures` the groups' figures) from OUT.json as
  it is now and the runs under `workdir`, filing each row of `filed` under its group (moved
  from any other group; rows without a finished run are left out of the groups, rows of
  runs filed nowhere go under UNFILED). Holds an exclusive lock on OUT.lock throughout, so
  that invocations running side by side into one OUT add to each other's tables instead
  of writing over them. `extra`: top-level records to set (study/verdict.py's "selection"
  and "verdict"). (results, figures)."""
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
    results.update(extra or {})
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
      report.pyplot()
    except report.ReportError as e:
      raise app.UsageError(f"{e}; or --nofigures for the tables alone") from None
  out, workdir = _OUT.value, _WORKDIR.value
  filed = {} if _TABLES_ONLY.value else {row: _GROUP.value for row in _ROWS.value}
  if not _TABLES_ONLY.value:
    for row in _ROWS.value:
      for seed in _SEEDS.value:
        result = run_one(workdir, row, int(seed), _SET.value)
        print(f"{row} seed {seed}: " + ", ".join(
            f"{k}={v:.4f}" for k, v in sorted(result["metrics"].items()) if "/" in k),
            flush=True)
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
