"""A trained run as folders that the PyTorch ecosystem loads without mtbert_jax.

`export(out_dir, ...)` writes the fine-tuned encoder alone (`--config.ckpt.export_hf`): the
HF `BertModel` folder (`convert.save_pretrained`) plus the sentence-transformers files that
describe how the run made a sentence vector from it (`export_heads.write_sentence_transformer`:
Transformer, Pooling, and for `cls_source="pooler"` a Dense layer with tanh holding BERT's
pooler), and a model card. `SentenceTransformer(out_dir).encode(texts)` then gives
`MultitaskModel.vector` of those texts: the vector the task heads read.

`export_workdir(workdir, out_dir)` (`--mode=export`) writes the whole model of a finished
run's best checkpoint: one folder per trained task in the standard form of its head
(`export_heads`: transformers sequence classification, CrossEncoder, or SentenceTransformer
plus head weights), each with a model card (`export_card`), optionally with ONNX graphs
(`export_onnx`). The target must be an empty or missing folder; the export is written to a
temporary sibling and renamed into place when complete, so no partial export looks finished.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Any

import jax

from mtbert_jax import checkpoint as ckpt_lib
from mtbert_jax import evaluate as eval_lib
from mtbert_jax import experiment
from mtbert_jax import export_card
from mtbert_jax import export_heads
from mtbert_jax import settings as settings_lib
from mtbert_jax import tasks as tasks_lib
from mtbert_jax import workdir as workdir_lib

log = logging.getLogger(__name__)


class ExportError(ValueError):
  """An export target that is not an empty or missing folder, or nothing to export."""


def export(out_dir: str, bert_config, bert_params: dict, cls_source: str,
           s: settings_lib.Settings, metrics: dict[str, Any] | None = None,
           vocab_from: str | None = None) -> str:
  """Writes the HF + sentence-transformers folder of a fine-tuned encoder."""
  run = export_heads.Run(bert_config, {"bert": bert_params},
                         dataclasses.replace(s.heads, cls_source=cls_source),
                         s.data.max_length, vocab_from)
  export_heads.write_sentence_transformer(out_dir, run)
  with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
    f.write(model_card(s, cls_source, metrics or {}))
  return out_dir


def model_card(s: settings_lib.Settings, cls_source: str, metrics: dict[str, Any]) -> str:
  pooling = {"mean": "mean of the token states", "hidden": "the [CLS] token's state",
             "pooler": "BERT's pooler (dense + tanh over [CLS])"}[cls_source]
  rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())
                   if isinstance(v, float))
  return f"""---
library_name: sentence-transformers
pipeline_tag: sentence-similarity
tags: [sentence-transformers, bert, mtbert_jax, multitask]
---

# A multitask fine-tuned BERT encoder (mtbert_jax)

Fine-tuned with mtbert_jax (JAX/Flax): one encoder trained on
{", ".join(tasks_lib.get(t).description for t in s.train.tasks)} at once.

- Base checkpoint: `{s.model.checkpoint or "sentence-transformers/all-MiniLM-L6-v2 (embedded)"}`
- Sentence vector: {pooling}; max length {s.data.max_length} tokens
- Training: {s.train.num_steps} steps of batch {s.train.batch_size}, AdamW lr {s.optim.lr:g}
  ({s.optim.schedule}, warm-up {s.optim.warmup_steps}), {s.model.dtype} compute, seed {s.seed};
  heads: sentiment {s.heads.sentiment}, paraphrase {s.heads.paraphrase}, similarity
  {s.heads.similarity}
- Data: {s.data.sst_train}, {s.data.para_train}, {s.data.sts_train}
  (CS224N course splits){"; NLI: " + s.data.nli if "nli" in s.train.tasks else ""}
- Command: `{" ".join(sys.argv) or "python launch.py ..."}`

## Dev metrics of the exported checkpoint

| metric | value |
|---|---|
{rows or "| (none recorded) | |"}

## Use

```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("PATH_TO_THIS_FOLDER")
vectors = model.encode(["A man is playing a guitar.", "A man plays guitar."])
```

