"""benchmarks/inference.py: the FLOP count its GFLOP/s figures rest on, and its flags."""

import types

import numpy as np
import pytest

from benchmarks import inference as bench


def test_encoder_flops_counts_every_padded_segment():
  """One layer, H=2, I=3: a [1, 4] batch has 4 tokens x 2 x (4*2*2 + 2*2*3) = 224 for the
  matmuls and 4 * 1 * 4 * 4 * 2 = 128 for attention; a pair batch counts both segments."""
  cfg = types.SimpleNamespace(hidden_size=2, intermediate_size=3, num_hidden_layers=1)
  one = {"input_ids": np.zeros((1, 4)), "attention_mask": np.ones((1, 4))}
  assert bench.encoder_flops(cfg, [one]) == 224 + 128
  pair = {"attention_mask_1": np.ones((1, 4)), "attention_mask_2": np.ones((1, 4))}
  assert bench.encoder_flops(cfg, [pair, one]) == 3 * (224 + 128)
  cfg.num_hidden_layers = 6
  assert bench.encoder_flops(cfg, [one]) == 6 * (224 + 128)


def test_set_names_the_flag_it_cannot_apply():
  with pytest.raises(SystemExit, match="model.nope"):
    bench.main(["--set", "model.nope=1", "--tasks=sst", "--rows=1"])
