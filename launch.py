"""Train, evaluate or predict with one config.

  python launch.py --config=configs/quick.py --workdir=runs/quick            # train + eval
  python launch.py --config=configs/quick.py --workdir=runs/quick --mode=eval
  python launch.py --config=configs/full.py --workdir=runs/full --config.train.num_steps=3000

Multi-host: run the same command on every host with --multihost (JAX reads the coordinator
address, process count and id from the cluster environment: SLURM, TPU, or the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables).
"""

import logging
import os
import sys

from mtbert_jax import runtime

if __name__ == "__main__":
  runtime.tune_malloc()  # re-executes once, before JAX is imported

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file, e.g. configs/full.py or configs/ablation.py:smart",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "folder for checkpoints, metrics, predictions")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"],
                          "train (then eval + predict) | eval: restore the best checkpoint, "
                          "dev metrics + predictions | predict: predictions only")
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                               "call jax.distributed.initialize() before anything else")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  runtime.quiet_library_logs()
  import jax  # pylint: disable=import-outside-toplevel
  from mtbert_jax import settings  # pylint: disable=import-outside-toplevel
  if _MULTIHOST.value:
    jax.distributed.initialize()
  s = settings.from_dict(_CONFIG.value.to_dict())  # the config crosses into typed settings
  if s.jax_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(s.jax_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  # pylint: disable=import-outside-toplevel
  from mtbert_jax import console, evaluate, train
  logging.info("devices: %s (process %d of %d)", jax.devices(), jax.process_index(),
               jax.process_count())
  workdir = os.path.abspath(_WORKDIR.value)
  if _MODE.value == "train":
    metrics = train.train_and_evaluate(s, workdir)
  else:
    metrics = evaluate.evaluate_workdir(workdir, s, write_metrics=_MODE.value == "eval")
  if jax.process_index() == 0:
    print(console.format_table({k: v for k, v in metrics.items() if k != "step"}))
    print(f"best step: {metrics.get('step')}; metrics: {os.path.join(workdir, 'metrics.json')}; "
          f"predictions: {os.path.join(workdir, 'predictions')}")


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                      format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  app.run(main)
