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



def test_native_bfloat16_reads_the_cpu_flags():
  """AMX-BF16 or AVX-512 BF16 among the flags counts; AVX-512 without BF16 does not."""
  amd = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
  intel = "flags\t\t: fpu avx512f amx_tile amx_bf16 amx_int8\n"
  old = "flags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni\nbugs\t: avx512_bf16\n"
  assert runtime.native_bfloat16(amd) and runtime.native_bfloat16(intel)
  assert not runtime.native_bfloat16(old)  # a flag outside the flags line is not read
  assert not runtime.native_bfloat16("")


def test_auto_dtype_follows_the_hardware(monkeypatch):
  """"auto" is bfloat16 exactly where the CPU has native bfloat16 (the tests run on the CPU
  backend); a named dtype is kept."""
  from mtbert_jax import experiment  # pylint: disable=import-outside-toplevel
  for native, want in ((True, "bfloat16"), (False, "float32")):
    monkeypatch.setattr(runtime, "native_bfloat16", lambda native=native: native)
    assert experiment.compute_dtype("auto", "eval.dtype") == want
  assert experiment.compute_dtype("float32") == "float32"
  assert experiment.compute_dtype("bfloat16") == "bfloat16"
