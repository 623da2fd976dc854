#!/usr/bin/env bash
# One prepared GPU check (about 5-8 minutes on one H100/H200), run from the repository root:
#   bash bench/gpu_check.sh [OUT_DIR]
# 1. the gpu-marked tests; 2. GPT-2 124M bf16 + torch.compile training step on synthetic tokens
# (tokens/s, MFU, peak memory), with and without the padded vocab; 3. HellaSwag scoring speed for
# a 124M-shaped model on synthetic examples; 4. the loader's batch time with pinned copies.
# Results land in OUT_DIR (default bench/results/<date>-<gpu>/) as JSON plus a log.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))" 2>/dev/null || echo none)
out=${1:-bench/results/$(date +%Y-%m-%d)-$gpu}
mkdir -p "$out"
log="$out/gpu_check.log"
echo "gpu_check: $gpu -> $out" | tee "$log"
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee -a "$log"

step() { echo "== $*" | tee -a "$log"; }
step "gpu-marked tests"
timeout 240 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tail -25 | tee -a "$log"

step "train step, GPT-2 124M, bf16 + compile, B=64 T=1024, padded vocab 50304"
timeout 180 "$PY" -m gpt2repro.bench train --config configs/gpt2_124m.toml --train.total_batch_tokens=65536 \
  --warmup 5 --steps 20 --out "$out/train_124m_b64.json" 2>&1 | tail -3 | tee -a "$log"

step "train step, GPT-2 124M, bf16 + compile, vocab 50257 (unpadded)"
timeout 120 "$PY" -m gpt2repro.bench train --config configs/gpt2_124m.toml --train.total_batch_tokens=65536 \
  --model.pad_vocab_multiple=1 --warmup 5 --steps 20 --out "$out/train_124m_b64_unpadded.json" 2>&1 | tail -3 | tee -a "$log"

step "HellaSwag scoring speed, 124M-shaped model, synthetic examples"
timeout 120 "$PY" -m gpt2repro.bench hellaswag --bench-model gpt2 --device cuda --limit 2000 2>&1 | tail -8 | tee -a "$log"

step "loader: B=64 T=1024 to cuda"
timeout 60 "$PY" -m gpt2repro.bench loader --steps 300 --device cuda 2>&1 | tail -2 | tee -a "$log"
echo "gpu_check: done; results in $out" | tee -a "$log"
