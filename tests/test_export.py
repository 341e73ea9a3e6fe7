"""The exported encoder loads in sentence-transformers and gives the project's sentence
vectors (test-only dependency: sentence-transformers, on top of torch and transformers)."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from configs import smoke
from mtbert_jax import convert
from mtbert_jax import data as data_lib
from mtbert_jax import experiment
from mtbert_jax import export
from mtbert_jax import heads as heads_lib
from mtbert_jax import readers
from mtbert_jax import settings as settings_lib
from mtbert_jax import tasks as tasks_lib

SENTENCES = ["A man is playing a guitar.", "Stocks fell sharply on Monday .",
             "How do I learn Python quickly?", "a", "The cat sat on the mat while it rained."]


@pytest.mark.parametrize("cls_source", ["mean", "hidden", "pooler"])
def test_sentence_transformers_gives_the_projects_vectors(tiny_ckpt_dir, tmp_path, cls_source):
  st = pytest.importorskip("sentence_transformers")
  c = smoke.get_config()
  c.model.checkpoint = tiny_ckpt_dir
  c.heads.cls_source = cls_source
  s = settings_lib.from_dict(c.to_dict())
  m, bert = experiment.build_model(s)
  rng = np.random.default_rng(0)  # move the weights off the checkpoint's, as training would
  bert = jax.tree.map(lambda x: x + 0.01 * rng.standard_normal(x.shape).astype(x.dtype), bert)
  params = tasks_lib.init_params(m, jax.random.key(0), bert)
  out = export.export(str(tmp_path / "st"), m.bert_config, jax.device_get(params["bert"]),
                      cls_source, s, {"dev/average": 0.5}, vocab_from=tiny_ckpt_dir)
  assert {"modules.json", "sentence_bert_config.json", "README.md", "config.json",
          "model.safetensors", "vocab.txt"} <= set(os.listdir(out))
  assert "dev/average | 0.5000" in open(os.path.join(out, "README.md"), encoding="utf-8").read()
  tok = experiment.tokenizer(s)
  rows = readers.SentenceRows([str(i) for i in range(len(SENTENCES))], SENTENCES, None)
  tokset = data_lib.tokenize_sentences(rows, tok, s.data.max_length)
  batch = data_lib.make_batch(tokset, np.arange(len(SENTENCES)), 32)
  ours = np.asarray(m.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                            batch["token_type_ids"], True, method=heads_lib.MultitaskModel.vector))
  theirs = st.SentenceTransformer(out, device="cpu").encode(SENTENCES, convert_to_numpy=True)
  # float32 on both sides, the same function in another order: ~1e-6 of |vector| ~ 1.
  np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5)
  # And the HF folder inside it still loads as a plain BertModel.
  _, reloaded = convert.load_pretrained(out)
  jax.tree.map(np.testing.assert_array_equal, reloaded, jax.device_get(params["bert"]))
