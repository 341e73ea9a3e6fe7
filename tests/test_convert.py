"""HF checkpoint <-> Flax params: structure, corrupted checkpoints, prefixes and extra
tensors, the PyTorch .bin format, and the save/load round trip (ours and HF's)."""

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from mtbert_jax import convert
from mtbert_jax import model

pytestmark = pytest.mark.slow  # every test here reads the real checkpoint


@pytest.fixture(scope="module")
def real_state_dict(default_ckpt_dir):
  return convert.read_state_dict(default_ckpt_dir)


def _write_checkpoint(folder, default_ckpt_dir, tensors=None, config=None):
  """An HF folder in `folder`: the default config/vocab (or `config`) and `tensors`."""
  os.makedirs(folder, exist_ok=True)
  shutil.copyfile(os.path.join(default_ckpt_dir, "vocab.txt"), os.path.join(folder, "vocab.txt"))
  if config is None:
    shutil.copyfile(os.path.join(default_ckpt_dir, "config.json"),
                    os.path.join(folder, "config.json"))
  else:
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
      json.dump(config, f)
  if tensors is not None:
    save_file(tensors, os.path.join(folder, "model.safetensors"))
  return str(folder)


def _default_config(default_ckpt_dir):
  with open(os.path.join(default_ckpt_dir, "config.json"), encoding="utf-8") as f:
    return json.load(f)


def _assert_trees_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


def test_default_checkpoint_matches_init_structure(real_checkpoint):
  cfg, params = real_checkpoint
  assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (6, 384, 12)
  init = jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))  # no compute
  assert jax.tree.structure(params) == jax.tree.structure(init)
  shapes = jax.tree.map(lambda x: x.shape, params)
  assert shapes == jax.tree.map(lambda x: x.shape, init)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(init))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
  # Loaded, not random: the word embeddings are not the N(0, 0.02) init.
  assert np.std(params["embeddings"]["word_embeddings"]["embedding"]) > 0.03


def test_transposes_dense_kernels(real_checkpoint, real_state_dict):
  _, params = real_checkpoint
  layer = params["encoder"]["layer_2"]
  np.testing.assert_array_equal(layer["intermediate"]["dense"]["kernel"],
                                real_state_dict["encoder.layer.2.intermediate.dense.weight"].T)
  np.testing.assert_array_equal(layer["attention"]["self"]["query"]["kernel"],
                                real_state_dict["encoder.layer.2.attention.self.query.weight"].T)
  np.testing.assert_array_equal(layer["output"]["LayerNorm"]["scale"],
                                real_state_dict["encoder.layer.2.output.LayerNorm.weight"])


def test_missing_tensor_is_named(tmp_path, default_ckpt_dir, real_state_dict):
  key = "encoder.layer.3.attention.output.LayerNorm.bias"
  tensors = {k: v for k, v in real_state_dict.items() if k != key}
  folder = _write_checkpoint(tmp_path / "ckpt", default_ckpt_dir, tensors)
  with pytest.raises(convert.CheckpointError, match=f"missing tensor {key}"):
    convert.load_pretrained(folder)


