"""The results protocol: every row trains with the budget of the single-task baselines.

  python -m study.results --rows=sst/base,both_t07 --seeds=0 --group="..."  # rows x seeds
  python -m study.verdict --select && python -m study.verdict --final       # the verdict
  python launch.py --config=configs/protocol.py:full --workdir=runs/p/full --config.seed=1

The budget: 2,212 optimizer steps of batch 32 in all tasks together (70,784 training
examples), the number of steps of the three single-task fine-tunes of
`benchmarks/single_task_baselines.py` together (SST 3 epochs, Quora 2, STS 3); a
single-task row (`sst/...`, `para/...`, `sts/...`) takes its task's share of it. The
embedded checkpoint; inputs of up to 128 tokens (as the baselines); 10% of each train file
held out as the validation split, on which every row is scored once after its last step
(no selection of a best step); dev scored only for the final rows; bfloat16 compute with
float32 master weights.

ROW is a recipe (the names below), a single-task row (`SINGLE_TASK`) or `ablation/<row>`:
a row of `configs/ablation.py` (the paper's Figure 3) at this budget. `docs/results.md`
has what each row measured.
"""

from configs import ablation, base

NUM_STEPS = 2212
BATCH = 32


# The validation split carved from each train file (`data.valid_fraction`): every row
# trains on the other 90% and is compared with the others on it; dev is scored only for
# the rows reported as final (`python -m study.verdict --final`).
VALID_FRACTION = 0.1


def apply_protocol(c, num_steps: int = NUM_STEPS):
  """The protocol's budget, split, lengths, evaluation and precision (in place)."""
  c.train.num_steps = num_steps
  c.train.batch_size = BATCH
  c.train.eval_every = num_steps     # one evaluation, after the last step
  c.data.valid_fraction = VALID_FRACTION
  c.eval.dev = False
  c.train.ckpt_every = 500
  c.train.log_every = 50
  c.data.max_length = 128
  c.data.buckets = (32, 64, 128)
  c.eval.buckets = (16, 24, 32, 48, 64, 96, 128)
  c.eval.write_predictions = True
  c.model.dtype = "bfloat16"
  return c


def _quick(c):
  """configs/quick.py's recipe: cosine STS head, bi-encoder paraphrase head, constant lr
  (5e-5, HF's usual default: the baselines' rate)."""
  c.heads.similarity = "cosine"
  c.optim.lr = 5e-5
  return c


def _sched(c):
  """The quick recipe with 10% linear warm-up, then linear decay to 0, peak lr 1e-4."""
  _quick(c)
  c.optim.lr = 1e-4
  c.optim.schedule = "linear"
  c.optim.warmup_steps = NUM_STEPS // 10
  return c


def _with(parent, **fields):
  """`parent` plus the config fields `group__field=value`; its docstring lists them (the
  description of the row in docs/results.md)."""
  base = getattr(parent, "base", parent)
  fields = {**getattr(parent, "fields", {}), **fields}

  def row(c):
    base(c)
    for key, value in fields.items():
      group, field = key.split("__")
      c[group][field] = value
    return c

  row.base, row.fields = base, fields
  changes = ", ".join(f"{k.replace('__', '.')}={v!r}" for k, v in fields.items())
  row.__doc__ = f"`{base.__name__.lstrip('_')}` with {changes}"
  return row


_CROSS = _with(_sched, heads__paraphrase="prompt", heads__similarity="cross")

