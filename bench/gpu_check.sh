#!/usr/bin/env bash
# The one prepared GPU check: the headline numbers of one GPU, most informative first, in one
# command of under 540 s (a lent machine allows 600 s per command; this leaves room for start-up).
#
#   bash bench/gpu_check.sh [OUT_DIR]      # OUT_DIR defaults to $OUT, else bench/results/<date>-<gpu>/
#
# Steps (STEPS below, in order): the environment (Python, torch, triton, a C compiler and
# Python.h, pytest, tiktoken, the SDPA backend order, the GPUs); a ~10 s torch.compile smoke (if it
# fails, every later step runs with --train.compile=false instead of timing out); GPT-2 124M at
# B=64, T=1024, bf16: eager, then compiled (its compile time is the table's `compile s`), then the
# A/Bs at the same shape, which reuse the compiled step's Triton kernels from the on-disk cache
# (full logits + cross-entropy instead of the chunked loss; the cuDNN attention backend); the
# gpu-marked tests of tests/test_gpu.py; the loader; CORE's packed scorer against one item per
# pass on generated items (random weights, no download); the table. The batch sweep, 350M, 1.5B and
# HellaSwag are bench/gpu_check_more.sh's, for a second call.
#
# Every step's output goes to OUT_DIR/logs/<step>.log and its JSON result to OUT_DIR/<step>.json;
# OUT_DIR/steps.tsv records each step's status, and the last thing printed is the table of all of
# them (`python -m gpt2repro.bench table OUT_DIR`), also saved as OUT_DIR/table.md. A step that
# fails or runs out of time is recorded as such and the others still run; one stopped at its limit
# gets SIGTERM first and prints every thread's stack (where it was), and the table shows how far it
# got (its compile time so far). Exit status 0 when every step passed, 1 otherwise, 2 when no CUDA
# device is visible. Settings (GPU_CHECK_DEVICE=cpu, GPU_CHECK_DRY_RUN=1, GPU_CHECK_BUDGET_S,
# PYTHON, OUT): bench/gpu_check_lib.sh. The CPU mode runs the same steps with a tiny eager model in
# under a minute (tests/test_gpu_check.py).
#
# Time: each step has an allowance; their sum is the budget for the whole script. A step may also
# use what earlier steps left unused, but never the allowances of the steps after it, so the script
# ends within the budget whatever happens (tests/test_gpu_check.py keeps it < 540 s). No GPU has run
# this yet: the allowances are estimates, derived here from CPU measurements (torch 2.13, inductor,
# 2 Xeon cores) and scaled as stated; the first run's `wall s` column replaces them.
#   Measured on CPU: a whole 12-layer GPT-2-shaped forward+backward graph compiles in 21.4 s with
#   the loss in 8 chunks and 50.3 s in 64 chunks (the loss alone: 4.7 s at 4 chunks, 63.9 s at 64);
#   the 2-layer FSDP2 per-block compile's first step took 5.4 s.
#   Scaled to a GPU: inductor's tracing, lowering and scheduling are the same single-threaded Python
#   work on either device; Triton's code generation and ptxas run in parallel compile workers on the
#   machine's 16 cores, and autotuning adds benchmark runs. So a cold 124M compile is taken as 1-2x
#   the CPU figure: 21-43 s with a loss whose compile is flat in the chunk count, 50-100 s if the
#   loss is still unrolled into 64 chunks at B=64. Around it, per `bench train` process: importing
#   torch and dynamo ~10 s, building and moving 124M ~3 s, CUDA and cuBLAS start-up ~3 s, 13 steps
#   of 64K tokens at ~0.12 s compiled (~40% MFU of 989 TFLOP/s) or ~0.35 s eager ~2-5 s.
#   An A/B step recompiles its graph (the FX graph cache key changes) but its unchanged kernels hit
#   the on-disk Triton cache: taken as 0.5-0.7x the cold compile.
STEPS=(
  env:15                        # python and torch imports ~5 s, nvidia-smi
  compile_smoke:20              # import ~5 s + a cold compile of one small kernel (launcher build)
  train_124m_b64_eager:40       # ~20 s estimated: 16 s start-up + 13 eager steps
  train_124m_b64:145            # 41-120 s estimated: start-up + cold compile (above) + 13 steps
  train_124m_b64_full_logits:75 # 35-90 s: start-up + 0.5-0.7x recompile; the 6.6 GB logits fit
  train_124m_b64_attn_cudnn:75  # 35-90 s: as above, only the attention kernel changes
  gpu_tests:115                 # 80-140 s: pytest start-up, a tiny compiled run, 124M at B=16
  loader:15                     # ~5 s: 300 pinned-memory batches
  core:24                       # ~15 s: import + a random 124M, 150 generated CORE items, eager
  table:10                      # ~1 s, no torch
)
set -uo pipefail
CHECK=gpu_check
# shellcheck source=bench/gpu_check_lib.sh
source "$(dirname "$0")/gpu_check_lib.sh"
check_setup "$@"
train_settings

