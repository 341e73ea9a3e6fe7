"""Process-wide settings applied once at start-up, before JAX is imported.

On Linux/glibc, XLA:CPU train steps otherwise re-fault hundreds of MB of memory every step:
its worker threads allocate from per-thread malloc arenas whose heaps grow and shrink each
step, and large blocks are mmap-ed and unmapped, so every step page-faults that memory in
again. One arena, no mmap for large blocks and no trimming keep it mapped between steps
(the measurement is in docs/performance.md). glibc reads these variables only at process
start, hence a re-exec.

The settings are for the CPU backend only. On a machine with an accelerator they are not
applied: there the step runs on the device, and one malloc arena for the host side (GPU
compilation and autotuning run many threads; the CUDA libraries load large blocks) is a
bottleneck, not a help. `MTBERT_MALLOC_TUNING=1` / `0` forces them on / off.
"""

from __future__ import annotations

import glob
import logging
import os
import platform
import sys

MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
              "MALLOC_TRIM_THRESHOLD_": "17179869184"}

# Device nodes of the accelerators JAX drives: NVIDIA, AMD (ROCm), TPU.
_ACCELERATOR_NODES = ("/dev/nvidiactl", "/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel[0-9]*",
                      "/dev/vfio/[0-9]*")


def native_bfloat16(cpuinfo: str | None = None) -> bool:
  """Whether this CPU multiplies bfloat16 natively: AMX-BF16 or AVX-512 BF16 among the flags
  of /proc/cpuinfo (`cpuinfo`: its text, for tests). Without either, bfloat16 matmuls are
  emulated and run several times (up to 66x, measured in PyTorch) slower than float32."""
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo", encoding="utf-8") as f:
        cpuinfo = f.read()
    except OSError:
      return False
  flags = set()
  for line in cpuinfo.splitlines():
    if line.startswith("flags"):
      flags.update(line.split(":", 1)[1].split())
  return bool(flags & {"amx_bf16", "avx512_bf16"})


def cpu_only(environ: dict[str, str] | None = None) -> bool:
  """Whether JAX will run on the CPU: `JAX_PLATFORMS=cpu`, or no accelerator device node."""
  environ = os.environ if environ is None else environ
  platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms == "cpu"
  return not any(glob.glob(pattern) for pattern in _ACCELERATOR_NODES)


def wants_malloc_tuning(environ: dict[str, str] | None = None) -> bool:
  """`MTBERT_MALLOC_TUNING` (1/0) if set, else: Linux and CPU only."""
  environ = os.environ if environ is None else environ
  forced = environ.get("MTBERT_MALLOC_TUNING", "").strip()
  if forced:
    if forced not in ("0", "1"):
      raise ValueError(f"MTBERT_MALLOC_TUNING={forced!r}: expected 0 or 1")
    return forced == "1"
  return sys.platform.startswith("linux") and cpu_only(environ)


def tune_malloc(force: bool | None = None) -> bool:
  """Re-executes the current command once with `MALLOC_ENV` set, when wanted (`force`, or
  `wants_malloc_tuning()`). Returns whether the settings are in effect."""
  if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
    return True
  if not (wants_malloc_tuning() if force is None else force):
    return False
  os.environ.update(MALLOC_ENV)
  os.execv(sys.executable, [sys.executable] + sys.argv)
  return False  # not reached


class _QuietLibraries(logging.Filter):
  """Keeps orbax's and JAX's routine INFO lines out of a run's log (warnings still show)."""

  _NOISY = (os.sep + "orbax" + os.sep, os.sep + "jax" + os.sep)

  def filter(self, record):
    return record.levelno >= logging.WARNING or not any(
        part in record.pathname for part in self._NOISY)


def quiet_library_logs() -> None:
  """Adds the filter to the root logger's handlers (call after absl set them up)."""
  for handler in logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo on Linux), else the architecture.

  bfloat16 runs on the CPU differ between CPU models: XLA:CPU multiplies bf16 operands on
  AMX on an Intel Xeon and on AVX-512 BF16 on an AMD EPYC, kernels that need not
  accumulate in the same order, so the same code and seed can train to other numbers on
  the two (docs/results_v1_notes.md has a case). A run names its CPU.
  """
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()
