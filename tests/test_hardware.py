"""FLOP accounting and MFU against hand arithmetic, and the GPU peak table."""

from __future__ import annotations

import pytest
import torch

from gpt2repro.config import ModelConfig
from gpt2repro.hardware import GPU_PEAK_FLOPS, flops_per_token, mfu, peak_flops, peak_flops_for_name
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
        ("Tesla V100-SXM2-16GB", None),
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
