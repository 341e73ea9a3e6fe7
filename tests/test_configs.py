"""Every shipped config validates (tasks, heads, buckets, data files) and the ablation rows
change exactly what they say; a broken config should fail here, not an hour into a run."""

import json
import os

import pytest

from configs import ablation, base, baseline, full, quick, smoke
from mtbert_jax import experiment
from mtbert_jax import settings as settings_lib

SHIPPED = {"base": base.get_config, "baseline": baseline.get_config, "full": full.get_config,
           "quick": quick.get_config, "smoke": smoke.get_config,
           **{f"ablation:{row}": (lambda row=row: ablation.get_config(row))
              for row in ablation.ROWS}}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_config_validates(name, default_ckpt_dir, data_dir):
  s = settings_lib.from_dict(SHIPPED[name]().to_dict())
  assert settings_lib.from_dict(settings_lib.to_dict(s)) == s  # config.json round trip
  experiment.build_model(s, load_weights=False)
  files = [f for f in settings_lib.to_dict(s)["data"]
           if f.endswith(("_train", "_dev", "_test")) or f in ("tweets", "nli")]
  for field in files:  # every configured file exists in the real data folder
    path = experiment.data_path(s, field)
    assert path is None or os.path.exists(path), (name, field, path)


def test_every_base_field_has_a_comment():
  """configs/base.py is the reference of every field: each assignment carries a comment
  on its line (or, for a long one, on the line above)."""
  lines = open(base.__file__, encoding="utf-8").read().splitlines()
  fields = [i for i, line in enumerate(lines) if line.strip().startswith("c.") and "=" in line
            and "ConfigDict()" not in line and "return" not in line]
  missing = [lines[i].strip() for i in fields
             if "#" not in lines[i] and not lines[i - 1].strip().startswith("#")]
  assert not missing, missing


def _settings(**groups):
  d = settings_lib.to_dict(settings_lib.from_dict(base.get_config().to_dict()))
  for group, fields in groups.items():
    d[group] = {**d[group], **fields} if isinstance(fields, dict) else fields
  return settings_lib.from_dict(d)


@pytest.mark.parametrize("groups,match", [
    (dict(optim={"lr": -1e-4}), r"--config.optim.lr=-0.0001: expected > 0"),
    (dict(train={"batch_size": 0}), r"--config.train.batch_size=0: expected >= 1"),
    (dict(heads={"dropout": 1.0}), r"--config.heads.dropout=1.0: expected a probability"),
    (dict(smart={"epsilon": 0.0}), r"--config.smart.epsilon=0.0: expected > 0"),
    (dict(train={"num_steps": "abc"}), r"--config.train.num_steps='abc': expected an integer"),
    (dict(model={"kernels": "cuda"}), r"--config.model.kernels='cuda': expected one of"),
    (dict(train={"sampling": "random"}), r"--config.train.sampling='random'"),
    (dict(optim={"layer_decay": 0.0}), r"--config.optim.layer_decay=0.0"),
    (dict(train={"num_step": 3}), r"--config.train.num_step: no such field in group "
                                  r"'train'; did you mean 'num_steps'\?"),
    (dict(data={"buckets": [64, 32]}), r"--config.data.buckets"),
])
def test_bad_values_are_one_clear_error_naming_the_flag(groups, match):
  with pytest.raises(settings_lib.ConfigError, match=match):
    _settings(**groups)


def test_a_config_of_another_version_names_its_missing_fields():
  d = settings_lib.to_dict(settings_lib.from_dict(base.get_config().to_dict()))
  del d["model"]["kernels"]
  with pytest.raises(settings_lib.ConfigError, match=r"lacks the field\(s\) \['model.kernels'\]"):
    settings_lib.from_dict(d)


def test_an_older_workdir_takes_new_fields_and_groups_from_the_new_settings(tmp_path, caplog):
  """A config.json written before a group (distill) or a field (train.sampling_scale, a
  dict) existed is read with the new settings' values, and the warning names each field."""
  from mtbert_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  new = settings_lib.from_dict(base.get_config().to_dict())
  d = settings_lib.to_dict(new)
  del d["distill"], d["train"]["sampling_scale"]
  (tmp_path / "config.json").write_text(json.dumps(d), encoding="utf-8")
  with caplog.at_level("WARNING"):
    assert workdir_lib.load_settings(str(tmp_path), fill_from=new) == new
  assert "distill.teachers=[]" in caplog.text and "train.sampling_scale.nli=1.0" in caplog.text


def _flat(config, prefix=""):
  out = {}
  for k, v in config.items():
    if hasattr(v, "items"):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