The task heads are not part of this folder (they live in the run's orbax checkpoint).
"""


# ------------------------------------------------------------------------------------------
# The whole model of a run: one folder per task.


@dataclasses.dataclass(frozen=True)
class Exported:
  """What an export wrote: per task its folder and form; per refused task the reason."""
  out_dir: str
  folders: dict[str, str]
  forms: dict[str, str]
  refused: dict[str, str]
  onnx: dict[str, str]


def check_target(out_dir: str) -> None:
  """Refuses a target that exists and is not an empty folder."""
  if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
    raise ExportError(f"export target {out_dir} is a file, not a folder: name an empty or "
                      "missing folder")
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise ExportError(f"export target {out_dir} is not empty: name an empty or missing folder")


def _files(folder: str) -> str:
  names = sorted(os.path.relpath(os.path.join(root, name), folder)
                 for root, _, files in os.walk(folder) for name in files)
  return ", ".join(f"`{n}`" for n in names if n != "README.md")


def export_run(out_dir: str, mt_model, params: Any, s: settings_lib.Settings,
               metrics: dict[str, Any] | None = None, tasks: tuple[str, ...] | None = None,
               onnx: bool = False) -> Exported:
  """Writes one folder per task of `tasks` (default: the run's evaluated tasks) for the
  model `mt_model` with `params`, into the empty or missing folder `out_dir`, atomically.

  A head with no standard form is left out with its reason (`Exported.refused`, the index
  README.md and a warning); with no task left, ExportError."""
  check_target(out_dir)
  tasks = experiment.evaluated_tasks(s) if tasks is None else tasks
  heads = mt_model.heads
  forms, refused = {}, {}
  for task in tasks:
    try:
      forms[task] = export_heads.head_form(task, heads)
    except export_heads.ExportRefused as e:
      refused[task] = str(e)
      log.warning("not exporting the %s head: %s", task, e)
  if not forms:
    raise ExportError("no head of this run has a standard form to export: "
                      + "; ".join(f"{t}: {r}" for t, r in refused.items()))
  run = export_heads.Run(mt_model.bert_config, jax.device_get(params), heads,
                         s.data.max_length, s.model.checkpoint or None)
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.tmp-",
                         dir=parent)
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
    folders, graphs = {}, {}
    for task, form in forms.items():
      name = export_heads.TASK_FOLDERS[task]
      folder = export_heads.write_task(os.path.join(tmp, name), task, form, run)
      if onnx:
        from mtbert_jax import export_onnx  # pylint: disable=import-outside-toplevel
        graphs[task] = os.path.join(out_dir, name, os.path.relpath(
            export_onnx.write_onnx(folder, task, form), folder))
      card = export_card.task_card(task, form, s, heads, metrics or {},
                                   export_heads.prompt_of(task, heads), _files(folder))
      with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)
      folders[task] = os.path.join(out_dir, name)
    with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
      f.write(export_card.index({t: (export_heads.TASK_FOLDERS[t], forms[t]) for t in forms},
                                refused))
    if os.path.isdir(out_dir):
      os.rmdir(out_dir)  # empty (checked above); fails if something appeared since
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return Exported(out_dir, folders, forms, refused, graphs)


def export_workdir(workdir: str, out_dir: str | None = None,
                   s: settings_lib.Settings | None = None, onnx: bool = False) -> Exported:
  """`--mode=export`: the best checkpoint of `workdir` as one folder per trained task in
  `out_dir` (default `WORKDIR/export`), with the metrics of its `metrics.json`. `s`, when
  given, must agree with the trained settings (as for `--mode=eval`)."""
  workdir = workdir_lib.prepare(workdir, create=False)
  out_dir = out_dir or os.path.join(workdir, "export")
  check_target(out_dir)
  with workdir_lib.lock(workdir, "export"):
    s = ckpt_lib.run_settings(workdir, s)
    mt_model, params, _ = eval_lib.restore_best(s, workdir)
    metrics = {}
    path = os.path.join(workdir, "metrics.json")
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        metrics = json.load(f)
    return export_run(out_dir, mt_model, params, s, metrics, onnx=onnx)
