"""The hardware a run is measured against: the known-GPU table (names, dense bf16 peaks, usable
memory), training FLOPs per token, and MFU. The trainer's console line and metrics.jsonl, the
planner (`gpt2repro.plan`) and the benchmarks (`gpt2repro.bench`) all read these one definitions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GPU:
    """One row of the known-GPU table (docs/reference.md "MFU and GPU peaks", with sources).

    name: how the planner prints it; match: substrings of `torch.cuda.get_device_name()` that
    identify it (case ignored); peak_flops: dense bf16 Tensor Core FLOP/s; memory_gib: the memory
    a process can use, in GiB (2**30 bytes), as torch reports it
    (`torch.cuda.get_device_properties().total_memory`, below the datasheet's "80GB": the driver
    keeps some; docs/planning.md "Known GPUs" gives each figure's source); aliases: other names
    `gpt2repro.plan --gpu` accepts.
    """

    name: str
    match: tuple[str, ...]
    peak_flops: float
    memory_gib: float
    aliases: tuple[str, ...] = ()


# Order matters: the first entry with a matching substring wins, so a specific name comes before
# the general name it contains ("H200 NVL" before "H200"; tests/test_hardware.py checks it).
# Memory: torch's total_memory in MiB / 1024, rounded down to 0.1 GiB, as published device
# readouts show it; where none was found, nvidia-smi's total less 0.5 GiB (the gap between the
# two on the H100 SXM and A100 40GB), or the same memory's sibling (docs/planning.md).
GPUS: tuple[GPU, ...] = (
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
    GPU("L40S", ("L40S",), 362.05e12, 44.5),  # torch: 45,589 MiB
    # GeForce: bf16 with fp32 accumulation (what torch's bf16 matmuls use) runs at half the
    # fp16-accumulate rate the marketing figure quotes. torch: 24,563 MiB.
    GPU("RTX 4090", ("RTX 4090",), 165.2e12, 23.9, ("4090", "GeForce RTX 4090")),
)

# (substring of the device name, dense bf16 peak FLOP/s), first match wins: the MFU lookup's view
# of GPUS.
GPU_PEAK_FLOPS: list[tuple[str, float]] = [(m, g.peak_flops) for g in GPUS for m in g.match]


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token, llm.c's convention: 6N + 6·L·C·T (attention at causal half cost)."""
    return 6.0 * n_params + 6.0 * n_layer * n_embd * seq_len


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of this device by name, or None when unknown (CPU, MPS, other GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return peak_flops_for_name(name)


def gpu_for_device_name(name: str) -> GPU | None:
    """The GPUS row of a CUDA device name ("NVIDIA H100 80GB HBM3"), or None when unknown."""
    for gpu in GPUS:
        if any(m.lower() in name.lower() for m in gpu.match):
            return gpu
    return None


def peak_flops_for_name(name: str) -> float | None:
    """Dense bf16 peak of a CUDA device name, or None when unknown."""
    gpu = gpu_for_device_name(name)
    return None if gpu is None else gpu.peak_flops


def mfu(
    flops_per_tok: float, tokens_per_s: float, peak_per_device: float | None, n_devices: int
) -> float | None:
    """Model FLOPs utilisation in [0, 1], or None when the peak is unknown (never a guess)."""
    if peak_per_device is None or tokens_per_s <= 0:
        return None
    return flops_per_tok * tokens_per_s / (peak_per_device * n_devices)