@pytest.mark.parametrize("key,wrong_shape", [
    # A transposed kernel: the message must give both shapes in PyTorch [out, in] order.
    ("encoder.layer.1.intermediate.dense.weight", (384, 1536)),
    ("embeddings.word_embeddings.weight", (30522 // 2, 384 * 2)),
    ("encoder.layer.5.output.LayerNorm.weight", (2, 192)),
])
def test_misshaped_tensor_names_key_and_shapes(tmp_path, default_ckpt_dir, real_state_dict,
                                               key, wrong_shape):
  tensors = dict(real_state_dict)
  right_shape = tensors[key].shape
  tensors[key] = np.ascontiguousarray(tensors[key].reshape(wrong_shape))
  folder = _write_checkpoint(tmp_path / "ckpt", default_ckpt_dir, tensors)
  with pytest.raises(convert.CheckpointError) as info:
    convert.load_pretrained(folder)
  message = str(info.value)
  assert key in message
  assert str(tuple(wrong_shape)) in message and str(tuple(right_shape)) in message, message


def test_garbage_safetensors_file(tmp_path, default_ckpt_dir):
  folder = _write_checkpoint(tmp_path / "ckpt", default_ckpt_dir)
  with open(os.path.join(folder, "model.safetensors"), "wb") as f:
    f.write(np.random.default_rng(0).bytes(4096))
  with pytest.raises(convert.CheckpointError, match="model.safetensors"):
    convert.load_pretrained(folder)


def test_truncated_safetensors_file(tmp_path, default_ckpt_dir):
  folder = _write_checkpoint(tmp_path / "ckpt", default_ckpt_dir)
  with open(os.path.join(default_ckpt_dir, "model.safetensors"), "rb") as f:
    head = f.read(1 << 20)
  with open(os.path.join(folder, "model.safetensors"), "wb") as f:
    f.write(head)
  with pytest.raises(convert.CheckpointError, match="model.safetensors"):
    convert.load_pretrained(folder)


def test_not_a_bert_checkpoint(tmp_path, default_ckpt_dir):
  tensors = {"transformer.wte.weight": np.zeros((4, 4), np.float32)}
  folder = _write_checkpoint(tmp_path / "ckpt", default_ckpt_dir, tensors)
  with pytest.raises(convert.CheckpointError, match="word_embeddings"):
    convert.load_pretrained(folder)


def test_missing_folder_and_missing_weights(tmp_path, default_ckpt_dir):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    convert.load_pretrained(str(tmp_path / "nowhere"))
  folder = _write_checkpoint(tmp_path / "ckpt", default_ckpt_dir)
  with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
    convert.load_pretrained(folder)


def test_bert_prefix_and_pretraining_heads(tmp_path, default_ckpt_dir, real_state_dict,
                                           real_checkpoint, caplog):
  """A `BertForPreTraining`-style file: everything under "bert.", plus `cls.*` heads."""
  tensors = {"bert." + k: v for k, v in real_state_dict.items()}
  tensors["cls.predictions.bias"] = np.zeros(30522, np.float32)
  tensors["cls.predictions.transform.dense.weight"] = np.zeros((384, 384), np.float32)
  tensors["cls.predictions.transform.LayerNorm.weight"] = np.ones(384, np.float32)
  tensors["cls.seq_relationship.weight"] = np.zeros((2, 384), np.float32)
  folder = _write_checkpoint(tmp_path / "ckpt", default_ckpt_dir, tensors)
  with caplog.at_level(logging.DEBUG, logger=convert.__name__):
    _, params = convert.load_pretrained(folder)
  _assert_trees_equal(params, real_checkpoint[1])
  # Pre-training heads are expected in such a file: named at debug level, not louder.
  assert "cls.predictions.bias" in caplog.text
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_legacy_gamma_beta_names(tmp_path, default_ckpt_dir, real_state_dict, real_checkpoint):
  tensors = {k.replace("LayerNorm.weight", "LayerNorm.gamma")
              .replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in real_state_dict.items()}
  assert any(k.endswith("gamma") for k in tensors)
  folder = _write_checkpoint(tmp_path / "ckpt", default_ckpt_dir, tensors)
  _assert_trees_equal(convert.load_pretrained(folder)[1], real_checkpoint[1])


def test_pytorch_bin_equals_safetensors(tmp_path, default_ckpt_dir, real_state_dict,
                                        real_checkpoint):
  torch = pytest.importorskip("torch")
  folder = _write_checkpoint(tmp_path / "ckpt", default_ckpt_dir)
  state = {k: torch.from_numpy(np.array(v)) for k, v in real_state_dict.items()}
  torch.save(state, os.path.join(folder, "pytorch_model.bin"))
  cfg, params = convert.load_pretrained(folder)
  assert cfg == real_checkpoint[0]
  _assert_trees_equal(params, real_checkpoint[1])


def test_more_layers_in_config_than_weights(tmp_path, default_ckpt_dir, real_state_dict):
  config = dict(_default_config(default_ckpt_dir), num_hidden_layers=8)
  folder = _write_checkpoint(tmp_path / "ckpt", default_ckpt_dir, real_state_dict, config)
  with pytest.raises(convert.CheckpointError) as info:
    convert.load_pretrained(folder)
  message = str(info.value)
  assert "missing tensor encoder.layer.6.attention.self.query.weight" in message
  assert "encoder.layer.7.output.LayerNorm.bias" in message
  assert "encoder.layer.5." not in message


def test_fewer_layers_in_config_uses_a_prefix_and_warns(tmp_path, default_ckpt_dir,
                                                        real_state_dict, real_checkpoint,
                                                        caplog):
  config = dict(_default_config(default_ckpt_dir), num_hidden_layers=4)
  folder = _write_checkpoint(tmp_path / "ckpt", default_ckpt_dir, real_state_dict, config)
  with caplog.at_level(logging.WARNING, logger=convert.__name__):
    cfg, params = convert.load_pretrained(folder)
  assert cfg.num_hidden_layers == 4
  assert set(params["encoder"]) == {f"layer_{i}" for i in range(4)}
  np.testing.assert_array_equal(params["encoder"]["layer_3"]["output"]["dense"]["kernel"],
                                real_checkpoint[1]["encoder"]["layer_3"]["output"]["dense"]
                                ["kernel"])
  assert "encoder.layer.4." in caplog.text  # the unused layers are reported


def test_params_to_state_dict_missing_parameter(real_checkpoint):
  cfg, params = real_checkpoint
  flat = traverse_util.flatten_dict(params)
  del flat[("pooler", "dense", "bias")]
  with pytest.raises(convert.CheckpointError, match="pooler/dense/bias"):
    convert.params_to_state_dict(cfg, traverse_util.unflatten_dict(flat))


def test_state_dict_names_match_hf(real_checkpoint, real_state_dict):
  """Every tensor HF's BertModel stores (bar the position_ids buffer) is written back."""
  cfg, params = real_checkpoint
  written = convert.params_to_state_dict(cfg, params)
  expected = {k for k in real_state_dict if k != "embeddings.position_ids"}
  assert set(written) == expected
  for k, v in written.items():
    np.testing.assert_array_equal(v, real_state_dict[k])


def test_save_load_round_trip_and_hf_loads_it(tmp_path, real_checkpoint, hf_bert,
                                              real_tokenizer):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  cfg, params = real_checkpoint
  out = convert.save_pretrained(str(tmp_path / "saved"), cfg, params, vocab_from=None)
  assert {"model.safetensors", "config.json", "vocab.txt"} <= set(os.listdir(out))

  cfg2, params2 = convert.load_pretrained(out)
  assert cfg2 == cfg
  _assert_trees_equal(params2, params)  # bit-exact

  reloaded, info = transformers.BertModel.from_pretrained(out, output_loading_info=True,
                                                          attn_implementation="eager")
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info["mismatched_keys"], info
  batch = real_tokenizer.batch_encode(["A short one.", "Then a rather longer sentence, "
                                       "with a comma and some more words in it."],
                                      ["and a pair", "b"])
  inputs = {k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}
  with torch.no_grad():
    expected = hf_bert(**inputs)
    got = reloaded.eval()(**inputs)
  np.testing.assert_array_equal(got.last_hidden_state.numpy(),
                                expected.last_hidden_state.numpy())
  np.testing.assert_array_equal(got.pooler_output.numpy(), expected.pooler_output.numpy())


def test_save_tiny_random_params(tmp_path, tiny_config):
  """A config that is not the default one round-trips too (config.json follows the params)."""
  params = model.init_params(tiny_config, jax.random.key(3))
  out = convert.save_pretrained(str(tmp_path / "tiny"), tiny_config, params)
  cfg2, params2 = convert.load_pretrained(out)
  assert cfg2 == tiny_config
  _assert_trees_equal(params2, jax.tree.map(np.asarray, params))
