"""The results protocol's tables (study/results.py) from finished runs' records."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mtbert_jax import runtime
from study import results
from study import runs


def _record(workdir, row, seed, sst, para, sts, split="dev", machine="x86_64, 2 cores"):
  out = results.run_dir(str(workdir), row, seed)
  os.makedirs(out)
  metrics = {f"{split}/sst_acc": sst, f"{split}/para_acc": para, f"{split}/sts_pearson": sts,
             f"{split}/average": (sst + para + sts) / 3}
  with open(os.path.join(out, "run.json"), "w", encoding="utf-8") as f:
    json.dump({"row": row, "seed": seed, "metrics": metrics, "seconds": 60.0 * (seed + 1),
               "command": f"python launch.py --config=configs/protocol.py:{row}",
               "finished": "2026-12-02T00:00:00+00:00", "machine": machine}, f)


def _baselines(sst, para, sts):
  def task(metric, values):
    return {"metric": metric, "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "seeds": values, "runs": [{"steps": 10}]}
  return {"command": "single_task_baselines.py", "machine": "m", "date": "d",
          "tasks": {"sst": task("acc", sst), "para": task("acc", para),
                    "sts": task("pearson", sts)}}


def test_rows_are_mean_and_sample_std_over_seeds_and_compared_with_the_baselines(tmp_path):
  for seed, (sst, para, sts) in enumerate([(0.40, 0.80, 0.85), (0.44, 0.82, 0.86),
                                           (0.42, 0.84, 0.87)]):
    _record(tmp_path, "full", seed, sst, para, sts)
  _record(tmp_path, "quick", 0, 0.30, 0.70, 0.80)
  out = results.collect(str(tmp_path), {"groups": {"search": ["quick", "full"]}})
  full = out["rows"]["full"]
  assert full["seeds"] == [0, 1, 2]
  assert full["dev/sst_acc"]["mean"] == pytest.approx(0.42)
  assert full["dev/sst_acc"]["std"] == pytest.approx(0.02)   # sample std (ddof 1) of .40 .44 .42
  assert full["dev/sst_acc"]["seeds"] == [0.40, 0.44, 0.42]
  assert full["minutes_per_run"] == pytest.approx(2.0)
  assert out["rows"]["quick"]["dev/para_acc"]["std"] == 0.0   # one seed: no spread
  out["baselines"] = _baselines([0.415], [0.81], [0.83, 0.84])
  text = results.markdown(out)
  assert "## search (dev)" in text
  assert "| quick | 0.300 | 0.700 | 0.800 | 0.600 | 1 | 1 |" in text
  assert "| full | 0.420 ± 0.020 | 0.820 ± 0.020 | 0.860 ± 0.010 |" in text
  # The HF PyTorch baselines are shown as an untuned external anchor, not compared.
  assert "External anchor, untuned" in text
  assert "| sts | pearson | 0.835 ± 0.007 | 2 | 10 |" in text


def test_rows_scored_on_the_validation_split_get_a_validation_table(tmp_path):
  _record(tmp_path, "sst/base", 0, 0.45, 0.0, 0.0, split="valid")
  _record(tmp_path, "both_t07", 0, 0.44, 0.81, 0.85, split="valid")
  out = results.collect(str(tmp_path), {"groups": {"search": ["sst/base", "both_t07"]}})
  text = results.markdown(out, "")
  assert "## search (valid)" in text and "| row | valid SST acc |" in text
  assert "| both_t07 | 0.440 | 0.810 | 0.850 | 0.700 | 1 |" in text


def test_runs_recorded_before_stay_when_a_new_workdir_adds_runs(tmp_path):
  """docs/results.json keeps each run's record, so an invocation on a fresh machine (an
  empty --workdir but for its own runs) adds to the tables instead of replacing them."""
  _record(tmp_path / "old", "full", 0, 0.40, 0.80, 0.85)
  _record(tmp_path / "old", "full", 1, 0.44, 0.82, 0.86)
  _record(tmp_path / "old", "quick", 0, 0.30, 0.70, 0.80)
  first = results.collect(str(tmp_path / "old"), {"groups": {"g": ["quick", "full"]}})
  first = json.loads(json.dumps(first))                  # as written to and read from disk
  # The new workdir has seed 2 of full and a rerun of full's seed 1 (its record wins).
  _record(tmp_path / "new", "full", 2, 0.42, 0.84, 0.87)
  _record(tmp_path / "new", "full", 1, 0.46, 0.82, 0.86)
  out = results.collect(str(tmp_path / "new"), first, "docs/results.json")
  assert out["rows"]["full"]["seeds"] == [0, 1, 2]
  assert out["rows"]["full"]["dev/sst_acc"]["seeds"] == [0.40, 0.46, 0.42]
  assert out["rows"]["quick"] == first["rows"]["quick"]
  assert out["groups"] == {"g": ["quick", "full"]}
  assert results.collect(str(tmp_path / "missing"), first)["rows"] == first["rows"]
  # A results file without per-run records cannot be merged without losing runs: an error.
  del first["rows"]["quick"]["runs"]
  with pytest.raises(ValueError, match="docs/results.json: row 'quick' has no per-run"):
    results.collect(str(tmp_path / "new"), first, "docs/results.json")


def test_one_results_file_holds_the_runs_of_one_machine(tmp_path):
  """bf16 results differ between CPU models: a workdir of another CPU's runs is refused for
  a file of one CPU's (named, with the remedy); records that name no CPU do not count."""
  amd, xeon = "AMD EPYC, x86_64, 2 cores", "Intel(R) Xeon(R) Processor, x86_64, 2 cores"
  _record(tmp_path / "old", "full", 0, 0.40, 0.80, 0.85, machine=amd)
  _record(tmp_path / "old", "quick", 0, 0.30, 0.70, 0.80)          # names no CPU
  first = results.collect(str(tmp_path / "old"), {})
  _record(tmp_path / "new", "full", 1, 0.44, 0.82, 0.86, machine=amd)
  assert results.collect(str(tmp_path / "new"), first)["rows"]["full"]["seeds"] == [0, 1]
  _record(tmp_path / "xeon", "full", 1, 0.44, 0.82, 0.86, machine=xeon)
  with pytest.raises(ValueError, match=r"docs/results.json and the runs under .*xeon "
                     r"computed on more than one machine \('AMD EPYC': full seed 0 .*"
                     r"'Intel\(R\) Xeon\(R\) Processor': full seed 1 .*own --out"):
    results.collect(str(tmp_path / "xeon"), first, "docs/results.json")
  # A GPU run is told apart by its device, not by its host's CPU.
  gpu = results.collect(str(tmp_path / "gpu"), {})
  _record(tmp_path / "gpu", "full", 0, 0.4, 0.8, 0.85, machine=xeon + "; 1 x H100 (gpu, 1 host)")
  _record(tmp_path / "gpu", "full", 1, 0.4, 0.8, 0.85, machine=amd + "; 1 x H100 (gpu, 1 host)")
  assert results.collect(str(tmp_path / "gpu"), gpu)["rows"]["full"]["seeds"] == [0, 1]


