"""Every shipped config validates (tasks, heads, buckets, data files) and the ablation rows
change exactly what they say; a broken config should fail here, not an hour into a run."""

import os

import pytest

from configs import ablation, base, baseline, full, quick, smoke
from mtbert_jax import experiment

SHIPPED = {"base": base.get_config, "baseline": baseline.get_config, "full": full.get_config,
           "quick": quick.get_config, "smoke": smoke.get_config,
           **{f"ablation:{row}": (lambda row=row: ablation.get_config(row))
              for row in ablation.ROWS}}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_config_validates(name, default_ckpt_dir, data_dir):
  config = SHIPPED[name]()
  sc = experiment.step_config(config)
  experiment.head_config(config)
  experiment.build_model(config, load_weights=False)
  experiment.eval_buckets(config)
  assert sc.tasks
  files = [f for f in config.data if f.endswith(("_train", "_dev", "_test")) or
           f in ("tweets", "nli")]
  for field in files:  # every configured file exists in the real data folder
    path = experiment.data_path(config, field)
    assert path is None or os.path.exists(path), (name, field, path)


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
  config = base.get_config()
  config.model.attention = "cudnn"
  if jax.default_backend() != "gpu":
    with pytest.raises(experiment.ConfigError, match="model.attention=cudnn needs a GPU"):
      experiment.build_model(config, load_weights=False)
  config.model.attention = "flash"
  with pytest.raises(experiment.ConfigError, match="model.attention='flash'"):
    experiment.build_model(config, load_weights=False)


def test_missing_data_file_names_the_flag_and_the_folder(tmp_path):
  config = quick.get_config()
  config.data.dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"--config.data.sst_train: .*ids-sst-train.csv "
                                              r"\(relative to --config.data.dir="):
    experiment.data_path(config, "sst_train")
