"""TFDS datasets as a data source (the optional extra: tensorflow-datasets + array_record, no
TensorFlow). Tiny datasets are built here, offline, by small builders with the feature
names of GLUE QQP, STS-B, SNLI and IMDB, and read through the same code path as the course
files: sources -> tokenize once -> buckets -> a seeded training run."""

from __future__ import annotations

import os

import numpy as np
import pytest

from configs import smoke
from mtbert_jax import experiment
from mtbert_jax import readers
from mtbert_jax import settings as settings_lib
from mtbert_jax import sources
from mtbert_jax import tfds_source
from mtbert_jax import train

tfds = pytest.importorskip("tensorflow_datasets", reason="the [tfds] extra is not installed")


def _builder(name: str, features: dict, examples: list[dict]):
  """A GeneratorBasedBuilder class registered as `name` (TFDS names a builder after its
  class: TinyQqp -> tiny_qqp)."""

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, ex in enumerate(examples):
      yield i, ex

  class_name = "".join(part.capitalize() for part in name.split("_"))
  return type(class_name, (tfds.core.GeneratorBasedBuilder,), {
      "VERSION": tfds.core.Version("1.0.0"), "_info": _info,
      "_split_generators": _split_generators, "_generate_examples": _generate_examples,
      "__module__": __name__})


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("tfds"))
  text = tfds.features.Text()
  qqp = [{"question1": f"How do I learn {w}?", "question2": f"What is the way to learn {w}?",
          "label": i % 2, "idx": i} for i, w in enumerate(
              "python jax flax math music chess go art cooking physics".split() * 4)]
  stsb = [{"sentence1": f"A man plays {w}.", "sentence2": f"A person is playing {w}.",
           "label": float(i % 11) / 2, "idx": i} for i, w in enumerate(
               "guitar piano drums violin flute harp cello oboe tuba horn".split() * 4)]
  snli = []
  for i, w in enumerate("dog cat bird horse fish".split()):
    snli += [{"premise": f"A {w} runs.", "hypothesis": f"An animal moves.", "label": 0},
             {"premise": f"A {w} runs.", "hypothesis": f"The {w} sleeps.", "label": 2},
             {"premise": f"A {w} runs.", "hypothesis": f"It is sunny.", "label": 1}]
  snli.append({"premise": "Alone.", "hypothesis": "Only neutral.", "label": 1})
  imdb = [{"text": f"This film was {w}.", "label": i % 2} for i, w in enumerate(
      "great awful fine boring superb dull".split())]
  for name, features, examples in (
      ("tiny_qqp", {"question1": text, "question2": text,
                    "label": tfds.features.ClassLabel(num_classes=2), "idx": np.int32}, qqp),
      ("tiny_stsb", {"sentence1": text, "sentence2": text, "label": np.float32,
                     "idx": np.int32}, stsb),
      ("tiny_snli", {"premise": text, "hypothesis": text,
                     "label": tfds.features.ClassLabel(num_classes=3)}, snli),
      ("tiny_imdb", {"text": text, "label": tfds.features.ClassLabel(num_classes=2)}, imdb)):
    _builder(name, features, examples)(data_dir=root, file_format="array_record"
                                       ).download_and_prepare()
  return root


def test_readers_map_tfds_features_to_rows(tfds_dir):
  pairs = tfds_source.read_pairs("tfds:tiny_qqp:train", "paraphrase", tfds_dir)
  assert len(pairs) == 40 and set(pairs.labels.tolist()) == {0, 1}
  assert pairs.labels.dtype == np.int32 and all("learn" in t for t in pairs.texts_a)
  by_id = dict(zip(pairs.ids, pairs.labels))
  assert by_id["3"] == 1 and by_id["4"] == 0  # label i % 2 of example idx i, in any order
  sts = sources.read_pairs("tfds:tiny_stsb:train", "similarity", tfds_dir=tfds_dir)
  assert sts.labels.dtype == np.float32 and sts.labels.max() == 5.0
  nli = sources.read_triplets("tfds:tiny_snli:train", tfds_dir=tfds_dir)
  assert len(nli) == 5  # one triplet per premise with both; the neutral-only one dropped
  i = nli.anchor.index("A cat runs.")
  assert (nli.positive[i], nli.negative[i]) == ("An animal moves.", "The cat sleeps.")
  imdb = sources.read_sentiment("tfds:tiny_imdb:train", num_classes=2,
                                label_map={0: 0, 1: 4}, tfds_dir=tfds_dir)
  assert sorted(set(imdb.labels.tolist())) == [0, 4] and len(imdb) == 6


def test_tfds_errors_are_clear(tfds_dir):
  with pytest.raises(readers.DataError, match=r"tfds:nope:train: cannot open the TFDS "
                                              r"dataset 'nope'"):
    tfds_source.read_pairs("tfds:nope:train", "paraphrase", tfds_dir)
  with pytest.raises(readers.DataError, match=r"expected tfds:NAME\[/CONFIG\]:SPLIT"):
    tfds_source.parse_tfds("tfds:qqp")
  with pytest.raises(readers.DataError, match=r"lack a sentence pair"):
    tfds_source.read_pairs("tfds:tiny_imdb:train", "paraphrase", tfds_dir)
  with pytest.raises(readers.DataError, match=r"example \d+: label [0-9.]+, expected an integer "
                                              r"class in 0..1"):
    tfds_source.read_pairs("tfds:tiny_stsb:train", "paraphrase", tfds_dir)


def test_a_run_trains_on_tfds_sets(tfds_dir, tiny_ckpt_dir, data_dir, tmp_path):
  c = smoke.get_config()
  c.model.checkpoint = tiny_ckpt_dir
  c.jax_cache_dir = ""
  c.data.tfds_dir = tfds_dir
  c.data.para_train = "tfds:tiny_qqp:train"
  c.data.sts_train = "tfds:tiny_stsb:train"
  c.data.nli = "tfds:tiny_snli:train"
  c.heads.similarity = "cosine"
  c.train.tasks = ("sst", "para", "sts", "nli")
  c.train.batch_size = 4
  c.train.num_steps = 8
  s = settings_lib.from_dict(c.to_dict())
  tok = experiment.tokenizer(s)
  assert len(experiment.load_split(s, tok, "para", "train")) == 40
  metrics = train.train_and_evaluate(s, str(tmp_path / "run"))
  assert metrics["step"] > 0 and 0 <= metrics["dev/para_acc"] <= 1
  assert os.path.isfile(tmp_path / "run" / "metrics.json")
