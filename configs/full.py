"""The final system: the paper's architecture with the extensions that helped in our ablation.

  python launch.py --config=configs/full.py --workdir=runs/full

On: the cosine STS head whose projection is shared with supervised SimCSE on the NLI
triplets (paper 3.6). `docs/ablation.md` has the measurements behind each choice.
Everything the paper adopted, all at once: `--config=configs/ablation.py:full`. Each switch
can be turned back on here, e.g. `--config.smart.weight=50 --config.heads.paraphrase=prompt`.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.heads.similarity = "cosine"
  c.train.tasks = ("sst", "para", "sts", "nli")
  return c
