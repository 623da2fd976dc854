#!/usr/bin/env bash
# Run a launcher again and again until it succeeds and the run directory holds DONE:
#   launch/restart_until_done.sh launch/single_node.sh --config configs/gpt2_124m.toml
# The first attempt always runs, so a finished run given a larger train.max_steps (with
# --checkpoint.allow_changes=train.max_steps) continues; the trainer itself says when a run is
# already complete. Each attempt resumes from the newest valid checkpoint (checkpoint.resume=auto);
# a resume mode given by the user (restart, never, a checkpoint path) is used by the first attempt
# only, and the script says so (later attempts continue what it started). An input error (a
# config key, a missing data directory, a run directory another job holds locked, as when this
# script is started twice: a gpt2repro UserError) stops at once, as restarting cannot fix it: the
# launcher's exit status 2, or, because torchrun reports any failed worker as
# status 1, a line in the file GPT2REPRO_INPUT_ERROR_FILE names (this script sets it to a fresh
# temporary file; gpt2repro.errors.run_cli writes the error there). MAX_ATTEMPTS (100) and
# DELAY (10 s between attempts) are read from the environment. DRY_RUN=1 prints the command of an
# attempt, then what the launcher would run (it is given DRY_RUN=1 too), and runs nothing.
# shellcheck source-path=SCRIPTDIR
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
# shellcheck source=dry_run.sh
source launch/dry_run.sh
MAX_ATTEMPTS=${MAX_ATTEMPTS:-100}
DELAY=${DELAY:-10}
if [ $# -lt 1 ]; then
  echo "usage: launch/restart_until_done.sh LAUNCHER [trainer arguments]" >&2; exit 2
fi
launcher=$1; shift
run_dir=$("$PY" -m gpt2repro.config "$@" --get run.dir) || exit 2
mode=$("$PY" -m gpt2repro.config "$@" --get checkpoint.resume) || exit 2
first=(--checkpoint.resume=auto)  # what the first attempt adds; later ones add the same
note=""
if [ "$mode" != auto ]; then
  first=()  # the user's own mode (from the arguments or the config), for the first attempt
  note="restart_until_done: checkpoint.resume=$mode is used by the first attempt only; later attempts continue that run with --checkpoint.resume=auto"
fi
if dry_run; then
  [ -n "$note" ] && echo "# $note"
  echo "# restart_until_done: up to $MAX_ATTEMPTS attempts, ${DELAY}s apart, until $run_dir/DONE exists (exit status 2 stops); each attempt runs:"
  print_cmd "$launcher" "$@" ${first[@]+"${first[@]}"}
  echo "# which runs:"
  DRY_RUN=1 "$launcher" "$@" ${first[@]+"${first[@]}"}
  exit $?
fi
error_dir=$(mktemp -d) || exit 1
trap 'rm -rf "$error_dir"' EXIT
export GPT2REPRO_INPUT_ERROR_FILE=$error_dir/input_error
[ -n "$note" ] && echo "$note"
for attempt in $(seq 1 "$MAX_ATTEMPTS"); do
  echo "restart_until_done: attempt $attempt/$MAX_ATTEMPTS"
  "$launcher" "$@" ${first[@]+"${first[@]}"}
  status=$?
  first=(--checkpoint.resume=auto)
  if [ -e "$GPT2REPRO_INPUT_ERROR_FILE" ]; then  # a worker's input error, whatever torchrun says
    head -n 1 "$GPT2REPRO_INPUT_ERROR_FILE"
    echo "restart_until_done: input error (exit status $status); not retrying"; exit 2
  fi
  if [ "$status" -eq 2 ]; then echo "restart_until_done: input error (exit 2); not retrying"; exit 2; fi
  if [ "$status" -eq 0 ] && [ -f "$run_dir/DONE" ]; then echo "restart_until_done: $run_dir/DONE"; exit 0; fi
  echo "restart_until_done: exit status $status; restarting in ${DELAY}s"
  sleep "$DELAY"
done
echo "restart_until_done: gave up after $MAX_ATTEMPTS attempts"; exit 1
