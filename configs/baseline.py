"""The paper's baseline: per-task dropout + linear heads on [CLS], round robin, AdamW.

  python launch.py --config=configs/baseline.py --workdir=runs/baseline
"""

from configs import base


def get_config():
  return base.get_config()  # the base config is the baseline
