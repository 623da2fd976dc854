#!/usr/bin/env bash
# The one prepared GPU check: everything a session with one GPU should measure, in under 9 minutes.
#
#   bash bench/gpu_check.sh [OUT_DIR]      # OUT_DIR defaults to $OUT, else bench/results/<date>-<gpu>/
#
# Steps (the STEPS list below, in order): the environment; the gpu-marked tests; GPT-2 124M
# training steps (bf16, torch.compile) at B=16/32/64; at B=64 the A/B of each change that a flag can
# undo (full logits + cross-entropy instead of the chunked loss, eager instead of compiled, the
# 50257-row vocab instead of 50304); a 350M step; a 1.5B step; HellaSwag scoring speed; the loader.
# Every step's output goes to OUT_DIR/logs/<step>.log and its JSON result to OUT_DIR/<step>.json;
# OUT_DIR/steps.tsv records each step's status, and the last thing printed is the table of all of
# them (`python -m gpt2repro.bench table OUT_DIR`), also saved as OUT_DIR/table.md. A step that
# fails or runs out of time is recorded as such and the others still run. Exit status 0 when every
# step passed, 1 otherwise, 2 when no CUDA device is visible.
#
# Time: each step has an allowance (STEPS); their sum is the budget for the whole script. A step
# may also use what earlier steps left unused, but never the allowances of the steps after it, so
# the script ends within the budget whatever happens (tests/test_gpu_check.py keeps it < 540 s).
#
# GPU_CHECK_DEVICE=cpu runs the same steps on the CPU with a tiny model, eager, a few steps and
# without the gpu tests: a test of this script's logic that takes under a minute
# (tests/test_gpu_check.py). GPU_CHECK_DRY_RUN=1 prints each step's command and writes nothing.
# GPU_CHECK_BUDGET_S=N scales the allowances to N seconds in all. PYTHON picks the interpreter
# (default: python3, else python, from PATH).
set -uo pipefail

# name:allowance in seconds, in the order the steps run
STEPS=(
  env:15
  gpu_tests:80
  train_124m_b16:50
  train_124m_b32:35
  train_124m_b64:35
  train_124m_b64_full_logits:35
  train_124m_b64_eager:20
  train_124m_b64_vocab50257:35
  train_350m_b64:50
  train_1558m_b16:100
  hellaswag:30
  loader:15
  table:10
)

MODE=${GPU_CHECK_DEVICE:-cuda}
DRY=${GPU_CHECK_DRY_RUN:-0}
case $MODE in
  cuda | cpu) ;;
  *) echo "gpu_check: GPU_CHECK_DEVICE must be cuda or cpu, not '$MODE'" >&2; exit 2 ;;
esac
PY=${PYTHON:-$(command -v python3 || command -v python)}
if [[ -z $PY ]]; then
  echo "gpu_check: no python3 or python on PATH (or set PYTHON=...)" >&2
  exit 2
fi

# The output folder, resolved before moving to the repository root (a relative OUT_DIR is relative
# to where the script was started).
if [[ $MODE == cpu ]]; then
  gpu=cpu
