#!/usr/bin/env bash
# Every GPU measurement of docs/performance.md, prepared in two parts (device time is short).
# Each phase streams to $OUT (tee), so a phase stopped by its timeout still returns what it
# printed; the benchmark prints a line per runner as soon as it is ready and per round.
# The first phase times one small JAX step alone, so a stall shows before the long phases
# start (docs/performance.md, GPU section).
# Expects, beside the checkout (git-ignored, carried): .whl/ (ml_collections, tensorboardX
# wheels), .devdata/data.tgz (the course data) and .devdata/ckpt (all-MiniLM-L6-v2 in
# float16 safetensors + config/vocab/pooling files), all made by
# `python benchmarks/prepare_device_carry.py`. Results go to $OUT.
# One device call may run 600 s at most, so the phases come in parts, one call each:
#   bash benchmarks/gpu_session.sh results  # the ablation and the final recipe at the
#                                           # paper's budget, seeds in parallel (~500 s)
#   bash benchmarks/gpu_session.sh search   # candidates on the winner, 3 seeds each, at the
#                                           # protocol's budget, in parallel (~500 s)
#   bash benchmarks/gpu_session.sh core     # probe, bert-base and minilm vs PyTorch (~500 s)
#   bash benchmarks/gpu_session.sh extra    # attention xla/cudnn, remat, configs/full.py
#   bash benchmarks/gpu_session.sh verdict  # the verdict protocol (docs/results.md): every
#                                           # single-task and multitask search row, seed 0,
#                                           # in parallel, then the selection on validation
#   bash benchmarks/gpu_session.sh verdict_final  # the chosen rows' seeds 0-4 in parallel,
#                                           # dev scored once each, the verdict table
# A session's device time (15 minutes) fits about one part and the machine's start-up:
# `verdict` and `verdict_final` on one warm machine (their runs stay under runs/gpu_verdict
# between the two calls), else `results`, `search`, `core`, `extra`.
PART=${1:-core}
case "$PART" in core|extra|results|search|verdict|verdict_final) ;;
  *) echo "usage: $0 core|extra|results|search|verdict|verdict_final" >&2; exit 2;; esac

set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
mkdir -p data && tar xzf .devdata/data.tgz -C data
CKPT=$PWD/.devdata/ckpt
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/session.txt"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/session.txt"
python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)" | tee -a "$OUT/session.txt"

if [ "$PART" = core ]; then
stamp "probe: first JAX step alone"
timeout 120 python3 benchmarks/train_step.py --model=minilm --batch=64 --seq=128 \
  --dtype=bfloat16 --variants=project --skip_torch --warmup=1 --steps=3 --rounds=1 2>&1 \
  | tee "$OUT/probe.txt" | grep -v -i warn
stamp "bench bert-base"
timeout 220 python3 benchmarks/train_step.py --model=bert-base --batch=256 --seq=128 \
  --dtype=bfloat16 --variants=project,smart_k1,simcse_unsup 2>&1 | tee "$OUT/bench_bert_base.txt" | grep -v -i warn
stamp "bench minilm: kernels auto (= flax on GPU) and xla_cpu"
timeout 130 python3 benchmarks/train_step.py --model=minilm --batch=256 --seq=128 \
  --dtype=bfloat16 --variants=project,xla_cpu 2>&1 | tee "$OUT/bench_minilm.txt" | grep -v -i warn
fi

if [ "$PART" = extra ]; then
stamp "attention: xla vs cudnn (attention dropout 0)"
for impl in xla cudnn; do
  timeout 100 python3 benchmarks/train_step.py --model=bert-base --batch=256 --seq=128 \
    --dtype=bfloat16 --attention_dropout=0 --attention=$impl --skip_torch --steps=5 \
    --rounds=1 2>&1 | tee "$OUT/bench_attn_$impl.txt" | grep -v -i warn
done
stamp "remat cost"
timeout 120 python3 benchmarks/train_step.py --model=bert-base --batch=256 --seq=128 \
  --dtype=bfloat16 --variants=project,remat --skip_torch --steps=5 --rounds=1 2>&1 \
  | tee "$OUT/bench_remat.txt" | grep -v -i warn
stamp "full config"
timeout 200 python3 launch.py --config=configs/full.py --workdir=/tmp/full \
  --config.model.checkpoint="$CKPT" --config.model.dtype=bfloat16 \
  --config.train.num_steps=1500 --config.train.eval_every=1500 --config.train.ckpt_every=1500 \
  --config.train.progress=false --config.jax_cache_dir= > "$OUT/full.log" 2>&1
