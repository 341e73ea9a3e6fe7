"""The verdict protocol (study/verdict.py): selection on the validation split only, dev
predictions filed per run, the verdict table from them."""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest

from study import results
from study import verdict


def _run(workdir, row, seed, metrics):
  out = results.run_dir(str(workdir), row, seed)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "run.json"), "w", encoding="utf-8") as f:
    json.dump({"row": row, "seed": seed, "metrics": metrics, "seconds": 60.0, "extra": [],
               "command": f"python launch.py --config=configs/protocol.py:{row}",
               "finished": "2026-12-07T00:00:00+00:00", "machine": "m"}, f)
  return out


def _search(tmp_path):
  """Seed-0 search runs with validation metrics, and dev metrics that would choose
  otherwise (selection must not read them)."""
  valid = {"sst/base": 0.50, "sst/lr2e-4": 0.52, "para/base": 0.80, "para/prompt": 0.79,
           "sts/base": 0.86, "sts/pooler": 0.85}
  for row, v in valid.items():
    task = row.split("/")[0]
    key = {"sst": "sst_acc", "para": "para_acc", "sts": "sts_pearson"}[task]
    _run(tmp_path, row, 0, {f"valid/{key}": v, f"dev/{key}": 1 - v})
  for row, avg in (("both_t07", 0.72), ("both_t07_lr2e-4", 0.71)):
    _run(tmp_path, row, 0, {"valid/average": avg, "dev/average": 1 - avg})
  groups = {verdict.SINGLE_GROUP: list(valid), verdict.MULTI_GROUP: ["both_t07",
                                                                    "both_t07_lr2e-4"]}
  return results.collect(str(tmp_path), {"groups": groups})


def test_selection_reads_the_validation_split_only(tmp_path):
  chosen = verdict.select(_search(tmp_path))
  assert {t: chosen[t]["chosen"] for t in ("sst", "para", "sts", "multitask")} == {
      "sst": "sst/lr2e-4", "para": "para/base", "sts": "sts/base", "multitask": "both_t07"}
  assert chosen["sst"]["metric"] == "valid/sst_acc"
  assert chosen["sst"]["compared"] == {"sst/base": 0.50, "sst/lr2e-4": 0.52}
  assert chosen["multitask"]["metric"] == "valid/average"
  assert chosen["sst"]["seeds"] == [0]


def test_selection_compares_rows_on_their_common_seeds(tmp_path):
  """A row with more seeds is compared on the seeds the others have: sst/base's seed 1
  (0.60) would otherwise lift its mean above sst/lr2e-4's seed-0 value."""
  _run(tmp_path, "sst/base", 1, {"valid/sst_acc": 0.60})
  results_ = _search(tmp_path)
  chosen = verdict.select(results_)
  assert chosen["sst"]["chosen"] == "sst/lr2e-4"
  assert chosen["sst"]["compared"]["sst/base"] == pytest.approx(0.50)
  _run(tmp_path, "sst/lr2e-4", 2, {"valid/sst_acc": 0.40})
  os.remove(os.path.join(results.run_dir(str(tmp_path), "sst/lr2e-4", 0), "run.json"))
  with pytest.raises(ValueError, match="share no seed"):
    verdict.select(results.collect(str(tmp_path), {"groups": results_["groups"]}))


