"""A CPU demo of a few minutes that already learns (clearly above chance on all three dev sets).

  python launch.py --config=configs/quick.py --workdir=runs/quick

300 round-robin steps of batch 32 (100 per task) at a higher learning rate than the paper's,
the bi-encoder paraphrase head and the cosine STS head on the checkpoint's own sentence
vector (mean pooling for the embedded MiniLM), then the full dev sets.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.heads.similarity = "cosine"
  c.data.max_length = 64
  c.data.buckets = (32, 64)
  c.eval.buckets = (16, 24, 32, 48, 64)
  c.train.num_steps = 300
  c.train.batch_size = 32
  c.train.log_every = 25
  c.train.eval_every = 300
  c.train.ckpt_every = 100
  c.optim.lr = 1e-4
  return c