env_step 1
compile_smoke_step

# 124M at B=64 (the recipe's micro-batch, no accumulation): eager first, so a broken compiler still
# leaves the headline step time; then compiled, which fills the kernel cache the A/Bs reuse.
train_step train_124m_b64_eager gpt2_124m 64 --train.compile=false
if ((SMOKE_FAILED)); then
  skip_step train_124m_b64 "the compile smoke failed"
else
  train_step train_124m_b64 gpt2_124m 64 # eager in cpu mode: the script's logic, not compile
fi
# The full [B*T, vocab] logits (6.6 GB in bf16 at B=64, plus their fp32 cross-entropy) against
# the chunked loss: fits in 141 GB, may OOM on 80 GB.
train_step train_124m_b64_full_logits gpt2_124m 64 --train.loss_chunk=0
# The SDPA backend A/B: cuDNN's attention first (auto puts flash first), same shape and kernels.
train_step train_124m_b64_attn_cudnn gpt2_124m 64 --train.attention_backend=cudnn

if [[ $DRY != 1 ]] && ! "$PY" -c "import pytest" >/dev/null 2>&1; then # a bare box may lack it
  skip_step gpu_tests "pytest not installed"
elif [[ $MODE == cpu ]]; then
  skip_step gpu_tests "cpu mode"
else
  # tests/test_gpu.py only (the other gpu tests are for a longer session); -s: their tokens/s
  # line reaches the console; faulthandler_timeout prints the stacks of a test still running
  # shortly before the step's limit.
  stacks_at=$((ALLOW[gpu_tests] > 30 ? ALLOW[gpu_tests] - 15 : ALLOW[gpu_tests]))
  run_step gpu_tests "kind=tests" "$PY" -m pytest -q -s -m gpu -p no:cacheprovider \
    -o faulthandler_timeout=$stacks_at tests/test_gpu.py
fi

if [[ $MODE == cpu ]]; then
  run_step loader "kind=loader" "$PY" -m gpt2repro.bench loader --train.device=cpu --steps 20 \
    --warmup 2 --shards 2 --shard-tokens 100000 --train.micro_batch_size=8 --train.seq_len=32
else
  run_step loader "kind=loader" "$PY" -m gpt2repro.bench loader --steps 300 --train.device=cuda
fi

# CORE scoring (docs/benchmarks.md): packed vs one item per pass, random weights, generated items
# of the three kinds (no bundle, no download); eager, so no compile eats the allowance.
if [[ $MODE == cpu ]]; then
  run_step core "kind=core" "$PY" -m gpt2repro.bench core --bench-model tiny --train.device=cpu \
    --limit 6 --repeat 1 --out "$out/core.json"
else
  run_step core "kind=core" "$PY" -m gpt2repro.bench core --bench-model gpt2 --train.device=cuda \
    --limit 150 --repeat 1 --out "$out/core.json"
fi

check_finish
