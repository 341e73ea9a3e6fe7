"""Train-step throughput: the project's jitted JAX/Flax step against HF PyTorch, same run.

One step = BERT encoder forward + backward + AdamW update with a linear head on the pooled
[CLS] (as `BertForSequenceClassification`: pooler, dropout, Dense(num_labels)) and softmax
cross entropy. The JAX side is the project's own step, `mtbert_jax.train.train_step` for
task "sst" on a `heads.MultitaskModel` (sentiment head "linear", cls_source "pooler"),
jitted by `train.compile_steps` with its mesh shardings and donated state: variant
`project`. Both frameworks train with the same dropout (hidden, head and attention
probabilities; 0.1 by default, `--attention_dropout` sets the last one apart), the same AdamW
(lr 3e-5, weight decay 0.01, eps 1e-8) and the same batches: random token ids with lengths
uniform in [seq/2, seq], padded with 0.

  python benchmarks/train_step.py                          # minilm, batch 32, seq 64, float32
  python benchmarks/train_step.py --dtype=bfloat16         # bf16 compute, f32 master weights
  python benchmarks/train_step.py --checkpoint=/path/to/hf_bert_folder
  python benchmarks/train_step.py --model=bert-base --torch_compile
  python benchmarks/train_step.py --variants=project,smart_k1,simcse_unsup --skip_torch
  python benchmarks/train_step.py --dtype=bfloat16 --variants=xla_cpu,flax  # kernel sets

JAX variants (`--variant` for one, `--variants=a,b,c` for several in one run; `project` is
always timed with them, as the baseline of `time_ratio_vs_plain`):
  project       the plain step (the baseline: no extension)
  smart         + SMART as in the paper: weight 50, "random", 7 samples, epsilon 5e-3
  smart_k1      + SMART "adversarial", K = 1 ascent step
  simcse_unsup  + unsupervised SimCSE (weight 1): a second encoding of the batch
  nli           supervised SimCSE (task "nli", similarity head "cosine"): anchor, positive
                and negative encoded in one pass, i.e. 3 encodings per example; its
                segments are the shared batch and that batch's rows rolled by 1 and by 2
  remat         the plain step with each encoder layer rematerialised (`model.remat`):
                activations recomputed in the backward pass instead of kept
  rbg           the plain step with dropout masks from XLA's RngBitGenerator
                (`train.rng_impl="rbg"`) instead of threefry
  flax          the plain step with the plain Flax layers (`model.kernels="flax"`: what
                every backend but the CPU runs by default)
  xla_cpu       the plain step with the XLA:CPU kernels (`model.kernels="xla_cpu"`: what
                "auto" picks on the CPU)
Each project variant also reports XLA's temporary-buffer size of its compiled step
(`memory_analysis()`: the activations kept for the backward pass plus workspace), the
memory that `remat` trades for time.
The PyTorch comparison (`ratio`) is always against the JAX baseline (`project` if timed).

PyTorch attention (`--torch_attn`): `auto` is HF's default `sdpa` on GPU (what people run)
and `eager` on CPU (the explicit softmax + dropout path that JAX also runs while attention
dropout is on; docs/performance.md). With `--attention_dropout=0` the JAX model uses
`jax.nn.dot_product_attention`: XLA's attention by default, cuDNN's fused kernel with
`--attention=cudnn` (GPU, bf16; the project's `model.attention` setting).

Timing: warm-up steps (compilation included) are excluded; every timed step is synchronised
(`jax.block_until_ready` on the loss and the new state / `torch.cuda.synchronize` on GPU,
torch is synchronous on CPU); the figure is the median over all timed steps. Runners
alternate in `--rounds` blocks so that drift of the machine hits all. The last line of output
is one JSON object.

XLA flags must be set before JAX is imported, so this script sets `XLA_FLAGS` from
`--xla_flags` (default: the settings chosen in docs/performance.md) before importing JAX.
On GPU it also sets `XLA_PYTHON_CLIENT_PREALLOCATE=false` (unless set), so JAX does not take
75% of the GPU memory that PyTorch needs in the same process.

A variant of the JAX step is one function `make_<name>_step(cfg, params, args) ->
(step_fn, state, batch_fn)` registered in `_JAX_STEPS`, with `step_fn(state, device_batch)
-> (state, loss)` and `batch_fn(numpy_batch) -> device_batch`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np

# `configs/` lives at the repository root, beside the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mtbert_jax import runtime  # pylint: disable=wrong-import-position  (imports no JAX)

# None of the XLA:CPU flags tried helped measurably (docs/performance.md), so none is set;
# what matters on CPU is the malloc setting (mtbert_jax/runtime.py).
DEFAULT_XLA_FLAGS = ""

MODEL_SHAPES = {
    "minilm": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12,
                   intermediate_size=1536, vocab_size=30522),
    "bert-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                      intermediate_size=3072, vocab_size=30522),
    "tiny": dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,  # smoke runs
                 intermediate_size=37, vocab_size=2000),
}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", choices=sorted(MODEL_SHAPES), default="minilm",
                 help="random-init encoder of this shape (ignored with --checkpoint)")
  p.add_argument("--checkpoint", default=None, help="HF BERT folder to load instead")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--seq", type=int, default=64)
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                 help="compute dtype; weights and optimizer state stay float32")
  p.add_argument("--num_labels", type=int, default=5)
  p.add_argument("--dropout", type=float, default=0.1,
                 help="hidden and classifier-head dropout, both frameworks")
  p.add_argument("--attention_dropout", type=float, default=None,
                 help="attention-probability dropout, both frameworks (default: --dropout); "
                      "0 lets JAX use jax.nn.dot_product_attention (see --attention)")
  p.add_argument("--rng_impl", choices=["threefry2x32", "rbg", "unsafe_rbg"],
                 default="threefry2x32",
                 help="PRNG of the project step's dropout masks (train.rng_impl)")
  p.add_argument("--kernels", choices=["auto", "flax", "xla_cpu"], default="auto",
                 help="model.kernels of the project step (auto: xla_cpu on CPU, flax on GPU); "
                      "variants flax and xla_cpu set it themselves")
  p.add_argument("--attention", choices=["xla", "cudnn"], default="xla",
                 help="JAX attention without attention dropout: xla, or cudnn (GPU, bf16)")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps per runner")
  p.add_argument("--steps", type=int, default=None,
                 help="timed steps per runner per round (default 8 on CPU, 10 on GPU)")
  p.add_argument("--rounds", type=int, default=2, help="alternating blocks of all runners")
  p.add_argument("--variant", default="project", help="JAX step variant (see _JAX_STEPS)")
  p.add_argument("--variants", default=None,
                 help="comma-separated JAX variants timed in one run (project always "
                      "included as the baseline); overrides --variant")
  p.add_argument("--skip_torch", action="store_true")
  p.add_argument("--skip_jax", action="store_true")
  p.add_argument("--torch_compile", action="store_true",
                 help="also time torch.compile (default on GPU)")
  p.add_argument("--no_torch_compile", action="store_true", help="not even on GPU")
  p.add_argument("--torch_attn", choices=["auto", "eager", "sdpa"], default="auto",
                 help="HF attn_implementation; auto: sdpa on GPU, eager on CPU")
  p.add_argument("--torch_threads", type=int, default=0,
                 help="torch.set_num_threads; 0 keeps torch's default")
  p.add_argument("--xla_flags", default=None,
                 help=f"XLA_FLAGS to set before importing JAX (default {DEFAULT_XLA_FLAGS!r}, "
                      "appended to any XLA_FLAGS already in the environment)")
  p.add_argument("--matmul_precision", default=None,
                 help="jax_default_matmul_precision (default: JAX's own)")
  p.add_argument("--peak_tflops", type=float, default=989.0,
                 help="peak for MFU on GPU (989: H100 SXM bf16 dense)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--tune_malloc", type=int, default=-1, choices=(-1, 0, 1),
                 help="glibc malloc settings against per-step page faults on CPU "
                      "(mtbert_jax/runtime.py): 1 on, 0 off, -1 (default) on when JAX runs "
                      "on the CPU, off on GPU/TPU machines")
  args = p.parse_args(argv)
  if args.attention_dropout is None:
    args.attention_dropout = args.dropout
  names = [args.variant] if args.variants is None else [
      v.strip() for v in args.variants.split(",") if v.strip()]
  if args.variants is not None and "project" not in names:
    names.insert(0, "project")
  args.variant_names = list(dict.fromkeys(names))  # unique, in order
  return args


# --------------------------------------------------------------------------- batches


def make_batches(n: int, batch: int, seq: int, vocab: int, num_labels: int, seed: int):
  """NumPy batches with a realistic padding pattern, shared by both frameworks."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    lengths = rng.integers(seq // 2, seq + 1, size=batch)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)  # [B, L]
    ids = rng.integers(1000, vocab, size=(batch, seq)).astype(np.int32)
    ids[:, 0] = 101  # [CLS]
    ids[np.arange(batch), lengths - 1] = 102  # [SEP]
    ids = ids * mask
    out.append(dict(input_ids=ids, attention_mask=mask,
                    token_type_ids=np.zeros_like(ids),
                    labels=rng.integers(0, num_labels, size=batch).astype(np.int32)))
  return out


