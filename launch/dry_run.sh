# shellcheck shell=bash
# Sourced by every launch script. With DRY_RUN=1, `run` and `run_exec` print the command they are
# given, one line each, quoted so it can be pasted into a shell, instead of running it; notes are
# printed as `# ...` lines, so the whole output reads as a shell script. Read-only look-ups (the GPU
# count, run.dir, the SLURM head node's address) still run: the printed commands depend on them.
# Every script sources it from the repository root (after cd), which the relative paths assume.

# PY: the Python that runs the project: $PYTHON, else the repository's .venv, else python3.
# shellcheck disable=SC2034  # used by the scripts that source this file
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}

# dry_run: true when DRY_RUN is set to anything but "" or 0.
dry_run() { [ -n "${DRY_RUN:-}" ] && [ "${DRY_RUN}" != 0 ]; }

# print_cmd CMD...: CMD on one line; a word with characters the shell would read specially is
# put in single quotes (bash's ${w@Q}), the others are printed as they are.
print_cmd() {
  local out="" w
  for w in "$@"; do
    if [[ -n $w && $w != *[!A-Za-z0-9_./=:,+@%^-]* ]]; then out+=" $w"; else out+=" ${w@Q}"; fi
  done
  echo "${out# }"
}

# run CMD...: run CMD, or print it under DRY_RUN.
run() {
  if dry_run; then print_cmd "$@"; else "$@"; fi
}

# run_exec CMD...: replace this shell by CMD, so signals (SIGTERM from a scheduler, Ctrl-C) reach it
# directly; under DRY_RUN print it and exit 0.
run_exec() {
  if dry_run; then
    print_cmd "$@"
    exit 0
  fi
  exec "$@"
}
