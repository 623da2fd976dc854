# shellcheck shell=bash
# The machinery shared by bench/gpu_check.sh, bench/gpu_check_more.sh and bench/gpu_multi_check.sh
# (sourced, not run): settings, the output folder, the time budget, and running one step under
# its allowance. A script defines STEPS (name:seconds, in the order the steps run) and CHECK (its
# name in messages), sources this file, calls `check_setup "$@"`, runs its steps with run_step /
# skip_step / train_step, and ends with `check_finish`.
#
# Settings (environment): GPU_CHECK_DEVICE=cuda|cpu (cpu: a test of the script's logic on a CPU
# with a tiny model), GPU_CHECK_DRY_RUN=1 (print each step's command, write nothing),
# GPU_CHECK_BUDGET_S=N (scale the allowances to N seconds in all), PYTHON (the interpreter;
# default python3, else python, from PATH), OUT (the output folder when no argument names one).
#
# A step past its limit gets SIGTERM (the Python commands print every thread's stack on SIGTERM:
# faulthandler), then SIGKILL after a grace period inside its allowance; its log keeps what it
# printed so far, and the table reads its last progress line (gpu_results.py).
# shellcheck disable=SC2034 # variables read by the scripts that source this file
# shellcheck disable=SC2154 # STEPS and CHECK are set by those scripts

MODE=${GPU_CHECK_DEVICE:-cuda}
DRY=${GPU_CHECK_DRY_RUN:-0}
GRACE_S=5 # seconds between SIGTERM and SIGKILL, taken from the step's own limit

