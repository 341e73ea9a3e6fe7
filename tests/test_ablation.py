"""The short ablation table (study/ablation.py): its columns, the deltas to the baseline,
and the launch.py command each row trains with (no training: the process is faked)."""

from __future__ import annotations

import json
import os

from configs import base
from mtbert_jax import tasks
from study import ablation
from study import runs


def test_the_table_has_a_column_per_evaluated_task_and_deltas_to_the_baseline():
  assert [key for key, _ in ablation.COLUMNS] == (
      [f"dev/{tasks.get(t).metric}" for t in tasks.EVAL_TASKS] + ["dev/average"])
  results = {
      "baseline": {"metrics": {"dev/sst_acc": 0.40, "dev/para_acc": 0.70,
                               "dev/sts_pearson": 0.60, "dev/average": 0.5667},
                   "steps": 300, "seconds": 120.4},
      "smart": {"metrics": {"dev/sst_acc": 0.425, "dev/para_acc": 0.69,
                            "dev/average": 0.6},
                "steps": 300, "seconds": 300.0}}
  lines = ablation.markdown_table(results).splitlines()
  assert lines[0] == "| row | SST acc | Quora acc | STS r | Average | steps | train s |"
  assert lines[2] == "| baseline | 0.400 | 0.700 | 0.600 | 0.567 | 300 | 120 |"
  assert lines[3] == "| smart | 0.425 (+0.025) | 0.690 (-0.010) | - | 0.600 (+0.033) | 300 | 300 |"


def test_a_row_trains_through_launch_py_and_a_finished_row_is_read_back(tmp_path,
                                                                       monkeypatch):
  commands = []

  def fake_run(cmd, **kwargs):
    del kwargs
    commands.append(cmd)
    out = next(a.split("=", 1)[1] for a in cmd if a.startswith("--workdir="))
    with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as f:
      json.dump({"dev/average": 0.5}, f)
    return runs.subprocess.CompletedProcess(cmd, 0)

  monkeypatch.setattr(runs.subprocess, "run", fake_run)
  workdir = str(tmp_path / "abl")
  results = ablation.run_rows(workdir, ["smart"], 300, 32, ["data.max_length=64"])
  (cmd,) = commands
  assert cmd[2] == f"--config={os.path.join(runs.REPO, 'configs', 'ablation.py')}:smart"
  assert cmd[3] == f"--workdir={os.path.join(workdir, 'smart')}"
  flags = dict(a.removeprefix("--config.").split("=", 1) for a in cmd[4:])
  assert flags == {"train.num_steps": "300", "train.eval_every": "300",
                   "train.ckpt_every": "100", "train.batch_size": "32",
                   "eval.write_predictions": "false", "train.progress": "false",
                   "data.max_length": "64"}
  config = base.get_config()  # every flag names a field (launch.py's config is locked)
  for field in flags:
    group, name = field.split(".")
    assert name in config[group], field
  assert results["smart"]["metrics"] == {"dev/average": 0.5}
  assert results["smart"]["steps"] == 300 and results["smart"]["overrides"] == [
      "data.max_length=64"]
  assert ablation.run_rows(workdir, ["smart"], 300, 32, []) == results  # read back
  assert len(commands) == 1