def flops_per_step(cfg, batch: int, seq: int) -> float:
  """6 * non-embedding params * tokens + 12 * layers * seq^2 * hidden * batch (attention)."""
  h, i, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
  per_layer = 4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h  # qkvo, ffn, two LayerNorms
  non_embedding = n * per_layer + h * h + h  # + pooler
  return 6 * non_embedding * batch * seq + 12 * n * seq * seq * h * batch


def timed(fn, n: int) -> list[float]:
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


# --------------------------------------------------------------------------- JAX


# Config overrides of each project variant on top of configs/base.py (SMART as in the paper
# where the brief says so); "nli" trains the supervised SimCSE task instead of "sst".
PROJECT_VARIANTS = {
    "project": {},
    "smart": {"smart.weight": 50.0, "smart.variant": "random", "smart.num_samples": 7,
              "smart.epsilon": 5e-3},
    "smart_k1": {"smart.weight": 50.0, "smart.variant": "adversarial", "smart.num_steps": 1},
    "simcse_unsup": {"simcse.unsup_weight": 1.0},
    "nli": {"train.tasks": ("sst", "nli"), "heads.similarity": "cosine"},
    "remat": {"model.remat": True},
    "rbg": {"train.rng_impl": "rbg"},
    "flax": {"model.kernels": "flax"},        # the plain Flax layers (the GPU default)
    "xla_cpu": {"model.kernels": "xla_cpu"},  # the XLA:CPU kernels (the CPU default)
}
# Encoder passes (forward + backward) per example, for FLOPs: "nli" encodes 3 sentences.
ENCODINGS_PER_EXAMPLE = {"nli": 3}


