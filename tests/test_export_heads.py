"""Each exported task folder, loaded through transformers / sentence-transformers alone, gives
the `Predictor`'s outputs (one pair order, float32); `--mode=export` on a trained run.

Test-only dependencies: torch, transformers, sentence-transformers (6, for the modular
CrossEncoder); onnxruntime for the ONNX test. The parity tests use the tiny encoder with
the real vocabulary and random heads whose weights and biases are far from zero, so a
dropped bias or a transposed (square) weight moves the outputs by much more than the
tolerance; each test also corrupts one exported tensor and checks that the comparison
then fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from configs import smoke
from mtbert_jax import evaluate as eval_lib
from mtbert_jax import experiment
from mtbert_jax import export
from mtbert_jax import export_card
from mtbert_jax import export_heads
from mtbert_jax import heads as heads_lib
from mtbert_jax import settings as settings_lib
from mtbert_jax import tasks as tasks_lib
from mtbert_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = ["A gorgeous , witty , seductive movie .", "Stocks fell sharply on Monday .",
             "a", "The cat sat on the mat while it rained . " * 8]  # the last one truncates
PAIRS = [("How old are you?", "What is your age?"), ("A man plays a guitar.", "A dog runs."),
         ("x", "y z"), ("The cat sat on the mat while it rained . " * 5,
                        "It rained and the cat sat there on the mat . " * 5)]
# float32 on both sides, the same functions summed in other orders (XLA vs PyTorch kernels):
# differences of ~1e-6 on outputs of size ~1; a dropped bias or transposed weight of these
# random heads moves them by ~0.1 or more.
ATOL = 2e-5


def _settings(ckpt_dir: str, **heads) -> settings_lib.Settings:
  c = smoke.get_config()
  c.model.checkpoint = ckpt_dir
  c.jax_cache_dir = ""
  for key, value in heads.items():
    c.heads[key] = value
  return settings_lib.from_dict(c.to_dict())


def _predictor(tiny_ckpt_dir, **heads) -> tuple[eval_lib.Predictor, settings_lib.Settings]:
  """A Predictor on the tiny encoder, moved off its checkpoint, with random heads whose
  biases are not zero (Flax initialises biases to zero)."""
  s = _settings(tiny_ckpt_dir, **heads)
  m, bert = experiment.build_model(s)
  params = jax.device_get(tasks_lib.init_params(m, jax.random.key(0), bert))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype),
                        params)
  return eval_lib.Predictor(m, params, experiment.tokenizer(s), s.data.max_length,
                            s.eval_buckets), s


def _export(predictor, s, out_dir, onnx=False) -> export.Exported:
  return export.export_run(str(out_dir), predictor.model, predictor.params, s,
                           {"dev/sst_acc": 0.25, "valid/para_acc": 0.5}, onnx=onnx)


def _corrupt(path: str, key: str, how: str) -> None:
  """Rewrites one tensor of a safetensors file: "transpose" (a square weight) or "zero"."""
  tensors = load_file(path)
  value = tensors[key]
  assert how != "transpose" or value.shape[0] == value.shape[1], value.shape
  tensors[key] = np.ascontiguousarray(value.T if how == "transpose" else np.zeros_like(value))
  save_file(tensors, path, metadata={"format": "pt"})


def _softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(x):
  return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


# Outputs of each exported form, computed by the libraries alone from the folder.


def _sentiment_probabilities(folder: str, form: str) -> np.ndarray:
  if form == "sequence_classification":
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert model.config.id2label[0] == "negative" and len(model.config.id2label) == 5
    with torch.no_grad():
      logits = model(**tok(SENTENCES, padding=True, truncation=True,
                           return_tensors="pt")).logits.numpy()
  else:
    import sentence_transformers as st  # pylint: disable=import-outside-toplevel
    logits = st.SentenceTransformer(folder, device="cpu").encode(SENTENCES)
  assert logits.shape == (len(SENTENCES), 5)
  return _softmax(logits.astype(np.float64))


def _pair_outputs(folder: str, task: str, form: str) -> np.ndarray:
  """Paraphrase probabilities or similarity scores of PAIRS."""
  import sentence_transformers as st  # pylint: disable=import-outside-toplevel
  if form in ("sequence_classification", "st_cross_encoder"):
    return st.CrossEncoder(folder, device="cpu").predict(PAIRS)
  model = st.SentenceTransformer(folder, device="cpu")
  u = model.encode([a for a, _ in PAIRS])
  v = model.encode([b for _, b in PAIRS])
  if form == "st_cosine":
    return 5 * np.clip(model.similarity_pairwise(u, v).numpy(), 0, 1)
  head = load_file(os.path.join(folder, "head.safetensors"))
  out = np.concatenate([u, v, np.abs(u - v), u * v], -1) @ head["weight"].T[:, 0]
  out = out + head["bias"][0]
  return _sigmoid(out) if task == "para" else out


def _expected(predictor, task: str) -> np.ndarray:
  if task == "sst":
    return predictor.sentiment_probabilities(SENTENCES)
  if task == "para":
    return predictor.paraphrase_probability(PAIRS)
  return predictor.similarity(PAIRS)


def _outputs(folder: str, task: str, form: str) -> np.ndarray:
  if task == "sst":
    return _sentiment_probabilities(folder, form)
  return _pair_outputs(folder, task, form)


# Per case: the heads, each task's expected form, and a tensor to corrupt in one folder.
CASES = {
    "pooler": (dict(cls_source="pooler", sentiment="linear", paraphrase="prompt",
                    similarity="cross"),
               {"sst": "sequence_classification", "para": "sequence_classification",
                "sts": "sequence_classification"},
               ("para", "model.safetensors", "bert.pooler.dense.weight", "transpose")),
    "mean": (dict(cls_source="mean", sentiment="linear", paraphrase="prompt",
                  similarity="cosine"),
             {"sst": "st_classifier", "para": "st_cross_encoder", "sts": "st_cosine"},
             ("sts", "2_Dense/model.safetensors", "linear.weight", "transpose")),
    "hidden": (dict(cls_source="hidden", sentiment="squared_relu", paraphrase="cross",
                    similarity="linear"),
               {"para": "st_cross_encoder", "sts": "bi_head"},
               ("sts", "head.safetensors", "bias", "zero")),
    "pooler_bi": (dict(cls_source="pooler", sentiment="mlp", paraphrase="bi",
                       similarity="cosine"),
                  {"para": "bi_head", "sts": "st_cosine"},
                  ("para", "head.safetensors", "bias", "zero")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_exported_head_gives_the_predictors_outputs(tiny_ckpt_dir, tmp_path, case):
  pytest.importorskip("sentence_transformers", minversion="6")
  heads, forms, (bad_task, bad_file, bad_key, how) = CASES[case]
  predictor, s = _predictor(tiny_ckpt_dir, **heads)
  exported = _export(predictor, s, tmp_path / "export")
  assert exported.forms == forms
  assert set(exported.refused) == {"sst", "para", "sts"} - set(forms)
  for task, reason in exported.refused.items():
    assert "squared ReLU" in reason and f"heads.sentiment={heads['sentiment']!r}" in reason
  index = open(tmp_path / "export" / "README.md", encoding="utf-8").read()
  for task, form in forms.items():
    folder = exported.folders[task]
    assert folder == str(tmp_path / "export" / export_heads.TASK_FOLDERS[task])
    np.testing.assert_allclose(_outputs(folder, task, form), _expected(predictor, task),
                               rtol=0, atol=ATOL, err_msg=f"{task} ({form})")
    card = open(os.path.join(folder, "README.md"), encoding="utf-8").read()
    assert ("One order: this model scores a pair as given" in card) == (task != "sst")
    assert "Quora duplicate questions" not in card  # not the embedded checkpoint
    assert export_heads.TASK_FOLDERS[task] in index
  if heads["paraphrase"] == "prompt":  # the card names the prompt the CrossEncoder applies
    assert heads_lib.PARAPHRASE_PROMPT in open(
        os.path.join(exported.folders["para"], "README.md"), encoding="utf-8").read()
  # The comparison is sensitive: one transposed square weight or dropped bias fails it.
  folder = exported.folders[bad_task]
  _corrupt(os.path.join(folder, bad_file), bad_key, how)
  wrong = _outputs(folder, bad_task, forms[bad_task])
  assert np.max(np.abs(wrong - _expected(predictor, bad_task))) > 100 * ATOL


def test_the_prompt_is_what_makes_the_paraphrase_cross_encoder_agree(tiny_ckpt_dir, tmp_path):
  """The exported prompt matters: without it the CrossEncoder's outputs differ."""
  st = pytest.importorskip("sentence_transformers", minversion="6")
  predictor, s = _predictor(tiny_ckpt_dir, cls_source="mean", paraphrase="prompt",
                            similarity="cosine")
  exported = export.export_run(str(tmp_path / "e"), predictor.model, predictor.params, s,
                               tasks=("para",))
  model = st.CrossEncoder(exported.folders["para"], device="cpu")
  expected = predictor.paraphrase_probability(PAIRS)
  np.testing.assert_allclose(model.predict(PAIRS), expected, rtol=0, atol=ATOL)
  assert np.max(np.abs(model.predict(PAIRS, prompt="") - expected)) > 100 * ATOL


