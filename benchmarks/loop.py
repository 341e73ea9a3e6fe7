"""Whole-loop throughput on the real data: input pipeline, step only, loop, evaluation.

One process, one config (configs/base.py with the overrides below, the embedded checkpoint
unless `--checkpoint`), the course files of `experiment`, and four measurements:

  (a) pipeline: the round-robin `data.TrainIterator`s (one per task, seeded as
      `train.train_and_evaluate` seeds them) plus `sharding.Sharder` device put and the
      iterator-state snapshot, i.e. the work of the `Prefetcher` thread, alone: batches/s.
  (b) step only: the steps of `train.compile_steps` fed the same sequence of batches,
      already on the device, every (task, bucket) shape compiled before timing; blocked at
      the end of each `--log_every` window, as the loop pulls metrics.
  (c) loop: `train.train_and_evaluate` itself (Prefetcher thread, step dispatch, metrics
      pulls, progress logging) with evaluation and checkpoints out of the way (eval_every /
      ckpt_every beyond the run, only the end-of-run ones, which the loop excludes from its
      windows anyway; dev_limit small; no test predictions). It writes
      WORKDIR/train_stats.json, one entry per log window.
  (d) evaluation: `evaluate.predict` over SST dev and STS dev (second pass; the first
      compiles every bucket), examples/s (an STS example is a pair: 2 encodings), and
      beside it HF PyTorch inference over the very same padded batches
      (`torch_inference_seconds`), with the speed ratio.

Compilation is kept out of (c)'s figure twice over: the JAX persistent compilation cache is
on (a fresh temporary folder, every entry kept), so (b), which compiles the very same jitted
steps (same model, step config, optimizer and shardings), fills it and the loop loads its
executables instead of compiling; and the first log window, which holds the first call of
every shape and the Prefetcher's start, is dropped. The cache folder's entry count before
and after (c) is reported: growth would mean the loop compiled something itself. The loop
rate and the step-only rate cover the same steps (windows 2.. of the same batch sequence).

  python benchmarks/loop.py                    # minilm (embedded), batch 32, max_length 64
  python benchmarks/loop.py --steps=120 --checkpoint=/path/to/hf_bert_folder

The issue's targets: loop >= 0.9 x step only; pipeline >= 10 x the step rate. The last line
of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)  # configs/, mtbert_jax


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", default="", help="HF BERT folder; '' = embedded MiniLM")
  p.add_argument("--batch", type=int, default=32, help="train.batch_size")
  p.add_argument("--max_length", type=int, default=64, help="data.max_length")
  p.add_argument("--buckets", default="32,64", help="data.buckets (and eval buckets)")
  p.add_argument("--steps", type=int, default=60, help="train.num_steps of the loop")
  p.add_argument("--log_every", type=int, default=10, help="train.log_every (window size)")
  p.add_argument("--tasks", default="sst,para,sts", help="train.tasks, round robin")
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  p.add_argument("--pipeline_batches", type=int, default=300, help="batches timed in (a)")
  p.add_argument("--eval_batch", type=int, default=128, help="eval.batch_size")
  p.add_argument("--eval_rows", type=int, default=0,
                 help="rows of each dev file for (d); 0 = all (SST 1101, STS 863 pairs)")
  p.add_argument("--skip_loop", action="store_true", help="only (a), (b), (d)")
  p.add_argument("--skip_torch", action="store_true",
                 help="no HF PyTorch inference beside (d)")
  p.add_argument("--eval_dtype", default="", choices=["", "float32", "bfloat16"],
                 help="eval.dtype of (d) (default: --dtype)")
  p.add_argument("--torch_eval_dtype", default="", choices=["", "float32", "bfloat16"],
                 help="PyTorch's precision in (d) (default: the JAX side's)")
  p.add_argument("--tune_malloc", type=int, default=-1, choices=(-1, 0, 1),
                 help="the glibc malloc settings of mtbert_jax/runtime.py (re-exec): 1 on, "
                      "0 off, -1 (default) as launch.py does (on when JAX runs on the CPU)")
  p.add_argument("--workdir", default=None, help="default: a temporary folder")
  return p.parse_args(argv)


def make_config(args):
  from configs import base  # pylint: disable=import-outside-toplevel
  c = base.get_config()
  c.model.checkpoint = args.checkpoint
  c.model.dtype = args.dtype
  c.data.max_length = args.max_length
  c.data.buckets = tuple(int(b) for b in args.buckets.split(","))
  c.data.dev_limit = 128             # the loop's end-of-run evaluation: keep it short
  c.data.sst_test = c.data.sts_test = c.data.para_test = ""  # no test predictions
  c.train.tasks = tuple(args.tasks.split(","))
  c.train.batch_size = args.batch
  c.train.num_steps = args.steps
  c.train.log_every = args.log_every
  c.train.eval_every = c.train.ckpt_every = 10 * args.steps  # only the end-of-run ones
  c.train.eval_limit = 128
  c.train.progress = False
  c.eval.batch_size = args.eval_batch
  c.eval.write_predictions = False
  c.jax_cache_dir = ""               # set here, below, not by launch.py
  return c


def torch_inference_seconds(ckpt: str, tokset, batch: int, buckets, dtype: str) -> float:
  """HF PyTorch's time for the same pass (`benchmarks/inference.py`'s `torch_pass` over the
  same padded batches, `data.eval_batches`, without a head). The second of two passes is
  timed."""
  from benchmarks import inference  # pylint: disable=import-outside-toplevel
  from mtbert_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  one_pass = inference.torch_pass(ckpt, list(data_lib.eval_batches(tokset, batch, buckets)),
                                  0, dtype)
  one_pass()
  t0 = time.perf_counter()
  one_pass()
  return time.perf_counter() - t0


def cache_entries(path: str) -> int:
  return sum(len(files) for _, _, files in os.walk(path))


def block(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.block_until_ready(tree)


def main(argv=None):
  args = parse_args(argv)
  from mtbert_jax import runtime  # pylint: disable=import-outside-toplevel  (imports no JAX)
  malloc_tuned = runtime.tune_malloc(None if args.tune_malloc < 0 else bool(args.tune_malloc))

  import jax
  cache_dir = tempfile.mkdtemp(prefix="mtbert_loop_xla_cache_")
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

  from mtbert_jax import data as data_lib
  from mtbert_jax import evaluate as eval_lib
  from mtbert_jax import experiment, settings, sharding, tasks, train

  config = settings.from_dict(make_config(args).to_dict())
  sc = config.train
  workdir = args.workdir or tempfile.mkdtemp(prefix="mtbert_loop_run_")
  t_all = time.perf_counter()

  # -- data and model, built as train_and_evaluate builds them ------------------------------
  t0 = time.perf_counter()
  tok = experiment.tokenizer(config)
  sources = {task: experiment.train_sources(config, tok, task) for task in sc.tasks}
  tokenize_s = time.perf_counter() - t0
  mesh = sharding.make_mesh()
  sharder = sharding.Sharder(mesh)
  local_batch = sharder.check_batch_size(args.batch, "train.batch_size")

  def iterators():
    return {task: data_lib.TrainIterator(
        sources=sources[task][0], mix_weights=sources[task][1], batch_size=local_batch,
        buckets=config.data.buckets, seed=config.seed + 1000 * i,
        shard_index=jax.process_index(), shard_count=jax.process_count())
        for i, task in enumerate(sc.tasks)}

  # -- (a) input pipeline alone: what the Prefetcher thread does per step --------------------
  its = iterators()
  n_pipe = max(args.pipeline_batches, args.steps)
  sequence = []  # (task, device batch) of steps 0.. in the loop's order
  t0 = time.perf_counter()
  for step in range(n_pipe):
    task = sc.tasks[step % len(sc.tasks)]
    batch = next(its[task])
    batch.pop("index", None)
    _ = {t: it.get_state() for t, it in its.items()}
    device_batch = block(sharder(batch))
    if step < args.steps:
      sequence.append((task, device_batch))
  pipe_s = time.perf_counter() - t0
  pipe_batches_per_s = n_pipe / pipe_s
  pipe_ex_per_s = pipe_batches_per_s * args.batch
  shapes = sorted({(t, b["attention_mask" if "attention_mask" in b else "attention_mask_1"]
                    .shape[1]) for t, b in sequence})

  # -- (b) step only: the compiled project steps on device batches --------------------------
  mt_model, bert_params = experiment.build_model(config)
  params = tasks.init_params(mt_model, jax.random.key(config.seed), bert_params)
  tx = train.make_optimizer(config, params, mt_model.bert_config.num_hidden_layers)
  state = sharder.replicate(train.init_state(params, tx, config))
  del params, bert_params
  steps = train.compile_steps(mt_model, config, tx, sharder)
  base_rng = sharder.dropout_key(config.seed + 1, config.train.rng_impl)
  t0 = time.perf_counter()
  seen = set()
  for task, batch in sequence:  # compile every (task, bucket) shape the sequence holds
    key = (task, tuple(v.shape for v in batch.values()))
    if key not in seen:
      seen.add(key)
      state, metrics = steps[task](state, batch, base_rng)
      block((state, metrics))
  compile_s = time.perf_counter() - t0
  step_windows = []
  for start in range(0, args.steps, args.log_every):
    t0 = time.perf_counter()
    pending = []
    for task, batch in sequence[start:start + args.log_every]:
      state, metrics = steps[task](state, batch, base_rng)
      pending.append(metrics)
    block((pending, state))
    step_windows.append({"end_step": min(start + args.log_every, args.steps),
                         "steps": len(pending), "seconds": time.perf_counter() - t0})
  timed_step = step_windows[1:] or step_windows
  step_steps_per_s = sum(w["steps"] for w in timed_step) / sum(w["seconds"] for w in timed_step)
  step_ex_per_s = step_steps_per_s * args.batch

  # -- (d) evaluation throughput: evaluate.predict on SST dev and STS dev --------------------
  eval_config = config.replace(data={"dev_limit": args.eval_rows})
  output_fns = eval_lib.make_output_fns(mt_model, args.eval_dtype)
  buckets = eval_config.eval_buckets
  evals = {}
  for task in ("sst", "sts"):
    tokset = experiment.load_split(eval_config, tok, task, "dev")
    eval_lib.predict(output_fns[task], state.params, tokset, args.eval_batch, buckets,
                     sharder)  # compiles each bucket
    t0 = time.perf_counter()
    eval_lib.predict(output_fns[task], state.params, tokset, args.eval_batch, buckets,
                     sharder)
    seconds = time.perf_counter() - t0
    encodings = 1 if task == "sst" else 2
    evals[task] = {"examples": len(tokset), "seconds": seconds,
                   "ex_per_s": len(tokset) / seconds,
                   "encodings_per_s": encodings * len(tokset) / seconds}
    if not args.skip_torch:
      torch_s = torch_inference_seconds(experiment.checkpoint_dir(config), tokset,
                                        args.eval_batch, buckets,
                                        args.torch_eval_dtype or args.eval_dtype or args.dtype)
      evals[task].update(torch_seconds=torch_s, torch_ex_per_s=len(tokset) / torch_s,
                         speedup_vs_torch=torch_s / seconds)
  del state, sequence

  # -- (c) the whole loop --------------------------------------------------------------------
  loop = None
  if not args.skip_loop:
    entries_before = cache_entries(cache_dir)
    t0 = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    loop_total_s = time.perf_counter() - t0
    entries_after = cache_entries(cache_dir)
    with open(os.path.join(workdir, "train_stats.json"), encoding="utf-8") as f:
      windows = json.load(f)["windows"]
    used = windows[1:] or windows
    loop_steps = sum(w["steps"] for w in used)
    loop_s = sum(w["seconds"] for w in used)
    loop = {"windows": windows, "windows_used": len(used),
            "steps_per_s": loop_steps / loop_s,
            "ex_per_s": sum(w["examples"] for w in used) / loop_s,
            "first_window_s": windows[0]["seconds"],
            "total_s_incl_setup_eval_ckpt": loop_total_s,
            "cache_entries_before": entries_before, "cache_entries_after": entries_after}

  # -- report ---------------------------------------------------------------------------------
  device = (str(jax.devices()[0].device_kind) if jax.default_backend() == "gpu"
            else f"cpu ({os.cpu_count()} cores)")
  print(f"\n{args.checkpoint or 'embedded all-MiniLM-L6-v2'}: tasks {sc.tasks}, batch "
        f"{args.batch}, max_length {args.max_length}, buckets {tuple(config.data.buckets)}, "
        f"{args.dtype}, device {device}; shapes compiled {shapes} in {compile_s:.1f} s; "
        f"tokenization {tokenize_s:.1f} s")
  rows = [("(a) pipeline (iterators + device put)", pipe_batches_per_s, pipe_ex_per_s, ""),
          ("(b) step only (compiled, device batches)", step_steps_per_s, step_ex_per_s,
           " ".join(f"{w['seconds']:.2f}" for w in step_windows))]
  if loop:
    rows.append(("(c) whole loop (train_and_evaluate)", loop["steps_per_s"], loop["ex_per_s"],
                 " ".join(f"{w['seconds']:.2f}" for w in loop["windows"])))
  print(f"{'measurement':<42} {'batches/s':>10} {'ex/s':>9}  window seconds (first dropped)")
  for name, bps, eps, extra in rows:
    print(f"{name:<42} {bps:>10.2f} {eps:>9.1f}  {extra}")
  for task, e in evals.items():
    print(f"(d) eval {task} dev: {e['examples']} examples in {e['seconds']:.2f} s = "
          f"{e['ex_per_s']:.1f} ex/s ({e['encodings_per_s']:.1f} encodings/s)"
          + (f"; HF PyTorch {e['torch_seconds']:.2f} s = {e['torch_ex_per_s']:.1f} ex/s: "
             f"{e['speedup_vs_torch']:.2f}x (target >= 1.5x)" if "torch_seconds" in e else ""))
  ratios = {"pipeline_over_step": pipe_batches_per_s / step_steps_per_s}
  if loop:
    ratios["loop_over_step"] = loop["steps_per_s"] / step_steps_per_s
    print(f"loop / step only = {ratios['loop_over_step']:.3f} (target >= 0.9); "
          f"cache entries {loop['cache_entries_before']} -> {loop['cache_entries_after']}")
  print(f"pipeline / step = {ratios['pipeline_over_step']:.1f}x (target >= 10x)")

  result = dict(
      device=device, checkpoint=args.checkpoint or "embedded all-MiniLM-L6-v2",
      tasks=list(sc.tasks), batch=args.batch, max_length=args.max_length,
      buckets=list(config.data.buckets), dtype=args.dtype, steps=args.steps,
      log_every=args.log_every, malloc_tuned=malloc_tuned,
      pipeline_batches_per_s=pipe_batches_per_s, pipeline_ex_per_s=pipe_ex_per_s,
      step_only_steps_per_s=step_steps_per_s, step_only_ex_per_s=step_ex_per_s,
      step_windows=step_windows, compile_s=compile_s, shapes=[list(s) for s in shapes],
      loop=loop, eval=evals, **ratios, tokenize_s=tokenize_s,
      wall_s=time.perf_counter() - t_all, load_avg_1min=os.getloadavg()[0],
      jax_version=jax.__version__)
  if loop:
    result["loop_ex_per_s"] = loop["ex_per_s"]
    result["loop_steps_per_s"] = loop["steps_per_s"]
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  sys.exit(main() and 0)
