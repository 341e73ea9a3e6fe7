"""Process-wide settings applied once at start-up, before JAX is imported.

On Linux/glibc, XLA:CPU train steps otherwise re-fault hundreds of MB of memory every step:
its worker threads allocate from per-thread malloc arenas whose heaps grow and shrink each
step, and large blocks are mmap-ed and unmapped (~200k minor page faults and ~0.3 s of system
time per MiniLM step on 2 cores). One arena, no mmap for large blocks and no trimming keep
that memory mapped between steps: the MiniLM step went from ~790 to ~600 ms
(docs/performance.md). glibc reads these variables only at process start, hence a re-exec.
Set MTBERT_NO_MALLOC_TUNING=1 to opt out (memory freed by the process is then returned to
the OS sooner).
"""

from __future__ import annotations

import os
import sys

MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
              "MALLOC_TRIM_THRESHOLD_": "17179869184"}


def tune_malloc() -> None:
  """Re-executes the current command with `MALLOC_ENV` set (Linux only; once)."""
  if not sys.platform.startswith("linux") or os.environ.get("MTBERT_NO_MALLOC_TUNING"):
    return
  if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
    return
  os.environ.update(MALLOC_ENV)
  os.execv(sys.executable, [sys.executable] + sys.argv)
