"""mtbert_jax: multitask fine-tuning of one BERT encoder (SST-5, Quora, STS) in JAX/Flax."""

__version__ = "0.1.0"