check_setup() { # check_setup [OUT_DIR]: settings, output folder, allowances; exits 2 on bad ones
  case $MODE in
    cuda | cpu) ;;
    *) echo "$CHECK: GPU_CHECK_DEVICE must be cuda or cpu, not '$MODE'" >&2; exit 2 ;;
  esac
  PY=${PYTHON:-$(command -v python3 || command -v python)}
  if [[ -z $PY ]]; then
    echo "$CHECK: no python3 or python on PATH (or set PYTHON=...)" >&2
    exit 2
  fi
  # The output folder, resolved before moving to the repository root (a relative OUT_DIR is
  # relative to where the script was started).
  if [[ $MODE == cpu ]]; then
    gpu=cpu
  else
    gpu=$(timeout 5 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    gpu=${gpu:-unknown-gpu}
    gpu=${gpu// /_}
  fi
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  out=${1:-${OUT:-$repo/bench/results/$(date +%Y-%m-%d)-$gpu${OUT_SUFFIX:-}}}
  if [[ $DRY != 1 ]]; then
    mkdir -p "$out/logs" || exit 2
    out=$(cd "$out" && pwd)
  fi
  cd "$repo" || exit 2
  log=$out/$CHECK.log
  tsv=$out/steps.tsv

  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
  # A crash (segfault, abort) in any Python step prints its stack too.
  export PYTHONFAULTHANDLER=1

  # GPU_CHECK_BUDGET_S scales every allowance (a slower GPU, or less time on the machine).
  local total=0 s a
  for s in "${STEPS[@]}"; do total=$((total + ${s##*:})); done
  budget=${GPU_CHECK_BUDGET_S:-$total}
  if ! [[ $budget =~ ^[0-9]+$ ]] || ((budget < 1)); then
    echo "$CHECK: GPU_CHECK_BUDGET_S must be a whole number of seconds, not '$budget'" >&2
    exit 2
  fi
  declare -gA ALLOW=()
  reserve=0 # the allowances of the steps not run yet
  for s in "${STEPS[@]}"; do
    a=$((${s##*:} * budget / total))
    ((a < 1)) && a=1
    ALLOW[${s%%:*}]=$a
    reserve=$((reserve + a))
  done
  BUDGET=$reserve
  failures=0
  COMPILE=true   # false in cpu mode, and when the compile smoke fails (compile_smoke_step)
  SMOKE_FAILED=0 # 1 when it failed: a step that only measures compilation is skipped
  say "$CHECK ($MODE): $gpu -> $out; budget ${BUDGET}s; $(git rev-parse --short HEAD 2>/dev/null || echo no-git)"
}

say() { # print and log one line
  if [[ $DRY == 1 ]]; then echo "$*"; else echo "$*" | tee -a "$log"; fi
}

show() { # the lines of a step's output worth seeing live; a JSON result as its key numbers
  local line k
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line == '{'*'}' ]]; then
      local parts=()
      for k in step_ms compile_s ms_per_batch tok_per_s mfu peak_mem_gib n_params packed_ex_per_s \
        speedup ok; do
        [[ $line =~ \"$k\":\ ([^,}]*) ]] && parts+=("$k ${BASH_REMATCH[1]}")
      done
      echo "   result: ${parts[*]}"
    elif [[ $line =~ tok/s|ex/s|[0-9]+\ (passed|failed|skipped|error)|Error|Killed|^bench:|^env:|^(FAIL|WARN)\ |^compile\ smoke|^Current\ thread|^Thread\ 0x|Timeout ]]; then
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
    echo "$CHECK: step '$name' is not in STEPS" >&2
    exit 2
  fi
  reserve=$((reserve - ALLOW[$name]))
  secs=$((BUDGET - SECONDS - reserve))
  ((secs < 1)) && secs=1
  [[ $DRY == 1 ]] && secs=${ALLOW[$name]}
}

step_status() { # step_status NAME: the status steps.tsv recorded for NAME (empty if none)
  [[ -f $tsv ]] || return 0
  awk -F '\t' -v n="$1" '$1 == n { s = $2 } END { print s }' "$tsv"
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
  # SIGTERM at `term` seconds, SIGKILL `grace` seconds later: both within the limit.
  local grace=$((secs / 5))
  ((grace > GRACE_S)) && grace=$GRACE_S
  ((grace < 1)) && grace=1
  local term=$((secs - grace))
  ((term < 1)) && term=1
  local steplog=$out/logs/$name.log t0 rc elapsed status
  t0=$(date +%s%N)
  echo "\$ $cmd" >"$steplog"
  timeout -s TERM -k "$grace" "$term" "$@" 2>&1 </dev/null | tee -a "$steplog" | show | tee -a "$log"
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
  elif ((rc == 124 || rc == 137)) && ((${elapsed%.*} >= term - 1)); then
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

env_step() { # env_step [GPUS]: the environment report; in cuda mode a blocker stops the script
  run_step env "kind=env" "$PY" bench/gpu_env.py env "$MODE" --gpus "${1:-1}"
  if [[ $MODE == cuda && $DRY != 1 && $(step_status env) != ok ]]; then
    cat "$out/logs/env.log"
    echo "$CHECK: stopped (the environment step failed; see above)"
    exit 2
  fi
}

compile_smoke_step() { # a ~10 s torch.compile on the device; if it fails, COMPILE=false after it
  if [[ $MODE == cpu ]]; then
    skip_step compile_smoke "cpu mode"
    COMPILE=false # inductor on a CPU: a C++ build, too slow for the script's test
    return
  fi
  if [[ $DRY == 1 ]]; then
    run_step compile_smoke "kind=smoke" "$PY" bench/gpu_env.py smoke "$MODE"
    return
  fi
  run_step compile_smoke "kind=smoke" "$PY" bench/gpu_env.py smoke "$MODE"
  if [[ $(step_status compile_smoke) != ok ]]; then
    COMPILE=false SMOKE_FAILED=1
    say "   torch.compile does not work here: the later steps run with --train.compile=false"
  fi
}

check_finish() { # the table, printed last and saved as table.md; exit status 0 when all passed
  say "$CHECK: $failures step(s) not ok; ${SECONDS}s so far; results in $out"
  take_allowance table
  if [[ $DRY == 1 ]]; then
    echo "== table (limit ${secs}s)"
    echo "   $PY -m gpt2repro.bench table $out --md $out/table.md"
    exit 0
  fi
  if ! timeout -s KILL "$secs" "$PY" -m gpt2repro.bench table "$out" --md "$out/table.md" \
    2>&1 </dev/null | tee -a "$log"; then
    echo "$CHECK: the table step failed (the JSON files and steps.tsv are in $out)" | tee -a "$log"
    failures=$((failures + 1))
  fi
  ((failures == 0))
  exit $?
}

# Training-step settings. GPU: the real shapes. CPU: a 2-layer, 32-wide model with a 1000-token
# vocab (padded to 1024 unless --model.pad_vocab_multiple=1, so every A/B still changes what it
# says), T=16, B/8, eager, 1 warm-up + 2 timed steps.
train_settings() {
  if [[ $MODE == cpu ]]; then
    T=16 B_DIV=8 WARMUP=1 STEPS_TIMED=2
    export OMP_NUM_THREADS=1 # a tiny model on a shared machine: more threads only contend
    TRAIN_ARGS=(--train.device=cpu --model.n_layer=2 --model.n_head=2 --model.n_embd=32
      --model.block_size=32 --model.vocab_size=1000)
  else
    T=1024 B_DIV=1 WARMUP=3 STEPS_TIMED=10
    TRAIN_ARGS=(--train.device=cuda)
  fi
}

train_step() { # train_step NAME CONFIG B [OVERRIDE...]: one `bench train` at micro-batch B, no accumulation
  local name=$1 config=$2 b=$(($3 / B_DIV)) warmup=${WARMUP} nsteps=${STEPS_TIMED}
  shift 3
  local compile=$COMPILE loss=chunked vocab=padded attn=auto o overrides=()
  for o in "$@"; do
    case $o in
      --train.compile=false) compile=false ;;
      --train.loss_chunk=0) loss=full ;;
      --model.pad_vocab_multiple=1) vocab=unpadded ;;
      --train.attention_backend=*) attn=${o#*=} ;;
      --warmup=*) [[ $MODE == cpu ]] || warmup=${o#*=}; continue ;;
      --steps=*) [[ $MODE == cpu ]] || nsteps=${o#*=}; continue ;;
    esac
    [[ $o == --train.compile=* ]] || overrides+=("$o")
  done
  [[ $DRY == 1 ]] || rm -f "$out/$name.json"
  run_step "$name" "kind=train config=$config B=$b compile=$compile loss=$loss vocab=$vocab attn=$attn" \
    "$PY" -m gpt2repro.bench train --config "configs/$config.toml" "${TRAIN_ARGS[@]}" \
    --train.seq_len="$T" --train.micro_batch_size=$b --train.total_batch_tokens=$((b * T)) \
    --train.compile="$compile" "${overrides[@]}" --warmup "$warmup" --steps "$nsteps" \
    --out "$out/$name.json"
}
