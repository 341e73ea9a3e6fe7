"""Start-up settings (mtbert_jax/runtime.py): the CPU malloc tuning is for the CPU only."""

import sys

import pytest

from mtbert_jax import runtime


def test_malloc_tuning_follows_the_platform():
  linux = sys.platform.startswith("linux")
  assert runtime.wants_malloc_tuning({"JAX_PLATFORMS": "cpu"}) == linux
  # On an accelerator the settings would make one malloc arena the host-side bottleneck.
  assert not runtime.wants_malloc_tuning({"JAX_PLATFORMS": "cuda"})
  assert not runtime.wants_malloc_tuning({"JAX_PLATFORMS": "cuda,cpu"})
  assert not runtime.cpu_only({"JAX_PLATFORMS": "tpu"})


def test_malloc_tuning_can_be_forced_and_rejects_other_values():
  assert runtime.wants_malloc_tuning({"JAX_PLATFORMS": "cuda", "MTBERT_MALLOC_TUNING": "1"})
  assert not runtime.wants_malloc_tuning({"JAX_PLATFORMS": "cpu", "MTBERT_MALLOC_TUNING": "0"})
  with pytest.raises(ValueError, match="MTBERT_MALLOC_TUNING='yes'"):
    runtime.wants_malloc_tuning({"MTBERT_MALLOC_TUNING": "yes"})

