"""Train, evaluate or predict with one config.

  python launch.py --config=configs/quick.py --workdir=runs/quick            # train + eval
  python launch.py --config=configs/quick.py --workdir=runs/quick --mode=eval
  python launch.py --config=configs/full.py --workdir=runs/full --config.train.num_steps=3000
  python launch.py --workdir=runs/quick --mode=export --export_dir=runs/quick-export
  python launch.py --workdir=runs/quick --mode=predict --predict_input=pairs.jsonl \
      --predict_task=para                # -> runs/quick/predictions/pairs-para-output.tsv

Modes: train (train or resume, then evaluate the best checkpoint on dev and write the
prediction files), eval (restore the best checkpoint: dev metrics, metrics.json and
prediction files), predict (restore the best checkpoint: prediction files only, no scoring;
with --predict_input=FILE, a .tsv/.csv with a header or a .jsonl of rows `id` plus
`sentence` (sst) or `sentence1`, `sentence2` (para, sts), streamed into a TSV of id and
prediction; --config is then optional), export (the best checkpoint as one folder per task
that transformers / sentence-transformers load without this project, into --export_dir, an
empty or missing folder; --onnx adds ONNX graphs; --config is optional, the workdir's
config.json is used).
Any config field can be set with --config.GROUP.FIELD=VALUE; configs/base.py lists every
field with its meaning (the list is also at the end of --help).

Multi-host: run the same command on every host with --multihost (JAX reads the coordinator
address, process count and id from the cluster environment: SLURM, TPU, or the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables).
"""

import logging
import os
import sys
import time

_START = time.time()

from mtbert_jax import runtime

if __name__ == "__main__":
  runtime.tune_malloc()  # re-executes once, before JAX is imported

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file, e.g. configs/full.py or configs/ablation.py:smart",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "folder for checkpoints, metrics, predictions")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "predict", "export"],
                          "train (then eval + predict) | eval: restore the best checkpoint, "
                          "dev metrics + predictions | predict: predictions only | export: "
                          "one transformers / sentence-transformers folder per task")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "--mode=export: an empty or missing "
                                  "folder for the exported model (default WORKDIR/export)")
_ONNX = flags.DEFINE_bool("onnx", False, "--mode=export: also write each folder's ONNX graph "
                          '(pip install -e ".[onnx]")')
_PREDICT_INPUT = flags.DEFINE_string(
    "predict_input", None, "--mode=predict: a .tsv, .csv (with a header: id, sentence or id, "
    "sentence1, sentence2) or .jsonl file to predict instead of the test sets")
_PREDICT_TASK = flags.DEFINE_enum("predict_task", None, ["sst", "para", "sts"],
                                  "--predict_input: the task to predict")
_PREDICT_OUTPUT = flags.DEFINE_string(
    "predict_output", None, "--predict_input: the output TSV (default "
    "WORKDIR/predictions/<input stem>-<task>-output.tsv)")
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                               "call jax.distributed.initialize() before anything else")


def _fail(message: str, code: int = 2):
  """One line (or one short block) on stderr and exit: no traceback for a user's mistake.

  Once JAX and orbax are loaded (a failed restore, a refused workdir) the process ends at
  once, without the interpreter's teardown: there, orbax's background event loops were
  torn down mid-task and printed thousands of lines of "Exception ignored in: <coroutine
  ...>" after the error. Nothing is left to flush or close: the lock is released with the
  process, checkpoints are written whole or not at all."""
  print(f"error: {message}", file=sys.stderr)
  if "jax" in sys.modules:
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