def test_the_card_names_the_embedded_checkpoints_pretraining_and_both_orders():
  s = _settings("").replace(eval={"both_orders": True}, heads={"cls_source": "mean"})
  card = export_card.task_card("para", "st_cross_encoder", s, s.heads,
                               {"valid/para_acc": 0.7, "dev/para_acc": 0.8, "dev/sst_acc": 0.4},
                               None, "`model.safetensors`")
  assert "all-MiniLM-L6-v2 (embedded)" in card and "Quora duplicate questions" in card
  assert "to reproduce them, average this model's outputs on the two orders" in card
  assert "| valid/para_acc | 0.7000 |\n| dev/para_acc | 0.8000 |" in card
  assert "sst_acc" not in card  # another task's metric


def test_the_export_target_must_be_an_empty_or_missing_folder(tiny_ckpt_dir, tmp_path):
  predictor, s = _predictor(tiny_ckpt_dir, cls_source="pooler")
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("x")
  (tmp_path / "file").write_text("x")
  for name, what in (("full", "is not empty"), ("file", "is a file")):
    with pytest.raises(export.ExportError, match=f"{tmp_path / name} {what}"):
      _export(predictor, s, tmp_path / name)
  (tmp_path / "empty").mkdir()
  exported = _export(predictor, s, tmp_path / "empty")
  assert sorted(os.listdir(tmp_path / "empty")) == ["README.md", "paraphrase", "sentiment",
                                                    "similarity"]
  assert sorted(os.listdir(tmp_path)) == ["empty", "file", "full"]  # no temporary left
  # A failure midway leaves nothing behind either.
  bad = _settings(tiny_ckpt_dir, cls_source="pooler").replace(model={"checkpoint": "/nope"})
  with pytest.raises(FileNotFoundError):
    export.export_run(str(tmp_path / "new"), predictor.model, predictor.params, bad)
  assert sorted(os.listdir(tmp_path)) == ["empty", "file", "full"]
  assert exported.refused == {}


