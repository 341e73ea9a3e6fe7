"""Multitask against single-task, as a reviewer accepts it: chosen on validation, dev once.

  python -m study.verdict --select                       # choose the rows on the validation split
  python -m study.verdict --final --seeds=0,1,2,3,4      # the chosen rows' seeds, dev once, verdict
  python -m study.verdict                                # recompute the verdict from the records
  python -m study.verdict --contrast=win_annealed        # a candidate against the winner, valid

1. Selection (`--select`): among the runs of the search groups in docs/results.json, for
   each task the single-task row (`<task>/<variant>` of `configs/protocol.py`) with the
   best mean validation metric of that task, and the multitask row with the best mean
   validation average, each mean over the seeds that all compared rows have; rows of
   the "multitask candidates" group then meet the multitask choice in a second stage, on
   the seeds they share; rows of the "multitask with teachers" group (beyond the budget)
   are chosen among themselves only. Only the validation split (carved from train,
   `data.valid_fraction`) is read; the choice, the rows compared and their values are
   recorded under "selection".
2. Final rows (`--final`): each chosen row trains its missing seeds (the search's runs are
   reused), then every run of them is scored on dev once (`launch.py --mode=eval
   --config.eval.dev=true` on its workdir) and its dev predictions are filed under
   docs/results_predictions/ (OUT_predictions/: predictions and a digest of their ids, no
   text or labels), so the verdict can be recomputed without the workdirs.
3. The verdict ("verdict" in docs/results.json, the opening table of docs/results.md): per
   task, the multitask row minus the chosen single-task row on dev, with the 95% interval
   of `mtbert_jax.compare` (bootstrap over dev examples, paired, and over seeds) and
   Welch's t-test over the seeds; "better"/"worse" only where the interval excludes 0.
   A chosen row with teachers gets the same table, apart (its teachers are the
   single-task rows' budget again).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
from absl import app, flags

from configs import protocol
from mtbert_jax import compare as compare_lib
from mtbert_jax import data as data_lib
from mtbert_jax import evaluate
from mtbert_jax import experiment
from mtbert_jax import runtime
from mtbert_jax import settings as settings_lib
from mtbert_jax import tasks as tasks_lib
from study import results as results_lib
from study import runs as runs_lib

SINGLE_GROUP = "single-task search"
MULTI_GROUP = "multitask search"
# Rows tried after the search at the same budget (issue 29: annealed sampling, NLI): the
# selection's second stage sets them against the search's choice.
CANDIDATE_GROUP = "multitask candidates"
# Rows that cost more than the budget (distillation: its teachers are the single-task
# rows' budget again): their own table, never among the rows the selection compares.
BEYOND_BUDGET_GROUP = "multitask with teachers (beyond the budget)"
WITH_TEACHERS = results_lib.WITH_TEACHERS  # the selection's and the verdict's key for them
_KIND = {"sst": "accuracy", "para": "accuracy", "sts": "pearson"}  # compare's metric


def metric_key(task: str, split: str) -> str:
  return f"{split}/{tasks_lib.get(task).metric}"


def select(results: dict) -> dict:
  """The rows chosen on the validation split from the search groups' runs."""
  rows, groups = results["rows"], results.get("groups", {})
  choice = {}

  def best(candidates: list[str], key: str, what: str) -> dict:
    # Rows are compared on the seeds they all have: the final row gains seeds while the
    # others keep the search's one, and a mean over more seeds is not the same statistic.
    per_seed = {r: {run["seed"]: run["metrics"][key] for run in rows[r]["runs"]
                    if key in run["metrics"]} for r in candidates if r in rows}
    per_seed = {r: v for r, v in per_seed.items() if v}
    if not per_seed:
      raise ValueError(f"no run of {what} has {key}: run the search first")
    seeds = sorted(set.intersection(*(set(v) for v in per_seed.values())))
    if not seeds:
      raise ValueError(f"the runs of {what} share no seed: "
                       + "; ".join(f"{r} has seeds {sorted(v)}" for r, v in per_seed.items()))
    values = {r: float(np.mean([v[s] for s in seeds])) for r, v in per_seed.items()}
    chosen = max(values, key=values.get)
    return {"metric": key, "compared": values, "chosen": chosen, "seeds": seeds}

  for task in protocol.SINGLE_TASK_STEPS:
    candidates = [r for r in groups.get(SINGLE_GROUP, []) if r.startswith(f"{task}/")]
    choice[task] = best(candidates, metric_key(task, "valid"), f"the {task} single-task rows")
  search = best(groups.get(MULTI_GROUP, []), "valid/average", "the multitask rows")
  candidates = [r for r in groups.get(CANDIDATE_GROUP, []) if r in rows]
  if candidates:
    # A second stage: the search's choice against the later candidates, on the seeds
    # these rows share (the search's other rows have seed 0 alone).
    choice["multitask"] = dict(best([search["chosen"], *candidates], "valid/average",
                                    "the search's choice and the candidates"),
                               search=search)
  else:
    choice["multitask"] = search
  beyond = [r for r in groups.get(BEYOND_BUDGET_GROUP, []) if r in rows]
  if beyond:
    # Chosen among themselves only: their cost is not the budget's.
    choice[WITH_TEACHERS] = best(beyond, "valid/average", "the rows with teachers")
  choice["date"] = datetime.date.today().isoformat()
  return choice


