"""benchmarks/single_task_baselines.py: runs added to an --out file keep their provenance."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import single_task_baselines as script


@pytest.mark.slow
def test_a_second_invocation_adds_seeds_and_refuses_other_settings(tiny_ckpt_dir, data_dir,
                                                                    tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  out = str(tmp_path / "baselines.json")
  # STS: 6,040 train pairs / 32 x 3 epochs x 0.005 = 3 steps; 16 dev pairs.
  common = ["--tasks=sts", f"--checkpoint={tiny_ckpt_dir}", f"--data_dir={data_dir}",
            "--epochs_scale=0.005", "--dev_limit=16", "--threads=1", f"--out={out}"]
  script.main(common + ["--seeds=1"])
  script.main(common + ["--seeds=0,1"])          # seed 1 is kept, seed 0 added
  with open(out, encoding="utf-8") as f:
    result = json.load(f)
  sts = result["tasks"]["sts"]
  assert [r["seed"] for r in sts["runs"]] == [0, 1]
  assert sts["seeds"] == [r["value"] for r in sts["runs"]]
  assert [r["steps"] for r in sts["runs"]] == [3, 3]
  assert "--seeds=1" in sts["runs"][1]["command"] and "--seeds=0,1" in sts["runs"][0]["command"]
  assert [i["command"].split()[-1] for i in result["invocations"]] == ["--seeds=1", "--seeds=0,1"]
  assert result["command"] == result["invocations"][0]["command"]
  with pytest.raises(SystemExit, match=r"other settings \(lr: 5e-05 there, 0.0001 here\)"):
    script.main(common + ["--seeds=2", "--lr=1e-4"])
