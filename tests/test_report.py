"""The error-analysis report (mtbert_jax/report.py): the numbers behind each figure
(error_analysis.py) against small hand-computed cases, and the report of a real
(tiny-encoder) workdir end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import smoke
from mtbert_jax import error_analysis
from mtbert_jax import report
from mtbert_jax import settings as settings_lib
from mtbert_jax import train

pytest.importorskip("matplotlib")


def test_class_counts_confusion_and_error_distances():
  gold = np.array([0, 1, 2, 3, 4, 4, 0, 2])
  pred = np.array([1, 1, 2, 1, 2, 4, 3, 2])
  counts_pred, counts_gold = error_analysis.class_counts(pred, gold)
  assert counts_pred.tolist() == [0, 3, 3, 1, 1]
  assert counts_gold.tolist() == [2, 1, 2, 1, 2]
  m = error_analysis.confusion_matrix(pred, gold)
  assert m[0, 1] == 1 and m[0, 3] == 1 and m[3, 1] == 1 and m[4, 2] == 1
  assert np.trace(m) == 4 and m.sum() == 8
  # Wrong: |0-1| = 1, |3-1| = 2, |4-2| = 2, |0-3| = 3 -> 1: 1/4, 2: 2/4, 3: 1/4, 4: 0.
  assert error_analysis.error_distances(pred, gold) == {1: (1, 0.25), 2: (2, 0.5), 3: (1, 0.25),
                                                4: (0, 0.0)}


def test_ecdf_binary_report_and_overlap():
  x, y = error_analysis.ecdf(np.array([3.0, 1.0, 2.0, 2.0]))
  assert x.tolist() == [1.0, 2.0, 2.0, 3.0] and y.tolist() == [0.25, 0.5, 0.75, 1.0]
  b = error_analysis.binary_report(np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 1, 1, 0]))
  assert (b["tp"], b["fp"], b["tn"], b["fn"]) == (2, 1, 2, 1)
  assert b["fp_rate"] == pytest.approx(1 / 3) and b["fn_rate"] == pytest.approx(1 / 3)
  assert b["precision"] == pytest.approx(2 / 3) and b["recall"] == pytest.approx(2 / 3)
  assert b["f1"] == pytest.approx(2 / 3) and b["accuracy"] == pytest.approx(4 / 6)
  assert error_analysis.word_overlap("A cat sat.", "the cat sat") == pytest.approx(2 / 4)
  assert error_analysis.word_overlap("", "") == 1.0


def test_confident_and_largest_errors():
  prob = np.array([0.9, 0.6, 0.2, 0.99, 0.05, 0.4])
  gold = np.array([0, 0, 1, 1, 1, 0])
  fp, fn = error_analysis.confident_errors(prob, gold, 5)
  assert fp == [0, 1] and fn == [4, 2]  # most confident first
  pred, gold = np.array([1.0, 4.0, 2.5]), np.array([1.5, 1.0, 2.5])
  assert error_analysis.largest_errors(pred, gold, 2) == [1, 0]


def test_correlation_table():
  points = [{"a": 1.0, "b": 2.0, "c": 5.0}, {"a": 2.0, "b": 4.0, "c": 5.0},
            {"a": 3.0, "b": 6.5, "c": 5.0}, {"a": 4.0, "b": 7.0}]
  corr, n = error_analysis.correlation_table(points, ["a", "b", "c"])
  assert n == 3  # the point without "c" is not used
  assert corr[0, 1] == pytest.approx(np.corrcoef([1, 2, 3], [2, 4, 6.5])[0, 1])
  assert np.isnan(corr[0, 2])  # a constant metric has no correlation
  _, n = error_analysis.correlation_table(points[:2], ["a", "b"])
  assert n == 2


def test_calibration_bins_and_ece():
  conf = np.array([0.95, 0.91, 0.55, 0.52, 0.58, 1.0])
  ok = np.array([True, False, True, True, False, True])
  bins, ece = error_analysis.calibration(conf, ok)
  # Bins 0.5-0.6 (3 examples) and 0.9-1.0 (3; a confidence of 1 falls in the last bin).
  assert [(lo, n) for lo, _, n, _, _ in bins] == [(0.5, 3), (0.9, 3)]
  assert bins[0][3] == pytest.approx(0.55) and bins[0][4] == pytest.approx(2 / 3)
  assert bins[1][3] == pytest.approx(2.86 / 3) and bins[1][4] == pytest.approx(2 / 3)
  assert ece == pytest.approx(0.5 * abs(2 / 3 - 0.55) + 0.5 * abs(2 / 3 - 2.86 / 3))
  # From raw outputs: the softmax's largest probability; the sigmoid's side of 0.5.
  conf, ok = error_analysis.confidences("sst", np.log([[0.1, 0.6, 0.1, 0.1, 0.1],
                                               [0.7, 0.1, 0.1, 0.05, 0.05]]), np.array([1, 2]))
  np.testing.assert_allclose(conf, [0.6, 0.7])
  assert ok.tolist() == [True, False]
  conf, ok = error_analysis.confidences("para", np.log([4.0, 1 / 9]), np.array([1, 1]))
  np.testing.assert_allclose(conf, [0.8, 0.9])
  assert ok.tolist() == [True, False]


@pytest.fixture(scope="module")
def run_dir(tiny_ckpt_dir, data_dir, tmp_path_factory):
  c = smoke.get_config()
  c.model.checkpoint = tiny_ckpt_dir
  c.jax_cache_dir = ""
  c.train.num_steps = 9
  workdir = str(tmp_path_factory.mktemp("report") / "run")
  train.train_and_evaluate(settings_lib.from_dict(c.to_dict()), workdir)
  return workdir


def test_run_names_keep_the_row_of_a_seed_folder():
  assert report.run_name("runs/results/cross_prop/seed0") == "cross_prop/seed0"
  assert report.run_name("runs/results/cross_prop/seed12/") == "cross_prop/seed12"
  assert report.run_name("runs/quick") == "quick"
  assert report.run_name("seed0") == "seed0"
  assert report.run_name("runs/seedless") == "seedless"


def test_report_of_a_workdir(run_dir, tmp_path):
  run = report.load_run(run_dir)
  assert set(run.tasks) == {"sst", "para", "sts"} and run.tasks["sst"].raw
  assert len(run.tasks["sst"].gold) == 64  # smoke's dev_limit
  # The numbers of the run's metrics.json, recomputed from the raw outputs.
  sst = run.tasks["sst"]
  assert np.mean(sst.predictions == sst.gold) == pytest.approx(run.metrics["dev/sst_acc"])
  path = report.write_report([run, run], str(tmp_path / "out"))
  text = open(path, encoding="utf-8").read()
  for name in ("fig4_sentiment_classes.png", "fig5a_sts_scores.png",
               "fig5b_sentiment_error_distance.png", "training_curves.png"):
    assert os.path.getsize(tmp_path / "out" / name) > 1000, name
    assert name in text
  assert "most confident false positives" in text and "Table 3" in text
  assert "## Calibration of the probabilities" in text and "ECE, paraphrase (sigmoid)" in text
  assert f"{run.metrics['dev/para_acc']:.4f}" in text
  # Deterministic: the same workdir gives the same files.
  again = report.write_report([run, run], str(tmp_path / "again"))
  assert open(again, encoding="utf-8").read() == text
  for name in os.listdir(tmp_path / "out"):
    assert open(tmp_path / "out" / name, "rb").read() == open(tmp_path / "again" / name,
                                                               "rb").read(), name


def test_a_workdir_without_dev_predictions_is_refused(run_dir, tmp_path):
  bare = str(tmp_path / "bare")
  shutil.copytree(run_dir, bare)
  shutil.rmtree(os.path.join(bare, "predictions"))
  with pytest.raises(report.ReportError, match="has no dev predictions"):
    report.load_run(bare)


def test_the_command_reads_the_workdirs_own_config(run_dir, data_dir, tmp_path):
  """`python -m mtbert_jax.report` from a copy of the package in a folder without
  `configs/` (so an import of it would fail): the settings come from the workdir's
  config.json alone. One that lacks a field (an older version's) is refused, naming it."""
  workdir = str(tmp_path / "run")
  shutil.copytree(run_dir, workdir)
  config_file = os.path.join(workdir, "config.json")
  with open(config_file, encoding="utf-8") as f:
    config = json.load(f)
  config["data"]["dir"] = os.path.abspath(data_dir)  # the copy's default is another folder
  with open(config_file, "w", encoding="utf-8") as f:
    json.dump(config, f)
  package = os.path.dirname(os.path.abspath(report.__file__))
  site = tmp_path / "site"
  shutil.copytree(package, site / "mtbert_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["PYTHONPATH"] = str(site)
  where = subprocess.run([sys.executable, "-c", "import mtbert_jax; print(mtbert_jax.__file__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
  assert where.stdout.startswith(str(site)), where.stdout  # the copy, not the checkout
  proc = subprocess.run(
      [sys.executable, "-m", "mtbert_jax.report", f"--workdir={workdir}",
       f"--out={tmp_path / 'out'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
      check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert os.path.isfile(tmp_path / "out" / "report.md")
  del config["smart"]["weight"]
  with open(config_file, "w", encoding="utf-8") as f:
    json.dump(config, f)
  with pytest.raises(settings_lib.ConfigError, match=r"config.json: config lacks the "
                                                     r"field\(s\) \['smart.weight'\]"):
    report.load_run(workdir)