else
  gpu=$(timeout 5 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
  gpu=${gpu:-unknown-gpu}
  gpu=${gpu// /_}
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-${OUT:-$repo/bench/results/$(date +%Y-%m-%d)-$gpu}}
if [[ $DRY != 1 ]]; then
  mkdir -p "$out/logs" || exit 2
  out=$(cd "$out" && pwd)
fi
cd "$repo" || exit 2
log=$out/gpu_check.log
tsv=$out/steps.tsv

export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled

# GPU_CHECK_BUDGET_S scales every allowance (a slower GPU, or less time on the machine).
total=0
for s in "${STEPS[@]}"; do total=$((total + ${s##*:})); done
budget=${GPU_CHECK_BUDGET_S:-$total}
if ! [[ $budget =~ ^[0-9]+$ ]] || ((budget < 1)); then
  echo "gpu_check: GPU_CHECK_BUDGET_S must be a whole number of seconds, not '$budget'" >&2
  exit 2
fi
declare -A ALLOW=()
reserve=0 # the allowances of the steps not run yet
for s in "${STEPS[@]}"; do
  a=$((${s##*:} * budget / total))
  ((a < 1)) && a=1
  ALLOW[${s%%:*}]=$a
  reserve=$((reserve + a))
done
BUDGET=$reserve
failures=0

say() { # print and log one line
  if [[ $DRY == 1 ]]; then echo "$*"; else echo "$*" | tee -a "$log"; fi
}

show() { # the lines of a step's output worth seeing live; a JSON result as its key numbers
  local line k
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line == '{'*'}' ]]; then
      local parts=()
      for k in step_ms ms_per_batch tok_per_s mfu peak_mem_gib n_params packed_ex_per_s speedup; do
        [[ $line =~ \"$k\":\ ([^,}]*) ]] && parts+=("$k ${BASH_REMATCH[1]}")
      done
      echo "   result: ${parts[*]}"
    elif [[ $line =~ tok/s|ex/s|[0-9]+\ (passed|failed|skipped|error)|Error|Killed ]]; then
      echo "   ${line:0:200}"
    fi
  done
}

record() { # record NAME STATUS RC ELAPSED_S TIMEOUT_S [PLAN]
  [[ $DRY == 1 ]] && return
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${ALLOW[$1]}" "${6:-}" >>"$tsv"
}

take_allowance() { # sets `secs`: NAME's allowance plus what earlier steps left unused
  local name=$1
  if [[ -z ${ALLOW[$name]:-} ]]; then
    echo "gpu_check: step '$name' is not in STEPS" >&2
    exit 2
  fi
  reserve=$((reserve - ALLOW[$name]))
  secs=$((BUDGET - SECONDS - reserve))
  ((secs < 1)) && secs=1
  [[ $DRY == 1 ]] && secs=${ALLOW[$name]}
}

run_step() { # run_step NAME PLAN CMD...: CMD under this step's time limit, output to logs/NAME.log
  local name=$1 plan=$2 secs
  shift 2
  take_allowance "$name"
  say "== $name (limit ${secs}s)"
  local cmd
  cmd=$(printf '%q ' "$@")
  if [[ $DRY == 1 ]]; then
    echo "   $cmd"
    return
  fi
  local steplog=$out/logs/$name.log t0 rc elapsed status
  t0=$(date +%s%N)
  echo "\$ $cmd" >"$steplog"
  timeout -s KILL "$secs" "$@" 2>&1 </dev/null | tee -a "$steplog" | show | tee -a "$log"
  rc=${PIPESTATUS[0]}
  elapsed=$((($(date +%s%N) - t0) / 1000000))
  elapsed=$((elapsed / 1000)).$(printf '%03d' $((elapsed % 1000)))
  if ((rc == 0)); then
    status=ok
    [[ $plan == kind=train* && ! -s $out/$name.json ]] && status=failed # exited 0, wrote no result
    # a result printed as the last JSON line (bench loader) becomes NAME.json like --out's
    if [[ ! -s $out/$name.json ]] && grep -qE '^\{.*\}$' "$steplog"; then
      grep -E '^\{.*\}$' "$steplog" | tail -n 1 >"$out/$name.json"
    fi
  elif ((rc == 124 || rc == 137)) && ((${elapsed%.*} >= secs - 1)); then
    status=timeout
  else
    status=failed
  fi
  [[ $status == ok ]] || failures=$((failures + 1))
  record "$name" "$status" "$rc" "$elapsed" "$secs" "$plan"
  say "   -> $status (rc $rc, ${elapsed}s)"
}

skip_step() { # skip_step NAME WHY
  take_allowance "$1"
  say "== $1: skipped ($2)"
  record "$1" skipped "" 0 0 "why=${2// /_}"
}

# Training-step settings. GPU: the real shapes. CPU: a 2-layer, 32-wide model with a 1000-token
# vocab (padded to 1024 unless --model.pad_vocab_multiple=1, so every A/B still changes what it
# says), T=16, B/8, eager, 1 warm-up + 2 timed steps.
if [[ $MODE == cpu ]]; then
  T=16 B_DIV=8 WARMUP=1 STEPS_TIMED=2
  export OMP_NUM_THREADS=1 # a tiny model on a shared machine: more threads only contend
  TRAIN_ARGS=(--train.device=cpu --model.n_layer=2 --model.n_head=2 --model.n_embd=32 --model.block_size=32
    --model.vocab_size=1000)
else
  T=1024 B_DIV=1 WARMUP=3 STEPS_TIMED=10
  TRAIN_ARGS=(--train.device=cuda)
fi

train_step() { # train_step NAME CONFIG B [OVERRIDE...]: one `bench train` at micro-batch B, no accumulation
  local name=$1 config=$2 b=$(($3 / B_DIV)) warmup=${WARMUP} steps=${STEPS_TIMED}
  shift 3
  local compile=true loss=chunked vocab=padded o overrides=()
  for o in "$@"; do
    case $o in
      --train.compile=false) compile=false ;;
      --train.loss_chunk=0) loss=full ;;
      --model.pad_vocab_multiple=1) vocab=unpadded ;;
      --warmup=*) [[ $MODE == cpu ]] || warmup=${o#*=}; continue ;;
      --steps=*) [[ $MODE == cpu ]] || steps=${o#*=}; continue ;;
    esac
    [[ $o == --train.compile=* ]] || overrides+=("$o")
  done
  [[ $MODE == cpu ]] && compile=false # inductor on a CPU: a C++ build, too slow for the test
  [[ $DRY == 1 ]] || rm -f "$out/$name.json"
  run_step "$name" "kind=train config=$config B=$b compile=$compile loss=$loss vocab=$vocab" \
    "$PY" -m gpt2repro.bench train --config "configs/$config.toml" "${TRAIN_ARGS[@]}" \
    --train.seq_len=$T --train.micro_batch_size=$b --train.total_batch_tokens=$((b * T)) \
    --train.compile=$compile "${overrides[@]}" --warmup "$warmup" --steps "$steps" \
    --out "$out/$name.json"
}

say "gpu_check ($MODE): $gpu -> $out; budget ${BUDGET}s; $(git rev-parse --short HEAD 2>/dev/null || echo no-git)"

run_step env "kind=env" "$PY" bench/gpu_env.py "$MODE"
if [[ $MODE == cuda && $DRY != 1 && $(tail -n 1 "$tsv" | cut -f 2) != ok ]]; then
  cat "$out/logs/env.log"
  echo "gpu_check: stopped (the environment step failed; see above)"
  exit 2
fi

if [[ $DRY != 1 ]] && ! "$PY" -c "import pytest" >/dev/null 2>&1; then # a bare box may lack it
  skip_step gpu_tests "pytest not installed"
elif [[ $MODE == cpu ]]; then
  skip_step gpu_tests "cpu mode"
else
  # -s: the tests' own tokens/s lines reach the console
  run_step gpu_tests "kind=tests" "$PY" -m pytest -q -s -m gpu -p no:cacheprovider tests
fi

train_step train_124m_b16 gpt2_124m 16
train_step train_124m_b32 gpt2_124m 32
train_step train_124m_b64 gpt2_124m 64
# The A/B of each change that a flag undoes, against train_124m_b64. The full [B*T, vocab] logits
# (6.6 GB in bf16 at B=64, plus their fp32 cross-entropy) fit in 141 GB, but may OOM on 80 GB.
train_step train_124m_b64_full_logits gpt2_124m 64 --train.loss_chunk=0
train_step train_124m_b64_eager gpt2_124m 64 --train.compile=false
train_step train_124m_b64_vocab50257 gpt2_124m 64 --model.pad_vocab_multiple=1
# 350M at its recipe's B=64: about 6 GB of weights/grads/AdamW + ~60 GB of activations.
train_step train_350m_b64 gpt2_350m 64 --warmup=2 --steps=8
# 1.5B at llm.c's B=16 without activation checkpointing: 25 GB of fp32 weights, grads and AdamW
# state + ~45-65 GB of bf16 activations (48 layers x 16K tokens x ~36-50 bytes x 1600) < 141 GB.
train_step train_1558m_b16 gpt2_1558m 16 --warmup=2 --steps=4

[[ $DRY == 1 ]] || rm -f "$out/hellaswag.json"
if [[ $MODE == cpu ]]; then
  run_step hellaswag "kind=hellaswag" "$PY" -m gpt2repro.bench hellaswag --bench-model tiny \
    --train.device=cpu --limit 4 --eval.batch_examples=4 --out "$out/hellaswag.json"
  run_step loader "kind=loader" "$PY" -m gpt2repro.bench loader --train.device=cpu --steps 20 \
    --warmup 2 --shards 2 --shard-tokens 100000 --train.micro_batch_size=8 --train.seq_len=32
else
  run_step hellaswag "kind=hellaswag" "$PY" -m gpt2repro.bench hellaswag --bench-model gpt2 \
    --train.device=cuda --limit 2000 --out "$out/hellaswag.json"
  run_step loader "kind=loader" "$PY" -m gpt2repro.bench loader --steps 300 --train.device=cuda
fi

say "gpu_check: $failures step(s) not ok; ${SECONDS}s so far; results in $out"
take_allowance table
if [[ $DRY == 1 ]]; then
  echo "== table (limit ${secs}s)"
  echo "   $PY -m gpt2repro.bench table $out --md $out/table.md"
  exit 0
fi
if ! timeout -s KILL "$secs" "$PY" -m gpt2repro.bench table "$out" --md "$out/table.md" \
  2>&1 </dev/null | tee -a "$log"; then
  echo "gpu_check: the table step failed (the JSON files and steps.tsv are in $out)" | tee -a "$log"
  failures=$((failures + 1))
fi
((failures == 0))
