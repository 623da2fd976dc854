"""The chunked linear + cross-entropy against the plain path (full logits, F.cross_entropy).

Tolerances: in float32 both paths do the same arithmetic in another order (chunked sums, the
softmax gradient formed explicitly), so they agree to rounding: 1e-6 relative. Under bf16
autocast both round the matmul inputs to bf16 (8 bits of mantissa), at different points:
agreement to a few times bf16's 2^-8 = 0.4% relative is the most one can ask.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from gpt2repro.loss import _loss_and_grads, linear_cross_entropy

N, C, V, N_VALID = 1000, 32, 136, 130  # V > N_VALID: padded vocabulary rows


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, C, generator=g).requires_grad_()
    w = (0.5 * torch.randn(V, C, generator=g)).requires_grad_()
    t = torch.randint(0, N_VALID, (N,), generator=g)
    t[::7] = -1  # ignored rows
    return h, w, t


def plain(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(h, w)[:, :N_VALID].float(), t, ignore_index=-1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("chunk", [1, 128, 333, 4096])
def test_loss_and_gradients_equal_the_plain_path_in_fp32(chunk: int) -> None:
    h, w, t = inputs()
    ref = plain(h, w, t)
    ref_h, ref_w = torch.autograd.grad(ref, (h, w))
    out = linear_cross_entropy(h, w, t, n_valid=N_VALID, chunk=chunk)
    out_h, out_w = torch.autograd.grad(out, (h, w))
    assert abs(out.item() - ref.item()) <= 1e-6 * ref.item()
    assert rel(out_h, ref_h) < 1e-6 and rel(out_w, ref_w) < 1e-6
    assert out_w[N_VALID:].abs().max() == 0  # padded rows are never predicted: no gradient


def test_bf16_autocast_agrees_to_bf16_rounding() -> None:
    h, w, t = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = plain(h, w, t)
        out = linear_cross_entropy(h, w, t, n_valid=N_VALID, chunk=128)
    ref_h, ref_w = torch.autograd.grad(ref, (h, w))
    out_h, out_w = torch.autograd.grad(out, (h, w))
    assert out.dtype == torch.float32 and out_h.dtype == h.dtype and out_w.dtype == w.dtype
    assert abs(out.item() - ref.item()) <= 1e-5 * ref.item()  # both sum fp32 logits
    assert rel(out_h, ref_h) < 0.01 and rel(out_w, ref_w) < 0.01


def test_no_grad_and_scaled_backward() -> None:
    h, w, t = inputs()
    with torch.no_grad():
        value = linear_cross_entropy(h, w, t, n_valid=N_VALID, chunk=100)
    assert abs(value.item() - plain(h, w, t).item()) < 1e-5
    ref_h = torch.autograd.grad(3.0 * plain(h, w, t), h)[0]
    out_h = torch.autograd.grad(3.0 * linear_cross_entropy(h, w, t, n_valid=N_VALID), h)[0]
    assert rel(out_h, ref_h) < 1e-6  # the incoming gradient scales the stored one


def test_all_rows_ignored_is_nan_like_cross_entropy() -> None:
    h, w, _ = inputs()
    t = torch.full((N,), -1)
    assert torch.isnan(plain(h, w, t)) and torch.isnan(linear_cross_entropy(h, w, t, chunk=64))


def test_chunk_zero_is_the_plain_path() -> None:
    h, w, t = inputs()
    assert linear_cross_entropy(h, w, t, n_valid=N_VALID, chunk=0).item() == plain(h, w, t).item()


def test_compiled_equals_eager() -> None:
    h, w, t = inputs()
    ref = plain(h, w, t)
    ref_h, ref_w = torch.autograd.grad(ref, (h, w))
    fn = torch.compile(lambda h, w, t: linear_cross_entropy(h, w, t, n_valid=N_VALID, chunk=256))
    out = fn(h, w, t)
    out_h, out_w = torch.autograd.grad(out, (h, w))
    assert abs(out.item() - ref.item()) <= 1e-6 * ref.item()
    assert rel(out_h, ref_h) < 1e-5 and rel(out_w, ref_w) < 1e-5


def tiny_gpt(pad: int = 64):
    from gpt2repro.config import ModelConfig
    from gpt2repro.model import GPT

    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=250, pad_vocab_multiple=pad
    )
    return GPT(cfg)


@pytest.mark.parametrize("chunk", [0, 37, 4096])
def test_loss_only_forward_equals_the_logits_path(chunk: int) -> None:
    """Training and validation call the model with loss_only=True: the same loss and parameter
    gradients as the logits path (fp32: 1e-6 relative), with the fused or the plain head."""
    model = tiny_gpt()
    model.loss_chunk = chunk
    idx = torch.randint(0, 250, (3, 32))
    tgt = torch.randint(0, 250, (3, 32))
    tgt[0, :5] = -1
    params = [p for p in model.parameters()]
    logits, ref = model(idx, tgt)
    assert logits is not None and logits.shape == (3, 32, 250)
    ref_grads = torch.autograd.grad(ref, params)
    none, out = model(idx, tgt, loss_only=True)
    assert none is None
    out_grads = torch.autograd.grad(out, params)
    assert abs(out.item() - ref.item()) <= 1e-6 * ref.item()
    for a, b in zip(out_grads, ref_grads, strict=True):
        assert rel(a, b) < 1e-6


def test_loss_only_never_keeps_a_batch_by_vocab_tensor() -> None:
    """Nothing of size [B, T, vocab] is saved for backward on the fused path (the plain path
    saves the logits: the check can fail)."""
    model = tiny_gpt()
    B, T, V = 4, 32, model.config.padded_vocab_size
    idx, tgt = torch.randint(0, 250, (B, T)), torch.randint(0, 250, (B, T))
    for chunk, expect_big in ((0, True), (16, False)):
        model.loss_chunk = chunk
        sizes: list[int] = []

        def pack(t: torch.Tensor, sizes: list[int] = sizes) -> torch.Tensor:
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(idx, tgt, loss_only=True)[1].backward()
        assert (max(sizes) >= B * T * 250) == expect_big, (chunk, max(sizes), B * T * V)


def _forward_graph_ops(n_chunks: int) -> list[str]:
    """The ops of the compiled forward graph of the loss alone at `n_chunks` chunks of 8 rows."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs: list[torch.fx.GraphModule] = []

    def keep(gm: torch.fx.GraphModule, _inputs: object) -> Callable[..., object]:
        graphs.append(gm)
        return make_boxed_func(gm)

    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    h = torch.randn(8 * n_chunks, C, generator=g).requires_grad_()
    w = torch.randn(V, C, generator=g).requires_grad_()
    t = torch.randint(0, N_VALID, (8 * n_chunks,), generator=g)
    fn = torch.compile(
        lambda h, w, t: linear_cross_entropy(h, w, t, n_valid=N_VALID, chunk=8),
        backend=aot_autograd(fw_compiler=keep, bw_compiler=keep),
    )
    out = fn(h, w, t)
    out_h, out_w = torch.autograd.grad(out, (h, w))
    ref_h, ref_w = torch.autograd.grad(plain(h, w, t), (h, w))
    assert rel(out_h, ref_h) < 1e-5 and rel(out_w, ref_w) < 1e-5
    return [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]


