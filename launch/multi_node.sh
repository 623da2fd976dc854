#!/usr/bin/env bash
# Several nodes (run the same command on every node):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 launch/multi_node.sh --config configs/gpt2_124m.toml
# Uses torchrun's c10d rendezvous on MASTER_ADDR:MASTER_PORT. run.dir must be on a filesystem every
# node can read (checkpoints are written by global rank 0 and read by all ranks on resume).
# NCCL tips: export NCCL_SOCKET_IFNAME=<your interface>; NCCL_DEBUG=WARN to diagnose hangs.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}"
MASTER_PORT=${MASTER_PORT:-29500}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
NPROC=${NPROC:-$("$PY" -c "import torch; print(max(1, torch.cuda.device_count()))")}
exec "$PY" -m torch.distributed.run \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC" \
  --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="${RDZV_ID:-gpt2repro}" \
  train.py "$@"
