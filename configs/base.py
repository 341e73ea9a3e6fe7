"""Every field of an mtbert_jax experiment, with its default and meaning.

Other configs start from `get_config()` here and override only what differs. Run:
  python launch.py --config=configs/base.py --workdir=runs/base
Any field can be overridden on the command line, e.g. `--config.train.num_steps=200`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                        # seeds parameter init, dropout, data order

  # -- encoder --------------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.checkpoint = ""           # HF BERT folder; "" = embedded all-MiniLM-L6-v2
  c.model.dtype = "float32"         # compute dtype: "float32" | "bfloat16" (weights stay f32)
                                    # | "auto": bfloat16 only where the hardware has it (AMX /
                                    # AVX-512 BF16 CPU, TPU, GPU >= sm80), else float32; logged
  c.model.kernels = "auto"          # layer implementations: "flax" (plain nn.Dense,
                                    # nn.LayerNorm, nn.Dropout) | "xla_cpu" (mtbert_jax/
                                    # xla_cpu.py: forms XLA:CPU runs fast, other dropout
                                    # masks) | "auto": xla_cpu on the CPU backend, else flax
  c.model.hidden_dropout = -1.0     # encoder hidden dropout; < 0 keeps the checkpoint's value
  c.model.attention_dropout = -1.0  # attention-prob dropout; < 0 keeps the checkpoint's value
  c.model.remat = False             # rematerialise each layer in the backward pass (memory)
  c.model.attention = "xla"         # attention without attention dropout (evaluation, or
                                    # attention_dropout=0): "xla" | "cudnn" (GPU + bfloat16:
                                    # cuDNN's fused kernel; JAX does not pick it by itself)

  # -- task heads (mtbert_jax/heads.py) -------------------------------------------------------
  c.heads = ml_collections.ConfigDict()
  c.heads.sentiment = "linear"      # "linear" | "squared_relu" (paper: relu(logits)^2) |
                                    # "mlp": hidden layer with squared ReLU, then linear
  c.heads.paraphrase = "bi"         # "bi": [u;v;|u-v|;u*v] of two encodings | "prompt":
                                    # the paper's prompted cross-encoder | "cross": the
                                    # cross-encoder without the prompt
  c.heads.similarity = "linear"     # "linear" on [u;v;|u-v|;u*v] | "cosine": shared layer, 5*cos
                                    # | "cross": cross-encoder over the joint pair
  c.heads.dropout = 0.2             # dropout before each head's linear layer (paper: 0.2)
  c.heads.cls_source = "auto"       # sentence vector: "pooler" output (paper) | "hidden" [CLS]
                                    # state | "mean" of the tokens | "auto": the checkpoint's
                                    # own pooling if it is a sentence-transformers folder
                                    # (embedded MiniLM: mean), else the pooler

  # -- data (mtbert_jax/data.py); "" = not configured (the split is skipped, with a log) ---------
  c.data = ml_collections.ConfigDict()
  c.data.dir = ""                   # base folder of relative paths; "" = ../shared/data or data/
  c.data.sst_train = "cs224n/ids-sst-train.csv"      # SST-5: id, sentence, sentiment 0..4
  c.data.sst_dev = "cs224n/ids-sst-dev.csv"          # SST-5 dev (accuracy)
  c.data.sst_test = "cs224n/ids-sst-test-student.csv"  # unlabeled: predictions only
  c.data.para_train = "cs224n/quora-train-partial.csv"  # Quora: sentence1/2, is_duplicate
  c.data.para_dev = "cs224n/quora-dev.csv"           # Quora dev (accuracy)
  c.data.para_test = ""             # the course's quora-test-student.csv, when you have it
  c.data.sts_train = "cs224n/sts-train.csv"          # STS: sentence1/2, similarity 0..5
  c.data.sts_dev = "cs224n/sts-dev.csv"              # STS dev (Pearson r)
  c.data.sts_test = "cs224n/sts-test-student.csv"    # unlabeled: predictions only
  c.data.cfimdb_train = "cs224n/ids-cfimdb-train.csv"  # binary reviews: id, sentence,
                                    # sentiment 0/1 (task "cfimdb", or cfimdb_weight)
  c.data.cfimdb_dev = "cs224n/ids-cfimdb-dev.csv"      # CFIMDB dev (accuracy)
  c.data.cfimdb_test = "cs224n/ids-cfimdb-test-student.csv"  # unlabeled: predictions only
  c.data.tweets = "twitter/tweet-sentiment.csv"      # tweets as 0/2/4 (tweets_weight)
  c.data.nli = "nli/nli_for_simcse-subset.csv"       # SimCSE triplets (task "nli")
  c.data.max_length = 128           # tokens per input after truncation (joint pairs included)
  c.data.buckets = (32, 64, 128)    # padded lengths; each batch uses the smallest that fits
  c.data.train_limit = 0            # use only the first N rows of each train file (0 = all)
  c.data.dev_limit = 0              # use only the first N rows of each dev file (0 = all)
  c.data.cfimdb_weight = 0.0        # sentiment batches: sampling weight of CFIMDB vs SST (1.0)
  c.data.tweets_weight = 0.0        # sentiment batches: sampling weight of tweets vs SST (1.0)
  c.data.swap_pairs = False         # paraphrase and STS: also train on each pair as (b, a), in
                                    # half of their batches (the sampler counts a pair once)
  c.data.valid_fraction = 0.0       # hold out this fraction of each evaluated task's train
                                    # file as its validation split ("valid"), chosen by a hash
                                    # of the row id (the same rows on every machine and file
                                    # order); then the training loop's evaluations and best
                                    # checkpoint read it instead of dev; 0 = no split
  c.data.cfimdb_labels = (0, 4)     # CFIMDB negative/positive mapped to these SST classes
  c.data.tfds_dir = ""              # data_dir of tfds:NAME:SPLIT values (any file field above
                                    # may name a prepared TFDS dataset, e.g. tfds:glue/qqp:train;
                                    # pip install -e ".[tfds]"); "" = TFDS's default folder
  c.data.on_invalid = "skip"        # a row that does not parse: "skip" it with a warning that
                                    # names file and line (quora-dev.csv has 2 such rows, which
                                    # the course's own loader also skips) | "raise" an error

  # -- training (mtbert_jax/train.py) ---------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1500          # optimizer steps; each step trains one task
  c.train.tasks = ("sst", "para", "sts")  # the tasks (round-robin order); "nli" adds
                                    # supervised SimCSE on the NLI triplets; "cfimdb" the
                                    # binary review sentiment (its own head, dev accuracy)
  c.train.sampling = "round_robin"  # which task a step trains: "round_robin" (paper) |
                                    # "proportional" to training examples | "temperature":
                                    # p_t ~ n_t^(1/sampling_temperature) | "annealed":
                                    # p_t ~ n_t^a, a linear from alpha_start to alpha_end
  c.train.sampling_temperature = 2.0  # "temperature": T (1 = proportional, large = uniform)
  c.train.sampling_alpha_start = 1.0  # "annealed": exponent at the first step (1 =
                                    # proportional; Stickland and Murray 2019)
  c.train.sampling_alpha_end = 0.2  # "annealed": exponent at the last step (0 = uniform)
  # The sampled modes count task t as this factor times its training examples, e.g. nli=0.2
  # for a smaller share of the NLI triplets' steps; 1 = its size
  c.train.sampling_scale = ml_collections.ConfigDict(
      dict(sst=1.0, para=1.0, sts=1.0, nli=1.0, cfimdb=1.0))
  c.train.batch_size = 64           # examples per step (global, over all devices and hosts)
  c.train.mode = "finetune"         # "finetune": all weights | "pretrain": frozen encoder
  c.train.label_smoothing = 0.0     # sentiment cross-entropy label smoothing
  c.train.log_every = 50            # steps between metric pulls / progress / TensorBoard
  c.train.eval_every = 500          # steps between dev evaluations (best checkpoint kept)
  c.train.ckpt_every = 500          # steps between resumable checkpoints
  c.train.eval_limit = 0            # periodic evals use the first N dev rows (0 = all)
  c.train.progress = True           # show a progress bar on stderr
  c.train.rng_impl = "threefry2x32" # PRNG of the dropout keys: "threefry2x32" (JAX's
                                    # default) | "rbg" | "unsafe_rbg" (XLA's RngBitGenerator:
                                    # other masks; with the xla_cpu kernels slower on CPU)

  # -- optimizer ------------------------------------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 3e-5                 # peak learning rate (paper: constant 3e-5)
  c.optim.schedule = "constant"     # "constant" | "linear" (decay to 0) | "cosine"
  c.optim.warmup_steps = 0          # linear warm-up from 0 to lr
  c.optim.layer_decay = 1.0         # layer-wise lr decay: encoder layer i of L gets
                                    # lr * decay^(L - i), embeddings decay^(L + 1); 1 = off
  c.optim.weight_decay = 1e-2       # AdamW decoupled weight decay (not on biases/LayerNorm)
  c.optim.b1 = 0.9                  # AdamW first-moment decay
  c.optim.b2 = 0.999                # AdamW second-moment decay
  c.optim.eps = 1e-8                # AdamW epsilon
  c.optim.grad_clip = 0.0           # global-norm clipping; 0 = off
  c.optim.ema_decay = 0.0           # evaluate (and keep as best) an exponential moving
                                    # average of the weights with this decay per step, e.g.
                                    # 0.999 (its first steps follow the weights: decay
                                    # min(d, (1 + t) / (10 + t))); 0 = the weights themselves

  # -- task weighting (paper 3.4) -------------------------------------------------------------
  c.weighting = ml_collections.ConfigDict()
  c.weighting.mode = "none"         # "none" | "fixed" | "loss" (follow recent loss magnitude)
  # "fixed": the weight of each task's loss
  c.weighting.fixed = ml_collections.ConfigDict(dict(sst=1.0, para=1.0, sts=1.0, nli=1.0))
  c.weighting.ema_decay = 0.9       # "loss": decay of each task's loss moving average
  c.weighting.temperature = 1.0     # "loss": w_t ~ ema_t^(1/temperature), mean 1

  # -- SMART smoothness regularization (paper 3.3) --------------------------------------------
  c.smart = ml_collections.ConfigDict()
  c.smart.weight = 0.0              # lambda; 0 = off (paper: 50 on sentiment)
  c.smart.tasks = ("sst",)          # tasks it regularizes: any of sst, para, sts
  c.smart.variant = "random"        # "random": paper, max over alpha random perturbations |
                                    # "adversarial": K projected ascent steps (SMART paper)
  c.smart.num_samples = 7           # "random": alpha perturbations
  c.smart.num_steps = 1             # "adversarial": K ascent steps
  c.smart.step_size = 1e-3          # "adversarial": ascent step size
  c.smart.noise_std = 1e-5          # "adversarial": initial noise scale
  c.smart.epsilon = 5e-3            # radius of the perturbation ball
  c.smart.norm = "inf"              # "inf" | "l2"
  c.smart.bregman_weight = 0.0      # Bregman proximal point term vs an EMA of the params; 0=off
  c.smart.bregman_decay = 0.99      # EMA decay of that copy

  # -- SimCSE (paper 3.6) ---------------------------------------------------------------------
  c.simcse = ml_collections.ConfigDict()
  c.simcse.temperature = 0.05       # tau in the InfoNCE loss
  c.simcse.weight = 1.0             # weight of the "nli" (supervised) task's loss
  c.simcse.unsup_weight = 0.0       # unsupervised SimCSE on each step's sentences; 0 = off

  # -- distillation from single-task teachers (Clark et al. 2019, born-again multitask) -------
  c.distill = ml_collections.ConfigDict()
  c.distill.teachers = ()           # "TASK=WORKDIR" per distilled task: a finished run of the
                                    # same tokenizer and train file ("{seed}" in WORKDIR: this
                                    # run's seed); () = off
  c.distill.schedule = "anneal"     # the gold label's share lambda of the target
                                    # lambda*gold + (1-lambda)*teacher: "anneal" = linear from
                                    # 0 at the first step to 1 at the last | "fixed" = weight
  c.distill.weight = 0.5            # "fixed": lambda

  # -- evaluation / checkpoints ---------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 128           # examples per evaluation batch (global)
  c.eval.buckets = ()               # padded lengths for evaluation; () = data.buckets. Finer
                                    # buckets pad less (forward-only steps compile quickly)
  c.eval.dtype = ""                 # compute dtype of evaluation and prediction: "" = the
                                    # model's (model.dtype) | "float32" | "bfloat16" | "auto"
  c.eval.both_orders = False        # paraphrase and STS: the mean output (logit, score) over
                                    # each pair as (a, b) and as (b, a); twice their eval cost
  c.eval.dev = True                 # score the dev sets after training (metrics dev/*); false
                                    # for a run that only selects a recipe on the validation
                                    # split (--mode=eval --config.eval.dev=true adds dev later)
  c.eval.write_predictions = True   # write predictions/*.csv after training and in eval mode

  c.ckpt = ml_collections.ConfigDict()
  c.ckpt.keep = 1                   # resumable checkpoints kept (the best is kept separately)
  c.ckpt.export_hf = False          # also write the best encoder to hf_encoder/: an HF
                                    # BertModel folder that sentence-transformers loads too

  c.jax_cache_dir = "~/.cache/mtbert_jax/xla"  # persistent compilation cache; "" = off
  return c