# Recipe candidates: each is the `sched` recipe (or another row) plus the changes it names.
RECIPES = {
    "quick": _quick,
    "sched": _sched,
    "sched_lr5e-5": _with(_sched, optim__lr=5e-5),
    "proportional": _with(_sched, train__sampling="proportional"),
    "temperature2": _with(_sched, train__sampling="temperature", train__sampling_temperature=2.0),
    "mlp_head": _with(_sched, heads__sentiment="mlp"),
    "squared_relu": _with(_sched, heads__sentiment="squared_relu"),
    "prompt": _with(_sched, heads__paraphrase="prompt"),
    "sts_cross": _with(_sched, heads__similarity="cross"),
    # Both pair tasks as cross-encoders over the joint pair, as the single-task baselines.
    "cross": _CROSS,
    # `cross` with T=2 temperature sampling: Quora (13.5k pairs) gets ~40% of the steps,
    # SST ~32%, STS ~27%, instead of a third each.
    "cross_t2": _with(_CROSS, train__sampling="temperature", train__sampling_temperature=2.0),
    # `cross` with proportional sampling: Quora ~48% of the steps, SST ~31%, STS ~21%.
    "cross_prop": _with(_CROSS, train__sampling="proportional"),
    "label_smoothing": _with(_sched, train__label_smoothing=0.1),
    "layer_decay": _with(_sched, optim__layer_decay=0.9),
    # SMART with a perturbation that moves the output: one ascent step to l2 radius 3 over
    # the sentence (a sentence's embeddings have an l2 norm of ~90 on MiniLM), symmetric KL
    # ~1e-2; the paper's setting (inf-norm 5e-3) gives ~1e-6 (docs/results.md).
    "smart": _with(_sched, smart__weight=1.0, smart__epsilon=3.0, smart__norm="l2",
                   smart__variant="adversarial", smart__step_size=3.0, smart__noise_std=1e-3),
    "nli": _with(_sched, train__tasks=("sst", "para", "sts", "nli")),
    "tweets": _with(_sched, data__tweets_weight=1.0),
    "cfimdb": _with(_sched, data__cfimdb_weight=0.2),
    "loss_weighting": _with(_sched, weighting__mode="loss"),
}
# Candidates on the winner (`cross_prop`): what the issue and the paper name as likely to
# help, each one change, so that a difference from `cross_prop` is that change's.
_PROP = RECIPES["cross_prop"]
RECIPES.update({
    # The paper: a small degree of label smoothing helped sentiment (its Section 5).
    "prop_label_smoothing": _with(_PROP, train__label_smoothing=0.1),
    # Layer-wise rate decay: the lower layers (general features) move less.
    "prop_layer_decay": _with(_PROP, optim__layer_decay=0.9),
    # The sentiment head with a hidden squared-ReLU layer before the classifier.
    "prop_mlp_head": _with(_PROP, heads__sentiment="mlp"),
    # Peak rates either side of 1e-4.
    "prop_lr5e-5": _with(_PROP, optim__lr=5e-5),
    "prop_lr2e-4": _with(_PROP, optim__lr=2e-4),
    # Evaluate a moving average of the weights (time constant ~500 of the 2,212 steps).
    "prop_ema": _with(_PROP, optim__ema_decay=0.998),
    # SMART that moves the output (as the `smart` row) on the winner's sentiment task.
    "prop_smart": _with(_PROP, smart__weight=1.0, smart__epsilon=3.0, smart__norm="l2",
                        smart__variant="adversarial", smart__step_size=3.0,
                        smart__noise_std=1e-3),
    # The single-task baselines' head dropout (0.1, HF's default) instead of the paper's 0.2.
    "prop_head_dropout": _with(_PROP, heads__dropout=0.1),
    # The baselines' sentence vector: BERT's pooler over [CLS] instead of MiniLM's mean.
    "prop_pooler": _with(_PROP, heads__cls_source="pooler"),
    # Pairs in both orders: trained on each pair as (a, b) and as (b, a) (the sampler still
    # counts a pair once), evaluated as the mean of the two orders' outputs.
    "prop_swap_both": _with(_PROP, data__swap_pairs=True, eval__both_orders=True),
    # The winner evaluated in both orders only: trained exactly as `cross_prop`, so the
    # same checkpoint evaluated in one order (`--mode=eval`) isolates the evaluation's part.
    "prop_both_orders": _with(_PROP, eval__both_orders=True),
})
# The winner (FULL). On `prop_both_orders`: Quora, the one task not past its baseline,
# gets still more of the steps. Temperature 0.7 (p_t ~ n_t^(1/0.7)): Quora ~54%, SST ~28%,
# STS ~17%, against proportional sampling's 48 / 31 / 21% (the step from T=2 to T=1 raised
# Quora's mean).
RECIPES["both_t07"] = _with(RECIPES["prop_both_orders"], train__sampling="temperature",
                            train__sampling_temperature=0.7)
# Further along: temperature 0.5 (p_t ~ n_t^2), Quora ~62%, SST ~25%, STS ~12%.
RECIPES["both_t05"] = _with(RECIPES["prop_both_orders"], train__sampling="temperature",
                            train__sampling_temperature=0.5)
# On `both_t07`: the paraphrase cross-encoder without the paper's prompt, as the
# single-task baseline reads a pair (`[CLS] a [SEP] b [SEP]`).
RECIPES["t07_cross_para"] = _with(RECIPES["both_t07"], heads__paraphrase="cross")


# Single-task rows: one task alone, at the steps its single-task baseline takes
# (benchmarks/single_task_baselines.py: SST 3 epochs, Quora 2, STS 3 of the full train
# files, batch 32), which add up to the protocol's budget.
SINGLE_TASK_STEPS = {"sst": 801, "para": 844, "sts": 567}
assert sum(SINGLE_TASK_STEPS.values()) == NUM_STEPS