cp /tmp/full/metrics.json "$OUT/full_metrics.json" 2>/dev/null
cp /tmp/full/train_stats.json "$OUT/full_train_stats.json" 2>/dev/null
tail -n 12 "$OUT/full.log"
fi
if [ "$PART" = results ] || [ "$PART" = search ]; then
# results: each ablation row (configs/ablation.py, the paper's Figure 3) with seeds 0 and 1
# and the final recipe (protocol row `full`, = configs/full.py) with seeds 0-2, at the
# paper's budget (1,500 steps of batch 64) instead of the CPU protocol's 2,212 x 32; the
# rest is the protocol's (bf16, length 128, one evaluation after the last step, full dev
# sets).
# search: the winner `both_t07` and candidates around it (configs/protocol.py) with seeds
# 0-2 at the protocol's own budget (2,212 x 32): the recipe search of docs/results.md,
# continued on the GPU.
# RESULTS_JOBS runs share the GPU (MiniLM needs a few GiB each), each its own
# `python -m study.results` invocation into one workdir; the most telling runs come
# first, so that a timeout leaves those. Only finished runs make the tables
# ($OUT/results_<part>.md/.json); each run's folder, without checkpoints, is copied to
# $OUT/runs_<part>/ (for the report, later). The RESULTS_* variables are for a dry run on a
# small machine.
JOBS=${RESULTS_JOBS:-8}
LIMIT=${RESULTS_TIMEOUT:-480}
if [ "$PART" = results ]; then
  STEPS=${RESULTS_STEPS:-1500}; BATCH=${RESULTS_BATCH:-64}
  ROWS="baseline prompting smart task_weighting simcse tweets full cosine"
  DEFAULT_LIST=$(printf 'full %s\n' 0 1 2
    for r in $ROWS; do echo "ablation/$r 0"; done
    for r in $ROWS; do echo "ablation/$r 1"; done)
  GROUPS_JSON="{\"groups\": {\"final recipe\": [\"full\"], \"ablation\": ["
  for r in $ROWS; do GROUPS_JSON+="\"ablation/$r\", "; done
else
  STEPS=${RESULTS_STEPS:-2212}; BATCH=${RESULTS_BATCH:-32}
  ROWS="both_t07 prop_both_orders both_t05 t07_cross_para prop_label_smoothing prop_ema"
  ROWS+=" prop_layer_decay prop_smart"
  DEFAULT_LIST=$(for s in 0 1 2; do for r in $ROWS; do echo "$r $s"; done; done)
  GROUPS_JSON="{\"groups\": {\"recipe search on the winner\": ["
  for r in $ROWS; do GROUPS_JSON+="\"$r\", "; done
