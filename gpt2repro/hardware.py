"""The hardware a run is measured against: the known-GPU table (names, dense bf16 peaks, float32
on Volta, usable memory), training FLOPs per token, and MFU. The trainer's console line and metrics.jsonl, the
planner (`gpt2repro.plan`) and the benchmarks (`gpt2repro.bench`) all read these one definitions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GPU:
    """One row of the known-GPU table (docs/planning.md "Known GPUs", with sources).

    name: how the planner prints it; match: names of `torch.cuda.get_device_name()` that
    identify it, found as whole words in the device name (case ignored: "H200" is found in
    "NVIDIA H200 NVL" but not in "NVIDIA GH200 480GB"); peak_flops: the dense Tensor Core peak in
    FLOP/s for `dtype`; memory_gib: the memory a process can use, in GiB (2**30 bytes), as torch
    reports it (`torch.cuda.get_device_properties().total_memory`, below the datasheet's "80GB":
    the driver keeps some); aliases: other names `gpt2repro.plan --gpu` accepts; dtype: the
    number format of peak_flops ("bfloat16" for every GPU with bf16 Tensor Cores; "float32" for
    Volta, which has none); note: what a reader of its MFU or plan must know, or "".
    """

    name: str
    match: tuple[str, ...]
    peak_flops: float
    memory_gib: float
    aliases: tuple[str, ...] = ()
    dtype: str = "bfloat16"
    note: str = ""


_VOLTA = (
    "Volta has no bf16 Tensor Cores: the peak is float32 (no TF32 either), bf16 autocast runs "
    "without Tensor Cores there (use --train.dtype=float32), and its MFU is not comparable with "
    "the bf16 MFU of other GPUs"
)

# Order matters: the first entry whose match is found wins, so a specific name comes before the
# general name it contains ("H200 NVL" before "H200", "GH200 120GB" before "GH200", "L40S"
# before "L4"; tests/test_hardware.py checks it). A match is found only as a whole word, so "GH200"
# never reads as "H200", "GB200" as "B200", nor "L40S" as "L4".
# Memory: torch's total_memory (or deviceQuery's, the same totalGlobalMem) in MiB / 1024, rounded
# down to 0.1 GiB, as published device readouts show it; where none was found, nvidia-smi's
# total less 0.5 GiB (the gap between the two on the H100 SXM and A100 40GB), or the same
# memory's sibling (docs/planning.md).
GPUS: tuple[GPU, ...] = (
    GPU("B200", ("B200",), 2250e12, 178.3),  # torch: 178.35 GiB; nvidia-smi: 183,359 MiB
    GPU("GH200 120GB", ("GH200 120GB",), 989e12, 94.5),  # deviceQuery: 96,768 MiB
    GPU("GH200", ("GH200",), 989e12, 95.0, ("GH200 480GB",)),  # deviceQuery: 97,280 MiB
    GPU("H100 PCIe", ("H100 PCIe",), 756e12, 79.1),  # torch: 81,008 MiB
    GPU("H100 NVL", ("H100 NVL",), 835e12, 93.0),  # nvidia-smi: 95,830 MiB, less 0.5 GiB
    GPU("H100 SXM", ("H100",), 989e12, 79.1, ("H100", "H100 80GB HBM3")),  # torch: 81,082 MiB
    GPU("H200 NVL", ("H200 NVL",), 835e12, 139.8),  # the H200 SXM's 141 GB HBM3e; lower power
    GPU("H200 SXM", ("H200",), 989e12, 139.8, ("H200",)),  # torch: 143,156 MiB
    GPU("H800 PCIe", ("H800 PCIe",), 756e12, 79.1),  # the H100 PCIe's export variant, same memory
    GPU("H800 SXM", ("H800",), 989e12, 79.1, ("H800",)),  # the H100 SXM's, same memory
    GPU("A100 40GB", ("A100-SXM4-40GB", "A100-PCIE-40GB"), 312e12, 39.5, ("A100-40GB",)),  # 40,536
    # nvidia-smi: 81,920 MiB, less 0.5 GiB
    GPU("A100 80GB", ("A100",), 312e12, 79.5, ("A100-80GB", "A100 SXM", "A100 PCIe")),
    # AWS's GA102 variant: NVIDIA publishes no datasheet; the peak is the A10's (docs/planning.md).
    GPU("A10G", ("A10G",), 125e12, 22.0),  # torch: 22,587 MiB
    GPU("L40S", ("L40S",), 362.05e12, 44.5),  # torch: 45,589 MiB
    GPU("L4", ("L4",), 121e12, 21.9),  # deviceQuery: 22,518 MiB
    # Workstation Ada and Ampere run bf16 with fp32 accumulation at the full rate (the GeForce
    # parts at half: the RTX 4090 below). torch: 48,622 and 48,676 MiB.
    GPU("RTX 6000 Ada", ("RTX 6000 Ada",), 364.2e12, 47.4, ("RTX 6000 Ada Generation",)),
    GPU("RTX A6000", ("RTX A6000",), 154.8e12, 47.5, ("A6000",)),
    # GeForce: bf16 with fp32 accumulation (what torch's bf16 matmuls use) runs at half the
    # fp16-accumulate rate the marketing figure quotes. torch: 24,563 MiB.
    GPU("RTX 4090", ("RTX 4090",), 165.2e12, 23.9, ("4090", "GeForce RTX 4090")),
    # Volta: float32 peaks (no bf16 Tensor Cores). torch: 16,160 and 32,510 MiB.
    GPU("V100 SXM2 16GB", ("V100-SXM2-16GB",), 15.7e12, 15.7, dtype="float32", note=_VOLTA),
    GPU("V100 SXM2 32GB", ("V100-SXM2-32GB",), 15.7e12, 31.7, dtype="float32", note=_VOLTA),
    GPU("V100 PCIe 16GB", ("V100-PCIE-16GB",), 14e12, 15.7, dtype="float32", note=_VOLTA),
    GPU("V100 PCIe 32GB", ("V100-PCIE-32GB",), 14e12, 31.7, dtype="float32", note=_VOLTA),
    # ROCm: torch.cuda names the device "AMD Instinct MI300X". torch: 196,592 MiB.
    GPU("MI300X", ("MI300X",), 1307.4e12, 191.9, ("AMD Instinct MI300X",)),
)

# (name found in the device name, dense peak FLOP/s), first match wins: the MFU lookup's view of
# GPUS.
GPU_PEAK_FLOPS: list[tuple[str, float]] = [(m, g.peak_flops) for g in GPUS for m in g.match]


def flops_per_token(
    n_params: int, n_layer: int, n_embd: int, seq_len: int, lookup_params: int = 0
) -> float:
    """Training FLOPs per token, llm.c's convention: 6N + 6·L·C·T (attention at causal half cost).

    `lookup_params`: parameters that are only looked up, never multiplied, left out of N (an
    untied input embedding, `ModelConfig.lookup_params`; GPT-2's tied wte is the head's matmul,
    so its count is 0 and the convention is llm.c's unchanged)."""
    return 6.0 * (n_params - lookup_params) + 6.0 * n_layer * n_embd * seq_len


def peak_flops(device: torch.device) -> float | None:
    """Dense peak FLOP/s of this device by name (bf16; float32 on Volta: the row's dtype), or None
    when unknown (CPU, MPS, other GPUs). ROCm's devices are "cuda" devices to torch too."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return peak_flops_for_name(name)


def gpu_for_device_name(name: str) -> GPU | None:
    """The GPUS row of a CUDA device name ("NVIDIA H100 80GB HBM3"), or None when unknown."""
    for gpu in GPUS:
        if any(name_contains(name, m) for m in gpu.match):
            return gpu
    return None


def name_contains(name: str, word: str) -> bool:
    """Whether `word` is in the device name `name` as a whole word, case ignored: neither a
    letter nor a digit on either side ("H200" is in "NVIDIA H200 NVL", not in "NVIDIA GH200
    480GB"; "L4" is in "NVIDIA L4", not in "NVIDIA L40S")."""
    return (
        re.search(rf"(?<![a-z0-9]){re.escape(word.lower())}(?![a-z0-9])", name.lower()) is not None
    )


def peak_flops_for_name(name: str) -> float | None:
    """Dense peak FLOP/s of a CUDA device name (the row's dtype), or None when unknown."""
    gpu = gpu_for_device_name(name)
    return None if gpu is None else gpu.peak_flops


def mfu(
    flops_per_tok: float, tokens_per_s: float, peak_per_device: float | None, n_devices: int
) -> float | None:
    """Model FLOPs utilisation in [0, 1], or None when the peak is unknown (never a guess)."""
    if peak_per_device is None or tokens_per_s <= 0:
        return None
    return flops_per_tok * tokens_per_s / (peak_per_device * n_devices)
