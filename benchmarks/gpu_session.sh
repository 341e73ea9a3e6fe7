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
# One device call may run 600 s at most, so the phases come in two parts; run `core` first
# and `extra` in a second call if device time is left:
#   bash benchmarks/gpu_session.sh core     # probe, bert-base and minilm vs PyTorch (~500 s)
#   bash benchmarks/gpu_session.sh extra    # attention xla/cudnn, remat, configs/full.py
PART=${1:-core}
case "$PART" in core|extra) ;; *) echo "usage: $0 core|extra" >&2; exit 2;; esac

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
stamp "done: $PART"
tail -n 4 "$OUT"/bench_*.txt