def project_config(args, overrides: dict):
  """configs/base.py with this benchmark's head, dropout, optimizer and dtype settings."""
  from configs import base  # pylint: disable=import-outside-toplevel
  c = base.get_config()
  c.model.dtype = args.dtype
  c.model.hidden_dropout = args.dropout
  c.model.attention_dropout = args.attention_dropout
  c.heads.sentiment = "linear"
  c.heads.cls_source = "pooler"     # pooler -> dropout -> Dense(5): BertForSequenceClassification
  c.heads.dropout = args.dropout    # HF: classifier_dropout None -> hidden_dropout_prob
  c.train.tasks = ("sst",)
  c.train.rng_impl = args.rng_impl
  c.model.kernels = args.kernels
  c.optim.lr, c.optim.weight_decay, c.optim.eps = 3e-5, 0.01, 1e-8
  for key, value in overrides.items():
    group, field = key.split(".")
    c[group][field] = value
  return c


def make_project_step(cfg, params, args, variant="project"):
  """`train.train_step` (task "sst", or "nli" for that variant) as train.py compiles it."""
  import jax
  import jax.numpy as jnp
  from mtbert_jax import experiment, heads, settings, sharding, tasks, train

  s = settings.from_dict(project_config(args, PROJECT_VARIANTS[variant]).to_dict())
  task = "nli" if variant == "nli" else "sst"
  dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
  mt_model = heads.MultitaskModel(cfg.replace(kernels=experiment.kernels(s)),
                                  experiment.head_settings(s), dtype=dtype, remat=s.model.remat)
  all_params = tasks.init_params(mt_model, jax.random.key(args.seed + 1), params)
  tx = train.make_optimizer(s, all_params, cfg.num_hidden_layers)
  sharder = sharding.Sharder(sharding.make_mesh())
  state = sharder.replicate(train.init_state(all_params, tx, s))
  jitted = train.compile_steps(mt_model, s, tx, sharder)[task]
  base_rng = sharder.dropout_key(args.seed + 2, s.train.rng_impl)
  executable = []

  def step(state, batch):
    if not executable:  # ahead-of-time, for XLA's memory figures of this very executable
      executable.append(jitted.lower(state, batch, base_rng).compile())
      mem = executable[0].memory_analysis()
      step.temp_mb = mem.temp_size_in_bytes / 2**20 if mem is not None else None
    state, metrics = executable[0](state, batch, base_rng)
    return state, metrics["loss/total"]

  def batch_fn(b):
    b = dict(b, weights=np.ones(len(b["labels"]), np.float32))
    if task == "nli":  # three segments: the batch, and its rows rolled by 1 and by 2
      b = {f"{k}_{i}": np.roll(b[k], i - 1, axis=0) for i in (1, 2, 3)
           for k in ("input_ids", "attention_mask", "token_type_ids")} | {
               "weights": b["weights"]}
    return sharder(b)

  return step, state, batch_fn


