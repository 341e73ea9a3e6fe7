"""The paper's error analysis (its Section 5) for finished workdirs: figures, tables, examples.

  python -m mtbert_jax.report --workdir=runs/full                      # -> runs/full/report/
  python -m mtbert_jax.report --workdir=runs/base --workdir=runs/full --out=docs/report

From a workdir's dev outputs (`predictions/dev-outputs.npz`, written by every evaluation;
the course's `*-dev-output.csv` files when only those exist), the gold labels of its dev
files, and its `history.jsonl`, it writes `report.md` and PNG figures:

* Figure 4: sentiment, predicted against gold class counts, and the confusion matrix;
* Figure 5a: STS, the empirical CDFs of predicted and gold scores, and a scatter plot;
* Figure 5b: the wrong sentiment predictions by their distance |predicted - gold|;
* paraphrase: false-positive and false-negative rates, precision, recall, F1, and the
  most confident false positives and negatives with their word overlap; STS: the pairs
  with the largest errors, with their word overlap;
* training curves: each task's training loss and each dev metric over steps;
* calibration: the expected calibration error of the sentiment and paraphrase
  probabilities, and their reliability bins (confidence against accuracy);
* Table 3: the correlation of the tasks' dev metrics across the run's evaluations and,
  given several workdirs, across the runs, with the number of points behind each.

With several workdirs the first is analysed in detail and all are compared (metrics side
by side, overlaid curves). The same workdirs give the same files. The computations are the
pure functions of `error_analysis.py`; plotting is matplotlib with the Agg backend
(`pip install matplotlib`, or the `[report]` extra).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Sequence

import numpy as np
from absl import app, flags

from mtbert_jax import console
from mtbert_jax import error_analysis
from mtbert_jax import experiment
from mtbert_jax import settings as settings_lib
from mtbert_jax import tasks as tasks_lib
from mtbert_jax import workdir as workdir_lib

# (task, dev metric key, label) of every evaluated task, from the task table.
METRIC_KEYS = tuple((name, f"dev/{tasks_lib.get(name).metric}", tasks_lib.get(name).metric_label)
                    for name in tasks_lib.EVAL_TASKS)


class ReportError(RuntimeError):
  """A workdir that holds nothing to report on."""


# ------------------------------------------------------------------------------------------
# A workdir's data.


@dataclasses.dataclass
class TaskResult:
  ids: list[str]
  outputs: np.ndarray          # raw outputs (logits [N, 5], logit [N], score [N]) or preds
  predictions: np.ndarray
  gold: np.ndarray
  texts: list[tuple[str, ...]]
  raw: bool                    # whether `outputs` are the model's raw outputs


@dataclasses.dataclass
class Run:
  workdir: str
  name: str
  settings: settings_lib.Settings
  metrics: dict[str, Any]
  history: list[dict]
  tasks: dict[str, TaskResult]
  source: str                  # which prediction files were read


def _read_csv_predictions(path: str) -> tuple[list[str], np.ndarray]:
  ids, values = [], []
  with open(path, encoding="utf-8") as f:
    next(f)
    for line in f:
      example_id, value = line.rsplit(" , ", 1)
      ids.append(example_id.strip())
      values.append(float(value))
  return ids, np.asarray(values)


def _dev_rows(s: settings_lib.Settings, task: str):
  path = experiment.data_path(s, f"{task}_dev")
  if path is None:
    return None, None
  rows = tasks_lib.get(task).read(path, s.data)
  if task == "sst":
    texts = [(t,) for t in rows.texts]
  else:
    texts = list(zip(rows.texts_a, rows.texts_b))
  n = s.data.dev_limit or len(rows)
  return path, dict(zip(rows.ids[:n], zip(texts[:n], rows.labels[:n])))


def load_run(workdir: str, fill_from: settings_lib.Settings | None = None) -> Run:
  """A finished workdir's settings, metrics, history, and dev outputs with gold labels.
  `fill_from`: settings whose values stand in for fields an older config.json lacks."""
  workdir = workdir_lib.prepare(workdir, create=False)
  s = workdir_lib.load_settings(workdir, fill_from)
  metrics_file = os.path.join(workdir, "metrics.json")
  metrics = {}
  if os.path.isfile(metrics_file):
    with open(metrics_file, encoding="utf-8") as f:
      metrics = json.load(f)
  npz_file = os.path.join(workdir, "predictions", "dev-outputs.npz")
  arrays = dict(np.load(npz_file)) if os.path.isfile(npz_file) else None
  results, sources = {}, []
  for task in tasks_lib.EVAL_TASKS:
    path, gold_rows = _dev_rows(s, task)
    if gold_rows is None:
      continue
    csv_file = os.path.join(workdir, "predictions", f"{tasks_lib.get(task).prediction_file}"
                            "-dev-output.csv")
    if arrays is not None and f"{task}/ids" in arrays:
      ids, outputs, raw = [str(i) for i in arrays[f"{task}/ids"]], arrays[f"{task}/outputs"], True
      sources.append(os.path.relpath(npz_file, workdir))
    elif os.path.isfile(csv_file):
      ids, outputs = _read_csv_predictions(csv_file)
      raw = False
      sources.append(os.path.relpath(csv_file, workdir))
    else:
      continue
    missing = [i for i in ids if i not in gold_rows]
    if missing:
      raise ReportError(f"{workdir}: {len(missing)} predicted ids (e.g. {missing[0]!r}) are not "
                        f"in the dev file {path}: the run was evaluated on another file")
    preds = (np.asarray(tasks_lib.get(task).predict(outputs)) if raw else
             outputs.astype(float if task == "sts" else int))
    results[task] = TaskResult(ids, outputs, preds,
                               np.asarray([gold_rows[i][1] for i in ids]),
                               [gold_rows[i][0] for i in ids], raw)
  if not results:
    raise ReportError(
        f"{workdir} has no dev predictions (predictions/dev-outputs.npz or *-dev-output.csv): "
        "evaluate it with them first: python launch.py --config=... "
        f"--workdir={workdir} --mode=eval --config.eval.write_predictions=true")
  history = console.read_history(os.path.join(workdir, "history.jsonl"))
  return Run(workdir, run_name(workdir), s, metrics, history, results,
             ", ".join(sorted(set(sources))))


def run_name(workdir: str) -> str:
  """A workdir's name in tables and legends: its folder, with the folder above when that
  is a seed folder (`results`' layout ROW/seedK names `cross_prop/seed0`, not `seed0`)."""
  parts = os.path.normpath(workdir).split(os.sep)
  if re.fullmatch(r"seed\d+", parts[-1]) and len(parts) > 1 and parts[-2] not in ("", "."):
    return "/".join(parts[-2:])
  return parts[-1]


# ------------------------------------------------------------------------------------------
# Figures.


def pyplot():
  """matplotlib's pyplot with the Agg backend and the report's sizes, or a ReportError that
  says how to install matplotlib."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ReportError("the report draws its figures with matplotlib: pip install matplotlib "
                      "(or pip install -e '.[report]')") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "font.size": 9})
  return plt


def _save(fig, out: str, name: str) -> str:
  path = os.path.join(out, name)
  fig.tight_layout()
  fig.savefig(path, metadata={"Software": None})
  fig.clf()
  return name


def figure_sentiment(plt, r: TaskResult, out: str) -> list[str]:
  pred_counts, gold_counts = error_analysis.class_counts(r.predictions, r.gold)
  fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
  x = np.arange(error_analysis.NUM_CLASSES)
  a.bar(x - 0.2, gold_counts, 0.4, label="gold")
  a.bar(x + 0.2, pred_counts, 0.4, label="predicted")
  a.set(xticks=x, xlabel="sentiment class (0 negative .. 4 positive)", ylabel="sentences",
        title="Figure 4: SST dev, predicted vs gold classes")
  a.legend()
  m = error_analysis.confusion_matrix(r.predictions, r.gold)
  b.imshow(m, cmap="Blues")
  for i in range(error_analysis.NUM_CLASSES):
    for j in range(error_analysis.NUM_CLASSES):
      b.text(j, i, str(m[i, j]), ha="center", va="center",
             color="white" if m[i, j] > m.max() / 2 else "black")
  b.set(xticks=x, yticks=x, xlabel="predicted class", ylabel="gold class",
        title="SST dev confusion matrix")
  names = [_save(fig, out, "fig4_sentiment_classes.png")]
  dist = error_analysis.error_distances(r.predictions, r.gold)
  fig, a = plt.subplots(figsize=(5, 3.4))
  ds = sorted(dist)
  bars = a.bar(ds, [dist[d][0] for d in ds])
  for bar, d in zip(bars, ds):
    a.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{100 * dist[d][1]:.0f}%",
           ha="center", va="bottom")
  a.set(xticks=ds, xlabel="|predicted - gold| (classes)", ylabel="wrong predictions",
        title="Figure 5b: SST dev, how far off the errors are")
  names.append(_save(fig, out, "fig5b_sentiment_error_distance.png"))
  plt.close("all")
  return names


def figure_sts(plt, r: TaskResult, out: str) -> list[str]:
  fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
  for values, label in ((r.gold, "gold"), (r.predictions, "predicted")):
    x, y = error_analysis.ecdf(values)
    a.step(x, y, where="post", label=label)
  a.set(xlabel="similarity (0..5)", ylabel="fraction of pairs <= x",
        title="Figure 5a: STS dev, CDF of scores")
  a.legend()
  b.scatter(r.gold, r.predictions, s=4, alpha=0.5)
  b.plot([0, 5], [0, 5], color="grey", lw=1, label="predicted = gold")
  b.set(xlabel="gold similarity", ylabel="predicted similarity",
        title="STS dev, predicted vs gold")
  b.legend()
  name = _save(fig, out, "fig5a_sts_scores.png")
  plt.close("all")
  return [name]


def figure_curves(plt, runs: Sequence[Run], out: str) -> list[str]:
  if not any(run.history for run in runs):
    return []
  fig, axes = plt.subplots(2, len(METRIC_KEYS), figsize=(11 / 3 * len(METRIC_KEYS), 5.8),
                           squeeze=False)
  for run in runs:
    train = [h for h in run.history if "train" in h]
    dev = [h for h in run.history if "dev" in h]
    for a, (task, key, title) in zip(axes[0], METRIC_KEYS):
      points = [(h["step"], h["train"][f"loss/{task}"]) for h in train
                if f"loss/{task}" in h["train"]]
      if points:
        a.plot(*zip(*points), label=run.name)
      a.set(xlabel="step", ylabel="training loss", title=f"{task} training loss")
    for a, (task, key, title) in zip(axes[1], METRIC_KEYS):
      points = [(h["step"], h["dev"][key]) for h in dev if key in h["dev"]]
      if points:
        a.plot(*zip(*points), marker="o", label=run.name)
      a.set(xlabel="step", ylabel=title, title=f"dev {title}")
  for a in axes.flat:
    if a.get_legend_handles_labels()[0]:
      a.legend(fontsize=7)
  name = _save(fig, out, "training_curves.png")
  plt.close("all")
  return [name]


# ------------------------------------------------------------------------------------------
# The report.


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    lines.append("| " + " | ".join(str(c) for c in row) + " |")
  return lines


def _quote(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def _correlations(points: Sequence[dict[str, float]], what: str) -> list[str]:
  keys = [k for _, k, _ in METRIC_KEYS]
  corr, n = error_analysis.correlation_table(points, keys)
  names = [t for t, _, _ in METRIC_KEYS]
  if n < 3:
    return [f"Table 3 ({what}): {n} point(s), too few for a correlation (3 at least).", ""]
  cell = lambda v: "-" if np.isnan(v) else f"{v:.2f}"
  lines = [f"Table 3 ({what}, {n} points): Pearson correlation of the tasks' dev metrics.",
           ""]
  lines += _table([""] + names, [[names[i]] + [cell(corr[i, j]) for j in range(len(names))]
                                 for i in range(len(names))])
  return lines + [""]


def _calibration(runs: Sequence[Run]) -> list[str]:
  """The calibration section: each run's ECE, then the first run's reliability bins."""
  tasks = [t for t in ("sst", "para") if t in runs[0].tasks and runs[0].tasks[t].raw]
  if not tasks:
    return []
  names = {"sst": "sentiment (softmax)", "para": "paraphrase (sigmoid)"}
  lines = ["## Calibration of the probabilities", "",
           "Confidence: the probability the model gives its predicted label (what "
           "`Predictor.sentiment_probabilities` and `paraphrase_probability` return). "
           "ECE: the expected calibration error over 10 equal-width confidence bins "
           "(0 is perfect); in the bins, a negative gap (accuracy below confidence) is "
           "over-confidence.", ""]
  ece_rows = []
  for r in runs:
    cells = []
    for t in tasks:
      res = r.tasks.get(t)
      if res is None or not res.raw:
        cells.append("-")
        continue
      conf, ok = error_analysis.confidences(t, res.outputs, res.gold)
      cells.append(f"{error_analysis.calibration(conf, ok)[1]:.4f}")
    ece_rows.append([r.name] + cells)
  lines += _table(["run"] + [f"ECE, {names[t]}" for t in tasks], ece_rows) + [""]
  for t in tasks:
    res = runs[0].tasks[t]
    conf, ok = error_analysis.confidences(t, res.outputs, res.gold)
    bins, _ = error_analysis.calibration(conf, ok)
    lines += [f"{runs[0].name}, {names[t]}:", ""]
    lines += _table(["confidence", "examples", "mean confidence", "accuracy", "gap"],
                    [[f"{lo:.1f}-{hi:.1f}", n, f"{c:.3f}", f"{a:.3f}", f"{a - c:+.3f}"]
                     for lo, hi, n, c, a in bins]) + [""]
  return lines


def write_report(runs: Sequence[Run], out: str, top_k: int = 5) -> str:
  """Writes `out/report.md` and its figures for `runs` (the first in detail)."""
  plt = pyplot()
  os.makedirs(out, exist_ok=True)
  run = runs[0]
  s = run.settings
  lines = [f"# Report: {run.name}", "",
           f"- workdir: `{run.workdir}`",
           f"- checkpoint: the best step, {run.metrics.get('step', '?')} (`best/`), of "
           f"{s.train.num_steps} steps; base checkpoint "
           f"`{s.model.checkpoint or 'embedded all-MiniLM-L6-v2'}`",
           f"- config: `{os.path.join(run.workdir, 'config.json')}` (heads: sentiment "
           f"{s.heads.sentiment}, paraphrase {s.heads.paraphrase}, similarity "
           f"{s.heads.similarity}; tasks {', '.join(s.train.tasks)}; seed {s.seed})",
           f"- dev files: " + ", ".join(f"`{experiment.data_path(s, f'{t}_dev')}`"
                                       for t in run.tasks),
           f"- predictions read: {run.source}", ""]
  lines += ["## Dev metrics", ""]
  keys = [(key, label) for _, key, label in METRIC_KEYS] + [("dev/average", "average")]
  lines += _table(["run"] + [n for _, n in keys] + ["step"],
                  [[r.name] + [f"{r.metrics[k]:.4f}" if k in r.metrics else "-"
                               for k, _ in keys] + [r.metrics.get("step", "-")] for r in runs])
  lines.append("")
  if "sst" in run.tasks:
    r = run.tasks["sst"]
    names = figure_sentiment(plt, r, out)
    pred_counts, gold_counts = error_analysis.class_counts(r.predictions, r.gold)
    dist = error_analysis.error_distances(r.predictions, r.gold)
    lines += ["## Sentiment (SST dev)", "", f"![Figure 4]({names[0]})", ""]
    lines += _table(["class", "gold", "predicted"],
                    [[c, int(gold_counts[c]), int(pred_counts[c])]
                     for c in range(error_analysis.NUM_CLASSES)])
    lines += ["", f"![Figure 5b]({names[1]})", ""]
    lines += _table(["distance (classes)", "wrong predictions", "share"],
                    [[d, dist[d][0], f"{100 * dist[d][1]:.1f}%"] for d in sorted(dist)])
    lines.append("")
  if "para" in run.tasks:
    r = run.tasks["para"]
    b = error_analysis.binary_report(r.predictions, r.gold)
    lines += ["## Paraphrase (Quora dev)", ""]
    lines += _table(["pairs", "accuracy", "precision", "recall", "F1", "false-positive rate",
                     "false-negative rate", "FP", "FN"],
                    [[len(r.gold), f"{b['accuracy']:.4f}", f"{b['precision']:.4f}",
                      f"{b['recall']:.4f}", f"{b['f1']:.4f}", f"{b['fp_rate']:.4f}",
                      f"{b['fn_rate']:.4f}", b["fp"], b["fn"]]])
    lines.append("")
    if r.raw:
      prob = 1 / (1 + np.exp(-r.outputs.astype(float)))
      fp, fn = error_analysis.confident_errors(prob, r.gold, top_k)
      for title, idx in ((f"The {top_k} most confident false positives", fp),
                         (f"The {top_k} most confident false negatives", fn)):
        lines += [f"{title}:", ""]
        lines += _table(["P(paraphrase)", "word overlap", "sentence 1", "sentence 2"],
                        [[f"{prob[i]:.3f}", f"{error_analysis.word_overlap(*r.texts[i]):.2f}",
                          _quote(r.texts[i][0]), _quote(r.texts[i][1])] for i in idx])
        lines.append("")
    else:
      lines += ["(Only 0/1 predictions are in this workdir, no probabilities: the confident "
                "errors need `predictions/dev-outputs.npz`, written by an evaluation of "
                "this version.)", ""]
  if "sts" in run.tasks:
    r = run.tasks["sts"]
    names = figure_sts(plt, r, out)
    idx = error_analysis.largest_errors(r.predictions, r.gold, top_k)
    overlap = np.asarray([error_analysis.word_overlap(*t) for t in r.texts])
    err = np.abs(r.predictions - r.gold)
    lines += ["## Similarity (STS dev)", "", f"![Figure 5a]({names[0]})", "",
              f"Mean predicted {np.mean(r.predictions):.3f} against mean gold "
              f"{np.mean(r.gold):.3f}; share of pairs predicted below their gold score "
              f"{np.mean(r.predictions < r.gold):.1%}. Correlation of the absolute error "
              f"with the pair's word overlap: {np.corrcoef(err, overlap)[0, 1]:.3f}.", "",
              f"The {top_k} pairs with the largest errors:", ""]
    lines += _table(["gold", "predicted", "word overlap", "sentence 1", "sentence 2"],
                    [[f"{r.gold[i]:.2f}", f"{r.predictions[i]:.2f}", f"{overlap[i]:.2f}",
                      _quote(r.texts[i][0]), _quote(r.texts[i][1])] for i in idx])
    lines.append("")
  lines += _calibration(runs)
  curves = figure_curves(plt, runs, out)
  lines += ["## Training curves", ""]
  lines += ([f"![training curves]({curves[0]})", ""] if curves else
            ["No `history.jsonl` in the workdir(s): training curves need a run of this "
             "version.", ""])
  lines += ["## Task correlations (Table 3)", ""]
  evals = [h["dev"] for h in run.history if "dev" in h]
  lines += _correlations(evals, f"across the evaluations of {run.name}")
  if len(runs) > 1:
    lines += _correlations([r.metrics for r in runs], "across the runs")
  path = os.path.join(out, "report.md")
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(tmp, path)
  return path


def main(argv):
  if len(argv) > 1 or not _WORKDIRS.value:
    raise app.UsageError("usage: python -m mtbert_jax.report --workdir=DIR [--workdir=DIR2 "
                         "...] [--out=DIR]")
  try:
    runs = [load_run(w) for w in _WORKDIRS.value]
    out = _OUT.value or os.path.join(runs[0].workdir, "report")
    path = write_report(runs, out, _TOP_K.value)
  except (ReportError, workdir_lib.WorkdirError, settings_lib.ConfigError,
          FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  print(f"wrote {path} and its figures in {out}")


if __name__ == "__main__":
  # The flags exist only when this module is the program, so that importing it (tests,
  # other tools with flags of the same names) defines none.
  _WORKDIRS = flags.DEFINE_multi_string("workdir", None, "finished workdir(s); the first is "
                                        "analysed in detail, all are compared")
  _OUT = flags.DEFINE_string("out", None, "output folder (default: FIRST_WORKDIR/report)")
  _TOP_K = flags.DEFINE_integer("top_k", 5, "examples per error table")
  app.run(main)
