"""Process-wide runtime settings applied once at start-up (XLA flags, precision)."""

from __future__ import annotations


def configure() -> None:
  """Applies the settings the benchmarks found best on each backend (docs/performance.md)."""