_JAX_STEPS = {}
for _name in PROJECT_VARIANTS:
  _JAX_STEPS[_name] = lambda cfg, params, args, _v=_name: make_project_step(cfg, params, args, _v)


def make_jax_step(cfg, params, args, variant):
  return _JAX_STEPS[variant](cfg, params, args)


def load_encoder_params(cfg, args):
  import jax
  from mtbert_jax import convert, model as model_lib
  if args.checkpoint:
    _, params = convert.load_pretrained(args.checkpoint)
  else:
    params = model_lib.init_params(cfg, jax.random.key(args.seed))
  # Host copies: each runner puts its own on the device, so no two donated states share a
  # buffer.
  return jax.device_get(params)


def bench_jax(cfg, args, batches, variant, params):
  import jax

  step, state, batch_fn = make_jax_step(cfg, params, args, variant)
  device_batches = [batch_fn(b) for b in batches]
  t0 = time.perf_counter()
  state, loss = step(state, device_batches[0])
  jax.block_until_ready((loss, state))
  compile_s = time.perf_counter() - t0
  it = iter(range(10**9))
  holder = {"state": state}

  def one():
    holder["state"], loss = step(holder["state"], device_batches[next(it) % len(batches)])
    # The loss depends on the whole forward and backward, the new state on the update.
    jax.block_until_ready((loss, holder["state"]))

  timed(one, args.warmup)
  one.temp_mb = getattr(step, "temp_mb", None)
  return one, compile_s


# --------------------------------------------------------------------------- PyTorch


def bench_torch(cfg, args, batches, device, attn: str, compile_model=False):
  import torch
  import transformers

  hf_cfg = transformers.BertConfig(**cfg.to_hf_dict(), num_labels=args.num_labels,
                                   attn_implementation=attn)
  if args.checkpoint:
    model = transformers.BertForSequenceClassification.from_pretrained(
        args.checkpoint, config=hf_cfg, attn_implementation=attn)
  else:
    torch.manual_seed(args.seed)
    model = transformers.BertForSequenceClassification(hf_cfg)
  used = getattr(model.config, "_attn_implementation", attn)
  if used != attn:
    raise RuntimeError(f"asked HF for attn_implementation={attn!r}, got {used!r}")
  model.to(device).train()
  opt = torch.optim.AdamW(model.parameters(), lr=3e-5, eps=1e-8, weight_decay=0.01)
  fwd = torch.compile(model) if compile_model else model
  tb = [{k: torch.from_numpy(v).long().to(device) for k, v in b.items()} for b in batches]
  autocast = args.dtype == "bfloat16"

  def sync():
    if device.type == "cuda":
      torch.cuda.synchronize()

  it = iter(range(10**9))

  def one():
    b = tb[next(it) % len(tb)]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
      out = fwd(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                token_type_ids=b["token_type_ids"], labels=b["labels"])
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()

  t0 = time.perf_counter()
  one()
  compile_s = time.perf_counter() - t0
  timed(one, args.warmup)
  return one, compile_s


# --------------------------------------------------------------------------- main


def measure_peak_tflops(jax_mod, jnp_mod, dtype) -> float:
  """Achieved TFLOP/s of a large square matmul (a practical ceiling for this device)."""
  n = 4096 if jax_mod.default_backend() != "cpu" else 1536
  a = jnp_mod.ones((n, n), dtype)
  f = jax_mod.jit(lambda a: a @ a)
  f(a).block_until_ready()
  t = statistics.median(timed(lambda: f(a).block_until_ready(), 5))
  return 2 * n**3 / t / 1e12


