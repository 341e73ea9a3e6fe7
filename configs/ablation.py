"""The paper's ablation rows (Figure 3): each adds one extension to the baseline.

  python launch.py --config=configs/ablation.py:smart --workdir=runs/ablation/smart
  python -m study.ablation --rows=all --workdir=runs/ablation   # every row + the table

ROW is one of: baseline, prompting, smart, task_weighting, simcse, tweets, full (every
extension the paper adopted, at once; `configs/full.py` is instead the recipe that won the
results protocol, `docs/results.md`),
and cosine (the cosine STS head alone, without the NLI task: it separates the head's share
of the simcse row's gain from the NLI SimCSE's; not a row of the paper).
Every row has the same seed, step budget and batch size (the paper: 1,500 steps of batch 64).
"""

from configs import base

ROWS = ("baseline", "prompting", "smart", "task_weighting", "simcse", "tweets", "full",
        "cosine")


def apply_row(c, row: str):
  """Turns the baseline config `c` into ablation row `row` (in place)."""
  if row not in ROWS:
    raise ValueError(f"unknown ablation row {row!r}; expected one of {list(ROWS)}")
  if row in ("prompting", "full"):
    c.heads.paraphrase = "prompt"             # the prompted cross-encoder (paper 3.2)
  if row in ("smart", "full"):
    c.smart.weight = 50.0                     # alpha 7, eps 5e-3, p = inf, on sentiment (3.3)
  if row in ("task_weighting", "full"):
    c.weighting.mode = "loss"                 # loss-following task weights (3.4)
  if row in ("simcse", "full", "cosine"):
    c.heads.similarity = "cosine"             # STS head sharing its layer with NLI (3.6)
  if row in ("simcse", "full"):
    c.train.tasks = ("sst", "para", "sts", "nli")  # + supervised SimCSE on NLI triplets
  if row in ("tweets", "full"):
    c.data.tweets_weight = 1.0                # TSATC tweets mixed into sentiment (3.5)
  if row == "full":
    c.heads.sentiment = "squared_relu"        # the paper's final sentiment head (3.2)
  return c


def get_config(row: str = "baseline"):
  c = apply_row(base.get_config(), row)
  c.train.num_steps = 1500
  c.train.eval_every = 1500
  c.train.ckpt_every = 500
  return c
