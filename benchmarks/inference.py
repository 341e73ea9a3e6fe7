"""Inference against HF PyTorch at equal precision, side by side in one run.

  python benchmarks/inference.py                          # SST, STS, Quora; float32 and bfloat16
  python benchmarks/inference.py --dtypes=float32 --rows=512 --end_to_end

For each task and dtype both sides run the same checkpoint (the embedded MiniLM, or
--checkpoint) over the same padded batches of the dev file (`data.eval_batches` of the
configured heads' inputs: SST sentences, the STS and Quora pairs joined as the
cross-encoders of `configs/full.py` read them): the project's jitted output function of
`evaluate.make_output_fns`, and `transformers.BertModel` under `torch.inference_mode` with
the same mean pooling and a linear head of the same shape (`torch.autocast` for
bfloat16). Printed per row: the first pass (compile included, JAX) and the steady state
(the median of --passes passes after it, the two sides' passes alternated), sentences or
pairs per second, the encoder's GFLOP/s over the padded batches, and the ratio torch
seconds / project seconds (the median of the ratios of neighbouring passes, and their
range). With
--gemm, the encoder's matmul shapes alone on both sides: the rate a forward pass is
bound by. With --end_to_end it also times `evaluate.evaluate_split`
on all three dev sets in both orders, the configured dtype, compile included: what a
protocol run pays for its dev scores.

bfloat16 needs native hardware support to be worth anything on a CPU (AMX or AVX-512
BF16; `runtime.native_bfloat16`); without it the script skips bfloat16 unless
--force_bfloat16, since both sides then emulate it and the ratio says nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TASKS = ("sst", "sts", "para")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="full", help="a module of configs/ (get_config())")
  p.add_argument("--checkpoint", default="", help="HF BERT folder ('' = the embedded MiniLM)")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="a config override, e.g. model.kernels=flax (repeatable)")
  p.add_argument("--tasks", default=",".join(TASKS))
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--rows", type=int, default=1024,
                 help="dev rows per task (0 = all; Quora dev has 20,212 pairs)")
  p.add_argument("--batch", type=int, default=0, help="0 = eval.batch_size of the config")
  p.add_argument("--passes", type=int, default=3, help="steady-state passes (median)")
  p.add_argument("--end_to_end", action="store_true",
                 help="also time evaluate_split on the three whole dev sets, both orders")
  p.add_argument("--skip_torch", action="store_true")
  p.add_argument("--gemm", action="store_true",
                 help="also time the encoder's matmul shapes alone on both sides")
  p.add_argument("--force_bfloat16", action="store_true",
                 help="measure bfloat16 even without native support")
  p.add_argument("--json", default="", help="also write the figures to this file")
  return p.parse_args(argv)


def timed(fn, passes: int) -> tuple[float, float]:
  """(seconds of the first call, median seconds of `passes` calls after it; with 0 passes
  the first call's seconds twice)."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  steady = []
  for _ in range(passes):
    t0 = time.perf_counter()
    fn()
    steady.append(time.perf_counter() - t0)
  return first, statistics.median(steady) if steady else first


def encoder_flops(cfg, batches: list[dict]) -> float:
  """Multiply-adds x 2 of the encoder over `batches` as padded (every segment, every row,
  every position): the four attention projections and the two feed-forward matmuls of each
  layer, plus the attention scores and their product with the values."""
  h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
  total = 0.0
  for b in batches:
    for k, mask in b.items():
      if k.startswith("attention_mask"):
        rows, length = mask.shape
        tokens = rows * length
        total += layers * (2 * tokens * (4 * h * h + 2 * h * i) + 4 * rows * length * length * h)
  return total


def gemm_rates(cfg, tokens: int, dtype: str, repeats: int = 10) -> dict:
  """GFLOP/s of XLA's and PyTorch's matmuls of the encoder's shapes ([tokens, H] x [H, H],
  [H, I], [I, H]), float32 accumulation: the rate both sides' forward passes are bound by."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  h, i = cfg.hidden_size, cfg.intermediate_size
  out = {}
  for m, k, n in ((tokens, h, h), (tokens, h, i), (tokens, i, h)):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    ja, jb = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    mm = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    ta, tb = (torch.from_numpy(a).to(getattr(torch, dtype)),
              torch.from_numpy(b).to(getattr(torch, dtype)))
    with torch.inference_mode():
      jax_s = timed(lambda: mm(ja, jb).block_until_ready(), repeats)[1]
      torch_s = timed(lambda: torch.mm(ta, tb), repeats)[1]
    flops = 2 * m * k * n
    out[f"[{m},{k}]x[{k},{n}]"] = {"jax_gflops": flops / jax_s / 1e9,
                                   "torch_gflops": flops / torch_s / 1e9}
  return out


def torch_pass(ckpt: str, batches: list[dict], out_dim: int, dtype: str):
  """A function running HF PyTorch over `batches` as the project's heads read them: every
  segment of a batch through `BertModel` (eval mode, HF's default attention) under
  `torch.inference_mode`, mean pooling, a linear head of `out_dim` outputs (0: none);
  bfloat16 through `torch.autocast` when `dtype` is bfloat16."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  model = transformers.BertModel.from_pretrained(ckpt).eval()
  head = (torch.nn.Linear(model.config.hidden_size, out_dim).eval() if out_dim
          else torch.nn.Identity())
  tb = []
  for b in batches:
    suffixes = [k.removeprefix("input_ids") for k in b if k.startswith("input_ids")]
    tb.append({k: torch.from_numpy(np.concatenate([b[f"{k}{x}"] for x in suffixes])).long()
               for k in ("input_ids", "attention_mask", "token_type_ids")})

  def run():
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16,
                                                enabled=dtype == "bfloat16"):
      for b in tb:
        hidden = model(**b).last_hidden_state
        mask = b["attention_mask"][..., None].to(hidden.dtype)
        head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().numpy()
  return run


def make_config(args):
  """configs/<--config>.py with --checkpoint and every --set applied (no JAX imported)."""
  import importlib  # pylint: disable=import-outside-toplevel
  config = importlib.import_module(f"configs.{args.config}").get_config()
  if args.checkpoint:
    config.model.checkpoint = args.checkpoint
  for item in args.set:
    field, sep, value = item.partition("=")
    group, _, name = field.rpartition(".")
    parent = config
    try:
      for part in filter(None, group.split(".")):
        parent = parent[part]
      old = parent[name]
    except (KeyError, AttributeError, TypeError):
      sep = ""
    if not sep:
      raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD a config field")
    if isinstance(old, bool):
      parent[name] = value.lower() in ("1", "true", "yes")
    elif isinstance(old, tuple):
      parent[name] = tuple(type(old[0] if old else "")(v) for v in value.split(",") if v)
    else:
      parent[name] = type(old)(value)
  return config


def main(argv=None):
  args = parse_args(argv)
  config = make_config(args)
  from mtbert_jax import runtime  # pylint: disable=import-outside-toplevel  (no JAX yet)
  runtime.tune_malloc(None)
  import jax  # pylint: disable=import-outside-toplevel
  from mtbert_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  from mtbert_jax import evaluate as eval_lib  # pylint: disable=import-outside-toplevel
  from mtbert_jax import experiment, settings  # pylint: disable=import-outside-toplevel
  from mtbert_jax import tasks as tasks_lib  # pylint: disable=import-outside-toplevel

  config.data.dev_limit = args.rows
  s = settings.from_dict(config.to_dict())
  batch_size = args.batch or s.eval.batch_size
  buckets = s.eval_buckets
  native = runtime.native_bfloat16()
  dtypes = [d for d in args.dtypes.split(",") if d]
  if "bfloat16" in dtypes and not native and not args.force_bfloat16:
    print("bfloat16 skipped: this CPU has neither AMX nor AVX-512 BF16 (--force_bfloat16 "
          "measures it anyway)", flush=True)
    dtypes.remove("bfloat16")
  tok = experiment.tokenizer(s)
  mt_model, bert_params = experiment.build_model(s)
  params = tasks_lib.init_params(mt_model, jax.random.key(0), bert_params)
  ckpt = experiment.checkpoint_dir(s)
  record = {"machine": f"{runtime.cpu_model()}, {platform.machine()}, {os.cpu_count()} cores",
            "native_bfloat16": native, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(["python", "benchmarks/inference.py"] + (argv or sys.argv[1:])),
            "config": args.config, "batch": batch_size, "buckets": list(buckets),
            "jax": jax.__version__, "rows": []}
  print(f"{record['machine']}; native bfloat16: {native}; batch {batch_size}, buckets "
        f"{list(buckets)}; {record['date']}", flush=True)

  for task in args.tasks.split(","):
    tokset = experiment.load_split(s, tok, task, "dev")
    batches = list(data_lib.eval_batches(tokset, batch_size, buckets))
    for b in batches:
      for k in ("index", "labels", "weights"):
        b.pop(k, None)
    for dtype in dtypes:
      fn = eval_lib.make_output_fns(mt_model, dtype)[task]

      def jax_run(fn=fn):
        pending = [fn(params, b) for b in batches]  # dispatch all, then wait: no host gaps
        jax.block_until_ready(pending)
      # Both sides' first passes, then their steady passes alternated, so that a slower
      # stretch of a shared machine falls on both: the ratio is the median of the passes'
      # ratios, each of two neighbouring passes.
      first = timed(jax_run, 0)[0]
      torch_run = None
      if not args.skip_torch:
        out_dim = np.asarray(fn(params, batches[0])).reshape(batch_size, -1).shape[1]
        torch_run = torch_pass(ckpt, batches, out_dim, dtype)
        torch_first = timed(torch_run, 0)[0]
      jax_s, torch_s = [], []
      for _ in range(args.passes):
        jax_s.append(timed(jax_run, 0)[0])
        if torch_run is not None:
          torch_s.append(timed(torch_run, 0)[0])
      steady = statistics.median(jax_s)
      flops = encoder_flops(mt_model.bert_config, batches)
      row = {"task": task, "dtype": dtype, "examples": len(tokset), "batches": len(batches),
             "jax_first_s": first, "jax_steady_s": steady, "jax_passes_s": jax_s,
             "jax_compile_s": max(first - steady, 0.0),
             "jax_per_s": len(tokset) / steady, "encoder_gflop": flops / 1e9,
             "jax_gflops": flops / steady / 1e9}
      if torch_run is not None:
        torch_steady = statistics.median(torch_s)
        row.update(torch_first_s=torch_first, torch_steady_s=torch_steady,
                   torch_passes_s=torch_s, torch_per_s=len(tokset) / torch_steady,
                   ratio=statistics.median(t / j for t, j in zip(torch_s, jax_s)),
                   ratio_range=[min(t / j for t, j in zip(torch_s, jax_s)),
                                max(t / j for t, j in zip(torch_s, jax_s))],
                   torch_gflops=flops / torch_steady / 1e9)
      record["rows"].append(row)
      print(f"{task:4s} {dtype:8s} {len(tokset):6d} rows: JAX first {first:6.2f} s "
            f"(compile ~{row['jax_compile_s']:.2f} s), steady {steady:6.2f} s = "
            f"{row['jax_per_s']:7.1f}/s, {row['jax_gflops']:5.0f} GFLOP/s" + (
                f"; PyTorch steady {row['torch_steady_s']:6.2f} s = "
                f"{row['torch_per_s']:7.1f}/s, {row['torch_gflops']:5.0f} GFLOP/s; ratio "
                f"{row['ratio']:.2f}x ({row['ratio_range'][0]:.2f}-{row['ratio_range'][1]:.2f} "
                f"over the passes; target >= 1.5x)" if "ratio" in row else ""), flush=True)

  if args.gemm:
    tokens = batch_size * 64
    for dtype in dtypes:
      rates = gemm_rates(mt_model.bert_config, tokens, dtype)
      record.setdefault("gemm", {})[dtype] = rates
      for shape, r in rates.items():
        print(f"matmul {dtype:8s} {shape:18s}: XLA {r['jax_gflops']:5.0f} GFLOP/s, PyTorch "
              f"{r['torch_gflops']:5.0f} GFLOP/s", flush=True)

  if args.end_to_end:
    config.data.dev_limit = 0
    full = settings.from_dict(config.to_dict())
    sets = {t: v for t, v in experiment.eval_sets(full, tok, "dev").items() if t in TASKS}
    t0 = time.perf_counter()
    fns = eval_lib.make_output_fns(mt_model, full.eval.dtype)
    scores, _ = eval_lib.evaluate_split(fns, params, sets, batch_size, buckets)
    seconds = time.perf_counter() - t0
    record["end_to_end"] = {"seconds": seconds, "dtype": full.eval.dtype or full.model.dtype,
                            "both_orders": full.eval.both_orders,
                            "examples": {t: len(v[0]) for t, v in sets.items() if v}}
    print(f"end to end: the three dev sets ({record['end_to_end']['examples']}), both orders "
          f"{full.eval.both_orders}, {record['end_to_end']['dtype']}, compile included: "
          f"{seconds:.1f} s (untrained heads: scores {scores} mean nothing)", flush=True)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(record, f, indent=1)


if __name__ == "__main__":
  main()