def _settings(row: str) -> settings_lib.Settings:
  return settings_lib.from_dict(protocol.get_config(row).to_dict())


def _ids_digest(ids) -> str:
  return hashlib.sha256("\n".join(map(str, ids)).encode("utf-8")).hexdigest()


def prediction_file(folder: str, row: str, seed: int) -> str:
  """Where a run's filed dev predictions are: FOLDER/ROW/seedK.npz, FOLDER being the
  results file's name + "_predictions" (docs/results_predictions)."""
  return os.path.join(folder, row.replace("/", "__"), f"seed{seed}.npz")


def score_dev(workdir: str, row: str, seed: int, folder: str) -> dict:
  """Scores a finished run on dev once (`--mode=eval --config.eval.dev=true`) unless its
  record has dev metrics already; files its dev predictions; its updated run.json."""
  out = results_lib.run_dir(workdir, row, seed)
  record_path = os.path.join(out, "run.json")
  with open(record_path, encoding="utf-8") as f:
    record = json.load(f)
  metrics_path = os.path.join(out, "metrics.json")
  if not any(k.startswith("dev/") for k in record["metrics"]):
    cmd = [sys.executable, os.path.join(results_lib.REPO, "launch.py"), "--mode=eval",
           f"--config={os.path.join(results_lib.REPO, 'configs', 'protocol.py')}:{row}",
           f"--workdir={out}", f"--config.seed={seed}", "--config.eval.dev=true",
           "--config.train.progress=false", *[f"--config.{s}" for s in record["extra"]]]
    # metrics.json with dev metrics: a scoring whose evaluation finished and whose record
    # was not updated (stopped in between); its files are read, not made again.
    if not _has_dev(metrics_path):
      with open(os.path.join(out, "log.txt"), "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                              cwd=results_lib.REPO, check=False)
      if proc.returncode != 0:
        raise RuntimeError(f"dev evaluation of {row} seed {seed} failed (exit "
                           f"{proc.returncode}); see {os.path.join(out, 'log.txt')}")
    with open(metrics_path, encoding="utf-8") as f:
      record["metrics"] = json.load(f)
    record["dev_command"] = " ".join(["python", "launch.py", "--mode=eval",
                                      f"--config=configs/protocol.py:{row}", *cmd[5:]])
    record["dev_scored"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")
    record["dev_machine"] = runs_lib.machine(out)
    tmp = record_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(record, f, indent=2)
    os.replace(tmp, record_path)
  file_predictions(out, row, seed, folder)
  return record


def _has_dev(metrics_path: str) -> bool:
  if not os.path.isfile(metrics_path):
    return False
  with open(metrics_path, encoding="utf-8") as f:
    return any(k.startswith("dev/") for k in json.load(f))


def file_predictions(run: str, row: str, seed: int, folder: str) -> str:
  """The run's dev predictions (class, 0/1 or score per example, in file order) and a
  digest of their ids, as FOLDER/ROW/seedK.npz (`prediction_file`)."""
  outputs = np.load(os.path.join(run, "predictions", "dev-outputs.npz"))
  arrays = {}
  for task in tasks_lib.EVAL_TASKS:
    if f"{task}/outputs" not in outputs:
      continue
    pred = evaluate.to_predictions(task, outputs[f"{task}/outputs"])
    arrays[f"{task}/pred"] = pred.astype(np.float32 if _KIND[task] == "pearson" else np.int8)
    arrays[f"{task}/ids_sha256"] = np.array(_ids_digest(outputs[f"{task}/ids"].tolist()))
  path = prediction_file(folder, row, seed)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)
  return path


def gold(task: str, s: settings_lib.Settings) -> tuple[np.ndarray, str]:
  """The dev labels of `task` as the runs read them (the task table's reader, the same
  skipped rows) and the digest of their ids."""
  path = experiment.data_path(s, f"{task}_dev")
  rows = tasks_lib.get(task).read(path, s.data)
  return np.asarray(rows.labels), _ids_digest(rows.ids)


def _load_predictions(folder: str, row: str, seeds: list[int], task: str,
                      digest: str) -> list[np.ndarray]:
  preds = []
  for seed in seeds:
    path = prediction_file(folder, row, seed)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: no filed dev predictions of {row} seed {seed} (run "
                              "python -m study.verdict --final)")
    with np.load(path) as f:
      if str(f[f"{task}/ids_sha256"]) != digest:
        raise ValueError(f"{path}: its {task} predictions are not of the dev rows read now "
                         "(another dev file, or another reader)")
      preds.append(f[f"{task}/pred"])
  return preds


def verdict(results: dict, folder: str, samples: int = compare_lib.BOOTSTRAP_SAMPLES) -> dict:
  """Per task: the multitask row against the chosen single-task row on dev, each over its
  seeds with dev predictions filed in `folder`. When the selection chose a row with
  teachers (beyond the budget), under WITH_TEACHERS: the same table for it, and the row
  against the multitask row (what the teachers added; both rows are reported ones, so
  this reads no dev score that the verdict does not)."""
  chosen = results["selection"]
  multi = chosen["multitask"]["chosen"]
  single = {task: chosen[task]["chosen"] for task in protocol.SINGLE_TASK_STEPS}
  out = {"multitask": multi, "tasks": _against(results, folder, multi, single, samples),
         "bootstrap_samples": samples, "confidence": compare_lib.CONFIDENCE,
         "date": datetime.date.today().isoformat(), "machine": runtime.cpu_model()}
  if WITH_TEACHERS in chosen:
    row = chosen[WITH_TEACHERS]["chosen"]
    out[WITH_TEACHERS] = {
        "row": row, "tasks": _against(results, folder, row, single, samples),
        "against_multitask": _against(results, folder, row, dict.fromkeys(single, multi),
                                      samples)}
  return out


def _against(results: dict, folder: str, row: str, reference: dict[str, str],
             samples: int) -> dict:
  """{task: `row` minus `reference[task]` on dev} for the tasks where both rows have filed
  dev predictions; in each record "multitask" is `row`'s per-seed values and "single" the
  reference row ("single_task" its values), the names of the verdict's own comparison."""
  s = _settings(row)
  tasks = {}
  row_seeds = _dev_seeds(results, row)
  for task, other in reference.items():
    other_seeds = _dev_seeds(results, other)
    if not row_seeds or not other_seeds:
      continue
    labels, digest = gold(task, s)
    c = compare_lib.compare(_load_predictions(folder, row, row_seeds, task, digest),
                            _load_predictions(folder, other, other_seeds, task, digest),
                            labels,
                            _KIND[task], samples=samples)
    tasks[task] = {"single": other, "metric": metric_key(task, "dev"),
                   "seeds_multitask": row_seeds, "seeds_single": other_seeds,
                   "multitask": list(c.seeds_a), "single_task": list(c.seeds_b),
                   "difference": c.difference, "low": c.low, "high": c.high,
                   "welch_t": c.welch_t, "welch_p": c.welch_p, "verdict": c.verdict,
                   "examples": c.examples}
  return tasks


def valid_gold(task: str, s: settings_lib.Settings) -> dict[str, float]:
  """{row id: label} of `task`'s validation split as the runs carved it (the task table's
  reader on its train file, `data.valid_fraction`)."""
  path = experiment.data_path(s, settings_lib.train_file_field(task))
  rows = tasks_lib.get(task).read(path, s.data)
  held = data_lib.in_validation_split(rows.ids, s.data.valid_fraction)
  return {i: float(y) for i, y, h in zip(rows.ids, rows.labels, held) if h}


def contrast(results: dict, workdir: str, row: str, reference: str,
             samples: int = compare_lib.BOOTSTRAP_SAMPLES) -> dict:
  """`row` minus `reference` on the validation split, per task they both evaluate, over
  the seeds both have finished under `workdir` (each run's predictions/valid-outputs.npz):
  what a candidate did to each task, with the interval of `mtbert_jax.compare`. Reads no
  dev score. With one seed the interval covers the examples alone, not the seed noise."""
  seeds = sorted(set(_seeds(results, row)) & set(_seeds(results, reference)))
  if not seeds:
    raise ValueError(f"{row} and {reference} share no finished seed: "
                     f"{_seeds(results, row)} against {_seeds(results, reference)}")
  s = _settings(row)
  out = {"reference": reference, "seeds": seeds, "split": "valid", "tasks": {},
         "bootstrap_samples": samples, "date": datetime.date.today().isoformat()}
  for task in tasks_lib.EVAL_TASKS:
    key = metric_key(task, "valid")
    if not all(key in r["metrics"] for name in (row, reference)
               for r in results["rows"][name]["runs"] if r["seed"] in seeds):
      continue
    gold_of = valid_gold(task, s)
    preds = {name: [_valid_predictions(workdir, name, seed, task, gold_of) for seed in seeds]
             for name in (row, reference)}
    ids = preds[row][0][0]
    labels = np.asarray([gold_of[i] for i in ids])
    c = compare_lib.compare([p for _, p in preds[row]], [p for _, p in preds[reference]],
                            labels, _KIND[task], samples=samples)
    out["tasks"][task] = {"metric": key, "row": list(c.seeds_a), "reference": list(c.seeds_b),
                          "difference": c.difference, "low": c.low, "high": c.high,
                          "verdict": c.verdict, "examples": c.examples}
  return out


def _valid_predictions(workdir: str, row: str, seed: int, task: str,
                       gold_of: dict[str, float]) -> tuple[list[str], np.ndarray]:
  """(ids, predictions) of a finished run on the validation split, ordered by id; an error
  when its ids are not the split's."""
  path = os.path.join(results_lib.run_dir(workdir, row, seed), "predictions",
                      "valid-outputs.npz")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no validation outputs of {row} seed {seed} (a run "
                            "of configs/protocol.py writes them after its last step)")
  with np.load(path) as f:
    ids = [str(i) for i in f[f"{task}/ids"]]
    pred = evaluate.to_predictions(task, f[f"{task}/outputs"])
  if sorted(ids) != sorted(gold_of):
    raise ValueError(f"{path}: its {task} ids are not the validation split read now "
                     f"({len(ids)} rows against {len(gold_of)})")
  order = np.argsort(ids)
  return [ids[i] for i in order], np.asarray(pred)[order]


def _seeds(results: dict, row: str) -> list[int]:
  if row not in results["rows"]:
    raise ValueError(f"no finished run of {row!r} in the results")
  return sorted(r["seed"] for r in results["rows"][row]["runs"])


def _dev_seeds(results: dict, row: str) -> list[int]:
  runs = results["rows"].get(row, {}).get("runs", [])
  return sorted(r["seed"] for r in runs if any(k.startswith("dev/") for k in r["metrics"]))


def main(argv):
  del argv
  out, workdir = _OUT.value, _WORKDIR.value
  with open(out + ".json", encoding="utf-8") as f:
    results = json.load(f)
  extra = {k: results[k] for k in ("selection", "verdict", "contrasts") if k in results}
  baselines = results.get("baselines")
  if _SELECT.value:
    extra["selection"] = select(results)
    results, _ = results_lib.update(out, workdir, {}, _NOTES.value, baselines, extra=extra)
  if _FINAL.value:
    chosen = extra.get("selection")
    if not chosen:
      raise app.UsageError("no selection recorded: run --select first")
    rows = [chosen[t]["chosen"] for t in protocol.SINGLE_TASK_STEPS] + [
        chosen["multitask"]["chosen"]] + (
            [chosen[WITH_TEACHERS]["chosen"]] if WITH_TEACHERS in chosen else [])
    for seed in map(int, _SEEDS.value):
      for row in rows:
        results_lib.run_one(workdir, row, seed, [])
        record = score_dev(workdir, row, seed, out + "_predictions")
        print(f"{row} seed {seed}: " + ", ".join(
            f"{k}={v:.4f}" for k, v in sorted(record["metrics"].items()) if "/" in k),
            flush=True)
        results, _ = results_lib.update(out, workdir, {}, _NOTES.value, baselines, extra=extra)
  for row in _CONTRAST.value:
    extra.setdefault("contrasts", {})[row] = contrast(results, workdir, row,
                                                      _REFERENCE.value)
  if extra.get("selection"):
    extra["verdict"] = verdict(results, out + "_predictions")
  results, figures = results_lib.update(out, workdir, {}, _NOTES.value, baselines,
                                        figures=_FIGURES.value, extra=extra)
  print(results_lib.markdown(results, _NOTES.value, figures))


if __name__ == "__main__":
  _SELECT = flags.DEFINE_bool("select", False, "choose the rows on the validation split")
  _FINAL = flags.DEFINE_bool("final", False, "train the chosen rows' seeds and score dev")
  _SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "seeds of the final rows")
  _WORKDIR = flags.DEFINE_string("workdir", "runs/verdict", "folder of the runs")
  _OUT = flags.DEFINE_string("out", "docs/results", "reads and writes OUT.json and OUT.md")
  _NOTES = flags.DEFINE_string("notes", results_lib.NOTES, "markdown written above the tables")
  _FIGURES = flags.DEFINE_bool("figures", True, "also draw a figure per group")
  _CONTRAST = flags.DEFINE_list("contrast", [], "rows to set against --reference on the "
                                "validation split, per task with an interval (their runs "
                                "under --workdir)")
  _REFERENCE = flags.DEFINE_string("reference", protocol.WINNER, "the row --contrast "
                                   "compares with")
  app.run(main)