def _parse_flags(argv):
  """absl's flag parsing, with a config field that does not exist reported in one line."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError):  # ml_collections: a field missing from a locked config
    from configs import base  # pylint: disable=import-outside-toplevel
    from mtbert_jax import settings  # pylint: disable=import-outside-toplevel
    known = base.get_config().to_dict()
    for arg in argv[1:]:
      if not arg.startswith("--config."):
        continue
      path = arg.split("=", 1)[0].removeprefix("--config.")
      node, parts = known, path.split(".")
      for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
          _fail(settings.unknown_field_message(".".join(parts[:i + 1]),
                                               node if isinstance(node, dict) else {}))
        node = node[part]
    raise
  except flags.Error as e:
    _fail(str(e).splitlines()[0])


def _initialize_distributed(jax) -> None:
  """`jax.distributed.initialize()`, from the cluster environment (SLURM, Open MPI, TPU,
  Kubernetes) or from JAX_COORDINATOR_ADDRESS (read by JAX), JAX_NUM_PROCESSES and
  JAX_PROCESS_ID (read here; JAX does not). CPU processes exchange data through gloo."""
  kwargs = {}
  for name, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
    if os.environ.get(name):
      try:
        kwargs[arg] = int(os.environ[name])
      except ValueError:
        _fail(f"{name}={os.environ[name]!r}: expected an integer")
  if os.environ.get("JAX_INITIALIZATION_TIMEOUT"):
    kwargs["initialization_timeout"] = int(os.environ["JAX_INITIALIZATION_TIMEOUT"])
  if runtime.cpu_only():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)


def _help() -> str:
  """The module docstring, the flags, and every config field of configs/base.py."""
  here = os.path.dirname(os.path.abspath(__file__))
  lines = [__doc__.strip(), "", "Flags:",
           "  --config=FILE[:ARG]   the experiment config (required)",
           "  --workdir=DIR         the run's folder (required)",
           "  --mode=train|eval|predict|export   (default train)",
           "  --export_dir=DIR      --mode=export: an empty or missing folder (WORKDIR/export)",
           "  --onnx                --mode=export: also write ONNX graphs",
           "  --predict_input=FILE  --mode=predict: a .tsv/.csv/.jsonl file instead of the "
           "test sets",
           "  --predict_task=sst|para|sts   --predict_input's task",
           "  --predict_output=FILE --predict_input's output TSV "
           "(WORKDIR/predictions/<stem>-<task>-output.tsv)",
           "  --multihost           initialise JAX's multi-process runtime first", "",
           "Config fields (configs/base.py; set with --config.GROUP.FIELD=VALUE):"]
  with open(os.path.join(here, "configs", "base.py"), encoding="utf-8") as f:
    for line in f:
      stripped = line.strip()
      if stripped.startswith("# --"):
        lines.append("  " + stripped.strip("# -").strip())
      elif stripped.startswith("c.") and "ConfigDict()" not in stripped:
        lines.append("    " + stripped[2:])
      elif stripped.startswith("#") and lines[-1].startswith("    "):
        lines.append("    " + " " * 30 + stripped)
  return "\n".join(lines)


def _export(s) -> None:
  """--mode=export: the folders it wrote, and each head it could not export with the reason."""
  # pylint: disable=import-outside-toplevel
  from mtbert_jax import export, export_card
  try:
    result = export.export_workdir(_WORKDIR.value, _EXPORT_DIR.value, s, onnx=_ONNX.value)
  except ImportError as e:  # --onnx without the [onnx] extra
    _fail(str(e), 1)
  for task, folder in result.folders.items():
    print(f"{task}: {folder} ({export_card.describe(task, result.forms[task])})")
  for task, reason in result.refused.items():
    print(f"{task}: not exported: {reason}")


def _predict_file(s) -> None:
  """--mode=predict --predict_input: the file written and its rows."""
  from mtbert_jax import console, predict_file  # pylint: disable=import-outside-toplevel
  path, count = predict_file.predict_file_workdir(
      _WORKDIR.value, _PREDICT_TASK.value, _PREDICT_INPUT.value, _PREDICT_OUTPUT.value, s,
      progress=console._interactive())  # pylint: disable=protected-access
  print(f"{path} ({count:,} rows)")


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {argv[1:]} (flags are written --name=value)")
  file_mode = _PREDICT_INPUT.value is not None
  if file_mode and (_MODE.value != "predict" or not _PREDICT_TASK.value):
    _fail("--predict_input goes with --mode=predict and --predict_task=sst|para|sts")
  if not file_mode and (_PREDICT_TASK.value or _PREDICT_OUTPUT.value):
    _fail("--predict_task and --predict_output go with --predict_input=FILE")
  if (_CONFIG.value is None and _MODE.value != "export" and not file_mode) or not _WORKDIR.value:
    _fail("--config and --workdir are required, e.g. python launch.py "
          "--config=configs/quick.py --workdir=runs/quick (python launch.py --help)")
  runtime.quiet_library_logs()
  import jax  # pylint: disable=import-outside-toplevel
  # pylint: disable=import-outside-toplevel
  from mtbert_jax import checkpoint, console, evaluate, export, health, readers, settings, train
  from mtbert_jax import workdir
  if _MULTIHOST.value:
    _initialize_distributed(jax)
  user_errors = (settings.ConfigError, workdir.WorkdirError, checkpoint.CheckpointError,
                 readers.DataError, health.TrainingStopped, FileNotFoundError,
                 IsADirectoryError, export.ExportError)
  try:
    s = None
    if _CONFIG.value is not None:  # the config crosses into typed settings
      s = settings.from_dict(_CONFIG.value.to_dict())
    if _MODE.value == "export":
      return _export(s)
    if file_mode:
      return _predict_file(s)
    if s.jax_cache_dir:
      jax.config.update("jax_compilation_cache_dir", os.path.expanduser(s.jax_cache_dir))
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    logging.info("devices: %s (process %d of %d)", jax.devices(), jax.process_index(),
                 jax.process_count())
    if _MODE.value == "train":
      metrics = train.train_and_evaluate(s, _WORKDIR.value)
    else:
      metrics = evaluate.evaluate_workdir(_WORKDIR.value, s, score=_MODE.value == "eval")
  except user_errors as e:
    _fail(str(e), 1)
  if jax.process_index() == 0:
    scores = {k: v for k, v in metrics.items() if k != "step"}
    if scores:
      print(console.format_table(scores))
    print(console.written_files(os.path.abspath(_WORKDIR.value), since=_START,
                                step=metrics.get("step")))


if __name__ == "__main__":
  if any(a in ("--help", "-h", "--helpfull", "-?") for a in sys.argv[1:]):
    print(_help())
    sys.exit(0)
  logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                      format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  app.run(main, flags_parser=_parse_flags)
