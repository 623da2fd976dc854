#!/usr/bin/env bash
# One node, all its GPUs:  launch/single_node.sh --config configs/gpt2_124m.toml [--section.key=value ...]
# NPROC overrides the number of processes (default: the number of visible GPUs, else 1).
# DRY_RUN=1 prints the torchrun command instead of running it.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=dry_run.sh
source launch/dry_run.sh
if [ -z "${NPROC:-}" ]; then
  NPROC=$("$PY" -c "import torch; print(max(1, torch.cuda.device_count()))")
fi
run_exec "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" train.py "$@"
