"""The plain alternative: three single-task HF PyTorch fine-tunes of the same checkpoint.

What a user could write in an afternoon instead of this project, run on the same data files
and dev sets, so the results protocol (`python -m study.results`) can put the
multitask model beside it:

* SST-5: `BertForSequenceClassification` (pooler over [CLS], dropout 0.1, linear to 5
  classes), cross entropy, 3 epochs.
* Quora: the same with 2 classes on the joint pair `[CLS] s1 [SEP] s2 [SEP]`
  (cross-encoder), 2 epochs of the partial train file.
* STS: the same with one output on the joint pair, MSE on the 0-5 score (HF's
  "regression" problem type), 3 epochs.
* STS zero-shot: the checkpoint's mean-pooled sentence vectors, cosine similarity, no
  training (seed-independent).

Every fine-tune: AdamW (torch) lr 5e-5 constant, weight decay 0.01, batch 32, max length
128, dynamic padding (each batch padded to its longest input), shuffled every epoch by the
seed, float32. The rows are read with the project's own readers (`mtbert_jax.readers`, no JAX
inside), so both sides see the same examples (the two malformed rows of quora-dev.csv are
skipped by both). Test-only dependencies: torch, transformers.

  python benchmarks/single_task_baselines.py --seeds=0,1,2 --out=docs/baselines.json
  python benchmarks/single_task_baselines.py --tasks=sts --seeds=0 --epochs_scale=0.1

The output JSON has one entry per task with the dev metric of each seed, the steps, the
seconds, the machine and the command that made it, written after every run; rerunning with
the same `--out` (and the same settings: other ones are refused) keeps the runs it holds
and adds the missing ones, e.g. `--tasks=para --seeds=1`. `study.results` reads it into
docs/results.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mtbert_jax import readers  # pylint: disable=wrong-import-position
from mtbert_jax import paths  # pylint: disable=wrong-import-position
from mtbert_jax import runtime  # pylint: disable=wrong-import-position

# task -> (train file, dev file, epochs, num_labels, metric key)
TASKS = {
    "sst": ("cs224n/ids-sst-train.csv", "cs224n/ids-sst-dev.csv", 3, 5, "dev/sst_acc"),
    "para": ("cs224n/quora-train-partial.csv", "cs224n/quora-dev.csv", 2, 2, "dev/para_acc"),
    "sts": ("cs224n/sts-train.csv", "cs224n/sts-dev.csv", 3, 1, "dev/sts_pearson"),
}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--tasks", default="sst,para,sts,sts_zero_shot")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--checkpoint", default=None, help="HF BERT folder (default: embedded)")
  p.add_argument("--data_dir", default=None, help="default: ../shared/data or data/")
  p.add_argument("--lr", type=float, default=5e-5)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--max_length", type=int, default=128)
  p.add_argument("--weight_decay", type=float, default=0.01)
  p.add_argument("--epochs_scale", type=float, default=1.0,
                 help="multiplies every task's epochs (smoke runs)")
  p.add_argument("--dev_limit", type=int, default=0, help="first N dev rows (0: all)")
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
  p.add_argument("--out", default=None, help="JSON file for the results (default: stdout)")
  return p.parse_args(argv)


def read_task(task: str, path: str, limit: int = 0):
  """(texts, second texts or None, labels) of a course file, via the project's readers."""
  if task == "sst":
    rows = readers.read_sentiment(path, on_invalid="skip")
    a, b = rows.texts, None
  else:
    rows = readers.read_pairs(path, "paraphrase" if task == "para" else "similarity",
                               on_invalid="skip")
    a, b = rows.texts_a, rows.texts_b
  labels = rows.labels
  if limit:
    a, b, labels = a[:limit], None if b is None else b[:limit], labels[:limit]
  return a, b, labels


def batches(tokenizer, a, b, labels, batch_size: int, max_length: int, order):
  import torch  # pylint: disable=import-outside-toplevel
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    enc = tokenizer([a[i] for i in idx], None if b is None else [b[i] for i in idx],
                    truncation=True, max_length=max_length, padding=True,
                    return_tensors="pt")
    yield enc, torch.as_tensor(labels[idx])


def pearson(x, y) -> float:
  return float(np.corrcoef(np.asarray(x, np.float64), np.asarray(y, np.float64))[0, 1])


