#!/usr/bin/env bash
# Several nodes: run the same command on every node,
#   NNODES=2 MASTER_ADDR=10.0.0.1 launch/multi_node.sh --config configs/gpt2_124m.toml
# torchrun's c10d rendezvous on MASTER_ADDR:MASTER_PORT (default 29500) gathers the nodes and
# numbers them in the order they join (torchrun ignores --node_rank with c10d, so none is needed;
# global rank 0 may land on any node). MASTER_ADDR: an address of one of the nodes that every node
# can reach (not localhost, unless all "nodes" are this machine). run.dir must be on a filesystem
# every node can read (checkpoints are written by global rank 0 and read by all ranks on resume).
# NPROC: processes per node (default: the visible GPUs, else 1). RDZV_ID: the rendezvous id
# (default gpt2repro; give concurrent jobs different ids). NCCL variables to set: docs/launch.md.
# DRY_RUN=1 prints the torchrun command instead of running it.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=dry_run.sh
source launch/dry_run.sh
: "${NNODES:?set NNODES (the number of nodes)}"
: "${MASTER_ADDR:?set MASTER_ADDR (an address of one node that every node can reach)}"
MASTER_PORT=${MASTER_PORT:-29500}
NPROC=${NPROC:-$("$PY" -c "import torch; print(max(1, torch.cuda.device_count()))")}
run_exec "$PY" -m torch.distributed.run \
  --nnodes="$NNODES" --nproc_per_node="$NPROC" \
  --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="${RDZV_ID:-gpt2repro}" \
  train.py "$@"