def test_invocations_side_by_side_into_one_out_add_to_each_others_tables(tmp_path):
  """Each write reads OUT.json as it is then (under a lock), so two invocations running at
  once, even into different workdirs, keep each other's rows and groups."""
  out = str(tmp_path / "results")
  _record(tmp_path / "a", "ablation/smart", 0, 0.44, 0.81, 0.85)
  results.update(out, str(tmp_path / "a"), {"ablation/smart": "ablation"}, "")
  _record(tmp_path / "b", "ablation/tweets", 0, 0.38, 0.80, 0.84)
  results.update(out, str(tmp_path / "b"), {"ablation/tweets": "ablation",
                                            "ablation/simcse": "ablation"}, "")  # not run yet
  _record(tmp_path / "a", "ablation/smart", 1, 0.46, 0.83, 0.83)
  table, _ = results.update(out, str(tmp_path / "a"), {"ablation/smart": "ablation"}, "")
  assert table["groups"] == {"ablation": ["ablation/smart", "ablation/tweets"]}
  assert table["rows"]["ablation/smart"]["seeds"] == [0, 1]
  assert table["rows"]["ablation/tweets"]["seeds"] == [0]
  with open(out + ".json", encoding="utf-8") as f:
    assert json.load(f)["groups"] == table["groups"]
  # A row filed under another group moves there; --tables_only (nothing filed) keeps groups.
  table, _ = results.update(out, str(tmp_path / "b"), {"ablation/tweets": "extra data"}, "")
  assert table["groups"] == {"ablation": ["ablation/smart"], "extra data": ["ablation/tweets"]}
  assert results.update(out, str(tmp_path / "none"), {}, "")[0]["groups"] == table["groups"]
  # A finished run that no invocation filed is shown under its own heading, not hidden.
  _record(tmp_path / "c", "cross_prop", 0, 0.48, 0.83, 0.86)
  table, _ = results.update(out, str(tmp_path / "c"), {}, "")
  assert table["groups"][results.UNFILED] == ["cross_prop"]
  with open(out + ".md", encoding="utf-8") as f:
    assert f"## {results.UNFILED}" in f.read()
  table, _ = results.update(out, str(tmp_path / "c"), {"cross_prop": "recipes"}, "")
  assert results.UNFILED not in table["groups"] and table["groups"]["recipes"] == ["cross_prop"]