def fine_tune(task: str, seed: int, args, ckpt: str, data_dir: str) -> dict:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  train_file, dev_file, epochs, num_labels, metric = TASKS[task]
  torch.manual_seed(seed)
  tok = transformers.BertTokenizerFast.from_pretrained(ckpt)
  model = transformers.BertForSequenceClassification.from_pretrained(
      ckpt, num_labels=num_labels, hidden_dropout_prob=0.1, classifier_dropout=0.1,
      problem_type="regression" if task == "sts" else "single_label_classification")
  a, b, y = read_task(task, os.path.join(data_dir, train_file))
  y = y.astype(np.float32) if task == "sts" else y.astype(np.int64)
  decay = [p for n, p in model.named_parameters() if not n.endswith("bias")
           and "LayerNorm" not in n]
  no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
  rng = np.random.default_rng(seed)
  n_epochs = epochs * args.epochs_scale
  total_steps = int(round(n_epochs * int(np.ceil(len(a) / args.batch))))
  steps, start = 0, time.time()
  model.train()
  while steps < total_steps:
    for enc, labels in batches(tok, a, b, y, args.batch, args.max_length,
                               rng.permutation(len(a))):
      out = model(**enc, labels=labels)
      opt.zero_grad(set_to_none=True)
      out.loss.backward()
      opt.step()
      steps += 1
      if steps % 100 == 0:
        print(f"  {task} seed {seed}: step {steps}/{total_steps} loss {out.loss.item():.4f} "
              f"({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
      if steps == total_steps:
        break
  train_seconds = time.time() - start
  model.eval()
  da, db, dy = read_task(task, os.path.join(data_dir, dev_file), args.dev_limit)
  preds = []
  with torch.inference_mode():
    for enc, _ in batches(tok, da, db, dy, 128, args.max_length, np.arange(len(da))):
      logits = model(**enc).logits
      preds.append(logits[:, 0].numpy() if task == "sts" else logits.argmax(-1).numpy())
  preds = np.concatenate(preds)
  value = pearson(preds, dy) if task == "sts" else float(np.mean(preds == dy))
  return {"metric": metric, "value": value, "steps": steps, "epochs": n_epochs,
          "train_seconds": train_seconds, "dev_rows": len(da)}


def zero_shot_sts(args, ckpt: str, data_dir: str) -> dict:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  tok = transformers.BertTokenizerFast.from_pretrained(ckpt)
  model = transformers.BertModel.from_pretrained(ckpt).eval()
  a, b, y = read_task("sts", os.path.join(data_dir, TASKS["sts"][1]), args.dev_limit)

  def embed(texts):
    out = []
    with torch.inference_mode():
      for start in range(0, len(texts), 128):
        enc = tok(texts[start:start + 128], truncation=True, max_length=args.max_length,
                  padding=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].float()
        out.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(out)

  u, v = embed(a), embed(b)
  cos = np.sum(u * v, -1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
  return {"metric": "dev/sts_pearson", "value": pearson(cos, y), "steps": 0, "epochs": 0,
          "train_seconds": 0.0, "dev_rows": len(a)}


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def main(argv=None):
  args = parse_args(argv)
  import torch  # pylint: disable=import-outside-toplevel
  if args.threads:
    torch.set_num_threads(args.threads)
  ckpt = paths.resolve_checkpoint(args.checkpoint)
  data_dir = args.data_dir or paths.default_data_dir()
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
  for task in tasks:
    if task not in TASKS and task != "sts_zero_shot":
      raise SystemExit(f"--tasks: unknown task {task!r}; expected some of "
                       f"{list(TASKS) + ['sts_zero_shot']}")
  command = " ".join(["single_task_baselines.py"] + list(sys.argv[1:] if argv is None else argv))
  machine = (f"{runtime.cpu_model()}, {platform.machine()}, {os.cpu_count()} cores, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads")
  previous = {}
  if args.out and os.path.isfile(args.out):  # runs finished earlier are kept, not repeated
    with open(args.out, encoding="utf-8") as f:
      previous = json.load(f)
  # Top-level command, date and machine: the first invocation's; every invocation (this
  # one appended) is in "invocations", and each run records the command that made it.
  invocations = previous.get("invocations") or (
      [{k: previous[k] for k in ("command", "date", "machine") if k in previous}]
      if previous else [])
  invocations.append({"command": command, "date": _now(), "machine": machine})
  settings = {k: getattr(args, k) for k in ("lr", "batch", "max_length", "weight_decay",
                                             "epochs_scale", "dev_limit")}
  if previous and previous.get("settings", settings) != settings:
    differ = sorted(k for k in settings if previous["settings"].get(k) != settings[k])
    raise SystemExit(f"--out={args.out} holds runs with other settings ("
                     + ", ".join(f"{k}: {previous['settings'].get(k)!r} there, "
                                 f"{settings[k]!r} here" for k in differ)
                     + "); use the same flags or another --out")
  results = {"command": previous.get("command", command),
             "date": previous.get("date", invocations[-1]["date"]),
             "machine": previous.get("machine", machine),
             "invocations": invocations, "settings": settings,
             "tasks": previous.get("tasks", {})}
  for task in tasks:
    runs = list(results["tasks"].get(task, {}).get("runs", []))
    done = {r.get("seed") for r in runs}
    for seed in ([None] if task == "sts_zero_shot" else seeds):
      if seed in done:
        continue
      if task == "sts_zero_shot":
        runs.append(dict(zero_shot_sts(args, ckpt, data_dir), seed=None))
      else:
        runs.append(dict(fine_tune(task, seed, args, ckpt, data_dir), seed=seed))
      runs[-1].update(command=command, finished=_now(), machine=machine)
      print(f"{task} seed {seed}: {runs[-1]['metric']} {runs[-1]['value']:.4f}",
            file=sys.stderr, flush=True)
      runs.sort(key=lambda r: -1 if r.get("seed") is None else r["seed"])
      values = [r["value"] for r in runs]   # in the order of the runs' seeds
      results["tasks"][task] = {
          "metric": runs[0]["metric"], "mean": float(np.mean(values)),
          "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
          "seeds": values, "runs": runs}
      if args.out:  # after every run, so a stopped invocation keeps what it finished
        tmp = args.out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
          json.dump(results, f, indent=2)
        os.replace(tmp, args.out)
  if not args.out:
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