def test_candidates_meet_the_search_choice_on_their_shared_seeds(tmp_path):
  """The second stage: both_t07 (the search's choice) against two candidates on seeds
  0-2. win_a is best on seed 0 alone but not on the three seeds' mean; the search's other
  row (seed 0 only) does not narrow the comparison to seed 0."""
  for seed, (mine, a, b) in enumerate([(0.72, 0.75, 0.70), (0.73, 0.70, 0.75),
                                       (0.74, 0.70, 0.76), (0.80, None, None)]):
    _run(tmp_path, "both_t07", seed, {"valid/average": mine})
    for row, v in (("win_a", a), ("win_b", b)):
      if v is not None:
        _run(tmp_path, row, seed, {"valid/average": v, "dev/average": 1.0})
  _run(tmp_path, "win_distill", 0, {"valid/average": 0.99})
  groups = _search(tmp_path)["groups"]
  groups[verdict.CANDIDATE_GROUP] = ["win_a", "win_b"]
  groups[verdict.BEYOND_BUDGET_GROUP] = ["win_distill"]
  _run(tmp_path, "win_distill_annealed", 0, {"valid/average": 0.98})
  groups[verdict.BEYOND_BUDGET_GROUP].append("win_distill_annealed")
  selection = verdict.select(results.collect(str(tmp_path), {"groups": groups}))
  # The rows with teachers (0.99, 0.98 on seed 0) are chosen among themselves, never
  # against the equal-budget rows.
  teachers = selection[verdict.WITH_TEACHERS]
  assert teachers["chosen"] == "win_distill" and set(teachers["compared"]) == {
      "win_distill", "win_distill_annealed"}
  chosen = selection["multitask"]
  assert chosen["search"]["chosen"] == "both_t07" and chosen["search"]["seeds"] == [0]
  assert chosen["seeds"] == [0, 1, 2] and chosen["chosen"] == "win_b"
  assert chosen["compared"] == pytest.approx({"both_t07": 0.73, "win_a": 0.7166667,
                                              "win_b": 0.7366667})
  lines = results.selection_lines({"selection": {"multitask": chosen}})
  assert any(l.startswith("| multitask, search |") for l in lines)
  assert any(l.startswith("| multitask, against the candidates |") and "`win_b`" in l
             for l in lines)


