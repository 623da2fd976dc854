"""Compute precision: one rule for training, evaluation, sampling and the benchmarks.

`dtype = "auto"` means bf16 autocast on CUDA and float32 elsewhere (CPU autocast in bf16 is slower
than float32 on most CPUs and would change the reference numbers the tests compare against).
"""

from __future__ import annotations

import contextlib

import torch

from gpt2repro.config import DTYPES

CHOICES = DTYPES  # declared once, beside train.dtype


def autocast_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a `train.dtype` / `--dtype` choice on `device`; None = float32."""
    if choice not in CHOICES:
        raise ValueError(f"dtype {choice!r} is not one of {CHOICES}")
    if choice == "bfloat16" or (choice == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """A fresh autocast context for `dtype` (a no-op context for None or float32)."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def accumulate_dtype(device: torch.device) -> torch.dtype:
    """Dtype for summing many per-token losses (float64 except on MPS, which has none)."""
    return torch.float32 if device.type == "mps" else torch.float64


def enable_tf32(device: torch.device) -> None:
    """TF32 for the float32 matmuls and convolutions that remain under bf16 autocast (CUDA)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX-512 BF16).

    Only there does bf16 autocast pay on a CPU: compiled, the demo's step is about 1.6x faster than
    float32 on such a Xeon (docs/benchmarks.md); without these units bf16 is emulated and slower."""
    cpu = getattr(torch, "cpu", None)
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private: may be absent
    return any(bool(getattr(cpu, name, lambda: False)()) for name in probes)
