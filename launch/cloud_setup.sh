#!/usr/bin/env bash
# A fresh Ubuntu GPU node to a running GPT-2 124M job, from a clone of this repository:
#   git clone <this repository> gpt2repro && cd gpt2repro && launch/cloud_setup.sh [--section.key=value ...]
# 1. system packages (apt-get): Python 3.11+ with venv and headers, git, tmux, a C compiler
#    (torch.compile's Triton kernels build a small C launcher);
# 2. a venv (.venv) with a CUDA build of torch and this package with its data and wandb extras,
#    then a check that torch sees the GPUs;
# 3. in a tmux session (nohup where there is no tmux) that outlives the ssh connection: FineWeb-Edu
#    sample-10BT, HellaSwag and (when eval.core_every > 0) CORE eval bundle preparation (resumable;
#    done work is skipped), then training with launch/restart_until_done.sh +
#    launch/single_node.sh on every GPU, logged to logs/<config>.log;
# 4. how to watch it: the log, the live report, wandb.
# Running it again is safe: packages, venv and data are kept, and training resumes (resume=auto).
# Arguments go to the trainer (e.g. --log.wandb_mode=online: the wandb login is checked before the
# job starts). Environment:
#   TORCH_SPEC   the torch build, as in the Makefile (tools/install_torch.py; default `auto`: with the
#                NVIDIA driver, the default index's CUDA build); e.g. "torch==2.13.0 --index-url
#                https://download.pytorch.org/whl/cu128" for another CUDA; "none" keeps the venv's torch
#   MIN_FREE_GB  free disk data preparation needs (default: 5 GB per billion tokens of the sample:
#                2 bytes a token of shards plus the download and datasets' cache; 50 for 10BT)
#   CONFIG       (configs/gpt2_124m.toml)   SAMPLE  FineWeb-Edu sample (default: the one data.dir is named
#                after, data/edu_fineweb100B -> 100BT, as data_prep/fineweb.py names its default --out-dir; else 10BT)
#   VENV (.venv) BASE_PYTHON (python3 when it is 3.11+, else python3.11)   SESSION  tmux session (gpt2repro)
#   SKIP_APT=1   packages are installed already (no sudo needed)   NPROC  processes (default: every GPU)
# DRY_RUN=1 prints every command instead of running it.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=dry_run.sh
source launch/dry_run.sh

CONFIG=${CONFIG:-configs/gpt2_124m.toml}
SESSION=${SESSION:-gpt2repro}
VENV=${VENV:-.venv}
PY=$VENV/bin/python
LOG=logs/$(basename "$CONFIG" .toml).log
# One default for both entry points: the Makefile's `TORCH_SPEC ?= ...` line.
TORCH_SPEC=${TORCH_SPEC:-$(sed -n 's/^TORCH_SPEC ?= //p' Makefile)}
if [ -z "${BASE_PYTHON:-}" ]; then
  if python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    BASE_PYTHON=python3
  else
    BASE_PYTHON=python3.11  # Ubuntu 22.04's python3 is 3.10; gpt2repro needs 3.11+ (tomllib)
  fi
fi

# say TEXT: a line for the user; a `# ` comment under DRY_RUN, so the output stays a script.
say() { if dry_run; then echo "# $*" | sed 's/ $//'; else echo "$*"; fi; }
# fail TEXT: stop with one line (under DRY_RUN: note it and go on, to show the rest).
fail() {
  if dry_run; then echo "# cloud_setup: would stop here: $*"; else echo "cloud_setup: $*" >&2; exit 1; fi
}

if ! command -v nvidia-smi >/dev/null 2>&1; then
  fail "no NVIDIA driver (nvidia-smi not found): start the node from a GPU image with the driver installed"
fi
if command -v tmux >/dev/null 2>&1 && tmux has-session -t "$SESSION" 2>/dev/null; then
  fail "tmux session $SESSION is running already: look at it with tmux attach -t $SESSION," \
    "or stop it (tmux kill-session -t $SESSION) and run this again"
fi

# 1. system packages
if [ "${SKIP_APT:-0}" != 1 ]; then
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo); fi
  run "${SUDO[@]}" apt-get update
  run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "$BASE_PYTHON" "$BASE_PYTHON-venv" "$BASE_PYTHON-dev" git tmux build-essential ca-certificates
fi

# 2. venv, torch, this package
if [ ! -x "$PY" ]; then run "$BASE_PYTHON" -m venv "$VENV"; fi
run "$PY" -m pip install --upgrade pip
run "$PY" tools/install_torch.py "$TORCH_SPEC"
run "$PY" -m pip install -e ".[data,wandb]"
if ! run "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  fail "torch in $VENV sees no GPU: install the build for the CUDA version nvidia-smi shows," \
    "e.g. TORCH_SPEC=\"torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128\" launch/cloud_setup.sh"
fi