def test_the_verdict_compares_filed_dev_predictions(tmp_path, monkeypatch):
  folder = str(tmp_path / "predictions")
  rng = np.random.default_rng(0)
  labels = {"sst": rng.integers(0, 5, 500), "para": rng.integers(0, 2, 800),
            "sts": rng.uniform(0, 5, 300)}
  ids = {t: [f"{t}{i}" for i in range(len(v))] for t, v in labels.items()}
  monkeypatch.setattr(verdict, "gold", lambda task, s: (labels[task],
                                                         verdict._ids_digest(ids[task])))  # pylint: disable=protected-access

  def outputs(task, quality):
    y = labels[task]
    if task == "sst":   # logits whose argmax is right with probability `quality`
      pred = np.where(rng.random(len(y)) < quality, y, (y + 1) % 5)
      return np.eye(5)[pred]
    if task == "para":  # a logit whose sign is right with probability `quality`
      right = rng.random(len(y)) < quality
      return np.where(right == (y == 1), 1.0, -1.0)
    return y + rng.normal(scale=1 - quality, size=len(y))

  work = tmp_path / "runs"
  rows = {"multi": ("both_t07", {"sst": 0.6, "para": 0.8, "sts": 0.8}),
          "sst": ("sst/lr2e-4", {"sst": 0.45}), "para": ("para/base", {"para": 0.8}),
          "sts": ("sts/base", {"sts": 0.5}),
          "teachers": ("win_distill", {"sst": 0.45, "para": 0.8, "sts": 0.5})}
  for row, quality in rows.values():
    for seed in range(3):
      out = _run(work, row, seed, {"dev/x": 0.0})
      os.makedirs(os.path.join(out, "predictions"))
      arrays = {}
      for task, q in quality.items():
        arrays[f"{task}/ids"] = np.asarray(ids[task])
        arrays[f"{task}/outputs"] = outputs(task, q)
      np.savez(os.path.join(out, "predictions", "dev-outputs.npz"), **arrays)
      verdict.file_predictions(out, row, seed, folder)
  table = results.collect(str(work), {})
  table["selection"] = {
      name: {"chosen": row, "metric": "valid/x", "compared": {row: 0.5}}
      for name, row in (("multitask", "both_t07"), ("sst", "sst/lr2e-4"),
                        ("para", "para/base"), ("sts", "sts/base"),
                        (verdict.WITH_TEACHERS, "win_distill"))}
  v = verdict.verdict(table, folder, samples=500)
  # SST: 0.60 against 0.45 planted (better); Quora: the same quality (within noise); STS:
  # noise sd 0.2 against 0.5 (better).
  assert v["tasks"]["sst"]["verdict"] == "better" and v["tasks"]["sst"]["low"] > 0
  assert v["tasks"]["para"]["verdict"] == "within noise"
  assert v["tasks"]["sts"]["verdict"] == "better"
  assert v["tasks"]["sst"]["seeds_multitask"] == [0, 1, 2]
  table["verdict"] = v
  text = results.markdown(table, "")
  assert text.split("\n## ")[1].startswith("Verdict")      # the opening table
  assert "| sst (dev/sst_acc) | `sst/lr2e-4` |" in text and "| better |" in text
  # The row with teachers, planted at the single-task rows' quality: its own table, apart
  # from the equal-budget one and labelled with its cost.
  teachers = v[verdict.WITH_TEACHERS]
  assert teachers["row"] == "win_distill"
  assert {t: teachers["tasks"][t]["verdict"] for t in ("sst", "para", "sts")} == {
      "sst": "within noise", "para": "within noise", "sts": "within noise"}
  beyond = text.split("### Beyond the budget: `win_distill`")[1]
  assert "costs the budget twice" in beyond and "| sts (dev/sts_pearson) | `sts/base` |" in beyond
  # And against the multitask row (SST 0.45 against 0.6 planted: worse; Quora level).
  added = teachers["against_multitask"]
  assert added["sst"]["single"] == "both_t07" and added["sst"]["verdict"] == "worse"
  assert added["para"]["verdict"] == "within noise"
  assert "| without teachers row | without teachers, mean ± sd | with teachers" in beyond
  assert "| sst (dev/sst_acc) | `both_t07` |" in beyond
  # Predictions of other dev rows than the ones read now are refused.
  monkeypatch.setattr(verdict, "gold", lambda task, s: (labels[task], "another digest"))
  with pytest.raises(ValueError, match="not of the dev rows read now"):
    verdict.verdict(table, folder, samples=100)


def test_score_dev_records_dev_metrics_and_resumes_a_finished_evaluation(tmp_path, monkeypatch):
  """score_dev runs `--mode=eval` once, puts its dev metrics, command and machine into
  run.json (the validation metrics kept) and files the dev predictions; a scoring stopped
  after its evaluation finished is completed from the files without evaluating again."""
  out = _run(tmp_path, "sts/base", 0, {"valid/sts_pearson": 0.86, "step": 567})
  calls = []

  def fake_eval(cmd, **kwargs):
    calls.append(cmd)
    os.makedirs(os.path.join(out, "predictions"), exist_ok=True)
    np.savez(os.path.join(out, "predictions", "dev-outputs.npz"),
             **{"sts/outputs": np.array([1.0, 2.5]), "sts/ids": np.array(["a", "b"])})
    with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as f:
      json.dump({"valid/sts_pearson": 0.86, "dev/sts_pearson": 0.85, "step": 567}, f)
    return types.SimpleNamespace(returncode=0)

  monkeypatch.setattr(verdict.subprocess, "run", fake_eval)
  folder = str(tmp_path / "predictions")
  record = verdict.score_dev(str(tmp_path), "sts/base", 0, folder)
  assert len(calls) == 1 and "--config.eval.dev=true" in calls[0]
  assert record["metrics"]["dev/sts_pearson"] == 0.85
  assert record["metrics"]["valid/sts_pearson"] == 0.86
  assert record["dev_machine"] and record["dev_command"].startswith("python launch.py")
  with np.load(verdict.prediction_file(folder, "sts/base", 0)) as filed:
    np.testing.assert_array_equal(filed["sts/pred"], [1.0, 2.5])
  with open(os.path.join(out, "run.json"), encoding="utf-8") as f:
    assert json.load(f)["metrics"]["dev/sts_pearson"] == 0.85
  # A scoring stopped after the evaluation: run.json without dev metrics, metrics.json with.
  _run(tmp_path, "sts/base", 0, {"valid/sts_pearson": 0.86, "step": 567})
  record = verdict.score_dev(str(tmp_path), "sts/base", 0, folder)
  assert len(calls) == 1 and record["metrics"]["dev/sts_pearson"] == 0.85


