"""The paper's final system: prompted paraphrase cross-encoder, squared-ReLU sentiment head,
cosine STS head sharing its projection with supervised SimCSE on NLI, SMART on sentiment,
loss-based task weighting, tweets mixed into sentiment.

  python launch.py --config=configs/full.py --workdir=runs/full
"""

from configs import base


def get_config():
  c = base.get_config()
  c.heads.sentiment = "squared_relu"
  c.heads.paraphrase = "prompt"
  c.heads.similarity = "cosine"
  c.train.tasks = ("sst", "para", "sts", "nli")
  c.smart.weight = 50.0             # paper: alpha = 7, epsilon = 5e-3, p = inf, sentiment
  c.weighting.mode = "loss"
  c.data.tweets_weight = 1.0
  return c