fi
GROUPS_JSON="${GROUPS_JSON%, }]}}"
LIST=${RESULTS_LIST:-$DEFAULT_LIST}
W=/tmp/results_$PART
mkdir -p "$W"
export XLA_PYTHON_CLIENT_PREALLOCATE=false W STEPS BATCH CKPT RESULTS_SET="${RESULTS_SET:-}"
stamp "$PART: $(echo "$LIST" | wc -l) runs, $JOBS at a time, $STEPS x $BATCH, $LIMIT s"
echo "$LIST" | timeout "$LIMIT" xargs -P "$JOBS" -L 1 bash -c '
  row=$0 seed=$1 tag=${0//\//__}
  case $row in ablation/*) group=ablation;; full) group="final recipe";;
    *) group="recipe search on the winner";; esac
  python3 -m study.results --rows="$row" --seeds="$seed" --group="$group" \
    --workdir="$W" --out="$W/out_${tag}_$seed" --baselines= --notes= --nofigures \
    --set=train.num_steps=$STEPS --set=train.batch_size=$BATCH \
    --set=train.eval_every=$STEPS --set=train.ckpt_every=$STEPS \
    --set=model.checkpoint=$CKPT $RESULTS_SET > "$W/${tag}_$seed.log" 2>&1
  echo "$row seed $seed: exit $? at $(date +%T)"' 2>&1 | tee -a "$OUT/session.txt"
stamp "$PART: the tables of the finished runs"
echo "$GROUPS_JSON" > "$W/tables.json"
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
printf '%s\n' "Runs of \`bash benchmarks/gpu_session.sh $PART\` ($(date -u +%F), ${GPU_NAME:-no GPU}):" \
  "$STEPS optimizer steps of batch $BATCH each (the CPU protocol's budget is 2,212 x 32," \
  "the paper's 1,500 x 64); otherwise \`configs/protocol.py\` (bfloat16, length 128, one" \
  "evaluation after the last step, full dev sets). The JSON has each run's command." > "$W/notes.md"
python3 -m study.results --tables_only --workdir="$W" --out="$W/tables" --baselines= \
  --nofigures --notes="$W/notes.md" > "$W/tables.log" 2>&1 || tail -n 5 "$W/tables.log"
cp "$W/tables.md" "$OUT/results_$PART.md"
cp "$W/tables.json" "$OUT/results_$PART.json"
cat "$OUT/results_$PART.md"
for d in "$W"/*/seed*; do
  [ -f "$d/run.json" ] || continue
  t="$OUT/runs_$PART/$(basename "$(dirname "$d")")/$(basename "$d")"
  mkdir -p "$t" && (cd "$d" && tar cf - --exclude=./checkpoints --exclude=./best .) \
    | (cd "$t" && tar xf -)
done
mkdir -p "$OUT/runs_$PART" && cp "$W"/*.log "$OUT/runs_$PART/" 2>/dev/null
fi

if [ "$PART" = verdict ] || [ "$PART" = verdict_final ]; then
# The protocol of study/verdict.py on the GPU, with the float16-stored checkpoint (so its
# figures are a verdict of their own, not mixed with the CPU's records). Each run is its
# own `python -m study.results` invocation into one workdir, VERDICT_JOBS at a time.
JOBS=${VERDICT_JOBS:-8}
LIMIT=${VERDICT_TIMEOUT:-500}
W=$PWD/runs/gpu_verdict
mkdir -p "$W"
export XLA_PYTHON_CLIENT_PREALLOCATE=false W CKPT
run_rows() {  # lines "ROW SEED GROUP" on stdin
  timeout "$LIMIT" xargs -P "$JOBS" -L 1 bash -c '
    row=$0 seed=$1 group="$2 $3" tag=${0//\//__}
    python3 -m study.results --rows="$row" --seeds="$seed" --group="$group" \
      --workdir="$W/runs" --out="$W/out_${tag}_$seed" --baselines= --notes= --nofigures \
      --set=model.checkpoint=$CKPT > "$W/${tag}_$seed.log" 2>&1
    echo "$row seed $seed: exit $? at $(date +%T)"' 2>&1 | tee -a "$OUT/session.txt"
}
if [ "$PART" = verdict ]; then
  SINGLE=$(python3 -c "from configs import protocol; print(' '.join(protocol.SINGLE_TASK))")
  MULTI="both_t07 both_t07_lr2e-4 both_t07_lr5e-5 prop_both_orders"
  stamp "verdict search: $(echo $SINGLE $MULTI | wc -w) rows, seed 0, $JOBS at a time"
  { for r in $MULTI; do echo "$r 0 multitask search"; done
    for r in $SINGLE; do echo "$r 0 single-task search"; done; } | run_rows
  python3 - "$W/results.json" $MULTI -- $SINGLE <<'PY'
import json, sys
args = sys.argv[2:]
cut = args.index("--")
groups = {"multitask search": args[:cut], "single-task search": args[cut + 1:]}
json.dump({"groups": groups}, open(sys.argv[1], "w"))
PY
  python3 -m study.results --tables_only --workdir="$W/runs" --out="$W/results" --baselines= \
    --nofigures --notes= > "$W/tables.log" 2>&1 || tail -n 5 "$W/tables.log"
  python3 -m study.verdict --select --workdir="$W/runs" --out="$W/results" --nofigures \
    --notes= 2>&1 | tail -n 30 | tee -a "$OUT/session.txt"
else
  CHOSEN=$(python3 -c "import json; c=json.load(open('$W/results.json'))['selection']; \
print(' '.join(c[k]['chosen'] for k in ('sst', 'para', 'sts', 'multitask')))")
  stamp "verdict final rows: $CHOSEN, seeds 0-4"
  for s in 0 1 2 3 4; do for r in $CHOSEN; do echo "$r $s final rows"; done; done | run_rows
  python3 -m study.verdict --final --workdir="$W/runs" --out="$W/results" --nofigures \
    --notes= 2>&1 | tail -n 40 | tee -a "$OUT/session.txt"
fi
cp "$W/results.json" "$W/results.md" "$OUT/" 2>/dev/null
[ -d "$W/results_predictions" ] && cp -r "$W/results_predictions" "$OUT/"
fi

stamp "done: $PART"
case "$PART" in core|extra) tail -n 4 "$OUT"/bench_*.txt;; esac
