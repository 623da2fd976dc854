#!/usr/bin/env bash
# The second GPU check, for a later call than bench/gpu_check.sh: what one GPU can add once the
# headline numbers are in. Same conventions, settings and output as gpu_check.sh
# (bench/gpu_check_lib.sh); one command of under 540 s.
#
#   bash bench/gpu_check_more.sh [OUT_DIR]   # OUT_DIR defaults to $OUT, else bench/results/<date>-<gpu>-more/
#
# Steps: the environment and the compile smoke (as gpu_check.sh's); GPT-2 124M compiled at B=16
# and B=32 (the batch sweep: tokens/s and peak memory against B; each B compiles anew, shapes are
# baked into the kernels); 350M at its recipe's B=64; 1.5B at B=16 on one GPU, compiled whole
# (neither FSDP2 nor per-block compile: those are bench/gpu_multi_check.sh's); HellaSwag scoring
# speed on a random 124M; the table.
#
# Allowances: estimates scaled from CPU compile times as in gpu_check.sh's header. 124M at a new B:
# start-up ~16 s + a compile that reuses little (1-2x the CPU's 21-50 s) + 13 steps. 350M: 24
# layers, the per-layer graph work doubles: 40-100 s of compile. 1.5B: 48 layers, 120-200 s of
# compile, 25 GB of weights and AdamW state to build and move, 6 steps of ~1.5 s.
STEPS=(
  env:15              # as gpu_check.sh
  compile_smoke:20    # as gpu_check.sh
  train_124m_b16:75   # 40-70 s estimated
  train_124m_b32:70   # 40-70 s, partly from the B=16 step's cache
  train_350m_b64:120  # 60-120 s
  train_1558m_b16:190 # 150-230 s: may run out; the table then shows its compile time so far
  hellaswag:30        # ~20 s: 2,000 synthetic examples, eager
  table:10            # ~1 s
)
set -uo pipefail
CHECK=gpu_check_more
OUT_SUFFIX=-more # the default folder: bench/results/<date>-<gpu>-more
# shellcheck source=bench/gpu_check_lib.sh
source "$(dirname "$0")/gpu_check_lib.sh"
check_setup "$@"
train_settings

env_step 1
compile_smoke_step

train_step train_124m_b16 gpt2_124m 16
train_step train_124m_b32 gpt2_124m 32
# 350M at its recipe's B=64: about 6 GB of weights/grads/AdamW + ~60 GB of activations.
train_step train_350m_b64 gpt2_350m 64 --warmup=2 --steps=8
# 1.5B at llm.c's B=16 without activation checkpointing: 25 GB of fp32 weights, grads and AdamW
# state + ~45-65 GB of bf16 activations (48 layers x 16K tokens x ~36-50 bytes x 1600) < 141 GB.
train_step train_1558m_b16 gpt2_1558m 16 --warmup=2 --steps=4

[[ $DRY == 1 ]] || rm -f "$out/hellaswag.json"
if [[ $MODE == cpu ]]; then
  run_step hellaswag "kind=hellaswag" "$PY" -m gpt2repro.bench hellaswag --bench-model tiny \
    --train.device=cpu --limit 4 --eval.batch_examples=4 --out "$out/hellaswag.json"
else
  run_step hellaswag "kind=hellaswag" "$PY" -m gpt2repro.bench hellaswag --bench-model gpt2 \
    --train.device=cuda --limit 2000 --out "$out/hellaswag.json"
fi

check_finish