@pytest.mark.parametrize("row,changed", [
    ("baseline", set()),
    ("prompting", {"heads.paraphrase"}),
    ("smart", {"smart.weight"}),
    ("task_weighting", {"weighting.mode"}),
    ("simcse", {"heads.similarity", "train.tasks"}),
    ("cosine", {"heads.similarity"}),
    ("tweets", {"data.tweets_weight"}),
    ("full", {"heads.paraphrase", "smart.weight", "weighting.mode", "heads.similarity",
              "train.tasks", "data.tweets_weight", "heads.sentiment"}),
])
def test_ablation_row_changes_only_its_extension(row, changed):
  reference = _flat(ablation.get_config("baseline"))
  config = _flat(ablation.get_config(row))
  assert {k for k in config if config[k] != reference[k]} == changed


def test_cudnn_attention_is_refused_where_it_cannot_run(default_ckpt_dir):
  import jax  # pylint: disable=import-outside-toplevel
  if jax.default_backend() != "gpu":
    with pytest.raises(settings_lib.ConfigError, match="model.attention=cudnn needs a GPU"):
      experiment.build_model(_settings(model={"attention": "cudnn"}), load_weights=False)
  with pytest.raises(settings_lib.ConfigError, match="model.attention='flash'"):
    _settings(model={"attention": "flash"})


def test_auto_kernels_are_xla_cpu_on_cpu_only():
  s = _settings()
  assert experiment.kernels(s, backend="cpu") == "xla_cpu"
  assert experiment.kernels(s, backend="gpu") == "flax"
  assert experiment.kernels(_settings(model={"kernels": "flax"}), backend="cpu") == "flax"


def test_missing_data_file_names_the_flag_and_the_folder(tmp_path):
  c = quick.get_config()
  c.data.dir = str(tmp_path)
  s = settings_lib.from_dict(c.to_dict())
  with pytest.raises(FileNotFoundError, match=r"--config.data.sst_train: .*ids-sst-train.csv "
                                              r"\(relative to --config.data.dir="):
    experiment.data_path(s, "sst_train")
  (tmp_path / "cs224n" / "ids-sst-train.csv").mkdir(parents=True)
  with pytest.raises(IsADirectoryError, match=r"--config.data.sst_train: .* is a folder"):
    experiment.data_path(s, "sst_train")


def test_full_is_the_protocol_winner_scored_on_dev():
  from configs import protocol  # pylint: disable=import-outside-toplevel
  row = _flat(protocol.get_config(protocol.FULL))
  assert row["eval.dev"] is False and row["data.valid_fraction"] == 0.1
  assert _flat(full.get_config()) == {**row, "eval.dev": True}


@pytest.mark.parametrize("row,changed", [
    ("sched", {"optim.lr", "optim.schedule", "optim.warmup_steps"}),
    ("label_smoothing", {"train.label_smoothing"}),
    ("mlp_head", {"heads.sentiment"}),
    ("layer_decay", {"optim.layer_decay"}),
    ("proportional", {"train.sampling"}),
    ("sts_cross", {"heads.similarity"}),
    ("cross", {"heads.paraphrase", "heads.similarity"}),
    ("cross_t2", {"heads.paraphrase", "heads.similarity", "train.sampling"}),  # T=2: default
    ("cross_prop", {"heads.paraphrase", "heads.similarity", "train.sampling"}),
])
def test_protocol_recipe_changes_only_what_it_names(row, changed):
  """Each recipe candidate is its parent (`quick` for sched, else sched) plus one change."""
  from configs import protocol  # pylint: disable=import-outside-toplevel
  parent = _flat(protocol.get_config("quick" if row == "sched" else "sched"))
  config = _flat(protocol.get_config(row))
  assert {k for k in config if config[k] != parent[k]} == changed


@pytest.mark.parametrize("row,changed", [
    ("prop_label_smoothing", {"train.label_smoothing"}),
    ("prop_layer_decay", {"optim.layer_decay"}),
    ("prop_mlp_head", {"heads.sentiment"}),
    ("prop_lr5e-5", {"optim.lr"}),
    ("prop_lr2e-4", {"optim.lr"}),
    ("prop_ema", {"optim.ema_decay"}),
    ("prop_smart", {"smart.weight", "smart.epsilon", "smart.norm", "smart.variant",
                    "smart.step_size", "smart.noise_std"}),
    ("prop_head_dropout", {"heads.dropout"}),
    ("prop_pooler", {"heads.cls_source"}),
    ("prop_swap_both", {"data.swap_pairs", "eval.both_orders"}),
    ("prop_both_orders", {"eval.both_orders"}),
    ("both_t07", {"eval.both_orders", "train.sampling", "train.sampling_temperature"}),
    ("both_t05", {"eval.both_orders", "train.sampling", "train.sampling_temperature"}),
    ("t07_cross_para", {"eval.both_orders", "train.sampling", "train.sampling_temperature",
                        "heads.paraphrase"}),
])
def test_candidates_on_the_winner_change_only_what_they_name(row, changed):
  from configs import protocol  # pylint: disable=import-outside-toplevel
  parent = _flat(protocol.get_config("cross_prop"))
  config = _flat(protocol.get_config(row))
  assert {k for k in config if config[k] != parent[k]} == changed