def test_the_ablation_group_has_table_3_across_its_rows(tmp_path):
  # SST and Quora rise together across the rows, STS falls as they rise.
  for row, (sst, para, sts) in {"baseline": (0.40, 0.80, 0.86), "smart": (0.42, 0.81, 0.85),
                                "tweets": (0.44, 0.82, 0.84)}.items():
    _record(tmp_path, f"ablation/{row}", 0, sst, para, sts)
  rows = ["ablation/baseline", "ablation/smart", "ablation/tweets"]
  text = results.markdown(results.collect(str(tmp_path), {"groups": {"ablation": rows}}))
  assert "across the 3 rows above" in text
  assert "| sst | 1.00 | 1.00 | -1.00 |" in text
  assert "| sts | -1.00 | -1.00 | 1.00 |" in text


def test_each_group_gets_a_figure_shown_under_its_table(tmp_path):
  pytest.importorskip("matplotlib")
  for seed, (sst, para, sts) in enumerate([(0.40, 0.80, 0.85), (0.42, 0.82, 0.85)]):
    _record(tmp_path / "w", "ablation/baseline", seed, sst, para, sts)
  _record(tmp_path / "w", "ablation/smart", 0, 0.44, 0.81, 0.85)
  _record(tmp_path / "w", "full", 0, 0.45, 0.83, 0.86)
  out = results.collect(str(tmp_path / "w"), {"groups": {
      "ablation": ["ablation/baseline", "ablation/smart"], "recipe search": ["full"]}})
  out["baselines"] = _baselines([0.415], [0.81], [0.83])
  for other in ("results_old-group.png", "results_t2_ablation.png", "results_notes.md"):
    (tmp_path / other).write_text("")   # a group gone; another --out's figure; notes
  figures = results.draw_figures(str(tmp_path / "results"), out)
  assert not (tmp_path / "results_old-group.png").exists()
  assert (tmp_path / "results_t2_ablation.png").exists()
  assert (tmp_path / "results_notes.md").exists()
  assert figures == {"ablation": "results_ablation.png",
                     "recipe search": "results_recipe-search.png"}
  for name in figures.values():
    with open(tmp_path / name, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  text = results.markdown(out, "", figures)
  table_end = text.index("| ablation/smart | 0.440")
  assert text.index("](results_ablation.png)") > table_end
  assert "](results_ablation.png)" not in results.markdown(out, "")


def test_the_command_line_tools_import_together():
  """results, verdict, ablation and report share flag names (--workdir, --out, --rows);
  each defines its flags only as the program, so one process (the test session) imports all."""
  import importlib  # pylint: disable=import-outside-toplevel
  for name in ("study.results", "study.verdict", "study.ablation", "mtbert_jax.report"):
    importlib.import_module(name)


def test_the_readme_says_what_docs_results_holds():
  """The README's verdict is docs/results.json's: each task's line of the verdict table
  (as `results.verdict_lines` writes it) when there is a verdict, else the statement that
  there is none yet; and no claim of the first protocol's kind ("beats the ... baseline")."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "docs", "results.json"), encoding="utf-8") as f:
    table = json.load(f)
  with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  lines = [line for line in results.verdict_lines(table) if line.startswith("| ")][1:]
  if lines:
    for line in lines:
      assert line in readme, line
  else:
    assert "the verdict is not yet measured" in readme
  assert "beats the single-task SST model" not in readme


def test_a_run_names_its_accelerator_and_other_notes_replace_the_default(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  assert runs.machine(str(run)).endswith(" cores")          # no train_stats.json yet
  assert runs.machine(str(run)).startswith(runtime.cpu_model() + ", ")  # bf16 depends on it
  with open(run / "train_stats.json", "w", encoding="utf-8") as f:
    json.dump({"devices": {"backend": "gpu", "kind": "NVIDIA H200", "count": 1,
                           "processes": 1}, "windows": []}, f)
  assert runs.machine(str(run)).endswith("; 1 x NVIDIA H200 (gpu, 1 host)")
  _record(tmp_path / "w", "full", 0, 0.4, 0.8, 0.85)
  out = results.collect(str(tmp_path / "w"), {"groups": {"final recipe": ["full"]}})
  notes = tmp_path / "notes.md"
  notes.write_text("Runs of the paper's budget on one GPU.\n", encoding="utf-8")
  text = results.markdown(out, str(notes))
  assert "Runs of the paper's budget on one GPU." in text and "## The protocol" not in text
  assert "## The protocol" not in results.markdown(out, "")      # no notes at all
  assert "## The protocol" in results.markdown(out)             # docs/results_notes.md
  with pytest.raises(FileNotFoundError, match="--notes: .*missing.md is not a file"):
    results.markdown(out, str(tmp_path / "missing.md"))


def test_a_stopped_run_is_an_error_and_its_time_counts_when_it_resumes(tmp_path, monkeypatch):
  calls = []

  def fake_run(cmd, **kwargs):
    # The first attempt stops as launch.py does on SIGTERM (exit 0, a checkpoint, no
    # metrics.json); the second finishes.
    calls.append(cmd)
    if len(calls) == 2:
      out = next(a.split("=", 1)[1] for a in cmd if a.startswith("--workdir="))
      with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump({"dev/average": 0.7}, f)
    return runs.subprocess.CompletedProcess(cmd, 0)

  monkeypatch.setattr(runs.subprocess, "run", fake_run)
  with pytest.raises(RuntimeError, match="stopped before its last step .* resume it"):
    results.run_one(str(tmp_path), "ablation/smart", 0, [])
  assert not os.path.exists(os.path.join(results.run_dir(str(tmp_path), "ablation/smart", 0),
                                         "run.json"))
  record = results.run_one(str(tmp_path), "ablation/smart", 0, [])
  assert record["attempts"] == 2 and record["metrics"] == {"dev/average": 0.7}
  with open(os.path.join(results.run_dir(str(tmp_path), "ablation/smart", 0),
                         "attempts.json"), encoding="utf-8") as f:
    assert record["seconds"] == pytest.approx(sum(json.load(f)["seconds"]))
  assert results.run_one(str(tmp_path), "ablation/smart", 0, []) == record   # read back
  assert len(calls) == 2
