"""FLOP accounting and MFU against hand arithmetic, and the GPU peak table."""

from __future__ import annotations

import pytest
import torch

from gpt2repro.config import ModelConfig
from gpt2repro.hardware import (
    GPU_PEAK_FLOPS,
    GPUS,
    flops_per_token,
    gpu_for_device_name,
    mfu,
    peak_flops,
    peak_flops_for_name,
)
from gpt2repro.model import GPT


def test_flops_per_token_gpt2_124m() -> None:
    with torch.device("meta"):  # shapes only, no memory
        model = GPT(ModelConfig(vocab_size=50257))
    n = model.num_params(exclude_padding=False)
    assert n == 124_439_808  # GPT-2 small, tied lm_head counted once
    fpt = flops_per_token(n, 12, 768, 1024)
    assert fpt == 6 * 124_439_808 + 6 * 12 * 768 * 1024 == 803_261_952


def test_flops_per_token_is_linear_in_its_terms() -> None:
    assert flops_per_token(0, 2, 8, 16) == 6 * 2 * 8 * 16
    assert flops_per_token(1000, 0, 8, 16) == 6000
    assert flops_per_token(1000, 2, 8, 32) - flops_per_token(1000, 2, 8, 16) == 6 * 2 * 8 * 16


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA H800", 989e12),
        ("NVIDIA H200 NVL", 835e12),
        ("NVIDIA H800 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA GeForce RTX 4090", 165.2e12),
        ("NVIDIA L40S", 362.05e12),
        ("NVIDIA A100-SXM4-40GB", 312e12),
        # torch.cuda.get_device_name() of the GPUs added for issue 18, as the devices report them
        ("NVIDIA B200", 2250e12),
        ("NVIDIA GH200 480GB", 989e12),
        ("NVIDIA GH200 120GB", 989e12),
        ("NVIDIA A10G", 125e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA RTX 6000 Ada Generation", 364.2e12),
        ("NVIDIA RTX A6000", 154.8e12),
        ("Tesla V100-SXM2-32GB", 15.7e12),  # float32: Volta has no bf16 Tensor Cores
        ("Tesla V100-SXM2-16GB", 15.7e12),
        ("Tesla V100-PCIE-32GB", 14e12),
        ("Tesla V100-PCIE-16GB", 14e12),
        ("AMD Instinct MI300X", 1307.4e12),  # ROCm: torch.cuda names it so
        # not in the table: unknown, never a neighbour's peak
        ("NVIDIA GB200", None),  # contains "B200"
        ("NVIDIA L40", None),  # starts with "L4"
        ("NVIDIA A10", None),
        ("NVIDIA H20", None),
        ("Tesla T4", None),
        ("AMD Instinct MI325X", None),
        ("", None),
    ],
)
def test_peak_table(name: str, peak: float | None) -> None:
    assert peak_flops_for_name(name) == peak
    assert peak_flops_for_name(name.lower()) == peak  # case-insensitive


def test_peak_table_specific_names_come_before_general_ones() -> None:
    """First match wins, so every entry must precede any shorter entry it contains ("H200 NVL"
    before "H200"); otherwise the general peak would shadow the specific one."""
    keys = [key.lower() for key, _ in GPU_PEAK_FLOPS]
    assert len(set(keys)) == len(keys)
    for i, general in enumerate(keys):
        for specific in keys[i + 1 :]:
            assert general not in specific, f"{specific!r} is shadowed by {general!r}"
    # The variants whose peak differs from their family's: the specific entry decides.
    for specific, general in [
        ("H200 NVL", "H200"),
        ("H800 PCIe", "H800"),
        ("H100 NVL", "H100"),
        ("H100 PCIe", "H100"),
    ]:
        assert peak_flops_for_name(f"NVIDIA {specific}") != peak_flops_for_name(f"NVIDIA {general}")


@pytest.mark.parametrize(
    ("device_name", "row"),
    [
        ("NVIDIA GH200 480GB", "GH200"),  # contains "H200": the H200 row must not take it
        ("NVIDIA GH200 120GB", "GH200 120GB"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA L40S", "L40S"),  # contains "L4"
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA A100 80GB PCIe", "A100 80GB"),
        ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada"),
        ("NVIDIA RTX A6000", "RTX A6000"),
        ("Tesla V100-SXM2-32GB", "V100 SXM2 32GB"),
        ("Tesla V100-PCIE-16GB", "V100 PCIe 16GB"),
        ("AMD Instinct MI300X", "MI300X"),
    ],
)
def test_device_names_resolve_to_their_own_row(device_name: str, row: str) -> None:
    gpu = gpu_for_device_name(device_name)
    assert gpu is not None and gpu.name == row


def test_every_row_is_found_by_its_own_device_name_not_a_neighbour() -> None:
    """Each row's match, as a device would report it ("NVIDIA <match>"), finds that row: no row
    earlier in the table takes another's device, whatever the order or the substrings (GH200
    holds H200, GB200 holds B200, L40S starts with L4)."""
    for gpu in GPUS:
        for m in gpu.match:
            assert gpu_for_device_name(f"NVIDIA {m}") is gpu, m
            # a letter before or a digit after makes another GPU's name: never this row
            assert gpu_for_device_name(f"NVIDIA X{m}") is not gpu, m
            assert gpu_for_device_name(f"NVIDIA {m}0") is not gpu, m


def test_volta_peaks_are_float32_and_say_so() -> None:
    """V100s have no bf16 Tensor Cores: their peak is float32 and the row says MFU is not
    comparable; every other row is a dense bf16 Tensor Core peak."""
    for gpu in GPUS:
        if "V100" in gpu.name:
            assert gpu.dtype == "float32" and gpu.peak_flops <= 15.7e12
            assert "no bf16 Tensor Cores" in gpu.note and "not comparable" in gpu.note
        else:
            assert gpu.dtype == "bfloat16" and gpu.peak_flops >= 100e12, gpu.name


@pytest.mark.parametrize(
    ("device_name", "peak"),
    [("NVIDIA GH200 480GB", 989e12), ("AMD Instinct MI300X", 1307.4e12), ("NVIDIA GB200", None)],
)
def test_training_mfu_reads_the_same_table(
    monkeypatch: pytest.MonkeyPatch, device_name: str, peak: float | None
) -> None:
    """train.py's MFU takes its peak from `peak_flops(device)`: on a CUDA (or ROCm) device it is
    the table's row for the device's name."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: device_name)
    assert peak_flops(torch.device("cuda", 0)) == peak


def test_peak_flops_off_cuda_is_unknown() -> None:
    assert peak_flops(torch.device("cpu")) is None
    assert peak_flops(torch.device("meta")) is None


def test_mfu() -> None:
    fpt = 803_261_952.0
    assert mfu(fpt, 1e6, None, 8) is None  # unknown peak: never a guess
    assert mfu(fpt, 0.0, 989e12, 8) is None
    assert mfu(fpt, 1.6e6, 989e12, 8) == pytest.approx(803_261_952 * 1.6e6 / (8 * 989e12))
    assert mfu(fpt, 1.6e6, 989e12, 8) == pytest.approx(0.16243, abs=1e-5)
    one = mfu(fpt, 2e5, 989e12, 1)
    assert one is not None and 0 < one < 1
    assert mfu(fpt, 2e5, 989e12, 2) == pytest.approx(one / 2)
