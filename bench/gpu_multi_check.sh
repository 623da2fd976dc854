#!/usr/bin/env bash
# The prepared 2-GPU smoke: the paths one GPU cannot see, ready for the first multi-GPU machine.
# Same conventions, settings and output as bench/gpu_check.sh (bench/gpu_check_lib.sh); one
# command of under 540 s.
#
#   bash bench/gpu_multi_check.sh [OUT_DIR]   # default $OUT, else bench/results/<date>-<gpu>-multi/
#
# Steps: the environment (2 GPUs needed) and the compile smoke; synthetic data it writes itself
# (OUT_DIR/data: a learnable token pattern); `torchrun --nproc_per_node=2 train.py` for GPT-2 124M
# (B=16 per GPU, T=1024, bf16, no accumulation) for 20 steps with a checkpoint at step 10, under
# DDP compiled (`ddp`), then again from that step-10 checkpoint in a second run folder
# (`ddp_resume`); the same under FSDP2 with per-block compile (`fsdp`, `fsdp_resume`); DDP's
# gradient bucket splits and step time from `bench train` on 2 ranks (`ddp_buckets`, torch's DDP
# logging data); `compare`: each resumed run's losses against the uninterrupted one's (equal within
# 1e-3 relative on GPU: the kernels' atomics may round differently; bit-identical on CPU), the peak
# memory each logged (metrics.jsonl `mem_gib`) and the bucket count, as one line in the table.
#
# GPU_CHECK_DEVICE=cpu runs the same steps with 2 gloo processes, a tiny eager model and 8 steps
# (checkpoint at 4): the script's test (tests/test_gpu_multi_check.py, marked dist).
#
# Allowances: estimates, scaled from CPU compile times as in gpu_check.sh's header. A 124M run:
# start-up of torchrun and 2 workers ~20 s, a cold compile of 21-100 s (DDP splits the graph at its
# bucket boundaries: more, smaller graphs; FSDP2 compiles one block and the head), 20 steps of
# ~0.1 s, 2 checkpoints of 1.5 GB. A resume: start-up, a compile from the warm cache (~0.5x), 10
# steps.
STEPS=(
  env:20           # 2 GPUs visible, versions
  compile_smoke:20 # as gpu_check.sh
  data:10          # ~3 s: 1.2M tokens written
  ddp:125          # 60-140 s estimated
  ddp_resume:75    # 35-80 s
  fsdp:125         # 60-140 s
  fsdp_resume:75   # 35-80 s
  ddp_buckets:60   # 40-90 s: a third compile, under bench train (warm cache)
  compare:10       # ~1 s
  table:10         # ~1 s
)
set -uo pipefail
CHECK=gpu_multi_check
OUT_SUFFIX=-multi # the default folder: bench/results/<date>-<gpu>-multi
# shellcheck source=bench/gpu_check_lib.sh
source "$(dirname "$0")/gpu_check_lib.sh"
check_setup "$@"

NPROC=2
if [[ $MODE == cpu ]]; then
  export OMP_NUM_THREADS=1 # 2 processes on a shared machine
  STEPS_N=8 SAVE_AT=4 VOCAB=512 TOKENS=60000 TOL=0
  MODEL_ARGS=(--train.device=cpu --model.n_layer=2 --model.n_head=2 --model.n_embd=32
    --model.block_size=64 --model.vocab_size=512 --train.seq_len=32 --train.micro_batch_size=4
    --train.total_batch_tokens=$((4 * 32 * NPROC)))
  BENCH_WARMUP=1 BENCH_STEPS=2
else
  STEPS_N=20 SAVE_AT=10 VOCAB=50257 TOKENS=1200000 TOL=1e-3
  MODEL_ARGS=(--train.device=cuda --train.seq_len=1024 --train.micro_batch_size=16
    --train.total_batch_tokens=$((16 * 1024 * NPROC)))
  BENCH_WARMUP=3 BENCH_STEPS=10
fi

env_step "$NPROC"
compile_smoke_step

data=$out/data
run_step data "kind=data" "$PY" bench/gpu_multi.py data "$data" --vocab $VOCAB --tokens $TOKENS

launch=("$PY" -m torch.distributed.run --standalone "--nproc_per_node=$NPROC")
run_train() { # run_train NAME STRATEGY RUN_DIR [OVERRIDE...]: 2 ranks of train.py, 124M (or tiny)
  local name=$1 strategy=$2 rundir=$3
  shift 3
  run_step "$name" "kind=dist config=gpt2_124m strategy=$strategy compile=$COMPILE" \
    "${launch[@]}" train.py --config configs/gpt2_124m.toml "${MODEL_ARGS[@]}" \
    --data.dir="$data" --run.dir="$rundir" --dist.strategy="$strategy" --train.compile=$COMPILE \
    --train.max_steps=$STEPS_N --checkpoint.every=$SAVE_AT --checkpoint.keep_last=0 \
    --optim.warmup_steps=$SAVE_AT --eval.every=0 --eval.hellaswag_every=0 --eval.core_every=0 --log.every=1 \
    --log.report=false "$@"
}

for strategy in ddp fsdp; do
  runs=$out/runs
  run_train "$strategy" "$strategy" "$runs/$strategy"
  # the same run, from the uninterrupted one's checkpoint at SAVE_AT, in a folder of its own
  run_train "${strategy}_resume" "$strategy" "$runs/${strategy}_resumed" \
    --checkpoint.resume="$runs/$strategy/ckpt/step_$(printf '%08d' $SAVE_AT)"
done

[[ $DRY == 1 ]] || rm -f "$out/ddp_buckets.json"
run_step ddp_buckets "kind=train config=gpt2_124m compile=$COMPILE strategy=ddp" \
  "${launch[@]}" -m gpt2repro.bench train --config configs/gpt2_124m.toml "${MODEL_ARGS[@]}" \
  --dist.strategy=ddp --train.compile=$COMPILE --warmup $BENCH_WARMUP --steps $BENCH_STEPS \
  --out "$out/ddp_buckets.json"

run_step compare "kind=compare" "$PY" bench/gpu_multi.py compare "$out" --tol $TOL

check_finish
