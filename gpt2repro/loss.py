"""Cross-entropy of the language-model head without holding the [N, vocab] logits.

The plain path computes `logits = h @ W.T` for all N = B*T positions (6 GiB in bf16 for GPT-2
124M at B=64, T=1024, plus as much again for their gradient and an fp32 copy for the softmax),
then the loss. `linear_cross_entropy` instead walks over chunks of rows: for each chunk it
computes the logits in fp32, the log-sum-exp and the target logit (loss summed in fp32), and,
when gradients are wanted, the gradient of the chunk's logits right away, turning it into the
chunks of dL/dh and dL/dW with the same two matmuls autograd would run. Only one chunk of logits
exists at a time; backward only scales the stored gradients by the incoming scalar. The FLOPs
are those of the plain path (no recomputation), so MFU is unchanged.

Rows whose target is -1 are ignored (as `F.cross_entropy(ignore_index=-1)`); the mean is over
the other rows (NaN when there are none, like `F.cross_entropy`). Columns at or past `n_valid`
(the padded vocabulary rows of W) are never predicted: their logits are -inf.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE = -1


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        h: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        n_valid: int,
        chunk: int,
        want_grad: bool,
    ) -> torch.Tensor:
        # h [N, C], weight [V, C], targets [N]
        N, V = h.size(0), weight.size(0)
        loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        count = (targets != IGNORE).sum()
        grad_h = torch.empty_like(h) if want_grad else None
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if want_grad
            else None
        )
        cols = torch.arange(V, device=h.device)
        # The dtype the two gradient matmuls take dlogits in: autocast's (cast once, here, not
        # once per matmul), else that of h and W.
        grad_dtype = torch.promote_types(h.dtype, weight.dtype)
        if torch.is_autocast_enabled(h.device.type):
            grad_dtype = torch.get_autocast_dtype(h.device.type)
        for start in range(0, N, chunk):
            h_c, t_c = h[start : start + chunk], targets[start : start + chunk]
            logits = F.linear(h_c, weight).float()  # [n, V]; bf16 matmul under autocast
            if n_valid < V:
                logits[:, n_valid:] = -math.inf
            lse = torch.logsumexp(logits, dim=-1)  # [n]
            valid = t_c != IGNORE
            safe_t = torch.where(valid, t_c, 0)
            target_logit = logits.gather(1, safe_t[:, None]).squeeze(1)
            loss_sum = loss_sum + torch.where(valid, lse - target_logit, 0.0).sum()
            if grad_h is not None and grad_w is not None:  # want_grad
                # d(sum of row losses)/d logits = softmax - one_hot(target), 0 for ignored rows.
                # Compiled: one elementwise expression, which the compiler makes a single pass
                # over the [n, V] chunk that also casts to the matmuls' dtype (an in-place
                # scatter costs two more passes, and autocast would cast once per matmul).
                # Eager: in place, the fewest [n, V] temporaries. The same numbers either way.
                if torch.compiler.is_compiling():
                    probs = torch.exp(logits - lse[:, None])
                    is_target = cols[None, :] == safe_t[:, None]  # [n, V]
                    dlogits = torch.where(is_target, probs - 1.0, probs) * valid[:, None]
                    dlogits = dlogits.to(grad_dtype)
                else:
                    dlogits = torch.exp(logits - lse[:, None])
                    dlogits.scatter_add_(1, safe_t[:, None], -torch.ones_like(lse)[:, None])
                    dlogits = dlogits * valid[:, None]
                    dlogits = dlogits.to(torch.promote_types(h.dtype, weight.dtype))
                # The same two matmuls as autograd's backward of F.linear (autocast applies).
                grad_h[start : start + chunk] = dlogits @ weight
                grad_w += (dlogits.t() @ h_c).float()
        mean = loss_sum / count
        if grad_h is not None and grad_w is not None:  # want_grad
            ctx.save_for_backward(grad_h.div_(count), grad_w.div_(count))
        ctx.weight_dtype = weight.dtype  # type: ignore[attr-defined]  # ctx carries it to backward
        return mean

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w = ctx.saved_tensors  # type: ignore[attr-defined]  # set by save_for_backward
        return (
            grad_h * grad_out.to(grad_h.dtype),
            (grad_w * grad_out).to(ctx.weight_dtype),  # type: ignore[attr-defined]  # set in forward
            None,
            None,
            None,
            None,
        )


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    n_valid: int | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight.T` against `targets`, `chunk` rows at a time.

    h: [..., C] hidden states; weight: [V, C]; targets: [...] ids (IGNORE = -1 skipped);
    n_valid: the real vocabulary size (columns past it are never predicted). chunk <= 0 runs the
    plain path (full logits, then `F.cross_entropy`), kept for A/B comparison.
    """
    n_valid = weight.size(0) if n_valid is None else n_valid
    h2, t1 = h.reshape(-1, h.size(-1)), targets.reshape(-1)
    if chunk <= 0:
        logits = F.linear(h2, weight)[:, :n_valid]
        return F.cross_entropy(logits.float(), t1, ignore_index=IGNORE)
    want_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    return _ChunkedLinearCrossEntropy.apply(h2, weight, t1, n_valid, chunk, want_grad)