def _single(task: str, **fields):
  """Task `task` alone: the multitask winner's choices that apply to it (peak rate 1e-4,
  10% warm-up then linear decay, the checkpoint's mean pooling, head dropout 0.2, a pair
  task as a cross-encoder over the joint pair without a prompt, evaluated in both orders),
  plus `fields` (`group__field=value`)."""
  def row(c):
    c.train.tasks = (task,)
    c.optim.lr = 1e-4
    c.optim.schedule = "linear"
    c.optim.warmup_steps = SINGLE_TASK_STEPS[task] // 10
    c.heads.paraphrase = "cross"
    c.heads.similarity = "cross"
    c.eval.both_orders = True
    for key, value in fields.items():
      group, field = key.split("__")
      c[group][field] = value
    return c
  changes = ", ".join(f"{k.replace('__', '.')}={v!r}" for k, v in fields.items())
  row.__doc__ = f"{task} alone, {SINGLE_TASK_STEPS[task]} steps" + (
      f", with {changes}" if changes else " (the single-task centre of the grid)")
  return row


# The single-task grid: the same one-change-at-a-time search around a centre that the
# multitask recipe had (its rows prop_lr5e-5, prop_lr2e-4, prop_pooler, prop_head_dropout).
SINGLE_VARIANTS = {
    "base": {},
    "lr5e-5": {"optim__lr": 5e-5},
    "lr2e-4": {"optim__lr": 2e-4},
    "pooler": {"heads__cls_source": "pooler"},
    "dropout0.1": {"heads__dropout": 0.1},
}
SINGLE_TASK = {f"{task}/{name}": _single(task, **fields)
               for task in SINGLE_TASK_STEPS for name, fields in SINGLE_VARIANTS.items()}
# The paraphrase cross-encoder with the paper's prompt (the multitask winner's input).
SINGLE_TASK["para/prompt"] = _single("para", heads__paraphrase="prompt")

# The multitask winner's peak rate searched as the single-task rows' is.
RECIPES["both_t07_lr5e-5"] = _with(RECIPES["both_t07"], optim__lr=5e-5)
RECIPES["both_t07_lr2e-4"] = _with(RECIPES["both_t07"], optim__lr=2e-4)


# The multitask row the validation split chose (`python -m study.verdict --select`,
# docs/results.json "selection"): `configs/full.py` returns it.
FULL = "both_t07_lr5e-5"
RECIPES["full"] = RECIPES[FULL]

# Issue 29's candidates, each on that row, to be chosen among on the validation split again.
WINNER = FULL
# Annealed task sampling (Stickland and Murray 2019): p_t ~ n_t^a, a from 1 to 0.2.
RECIPES["win_annealed"] = _with(RECIPES[WINNER], train__sampling="annealed",
                                train__sampling_alpha_start=1.0, train__sampling_alpha_end=0.2)
# Teacher-annealed distillation (Clark et al. 2019) from the chosen single-task rows, the
# teacher of seed k being that row's run of seed k (`{seed}`). Its cost is the teachers'
# budget again: a row beside the equal-budget rows, never among them.
TEACHERS = tuple(f"{task}=runs/verdict/{row.replace('/', '__')}/seed{{seed}}" for task, row in
                 (("sst", "sst/dropout0.1"), ("para", "para/lr2e-4"), ("sts", "sts/lr2e-4")))
RECIPES["win_distill"] = _with(RECIPES[WINNER], distill__teachers=TEACHERS)
RECIPES["win_distill_annealed"] = _with(RECIPES["win_distill"], train__sampling="annealed",
                                        train__sampling_alpha_start=1.0,
                                        train__sampling_alpha_end=0.2)
# The NLI triplets (supervised SimCSE) beside the winner. At temperature 0.7 their 27,560
# rows would take ~64% of the steps; `train.sampling_scale.nli` sets their share instead:
# 0.15 gives about 10%, 0.25 about 20% of the budget.
_TASKS_NLI = ("sst", "para", "sts", "nli")
for _share, _scale in (("10", 0.15), ("20", 0.25)):
  RECIPES[f"win_nli{_share}"] = _with(
      RECIPES[WINNER], train__tasks=_TASKS_NLI,
      train__sampling_scale={"sst": 1.0, "para": 1.0, "sts": 1.0, "nli": _scale,
                             "cfimdb": 1.0})


def get_config(row: str = "full"):
  if row in SINGLE_TASK:
    task = row.split("/", 1)[0]
    return apply_protocol(SINGLE_TASK[row](base.get_config()), SINGLE_TASK_STEPS[task])
  if row.startswith("ablation/"):
    return apply_protocol(ablation.apply_row(base.get_config(), row.split("/", 1)[1]))
  if row not in RECIPES:
    raise ValueError(f"unknown protocol row {row!r}; expected one of {sorted(RECIPES)}, "
                     f"a single-task row {sorted(SINGLE_TASK)} or ablation/<row> with <row> "
                     f"one of {list(ablation.ROWS)}")
  return apply_protocol(RECIPES[row](base.get_config()))
