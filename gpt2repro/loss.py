"""Cross-entropy of the language-model head without holding the [N, vocab] logits.

The plain path computes `logits = h @ W.T` for all N = B*T positions (6 GiB in bf16 for GPT-2
124M at B=64, T=1024, plus as much again for their gradient and an fp32 copy for the softmax),
then the loss. `linear_cross_entropy` instead walks over chunks of rows: for each chunk it
computes the logits in fp32, the log-sum-exp and the target logit (loss summed in fp32), and,
when gradients are wanted, the gradient of the chunk's logits right away, turning it into the
chunks of dL/dh and dL/dW with the same two matmuls autograd would run. Only one chunk of logits
exists at a time; backward only scales the stored gradients by the incoming scalar. The FLOPs
are those of the plain path (no recomputation), so MFU is unchanged.

Under torch.compile the loop stays outside the compiled graph: the whole loss is one custom op
(`gpt2repro::linear_cross_entropy`) that the compiler sees only through its output shapes, and
whose body loops eagerly over the chunks. A loop traced by the compiler is unrolled, one copy of
the chunk's kernels per chunk with its row offset baked in (compile time grew with the number of
chunks: 4.7 s at 4, 63.9 s at 64), and the compiled graph summed every chunk's dL/dW product in
one kernel at the end, so all of them were alive at once. Here the chunk body is compiled once
for one chunk shape (the last chunk padded with ignored rows), and each chunk's dL/dW product is
added in place into one fp32 buffer, so at most one [V, C] product exists besides it.

With a logit soft-cap c > 0 (`model.logit_softcap`), the logits are c * tanh(z / c) of the
matmul's z, in fp32; the chunk body applies it and, for the gradient, its derivative
1 - tanh(z / c)^2 to dL/dlogits before the two matmuls.

Rows whose target is -1 are ignored (as `F.cross_entropy(ignore_index=-1)`); the mean is over
the other rows (NaN when there are none, like `F.cross_entropy`). Columns at or past `n_valid`
(the padded vocabulary rows of W) are never predicted: their logits are -inf.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE = -1

# The op's `mode` bits: gradients wanted; the chunk body compiled.
WANT_GRAD = 1
COMPILED = 2

_ChunkResult = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def _chunk_loss(
    h_c: torch.Tensor,
    w_mm: torch.Tensor,
    t_c: torch.Tensor,
    scale: torch.Tensor,
    n_valid: int,
    want_grad: bool,
    softcap: float = 0.0,
) -> _ChunkResult:
    """One chunk: the summed loss of its rows (fp32 scalar) and, with `want_grad`, the gradient
    of `scale` times that sum: its dL/dh rows [n, C] and its dL/dW product [V, C] (both in
    w_mm's dtype).

    h_c [n, C] and w_mm [V, C] come in the matmuls' dtype (autocast's, cast once by the caller);
    scale: fp32 scalar tensor, 1 / (the number of rows not ignored) for the mean; softcap > 0:
    the logits are softcap * tanh(z / softcap).
    """
    logits = F.linear(h_c, w_mm).float()  # [n, V]
    V = logits.size(1)
    tanh: torch.Tensor | None = None
    if softcap > 0:
        # tanh kept for the derivative 1 - tanh^2; in place of the raw logits when eager (no
        # second [n, V] buffer; the compiler fuses these steps either way).
        if torch.compiler.is_compiling():
            tanh = torch.tanh(logits / softcap)
        else:
            tanh = logits.div_(softcap).tanh_()
        logits = softcap * tanh
    if n_valid < V:
        logits[:, n_valid:] = -math.inf
    valid = t_c != IGNORE
    safe_t = torch.where(valid, t_c, 0)
    # d(sum of row losses)/d logits = softmax - one_hot(target), 0 for ignored rows; times
    # `scale` in the same pass (the mean's 1/count, which would otherwise cost a pass over dL/dh
    # and one over dL/dW). The same numbers compiled or eager, by different passes.
    if not torch.compiler.is_compiling():
        # Eager: torch's fused log-softmax kernel, then the softmax in place from it (the
        # logsumexp below, decomposed into five passes, made the eager step 0.88x the full
        # logits' one; this makes it faster than them: docs/benchmarks.md).
        logp = torch.log_softmax(logits, dim=-1)
        del logits
        loss_sum = -torch.where(valid, logp.gather(1, safe_t[:, None]).squeeze(1), 0.0).sum()
        if not want_grad:
            return loss_sum, None, None
        dlogits = logp.exp_()  # the softmax, in place
        del logp
        dlogits.scatter_add_(1, safe_t[:, None], -torch.ones_like(dlogits[:, :1]))
        dlogits = dlogits.mul_((valid * scale)[:, None])
        if tanh is not None:  # through the soft-cap: d - d * tanh^2, one in-place pass
            dlogits = dlogits.addcmul_(dlogits, tanh.square_(), value=-1.0)
            del tanh
        # Rebound, so the fp32 gradient is freed before the matmuls (a bf16 one is enough).
        dlogits = dlogits.to(w_mm.dtype)
        return loss_sum, *_linear_grads(dlogits, h_c, w_mm)
    lse = torch.logsumexp(logits, dim=-1)  # [n]
    target_logit = logits.gather(1, safe_t[:, None]).squeeze(1)
    loss_sum = torch.where(valid, lse - target_logit, 0.0).sum()
    if not want_grad:
        return loss_sum, None, None
    # Compiled: one elementwise expression, which the compiler makes a single pass over the
    # [n, V] chunk that also casts to the matmuls' dtype (an in-place scatter costs two more
    # passes).
    probs = torch.exp(logits - lse[:, None])
    cols = torch.arange(V, device=logits.device)
    is_target = cols[None, :] == safe_t[:, None]  # [n, V]
    row_scale = valid * scale  # [n]
    dlogits = torch.where(is_target, probs - 1.0, probs) * row_scale[:, None]
    if tanh is not None:
        dlogits = dlogits * (1.0 - tanh * tanh)
    return loss_sum, *_linear_grads(dlogits.to(w_mm.dtype), h_c, w_mm)


def _linear_grads(
    dlogits: torch.Tensor, h_c: torch.Tensor, w_mm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dh [n, C] and dL/dW [V, C] from dL/dlogits [n, V]: the same two matmuls as autograd's
    backward of F.linear, in the matmuls' dtype."""
    return dlogits @ w_mm, dlogits.t() @ h_c