def test_compiled_graph_does_not_grow_with_the_chunk_count() -> None:
    """The chunk loop is not unrolled by the compiler: the same forward graph at 4 and 64
    chunks, holding the loss as one opaque op and no matmul (an unrolled loop holds two or three
    per chunk, each compiled to kernels of its own)."""
    ops4, ops64 = _forward_graph_ops(4), _forward_graph_ops(64)
    assert ops4 == ops64
    assert sum("linear_cross_entropy" in op for op in ops4) == 1
    assert not any("mm" in op.split(".")[1] for op in ops4 if op.startswith("aten."))


@pytest.mark.parametrize("chunk", [256, 1024])
def test_realistic_shape_keeps_one_or_two_weight_sized_tensors(chunk: int) -> None:
    """GPT-2 124M's head at B=8, T=1024 (N=8192, C=768, V=50304), traced with fake tensors (shapes
    only, no arithmetic): at most two [V, C] tensors made by the loss are alive at any op (the fp32 dL/dW
    buffer and one chunk's product being added into it; in backward, the saved dL/dW and W's
    gradient), whatever the number of chunks, and exactly dL/dh and dL/dW are saved for backward."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode

    n, c, v = 8192, 768, 50304
    fake = FakeTensorMode()
    with fake:
        h = torch.empty(n, c, requires_grad=True)
        w = torch.empty(v, c, requires_grad=True)
        t = torch.zeros(n, dtype=torch.long)
    alive: list[weakref.ref[torch.Tensor]] = []
    most = [0]

    class CountWeightSized(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func is torch.ops.gpt2repro.linear_cross_entropy.default:
                with self:  # count inside the loss's op as well: run its body under this mode
                    return _loss_and_grads(*args)
            out = func(*args, **(kwargs or {}))
            for x in out if isinstance(out, tuple | list) else (out,):
                if isinstance(x, torch.Tensor) and x.numel() == v * c:
                    alive.append(weakref.ref(x))
            # distinct storages: views and in-place results share their input's
            live = {
                StorageWeakRef(x.untyped_storage()).cdata
                for x in (r() for r in alive)
                if x is not None
            }
            most[0] = max(most[0], len(live - {weight_storage}))  # W itself is not made here
            return out

    weight_storage = StorageWeakRef(w.untyped_storage()).cdata
    saved: list[int] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        saved.append(x.numel() * x.element_size())
        return x

    with fake, CountWeightSized(), torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        linear_cross_entropy(h, w, t, n_valid=50257, chunk=chunk).backward()
    assert sorted(saved) == sorted([4 * n * c, 4 * v * c])
    assert most[0] <= 2, most[0]