def test_a_candidate_is_contrasted_with_its_reference_on_the_validation_split(tmp_path,
                                                                               monkeypatch):
  """`--contrast`: per task, the candidate minus the reference over their shared seeds,
  from each run's validation outputs (ids in any order), with an interval; a run whose ids
  are not the split's is an error."""
  rng = np.random.default_rng(1)
  gold = {f"s{i}": float(rng.integers(0, 5)) for i in range(400)}
  monkeypatch.setattr(verdict, "valid_gold", lambda task, s: gold)

  def run(row, seed, quality, ids=tuple(gold)):
    y = np.array([gold[i] for i in ids], int)
    pred = np.where(rng.random(len(y)) < quality, y, (y + 1) % 5)
    out = _run(tmp_path, row, seed, {"valid/sst_acc": float(np.mean(pred == y))})
    os.makedirs(os.path.join(out, "predictions"))
    np.savez(os.path.join(out, "predictions", "valid-outputs.npz"),
             **{"sst/ids": np.asarray(ids), "sst/outputs": np.eye(5)[pred]})

  for seed in range(3):
    run("both_t07_lr5e-5", seed, 0.5, tuple(sorted(gold, reverse=True)))  # another order
    run("win_annealed", seed, 0.7)
  run("both_t07_lr5e-5", 3, 0.5)                                             # not shared
  table = results.collect(str(tmp_path), {})
  c = verdict.contrast(table, str(tmp_path), "win_annealed", "both_t07_lr5e-5", samples=500)
  assert c["seeds"] == [0, 1, 2] and c["reference"] == "both_t07_lr5e-5"
  t = c["tasks"]["sst"]
  assert t["difference"] == pytest.approx(np.mean(t["row"]) - np.mean(t["reference"]))
  assert 0.1 < t["low"] < t["difference"] < t["high"] and t["verdict"] == "better"
  table["contrasts"] = {"win_annealed": c}
  assert "| `win_annealed` | `both_t07_lr5e-5` | sst (valid/sst_acc) |" in results.markdown(table, "")
  # One seed: its interval counts the examples alone, and the table makes no claim of it.
  os.remove(os.path.join(results.run_dir(str(tmp_path), "win_annealed", 1), "run.json"))
  os.remove(os.path.join(results.run_dir(str(tmp_path), "win_annealed", 2), "run.json"))
  one = results.collect(str(tmp_path), {})
  table["contrasts"] = {"win_annealed": verdict.contrast(one, str(tmp_path), "win_annealed",
                                                         "both_t07_lr5e-5", samples=200)}
  assert table["contrasts"]["win_annealed"]["seeds"] == [0]
  assert "| 0 | one seed: no claim |" in results.markdown(table, "")
  with pytest.raises(ValueError, match="share no finished seed"):
    verdict.contrast({"rows": {**table["rows"], "win_nli20": {"runs": [{"seed": 9}]}}},
                     str(tmp_path), "win_nli20", "both_t07_lr5e-5")
  run("win_nli10", 0, 0.7, tuple(list(gold)[:-1]))                       # a row short
  with pytest.raises(ValueError, match="not the validation split read now"):
    verdict.contrast(results.collect(str(tmp_path), {}), str(tmp_path), "win_nli10", "both_t07_lr5e-5")
