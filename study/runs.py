"""Training one config row as its own process, the command a user would run, and what the
study records of it: the wall time of each attempt (a resumed run counts them all) and the
machine it ran on. The results protocol (`results.py`) and the short ablation table
(`ablation.py`) both train their rows through `train_run`."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

from mtbert_jax import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_run(out: str, config: str, args: list[str], what: str) -> tuple[dict, list[float]]:
  """Trains `python launch.py --config=configs/CONFIG --workdir=OUT ARGS` in a subprocess,
  the command a user would run, its output appended to OUT/log.txt (a stopped run resumes
  from its checkpoint). (its metrics.json, the wall seconds of each attempt so far); a
  failed or stopped run is a RuntimeError that names `what`."""
  out = os.path.abspath(out)  # the process runs in the repository
  os.makedirs(out, exist_ok=True)
  cmd = [sys.executable, os.path.join(REPO, "launch.py"),
         f"--config={os.path.join(REPO, 'configs', config)}", f"--workdir={out}", *args]
  start = time.time()
  try:
    with open(os.path.join(out, "log.txt"), "a", encoding="utf-8") as log:
      log.write(f"$ {' '.join(cmd)}\n")
      log.flush()
      proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, check=False)
  finally:
    attempts = _record_attempt(out, time.time() - start)
  if proc.returncode != 0:
    raise RuntimeError(f"{what} failed (exit {proc.returncode}); see "
                       f"{os.path.join(out, 'log.txt')}")
  if not os.path.isfile(os.path.join(out, "metrics.json")):
    # launch.py exits 0 on SIGTERM after saving a checkpoint (a scheduler's preemption).
    raise RuntimeError(f"{what} stopped before its last step (exit 0, no metrics.json in "
                       f"{out}); run the same command to resume it")
  with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
    return json.load(f), attempts


def _record_attempt(run: str, seconds: float) -> list[float]:
  """Adds one training attempt's wall time to the run's attempts.json; all of them, so that
  a resumed run's minutes count its earlier attempts too."""
  path = os.path.join(run, "attempts.json")
  times = []
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      times = json.load(f)["seconds"]
  times.append(seconds)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"seconds": times}, f)
  os.replace(path + ".tmp", path)
  return times


def machine(run: str) -> str:
  """This host's CPU and, from the run's train_stats.json, the devices it trained on."""
  text = f"{runtime.cpu_model()}, {platform.machine()}, {os.cpu_count()} cores"
  stats = os.path.join(run, "train_stats.json")
  if os.path.isfile(stats):
    with open(stats, encoding="utf-8") as f:
      dev = json.load(f).get("devices")
    if dev and dev.get("backend") != "cpu":
      hosts = dev["processes"]
      text += (f"; {dev['count']} x {dev['kind']} ({dev['backend']}, {hosts} "
               f"host{'s' if hosts != 1 else ''})")
  return text


def compute_of(machine: str) -> str | None:
  """What computed a run, from its record's `machine` (`machine` above): the accelerator
  where it names one, else the CPU model; None for a record that names no CPU model (the
  first protocol's oldest, "x86_64, 2 cores")."""
  if "; " in machine:
    return machine.split("; ", 1)[1]
  parts = machine.split(", ")
  return parts[0] if len(parts) >= 3 else None
