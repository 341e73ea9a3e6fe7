"""Is one row of runs better than another? The difference, its 95% interval and a test.

A row is one recipe trained with several seeds; each run has predicted the same labeled
examples (a dev set). `compare(a, b, gold, metric)` returns row a's mean metric minus row
b's, a 95% confidence interval for that difference and Welch's t-test over the seeds.

The interval is a percentile bootstrap over examples and seeds (`BOOTSTRAP_SAMPLES`
replicates): each replicate draws the examples with replacement, one draw shared by both
rows (paired: an example that is hard for one row is hard for the other, and pairing
removes that shared part from the difference), and, independently, each row's seeds with
replacement; the replicate's difference is the mean over a's drawn seeds of a's metric on
the drawn examples minus the same for b. So the interval holds both sources of
uncertainty a reader cares about: which examples the dev set happened to contain (SST's
1,101 sentences alone carry about +-0.015 of accuracy) and which seeds training happened
to use. A bootstrap over seeds alone would ignore the first; over examples alone (one seed)
the second. Welch's test on the per-seed metrics is the seed-level check asked for
alongside (it treats the dev set as fixed).

A difference is "better" or "worse" only where the interval excludes 0 (`verdict`).
Metrics: accuracy of class predictions, Pearson's r of scores. Pure NumPy and SciPy.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from scipy import stats

BOOTSTRAP_SAMPLES = 10_000
CONFIDENCE = 0.95
_CHUNK = 250  # bootstrap replicates computed at once ([chunk, examples] weights)


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Row a against row b on one metric of one labeled set."""
  metric: str
  examples: int
  seeds_a: tuple[float, ...]   # a's metric per seed on the whole set
  seeds_b: tuple[float, ...]
  difference: float            # mean(seeds_a) - mean(seeds_b)
  low: float                   # the 95% bootstrap interval of the difference
  high: float
  welch_t: float               # Welch's t over the seeds (nan with fewer than 2 seeds a row)
  welch_p: float

  @property
  def mean_a(self) -> float:
    return float(np.mean(self.seeds_a))

  @property
  def mean_b(self) -> float:
    return float(np.mean(self.seeds_b))

  @property
  def verdict(self) -> str:
    """"better" / "worse" (a against b) where the interval excludes 0, else "within noise"."""
    if self.low > 0:
      return "better"
    if self.high < 0:
      return "worse"
    return "within noise"


def _check(predictions: Sequence[np.ndarray], gold: np.ndarray, what: str) -> np.ndarray:
  if not len(predictions):
    raise ValueError(f"{what}: no runs")
  preds = np.stack([np.asarray(p, np.float64) for p in predictions])
  if preds.shape[1:] != gold.shape:
    raise ValueError(f"{what}: predictions of shape {preds.shape[1:]} per run for "
                     f"{gold.shape[0]} gold labels")
  return preds


def _weighted_metric(preds: np.ndarray, gold: np.ndarray, weights: np.ndarray,
                     metric: str) -> np.ndarray:
  """[runs, replicates]: each run's metric on each replicate, a replicate being the
  examples drawn with replacement, given as counts per example (`weights` [reps, n])."""
  n = weights[0].sum()
  if metric == "accuracy":
    return (preds == gold).astype(np.float64) @ weights.T / n
  if metric == "pearson":
    sx, sy = preds @ weights.T, weights @ gold                   # [runs, reps], [reps]
    sxx, syy = (preds * preds) @ weights.T, weights @ (gold * gold)
    sxy = (preds * gold) @ weights.T
    cov = sxy - sx * sy / n
    var_x, var_y = sxx - sx * sx / n, syy - sy * sy / n
    with np.errstate(invalid="ignore", divide="ignore"):
      r = cov / np.sqrt(var_x * var_y)
    return np.nan_to_num(r)  # a constant draw has no correlation: 0, as tasks.pearson
  raise ValueError(f"metric {metric!r}: expected 'accuracy' or 'pearson'")


def metric_value(pred: np.ndarray, gold: np.ndarray, metric: str) -> float:
  """The metric of one run on the whole set."""
  pred = _check([pred], np.asarray(gold, np.float64), "metric_value")
  return float(_weighted_metric(pred, np.asarray(gold, np.float64),
                                np.ones((1, len(gold))), metric)[0, 0])


def compare(a: Sequence[np.ndarray], b: Sequence[np.ndarray], gold: np.ndarray, metric: str,
            samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> Comparison:
  """Row a (a prediction array per seed) against row b on `gold` (`metric`: "accuracy"
  over class ids, or "pearson" over scores); the bootstrap is seeded (`seed`), so the same
  inputs give the same interval."""
  gold = np.asarray(gold, np.float64)
  pa, pb = _check(a, gold, "row a"), _check(b, gold, "row b")
  n = len(gold)
  if n < 2:
    raise ValueError(f"{n} examples: too few to compare")
  full = np.ones((1, n))
  seeds_a = _weighted_metric(pa, gold, full, metric)[:, 0]
  seeds_b = _weighted_metric(pb, gold, full, metric)[:, 0]
  rng = np.random.default_rng(seed)
  diffs = []
  for start in range(0, samples, _CHUNK):
    reps = min(_CHUNK, samples - start)
    drawn = rng.integers(0, n, size=(reps, n)) + n * np.arange(reps)[:, None]
    weights = np.bincount(drawn.ravel(), minlength=reps * n).reshape(reps, n).astype(
        np.float64)  # how often each example was drawn, per replicate
    ma = _weighted_metric(pa, gold, weights, metric)  # [ka, reps]
    mb = _weighted_metric(pb, gold, weights, metric)
    draw_a = rng.integers(0, len(pa), size=(reps, len(pa)))
    draw_b = rng.integers(0, len(pb), size=(reps, len(pb)))
    cols = np.arange(reps)[:, None]
    diffs.append(ma[draw_a, cols].mean(1) - mb[draw_b, cols].mean(1))
  diffs = np.concatenate(diffs)
  tail = (1 - CONFIDENCE) / 2
  low, high = np.quantile(diffs, [tail, 1 - tail])
  if len(pa) > 1 and len(pb) > 1:
    if np.ptp(seeds_a) == 0 and np.ptp(seeds_b) == 0:
      t, p = (0.0, 1.0) if seeds_a[0] == seeds_b[0] else (np.inf * np.sign(
          seeds_a[0] - seeds_b[0]), 0.0)
    else:
      t, p = stats.ttest_ind(seeds_a, seeds_b, equal_var=False)
  else:
    t, p = np.nan, np.nan
  return Comparison(metric, n, tuple(map(float, seeds_a)), tuple(map(float, seeds_b)),
                    float(seeds_a.mean() - seeds_b.mean()), float(low), float(high),
                    float(t), float(p))