@functools.cache
def _compiled_chunk_loss() -> Callable[..., _ChunkResult]:
    """`_chunk_loss` compiled once per chunk shape (dynamic=False: one static kernel set),
    created on first use rather than at import."""
    return torch.compile(_chunk_loss, dynamic=False)


def _loss_and_grads(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    n_valid: int,
    softcap: float,
    chunk: int,
    mm_dtype: torch.dtype,
    mode: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mean loss (fp32 scalar) and, with the WANT_GRAD bit of `mode`, dL/dh [N, C] (h's
    dtype) and dL/dW [V, C] (fp32) of it, else two empty tensors. h [N, C], weight [V, C],
    targets [N]; logits soft-capped at `softcap` (0 = off); the matmuls run in `mm_dtype`; the
    COMPILED bit runs the chunk body compiled."""
    want_grad, compiled = bool(mode & WANT_GRAD), bool(mode & COMPILED)
    N, C = h.shape
    chunk = max(1, min(chunk, N))  # no rows: no chunk (and a valid range step)
    body = _compiled_chunk_loss() if compiled else _chunk_loss
    count = (targets != IGNORE).sum()
    scale = 1.0 / count.float()  # the mean's; inf when every row is ignored (then NaN, as F's)
    loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
    grad_h = torch.empty_like(h) if want_grad else h.new_empty(0)
    grad_w: torch.Tensor | None = None if want_grad else weight.new_empty(0, dtype=torch.float32)
    # The dtypes are explicit (autocast's decided by the caller), so autocast is off in here.
    # Below autograd's view tracking whoever calls: callers differ in it (measured: under FSDP2
    # with per-block compile the op was reached both ways), and the compiled body's guards
    # include the dispatch keys, so it would compile twice.
    with (
        torch.autocast(h.device.type, enabled=False),
        torch._C._AutoDispatchBelowADInplaceOrView(),
    ):
        w_mm = weight.to(mm_dtype)  # cast once, not once per chunk
        for start in range(0, N, chunk):
            h_c, t_c = h[start : start + chunk].to(mm_dtype), targets[start : start + chunk]
            n = h_c.size(0)
            if compiled and n < chunk:
                # Pad the last chunk with ignored rows (no loss, no gradient) to the one shape
                # the compiled body was built for: no second compile for the remainder.
                h_c = torch.cat([h_c, h_c.new_zeros(chunk - n, C)])
                t_c = torch.cat([t_c, t_c.new_full((chunk - n,), IGNORE)])
            part_loss, part_h, part_w = body(h_c, w_mm, t_c, scale, n_valid, want_grad, softcap)
            loss_sum += part_loss
            if part_h is not None and part_w is not None:
                grad_h[start : start + n] = part_h[:n]
                if grad_w is None:  # the first chunk's product becomes the fp32 buffer
                    grad_w = part_w.float()
                else:
                    grad_w += part_w  # in place: one [V, C] product alive at a time
            del part_h, part_w  # not alive through the next chunk
    if grad_w is None:  # no rows
        grad_w = weight.new_zeros(weight.shape, dtype=torch.float32)
    return loss_sum / count, grad_h, grad_w


@torch.library.custom_op("gpt2repro::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy_op(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    n_valid: int,
    softcap: float,
    chunk: int,
    mm_dtype: torch.dtype,
    mode: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_loss_and_grads` as one op, opaque to the compiler (it sees `_` below: the shapes)."""
    return _loss_and_grads(h, weight, targets, n_valid, softcap, chunk, mm_dtype, mode)


@_linear_cross_entropy_op.register_fake
def _(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    n_valid: int,
    softcap: float,
    chunk: int,
    mm_dtype: torch.dtype,
    mode: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    loss = h.new_empty((), dtype=torch.float32)
    if not mode & WANT_GRAD:
        return loss, h.new_empty(0), weight.new_empty(0, dtype=torch.float32)
    return loss, torch.empty_like(h), weight.new_empty(weight.shape, dtype=torch.float32)


def _setup_context(
    ctx: torch.autograd.function.FunctionCtx, inputs: tuple[object, ...], output: tuple[object, ...]
) -> None:
    _, grad_h, grad_w = output
    assert isinstance(grad_h, torch.Tensor) and isinstance(grad_w, torch.Tensor)
    weight = inputs[1]
    assert isinstance(weight, torch.Tensor)
    ctx.save_for_backward(grad_h, grad_w)
    # The gradient outputs are not differentiated: no zero gradients ([N, C] and [V, C]) are
    # made for them in backward.
    ctx.mark_non_differentiable(grad_h, grad_w)
    ctx.set_materialize_grads(False)
    ctx.weight_dtype = weight.dtype  # type: ignore[attr-defined]  # ctx carries it to backward


def _backward(
    ctx: torch.autograd.function.FunctionCtx,
    grad_out: torch.Tensor,
    _grad_h_out: torch.Tensor | None,
    _grad_w_out: torch.Tensor | None,
) -> tuple[torch.Tensor | None, ...]:
    # The stored gradients, scaled by the incoming one.
    grad_h, grad_w = ctx.saved_tensors  # type: ignore[attr-defined]  # set by save_for_backward
    weight_dtype = ctx.weight_dtype  # type: ignore[attr-defined]  # set in _setup_context
    return (
        grad_h * grad_out.to(grad_h.dtype),
        (grad_w * grad_out).to(weight_dtype),
        None,
        None,
        None,
        None,
        None,
        None,
    )


_linear_cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    n_valid: int | None = None,
    chunk: int = 1024,
    softcap: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight.T` against `targets`, `chunk` rows at a time.

    h: [..., C] hidden states; weight: [V, C]; targets: [...] ids (IGNORE = -1 skipped);
    n_valid: the real vocabulary size (columns past it are never predicted). chunk <= 0 runs the
    plain path (full logits, then `F.cross_entropy`), kept for A/B comparison. softcap > 0:
    the logits are softcap * tanh(logits / softcap) (in fp32), on either path.
    """
    n_valid = weight.size(0) if n_valid is None else n_valid
    h2, t1 = h.reshape(-1, h.size(-1)), targets.reshape(-1)
    if chunk <= 0:
        logits = F.linear(h2, weight)[:, :n_valid]
        if softcap > 0:
            logits = softcap * torch.tanh(logits.float() / softcap)
        return F.cross_entropy(logits.float(), t1, ignore_index=IGNORE)
    want_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    # The matmuls' dtype: autocast's where it is on (the op runs them with autocast off), else
    # that of h and W.
    mm_dtype = torch.promote_types(h.dtype, weight.dtype)
    if torch.is_autocast_enabled(h.device.type):
        mm_dtype = torch.get_autocast_dtype(h.device.type)
    mode = (WANT_GRAD if want_grad else 0) | (COMPILED if torch.compiler.is_compiling() else 0)
    loss, _, _ = _linear_cross_entropy_op(h2, weight, t1, n_valid, softcap, chunk, mm_dtype, mode)
    return loss