def main(argv=None):
  args = parse_args(argv)
  malloc_tuned = runtime.tune_malloc(None if args.tune_malloc < 0 else bool(args.tune_malloc))
  extra = DEFAULT_XLA_FLAGS if args.xla_flags is None else args.xla_flags
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + extra).strip()
  # Only takes effect on GPU: leave PyTorch (same process) its share of the memory.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

  import jax
  import jax.numpy as jnp
  import torch
  from mtbert_jax import model as model_lib
  from mtbert_jax import paths

  unknown = [v for v in args.variant_names if v not in _JAX_STEPS]
  if unknown:
    raise SystemExit(f"unknown JAX variant(s) {unknown}; expected some of {sorted(_JAX_STEPS)}")
  if args.matmul_precision:
    jax.config.update("jax_default_matmul_precision", args.matmul_precision)
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)

  if args.checkpoint:
    ckpt = paths.resolve_checkpoint(args.checkpoint)
    args.checkpoint = ckpt
    cfg = model_lib.BertConfig.from_json_file(os.path.join(ckpt, "config.json"))
  else:
    cfg = model_lib.BertConfig(**MODEL_SHAPES[args.model])
  cfg = cfg.replace(hidden_dropout_prob=args.dropout,
                    attention_probs_dropout_prob=args.attention_dropout,
                    attention_impl=args.attention)

  backend = jax.default_backend()
  on_gpu = backend == "gpu"
  tdev = torch.device("cuda" if on_gpu and torch.cuda.is_available() else "cpu")
  device = str(jax.devices()[0].device_kind) if on_gpu else f"cpu ({os.cpu_count()} cores)"
  torch_attn = args.torch_attn if args.torch_attn != "auto" else (
      "sdpa" if tdev.type == "cuda" else "eager")
  if args.steps is None:
    args.steps = 10 if on_gpu else 8
  batches = make_batches(4, args.batch, args.seq, cfg.vocab_size, args.num_labels, args.seed)
  with_compile = (args.torch_compile or on_gpu) and not args.no_torch_compile

  runners = {}
  compile_s = {}

  def ready(name):  # streamed, so a run stopped by a timeout still shows how far it got
    print(f"[{time.strftime('%H:%M:%S')}] ready: {name}, first step (compile included) "
          f"{compile_s[name]:.1f} s", flush=True)

  # Order: JAX, then torch eager, then torch.compile (its compilation can take minutes).
  if not args.skip_jax:
    params = load_encoder_params(cfg, args)
    for variant in args.variant_names:
      name = f"jax:{variant}"
      runners[name], compile_s[name] = bench_jax(cfg, args, batches, variant, params)
      ready(name)
    del params
  if not args.skip_torch:
    runners["torch_eager"], compile_s["torch_eager"] = bench_torch(
        cfg, args, batches, tdev, torch_attn)
    ready("torch_eager")
    if with_compile:
      runners["torch_compile"], compile_s["torch_compile"] = bench_torch(
          cfg, args, batches, tdev, torch_attn, compile_model=True)
      ready("torch_compile")

  times = {k: [] for k in runners}
  cpu = {k: [0.0, 0.0, 0] for k in runners}  # user s, system s, minor page faults
  for _ in range(args.rounds):
    for name, fn in runners.items():
      r0 = resource.getrusage(resource.RUSAGE_SELF)
      times[name] += timed(fn, args.steps)
      r1 = resource.getrusage(resource.RUSAGE_SELF)
      print(f"[{time.strftime('%H:%M:%S')}] {name}: median so far "
            f"{1e3 * statistics.median(times[name]):.1f} ms", flush=True)
      cpu[name][0] += r1.ru_utime - r0.ru_utime
      cpu[name][1] += r1.ru_stime - r0.ru_stime
      cpu[name][2] += r1.ru_minflt - r0.ru_minflt

  median = {k: statistics.median(v) for k, v in times.items()}
  ex_per_s = {k: args.batch / m for k, m in median.items()}
  flops = flops_per_step(cfg, args.batch, args.seq)
  runner_flops = {k: flops * ENCODINGS_PER_EXAMPLE.get(k.removeprefix("jax:"), 1)
                  for k in runners}
  print(f"\n{args.model if not args.checkpoint else args.checkpoint}: batch {args.batch}, "
        f"seq {args.seq}, {args.dtype}, dropout {args.dropout}, attention dropout "
        f"{args.attention_dropout}, device {device}, torch attention {torch_attn!r}, "
        f"torch threads {torch.get_num_threads()}, XLA_FLAGS={os.environ['XLA_FLAGS']!r}")
  print(f"{'runner':<18} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'ex/s':>8} "
        f"{'TFLOP/s':>8} {'first step s':>12} {'user ms':>8} {'sys ms':>7} {'faults':>7}")
  for k, v in times.items():
    med = median[k]
    print(f"{k:<18} {med * 1e3:>10.1f} {min(v) * 1e3:>8.1f} {max(v) * 1e3:>8.1f} "
          f"{ex_per_s[k]:>8.1f} {runner_flops[k] / med / 1e12:>8.3f} {compile_s[k]:>12.1f} "
          f"{cpu[k][0] / len(v) * 1e3:>8.0f} {cpu[k][1] / len(v) * 1e3:>7.0f} "
          f"{cpu[k][2] // len(v):>7d}")
  print("(user/sys ms and minor page faults are per step, whole process; TFLOP/s of nli "
        "counts its 3 encodings per example)")

  jax_names = [k for k in runners if k.startswith("jax:")]
  base = "jax:project" if "jax:project" in runners else (jax_names[0] if jax_names else None)
  variants = {}
  if base:
    for k in jax_names:
      variants[k.removeprefix("jax:")] = dict(
          ex_per_s=ex_per_s[k], median_ms=median[k] * 1e3,
          time_ratio_vs_plain=(median[k] / median[base]) if base == "jax:project" else None,
          encodings_per_example=ENCODINGS_PER_EXAMPLE.get(k.removeprefix("jax:"), 1),
          xla_temp_mb=getattr(runners[k], "temp_mb", None))
    print("JAX variants, step time relative to the plain project step: " + ", ".join(
        f"{n} {v['time_ratio_vs_plain']:.2f}x" for n, v in variants.items()
        if v["time_ratio_vs_plain"] is not None))
    print("XLA temporary buffers of each step (activations kept for the backward pass and "
          "workspace; MB): " + ", ".join(f"{n} {v['xla_temp_mb']:.0f}"
                                          for n, v in variants.items()
                                          if v["xla_temp_mb"] is not None))

  jax_eps = ex_per_s.get(base) if base else None
  torch_eps = ex_per_s.get("torch_eager")
  result = dict(jax_ex_per_s=jax_eps, torch_ex_per_s=torch_eps,
                ratio=(jax_eps / torch_eps) if jax_eps and torch_eps else None,
                jax_variant=base.removeprefix("jax:") if base else None,
                device=device, dtype=args.dtype, batch=args.batch, seq=args.seq,
                model=args.checkpoint or args.model, dropout=args.dropout,
                attention_dropout=args.attention_dropout, attention=args.attention,
                rng_impl=args.rng_impl,
                torch_attn=torch_attn,
                torch_threads=torch.get_num_threads(), xla_flags=os.environ["XLA_FLAGS"],
                malloc_tuned=malloc_tuned, matmul_precision=args.matmul_precision,
                flops_per_step=flops, steps_timed=args.steps * args.rounds,
                variants=variants, load_avg_1min=os.getloadavg()[0],
                jax_version=jax.__version__, torch_version=torch.__version__)
  if "torch_compile" in ex_per_s:
    result["torch_compile_ex_per_s"] = ex_per_s["torch_compile"]
    if jax_eps:
      result["ratio_vs_compile"] = jax_eps / ex_per_s["torch_compile"]
  if on_gpu:
    for k in ("torch_eager", "torch_compile"):
      if k in ex_per_s:
        result[f"{k}_mfu"] = flops * ex_per_s[k] / args.batch / 1e12 / args.peak_tflops
  if on_gpu and jax_eps:
    achieved = runner_flops[base] * jax_eps / args.batch / 1e12
    result["mfu"] = achieved / args.peak_tflops
    result["peak_tflops"] = args.peak_tflops
    peak = measure_peak_tflops(jax, jnp, jnp.bfloat16 if args.dtype == "bfloat16"
                               else jnp.float32)
    result["measured_matmul_tflops"] = peak
    result["mfu_vs_measured_matmul"] = achieved / peak
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  sys.exit(main() and 0)
