"""The final system: the protocol row `configs/protocol.py:FULL`, scored on dev too.

  python launch.py --config=configs/full.py --workdir=runs/full

It is the row `both_t07_lr5e-5`, the multitask row that the verdict protocol chose on the
validation split (`python -m study.verdict --select`, docs/results.md): both pair tasks
as cross-encoders over the joint pair (the paper's prompted paraphrase cross-encoder,
`[CLS] prompt + s1 [SEP] s2 [SEP]`, and an STS cross-encoder regressing the 0-5 score),
their outputs evaluated as the mean over the pair's two orders, a linear sentiment head,
the checkpoint's own pooling (mean for the embedded MiniLM), temperature-0.7 task sampling
(p_t ~ n_t^(1/0.7): Quora ~54% of the steps, SST ~28%, STS ~17%), AdamW with 10% linear
warm-up to 5e-5 then linear decay to 0, 2,212 steps of batch 32 (the three single-task
baselines' budget together), inputs of up to 128 tokens, bfloat16 compute with float32
master weights, 10% of each train file held out as the validation split; after the last
step it is scored on the validation split and on dev. The paper's extensions that did not
win are switches, e.g. `--config.heads.similarity=cosine --config.smart.weight=1`
(`configs/base.py` lists them).
"""

from configs import protocol


def get_config():
  c = protocol.get_config(protocol.FULL)
  c.eval.dev = True   # the protocol scores dev only for its final rows; a user wants it
  return c