def _onnx_outputs(session, tok, task: str, form: str, prompt: str | None) -> np.ndarray:
  """Paraphrase probabilities, similarity scores or sentiment probabilities from one ONNX
  graph and the folder's tokenizer (int64 ids, as transformers gives them)."""
  def run(*texts):
    enc = tok(*texts, padding=True, truncation=True, return_tensors="np")
    return session.run(None, {k: enc[k].astype(np.int64)
                              for k in ("input_ids", "attention_mask", "token_type_ids")})[0]
  first, second = [a for a, _ in PAIRS], [b for _, b in PAIRS]
  if task == "sst":
    return _softmax(run(SENTENCES).astype(np.float64))
  if form == "st_cosine":  # the graph gives the projected embeddings
    u, v = run(first), run(second)
    cos = np.sum(u * v, -1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
    return 5 * np.clip(cos, 0, 1)
  out = run([f"{prompt} {a}" for a in first] if prompt else first, second)
  return _sigmoid(out) if task == "para" else out


def test_onnx_graphs_give_the_predictors_outputs(tiny_ckpt_dir, tmp_path):
  ort = pytest.importorskip("onnxruntime")
  pytest.importorskip("onnxscript")
  pytest.importorskip("sentence_transformers", minversion="6")
  import transformers  # pylint: disable=import-outside-toplevel
  for case in ("pooler", "mean"):  # every form but the bi-encoder's head file
    predictor, s = _predictor(tiny_ckpt_dir, **CASES[case][0])
    exported = _export(predictor, s, tmp_path / case, onnx=True)
    assert set(exported.onnx) == {"sst", "para", "sts"}
    for task, path in exported.onnx.items():
      assert path == os.path.join(exported.folders[task], "onnx", "full_model.onnx")
      session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
      tok = transformers.AutoTokenizer.from_pretrained(exported.folders[task])
      got = _onnx_outputs(session, tok, task, exported.forms[task],
                          export_heads.prompt_of(task, predictor.model.heads))
      np.testing.assert_allclose(got, _expected(predictor, task), rtol=0, atol=ATOL,
                                 err_msg=f"{case}: {task} ({exported.forms[task]})")


# ------------------------------------------------------------------------------------------
# --mode=export on a trained run.


@pytest.fixture(scope="module")
def trained_workdir(tiny_ckpt_dir, data_dir, tmp_path_factory):
  del data_dir  # the smoke config's real files (skips without them)
  s = _settings(tiny_ckpt_dir).replace(train={"num_steps": 2, "eval_every": 2,
                                              "ckpt_every": 2, "log_every": 2},
                                       data={"valid_fraction": 0.1})
  workdir = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(s, workdir)
  return workdir


def test_export_workdir_writes_the_best_checkpoint_with_its_metrics(trained_workdir, tmp_path):
  pytest.importorskip("sentence_transformers")
  exported = export.export_workdir(trained_workdir, str(tmp_path / "export"))
  with open(os.path.join(trained_workdir, "metrics.json"), encoding="utf-8") as f:
    metrics = json.load(f)
  assert {"valid/sst_acc", "dev/sst_acc"} <= set(metrics)
  # The tiny checkpoint is no sentence-transformers folder: "auto" is the pooler.
  assert exported.forms == {"sst": "sequence_classification", "para": "bi_head",
                            "sts": "bi_head"}
  card = open(os.path.join(exported.folders["sst"], "README.md"), encoding="utf-8").read()
  for key in ("valid/sst_acc", "dev/sst_acc", "dev/average"):
    assert f"| {key} | {metrics[key]:.4f} |" in card
  predictor = eval_lib.Predictor.from_workdir(trained_workdir)
  for task, form in exported.forms.items():
    np.testing.assert_allclose(_outputs(exported.folders[task], task, form),
                               _expected(predictor, task), rtol=0, atol=ATOL)


def test_launch_mode_export_and_its_refusal(trained_workdir, tmp_path):
  env = dict(os.environ, MTBERT_MALLOC_TUNING="0")
  target = tmp_path / "out"
  cmd = [sys.executable, os.path.join(REPO, "launch.py"), "--mode=export",
         f"--workdir={trained_workdir}", f"--export_dir={target}"]
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert sorted(os.listdir(target)) == ["README.md", "paraphrase", "sentiment", "similarity"]
  assert f"sst: {target / 'sentiment'} (transformers AutoModelForSequenceClassification)" \
      in done.stdout.splitlines()
  again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 1
  assert again.stderr.strip().splitlines()[-1] == (
      f"error: export target {target} is not empty: name an empty or missing folder")
