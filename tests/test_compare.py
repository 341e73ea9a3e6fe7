"""The difference of two rows, its bootstrap interval and Welch's test, on synthetic data
whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from mtbert_jax import compare
from mtbert_jax import tasks


def _classifier_runs(rng, gold, accuracy, seeds, seed_spread=0.0):
  """Per seed, class predictions right with probability `accuracy` (+- a seed offset)."""
  runs = []
  for _ in range(seeds):
    p = accuracy + rng.uniform(-seed_spread, seed_spread)
    right = rng.random(len(gold)) < p
    runs.append(np.where(right, gold, (gold + 1) % 5))
  return runs


def test_a_large_planted_difference_is_inside_an_interval_that_excludes_zero():
  rng = np.random.default_rng(0)
  gold = rng.integers(0, 5, 2000)
  c = compare.compare(_classifier_runs(rng, gold, 0.60, 5), _classifier_runs(rng, gold, 0.50, 5),
                      gold, "accuracy", samples=2000)
  assert c.low > 0 and c.low < 0.10 < c.high and c.verdict == "better"
  assert c.welch_p < 0.001
  flipped = compare.compare(_classifier_runs(rng, gold, 0.50, 5),
                            _classifier_runs(rng, gold, 0.60, 5), gold, "accuracy",
                            samples=2000)
  assert flipped.high < 0 and flipped.verdict == "worse"


def test_no_planted_difference_is_within_noise():
  rng = np.random.default_rng(1)
  gold = rng.integers(0, 5, 1000)
  c = compare.compare(_classifier_runs(rng, gold, 0.5, 5), _classifier_runs(rng, gold, 0.5, 5),
                      gold, "accuracy", samples=2000)
  assert c.low < 0 < c.high and c.verdict == "within noise"


def test_the_interval_covers_a_small_planted_difference_about_95_percent_of_the_time():
  """Coverage over 200 simulated comparisons with a planted 0.04 and seed-to-seed spread:
  the nominal rate is 0.95; 0.88 allows for the simulation's own error (binomial sd 0.015
  at 200) and the percentile bootstrap's known slight under-coverage at small n."""
  rng = np.random.default_rng(2)
  covered, widths = 0, []
  for _ in range(200):
    gold = rng.integers(0, 5, 400)
    a = _classifier_runs(rng, gold, 0.54, 3, seed_spread=0.02)
    b = _classifier_runs(rng, gold, 0.50, 3, seed_spread=0.02)
    c = compare.compare(a, b, gold, "accuracy", samples=400, seed=int(rng.integers(1 << 30)))
    covered += c.low <= 0.04 <= c.high
    widths.append(c.high - c.low)
  assert covered / 200 >= 0.88
  # Not covering by being uselessly wide: the difference's sd here is 0.0225 (each row's
  # mean of 3 seeds: Bernoulli noise sqrt(.25/400/3) = 0.0144 and seed offsets
  # 0.02/sqrt(3)/sqrt(3) = 0.0067), a 95% width of 0.088. The two-level bootstrap counts
  # the example noise of seeds that err on independent examples twice, so it is wider
  # (conservative); 1.6x bounds that excess (docs/results_notes.md).
  assert np.mean(widths) < 1.6 * 0.088


def test_pearson_difference_of_planted_noise_levels():
  """Scores = gold + noise of sd 0.5 (r = 1/sqrt(1.25) = 0.894) against sd 1.0
  (r = 1/sqrt(2) = 0.707): a difference of 0.187."""
  rng = np.random.default_rng(3)
  gold = rng.normal(size=900)
  a = [gold + rng.normal(scale=0.5, size=900) for _ in range(5)]
  b = [gold + rng.normal(scale=1.0, size=900) for _ in range(5)]
  c = compare.compare(a, b, gold, "pearson", samples=2000)
  assert c.low < 0.187 < c.high and c.low > 0
  # The per-seed values are the task table's own metric.
  assert c.seeds_a[0] == pytest.approx(tasks.pearson(a[0], gold), abs=1e-12)


def test_one_seed_a_row_has_an_example_interval_and_no_welch_test():
  rng = np.random.default_rng(4)
  gold = rng.integers(0, 2, 3000)
  c = compare.compare(_classifier_runs(rng, gold, 0.8, 1), _classifier_runs(rng, gold, 0.7, 1),
                      gold, "accuracy", samples=1000)
  assert c.low > 0 and np.isnan(c.welch_p)
  assert c.seeds_a[0] == pytest.approx(compare.metric_value(
      _classifier_runs(np.random.default_rng(4), gold, 0.8, 1)[0], gold, "accuracy"), abs=0.05)


def test_same_inputs_same_interval_and_shapes_are_checked():
  rng = np.random.default_rng(5)
  gold = rng.integers(0, 5, 300)
  a, b = _classifier_runs(rng, gold, 0.6, 3), _classifier_runs(rng, gold, 0.5, 3)
  assert compare.compare(a, b, gold, "accuracy", 500) == compare.compare(a, b, gold,
                                                                          "accuracy", 500)
  with pytest.raises(ValueError, match="row b"):
    compare.compare(a, [gold[:10]], gold, "accuracy")
  with pytest.raises(ValueError, match="metric"):
    compare.compare(a, b, gold, "f1")