# 3. data preparation and training, in the background
# config_get KEY [trainer arguments]: KEY's value in CONFIG, read by the package's own reader;
# under DRY_RUN before the venv exists, by PYTHON or python3.
config_get() {
  local key=$1 py=$PY
  shift
  if [ ! -x "$py" ]; then py=${PYTHON:-python3}; fi
  "$py" -m gpt2repro.config --config "$CONFIG" "$@" --get "$key"
}
# wandb online needs a login on this machine: checked now, not after hours of data preparation
# (the trainer would refuse it at start-up, exit 2, and restart_until_done.sh would stop).
if [ "$(config_get log.wandb_mode "$@")" = online ]; then
  login_py=$PY
  if [ ! -x "$login_py" ]; then login_py=${PYTHON:-python3}; fi
  if ! login_error=$("$login_py" -m gpt2repro.services wandb-login 2>&1 >/dev/null); then
    fail "${login_error#error: } (then run this again)"
  fi
fi
data_dir=$(config_get data.dir "$@")
hellaswag_file=$(config_get eval.hellaswag_file "$@")
core_every=$(config_get eval.core_every "$@")
core_bundle=$(config_get eval.core_bundle "$@")
# CORE in the loop reads eval.core_bundle; data_prep/core.py writes OUT_DIR/eval_bundle (checked now,
# not when the trainer refuses a missing bundle after hours of data preparation).
if [ "$core_every" != 0 ] && [ "$(basename "$core_bundle")" != eval_bundle ] \
  && [ ! -f "$core_bundle/core.yaml" ]; then
  fail "eval.core_bundle=$core_bundle holds no core.yaml and data_prep/core.py writes only" \
    "<out-dir>/eval_bundle: point eval.core_bundle at such a folder, prepare it yourself, or" \
    "pass --eval.core_every=0"
fi
run_dir=$(config_get run.dir "$@")
if [ -z "${SAMPLE:-}" ]; then
  # The sample data.dir is named after (fineweb.py's default --out-dir is data/edu_fineweb<N>B):
  # the larger configs read edu_fineweb100B, and 10BT written there would be a tenth of their data.
  if [[ $(basename "$data_dir") =~ ^edu_fineweb([0-9]+)B$ ]]; then SAMPLE=${BASH_REMATCH[1]}BT; else SAMPLE=10BT; fi
fi
# Free disk for data preparation, before hours of downloading (skipped when the shards are done).
if ! grep -qs '"complete": true' "$data_dir/manifest.json"; then
  need_gb=${MIN_FREE_GB:-$(( ${SAMPLE%BT} * 5 ))}
  probe=$data_dir
  while [ ! -d "$probe" ]; do probe=$(dirname "$probe"); done
  free_gb=$(( $(df -Pk "$probe" | awk 'NR == 2 {print $4}') / 1024 / 1024 ))
  if [ "$free_gb" -lt "$need_gb" ]; then
    fail "only $free_gb GB free under $probe, and FineWeb-Edu $SAMPLE needs about $need_gb GB" \
      "(shards, download and cache): free space, give a larger disk with --data.dir=PATH, or" \
      "prepare the shards on another machine and copy $data_dir here (docs/data.md)"
  fi
fi
train_env=(env "PYTHON=$PY")
if [ -n "${NPROC:-}" ]; then train_env+=("NPROC=$NPROC"); fi
# The job's paths are relative to the repository: it starts there, wherever tmux or nohup would.
job="cd $(print_cmd "$PWD") || exit 1; set -o pipefail; { $(print_cmd "$PY" data_prep/fineweb.py --dataset fineweb-edu --sample "$SAMPLE" --out-dir "$data_dir")"
job+=" && $(print_cmd "$PY" data_prep/hellaswag.py --out-dir "$(dirname "$hellaswag_file")")"
if [ "$core_every" != 0 ] && [ "$(basename "$core_bundle")" = eval_bundle ]; then
  job+=" && $(print_cmd "$PY" data_prep/core.py --out-dir "$(dirname "$core_bundle")")"
fi
job+=" && $(print_cmd "${train_env[@]}" launch/restart_until_done.sh launch/single_node.sh --config "$CONFIG" "$@")"
job+="; } 2>&1 | tee -a $(print_cmd "$LOG")"
run mkdir -p "$(dirname "$LOG")"
if command -v tmux >/dev/null 2>&1; then
  run tmux new-session -d -s "$SESSION" -c "$PWD" bash -c "$job"
  where="tmux session $SESSION (look: tmux attach -t $SESSION; leave it running: Ctrl-b d)"
elif dry_run; then
  echo "$(print_cmd nohup bash -c "$job") >/dev/null 2>&1 &"
  where="the background (nohup)"
else
  nohup bash -c "$job" >/dev/null 2>&1 &
  where="the background (nohup, process $!)"
fi

# 4. how to watch it
say ""
say "Started in $where: data preparation first (resumable), then training; $run_dir/DONE marks the end."
say "  in:      cd $PWD"
say "  log:     tail -f $LOG"
say "  report:  $PY -m http.server 8000 --bind 127.0.0.1 --directory $run_dir"
say "           then on your laptop: ssh -N -L 8000:127.0.0.1:8000 <user>@<this node>"
say "           and open http://localhost:8000/report.html (it reloads itself while the run goes on)"
say "  wandb:   off unless --log.wandb_mode=online (after $VENV/bin/wandb login) or offline; the log"
say "           prints the run's URL; see docs/wandb.md"
say "  stop:    tmux kill-session -t $SESSION (or kill the nohup process); run this script again to"
say "           resume from the newest checkpoint"
