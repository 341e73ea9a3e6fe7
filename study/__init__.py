"""This repository's own study: the results protocol's runner, its selection on the
validation split, the verdict table and the files it writes under docs/, and the short
ablation table; `runs.py` trains a config row as its own process for both runners. It uses
the library (`mtbert_jax`) and the configs beside it; the library never imports it. Run its
modules from the repository root, e.g. `python -m study.results --help`."""
