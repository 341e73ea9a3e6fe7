"""A few steps on small real-data subsets with the embedded checkpoint (tests and CI).

  python launch.py --config=configs/smoke.py --workdir=/tmp/smoke
"""

from configs import base


def get_config():
  c = base.get_config()
  c.data.max_length = 64
  c.data.buckets = (32, 64)
  c.data.train_limit = 256
  c.data.dev_limit = 64
  c.data.sst_test = ""             # keep the smoke run short: dev predictions only
  c.data.sts_test = ""
  c.train.num_steps = 6
  c.train.batch_size = 8
  c.train.log_every = 3
  c.train.eval_every = 3
  c.train.ckpt_every = 3
  c.train.progress = False
  c.eval.batch_size = 32
  return c
