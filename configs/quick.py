"""A CPU demo of a few minutes that already learns (clearly above chance on all three dev sets).

  python launch.py --config=configs/quick.py --workdir=runs/quick
"""

from configs import base


def get_config():
  c = base.get_config()
  c.heads.paraphrase = "prompt"
  c.heads.similarity = "cosine"
  c.data.max_length = 64
  c.data.buckets = (32, 64)
  c.data.dev_limit = 0
  c.eval.buckets = (16, 24, 32, 48, 64)
  c.train.num_steps = 300
  c.train.batch_size = 32
  c.train.log_every = 25
  c.train.eval_every = 300
  c.train.ckpt_every = 100
  c.optim.lr = 1e-4
  return c
