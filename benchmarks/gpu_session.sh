#!/usr/bin/env bash
# One session on the accelerator machine (see ../shared/device/README.md): install the
# carried wheels and this project, check the GPU path, then measure. Logs go to $OUT.
# Stages are time-boxed so that one failure does not cost the rest.
#
# A session has 15 minutes of device time, start-up included, and 10 minutes a call. The
# default stages fit one call (limits 300 + 280 s, each cut to what is left of DEADLINE=570 s
# after the set-up; run it with timeout_s 600), most needed first: the 8B-shaped training
# figures at 2,048 tokens (with the every-position baseline; one step then profiled into
# $OUT/profile), then 16,384 tokens in the same process (rows are written as they come, so
# a 16k stall costs nothing measured before it; every warm-up step prints its time, the
# first holding the compilation; the time box sends SIGUSR1 for a stack dump first), then
# the small-target tau / speed-up / regeneration figures (written to $OUT/small as they
# come). A session planned for it (the 15 minutes do not hold both) runs
# `STAGES="check loss"` (240 + 40 s): the GPU path against the eager reference, and the
# loss head.
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=$PWD:/tmp/site TORCH_CUDA_ARCH_LIST=9.0 || exit 1
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . >"$OUT/install.log" 2>&1
export PATH=/tmp/site/bin:$PATH WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
# the built-in sources are found through the package's entry points: no install, no mix
python3 -c "import importlib.metadata as m; assert m.entry_points(group='eagle3kit'), 'eagle3kit is not installed'" \
  >>"$OUT/install.log" 2>&1 || echo "== the project's entry points are missing: see install.log"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, transformers, deepspeed; print(torch.__version__, transformers.__version__, deepspeed.__version__)"; } > "$OUT/env.txt" 2>&1
# every stage's limit is cut to what is left of DEADLINE seconds (the call's own limit,
# less a margin), so that the call returns with its files instead of being killed
DEADLINE=${DEADLINE:-570}
stage() {
  local name=$1 limit=$2; shift 2; local t=$SECONDS left=$((DEADLINE - SECONDS))
  ((limit > left)) && limit=$left
  if ((limit < 30)); then echo "== $name skipped: ${left}s left"; return; fi
  echo "== $name (limit ${limit}s)"
  timeout -s USR1 -k 5 "$limit" "$@" >> "$OUT/$name.log" 2>&1
  echo "== $name rc=$? in $((SECONDS - t))s" | tee -a "$OUT/$name.log"
}
STAGES=${STAGES:-bench small}
for s in $STAGES; do
  case $s in
    check) stage check 240 python3 benchmarks/check_gpu.py ;;  # compiles flex for the draft and ~6 target kinds
    bench) stage bench 300 python3 benchmarks/bench_train.py --max-tokens 2048 16384 --baseline-max-tokens 2048 \
             --steps 5 --warmup 2 --json "$OUT/bench.json" --profile "$OUT/profile" ;;
    bench16k) stage bench16k 190 python3 benchmarks/bench_train.py --max-tokens 16384 --steps 4 --warmup 2 --skip-ceiling --no-baseline ;;
    loss) stage loss 40 python3 benchmarks/bench_loss.py --rows 8192 --steps 5 ;;  # saved logit gradient vs recompute
    bench2k) stage bench2k 150 python3 benchmarks/bench_train.py --max-tokens 2048 --steps 6 --warmup 3 ;;  # with the every-position baseline
    small) stage small 280 python3 benchmarks/small_target.py --out /tmp/small --report-dir "$OUT/small" \
             --epochs 8 --samples 30 ;;  # its log, times and eval reports land in $OUT/small as they come
  esac
done
exit 0
