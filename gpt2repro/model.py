"""GPT-2, exactly: pre-LN blocks, tanh-GELU, learned positions, biases, lm_head tied to wte.

That is the default (`model.arch = "gpt2"`). The switches of `config.Arch` (rotary positions,
RMSNorm, QK-norm, ReLU^2, untied head, zero-initialised projections, no biases, logit soft-cap;
`model.arch = "modern"` turns them all on) change the blocks as docs/recipes.md describes; each
is off in GPT-2, where the modules and state dict are GPT-2's exactly.

A pure nn.Module: no ranks, files or optimizers. Compile, DDP/FSDP and
precision are applied from outside. Names follow Hugging Face's GPT-2 so state dicts map 1:1
(apart from the Conv1D transposes, handled in hf.py).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.nn.attention import SDPBackend, sdpa_kernel

from gpt2repro.config import LOSS_CHUNK_ROWS, Arch, ModelConfig
from gpt2repro.loss import linear_cross_entropy

# GPT-2 sizes: (n_layer, n_head, n_embd). Context 1024, vocab 50257.
GPT2_SIZES: dict[str, tuple[int, int, int]] = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
}


def gpt2_config(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a released GPT-2 size ('gpt2' ... 'gpt2-xl')."""
    n_layer, n_head, n_embd = GPT2_SIZES[name]
    return ModelConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, **overrides)


# train.attention_backend -> SDPA kernels in priority order; None = torch's own order (flash,
# memory-efficient, math, cuDNN). A named kernel goes first and torch's order follows it as the
# fallback: no one kernel takes every call (flash takes no explicit mask, so HellaSwag's packed
# rows and the KV cache's prefill fall through to another; on a CPU only flash and math exist).
# `math` alone is the exact reference (debugging numerics); it is never fast.
_TORCH_ORDER = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
    SDPBackend.CUDNN_ATTENTION,
]
ATTENTION_BACKENDS: dict[str, list[SDPBackend] | None] = {
    "auto": None,
    "flash": _TORCH_ORDER,
    "cudnn": [SDPBackend.CUDNN_ATTENTION]
    + [b for b in _TORCH_ORDER if b.name != "CUDNN_ATTENTION"],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION]
    + [b for b in _TORCH_ORDER if b.name != "EFFICIENT_ATTENTION"],
    "math": [SDPBackend.MATH],
}


@dataclass
class KVCache:
    """Keys and values of every layer for incremental decoding.

    k, v: [n_layer, B, n_head, max_len, head_dim]; `pos` is how many positions are filled.
    """

    k: torch.Tensor
    v: torch.Tensor
    pos: int = 0

    @classmethod
    def empty(
        cls, cfg: ModelConfig, batch: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> KVCache:
        hd = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, batch, cfg.n_head, max_len, hd)
        return cls(
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
        )


# Rotary's base frequency (RoFormer's, the speedrun's and nanochat's).
ROPE_BASE = 10000.0


def rotary_angles(pos: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of rotary's angles pos * base^(-2i/head_dim), i < head_dim/2, in float32,
    shaped to broadcast over [B, T, nh, head_dim/2]: from pos [T] -> [1, T, 1, hd/2], from
    pos [B, T] -> [B, T, 1, hd/2]. Computed from the positions, so a KV cache's offset and
    packed rows' own positions come for free."""
    inv_freq = ROPE_BASE ** (
        -torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim
    )
    angles = pos.float()[..., None] * inv_freq  # [T, hd/2] or [B, T, hd/2]
    angles = angles[None, :, None] if pos.dim() == 1 else angles[:, :, None]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i + hd/2}) of x [B, T, nh, hd] by its angle; in float32, back
    in x's dtype."""
    x1, x2 = x.float().chunk(2, dim=-1)
    y = torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)
    return y.to(x.dtype)


def make_norm(n_embd: int, arch: Arch) -> nn.Module:
    """GPT-2's LayerNorm (gain and bias; no bias with `no_bias`), or a parameter-free RMSNorm."""
    if arch.rmsnorm:
        return nn.RMSNorm(n_embd, elementwise_affine=False)
    return nn.LayerNorm(n_embd, eps=1e-5, bias=not arch.no_bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        arch = cfg.resolved_arch
        self.n_head = cfg.n_head
        self.n_embd = cfg.n_embd
        self.qk_norm = arch.qk_norm
        bias = not arch.no_bias
        # q, k, v for all heads at once
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=bias)
        self.c_proj.RESIDUAL_SCALE_INIT = True  # type: ignore[assignment]  # a plain flag (see _init_weights)
        # SDPA kernels in priority order (ATTENTION_BACKENDS); None = torch's order. Set by GPT.
        self.sdpa_backends: list[SDPBackend] | None = None

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        attn_mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """`attn_mask` (bool, True = attend, broadcastable to [B, nh, T, T]) replaces the causal
        mask, e.g. for several sequences packed in one row; not with `cache`. `rope`: the
        rotary cos and sin of these positions (`rotary_angles`), None without rotary."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # each [B, T, C]
        hd = C // self.n_head
        q = q.view(B, T, self.n_head, hd)
        k = k.view(B, T, self.n_head, hd)
        # QK-norm and rotary in [B, T, nh, hd]: their new q and k keep GPT-2's memory layout
        # once transposed, so the attention's output is too and c_proj's input is no copy.
        if self.qk_norm:
            q, k = F.rms_norm(q, (hd,)), F.rms_norm(k, (hd,))
        if rope is not None:
            # Before the cache write: cached keys keep the rotation of their own positions.
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, nh, T, hd]
        v = v.view(B, T, self.n_head, hd).transpose(1, 2)
        # The SDPA kernel priority (train.attention_backend), traced into a compiled graph.
        with sdpa_priority(self.sdpa_backends):
            if attn_mask is not None:
                y = attend(q, k, v, attn_mask=attn_mask)
            elif cache is None:
                # Flash / memory-efficient kernels on GPU when the inputs allow it.
                y = attend(q, k, v, is_causal=True)
            else:
                p = cache.pos
                cache.k[layer, :, :, p : p + T] = k
                cache.v[layer, :, :, p : p + T] = v
                k_all = cache.k[layer, :, :, : p + T]  # [B, nh, p+T, hd]
                v_all = cache.v[layer, :, :, : p + T]
                mask = None
                if T > 1:
                    # query i (absolute position p+i) sees keys 0 .. p+i
                    qpos = torch.arange(p, p + T, device=x.device)[:, None]
                    kpos = torch.arange(p + T, device=x.device)[None, :]
                    mask = kpos <= qpos  # [T, p+T], True = attend
                y = attend(q, k_all, v_all, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads: [B, T, C]
        return self.c_proj(y)


def sdpa_priority(
    backends: list[SDPBackend] | None,
) -> contextlib.AbstractContextManager[object]:
    """The SDPA kernels `backends` in priority order (ATTENTION_BACKENDS) while it is entered;
    None = torch's order. Entered inside the attention module's forward, so torch.compile traces
    it into the graph, and it holds in an activation-checkpointed block's recompute too."""
    if backends is None:
        return contextlib.nullcontext()
    return sdpa_kernel(backends, set_priority=True)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v over [B, nh, T, hd] inputs, by torch's SDPA kernels (in the
    priority that `sdpa_priority` set, if any).

    On a CPU, bfloat16 inputs attend in float32: torch's CPU flash-attention backward is about 4x
    slower in bfloat16 than in float32 at the demo's shapes (docs/benchmarks.md), and autocast
    would cast float32 inputs back down, hence the disabled region. Elsewhere the inputs' dtype."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=attn_mask, is_causal=is_causal
            )
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)


class ReLUSquared(nn.Module):
    """relu(x)^2 (So et al. 2021, Primer), the speedrun's MLP activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        arch = cfg.resolved_arch
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=not arch.no_bias)
        # GPT-2's "gelu_new", or ReLU^2 (one attribute name for either)
        self.gelu: nn.Module = ReLUSquared() if arch.relu2 else nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=not arch.no_bias)
        self.c_proj.RESIDUAL_SCALE_INIT = True  # type: ignore[assignment]  # a plain flag (see _init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        arch = cfg.resolved_arch
        self.ln_1 = make_norm(cfg.n_embd, arch)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg.n_embd, arch)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        attn_mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, attn_mask, rope)
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    """GPT-2's trunk, HF's `GPT2Model`: token and position embeddings, the blocks, the final
    LayerNorm; `GPT.hidden_states` runs it. A module of its own rather than an nn.ModuleDict so
    that `transformer.wte` has its type (an nn.ModuleDict entry is any nn.Module); the parameter
    names are the same (`transformer.wte.weight`, `transformer.h.0.attn.c_attn.weight`, ...)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        arch = cfg.resolved_arch
        self.wte = nn.Embedding(cfg.padded_vocab_size, cfg.n_embd)
        # Learned positions; none with rotary (positions enter q and k instead).
        self.wpe = None if arch.rotary else nn.Embedding(cfg.block_size, cfg.n_embd)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = make_norm(cfg.n_embd, arch)


class GPT(nn.Module):
    """GPT-2. `activation_checkpointing` recomputes each block in the backward pass (less memory,
    one more forward); `loss_chunk` is how many rows of the loss the chunked linear +
    cross-entropy (loss.py) computes at once when only the loss is wanted (0 = the full logits,
    then F.cross_entropy); `attention_backend` names the SDPA kernel tried first
    (ATTENTION_BACKENDS; `set_attention_backend`)."""

    def __init__(
        self,
        cfg: ModelConfig,
        activation_checkpointing: bool = False,
        loss_chunk: int = LOSS_CHUNK_ROWS,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        if cfg.n_embd % cfg.n_head != 0:
            raise ValueError(f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
        self.config = cfg
        self.arch = cfg.resolved_arch
        self.transformer = Transformer(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        if self.arch.untied_head:
            self.lm_head.OUTPUT_HEAD = True  # type: ignore[assignment]  # a plain flag (see _init_weights)
        else:
            self.lm_head.weight = self.transformer.wte.weight  # weight tying
        self.activation_checkpointing = activation_checkpointing
        self.loss_chunk = loss_chunk
        self.set_attention_backend(attention_backend)
        self.apply(self._init_weights)
        with torch.no_grad():
            # Padded rows are never looked up or predicted; keep them exactly zero.
            self.transformer.wte.weight[cfg.vocab_size :].zero_()
            self.lm_head.weight[cfg.vocab_size :].zero_()  # the same rows, or an untied head's

    def set_attention_backend(self, name: str) -> None:
        """Every block's SDPA kernel priority: a key of ATTENTION_BACKENDS (train.attention_backend).
        Set before compiling: a compiled graph keeps the kernels it was traced with."""
        if name not in ATTENTION_BACKENDS:
            raise ValueError(f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}")
        for module in self.modules():
            if isinstance(module, CausalSelfAttention):
                module.sdpa_backends = ATTENTION_BACKENDS[name]

    def _init_weights(self, module: nn.Module) -> None:
        # llm.c / nanoGPT init: N(0, 0.02); residual projections scaled by 1/sqrt(2 n_layer)
        # because each block adds two of them to the residual stream. `zero_init`: those
        # projections and an untied head start at zero (each block starts as the identity).
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "RESIDUAL_SCALE_INIT", False):
                std *= (2 * self.config.n_layer) ** -0.5
            if self.arch.zero_init and (
                getattr(module, "RESIDUAL_SCALE_INIT", False)
                or getattr(module, "OUTPUT_HEAD", False)
            ):
                std = 0.0
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, exclude_padding: bool = True) -> int:
        """Parameter count, tied weights counted once; padded vocab rows excluded by default
        (those of wte, and of an untied head)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_padding:
            tables = 2 if self.arch.untied_head else 1
            n -= (
                tables
                * (self.config.padded_vocab_size - self.config.vocab_size)
                * self.config.n_embd
            )
        return n

    def hidden_states(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        pos: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final hidden states [B, T, C] (after ln_f) for token ids idx [B, T].

        Positions are 0..T-1, or start at `cache.pos` with a KV cache (which is advanced by T),
        or are given as `pos` ([T] or [B, T]) together with an `attn_mask` (bool, True = attend,
        [B, 1, T, T] or broadcastable) for packed rows such as a context and its endings.
        """
        B, T = idx.size()
        if pos is None:
            start = 0 if cache is None else cache.pos
            if start + T > self.config.block_size:
                raise ValueError(
                    f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}"
                )
            pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # [T]
        x = self.transformer.wte(idx)  # [B, T, C]
        rope = None
        if self.transformer.wpe is not None:
            x = x + self.transformer.wpe(pos)
        else:
            rope = rotary_angles(pos, self.config.n_embd // self.config.n_head)
        for i, block in enumerate(self.transformer.h):
            if self.activation_checkpointing and self.training and cache is None:
                x = torch.utils.checkpoint.checkpoint(
                    block, x, None, i, attn_mask, rope, use_reentrant=False
                )
            else:
                x = block(x, cache, i, attn_mask, rope)
        if cache is not None:
            cache.pos += T
        return self.transformer.ln_f(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits [..., vocab_size] of hidden states [..., C]; padded ids are never predicted.
        With `logit_softcap` c: c * tanh(logits / c), in float32."""
        logits = self.lm_head(h)  # [..., padded_vocab]
        cap = self.arch.logit_softcap
        if cap > 0:
            logits = cap * torch.tanh(logits.float() / cap)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]
        return logits

    def head_loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the head on hidden states h [B, T, C] against targets [B, T]
        (-1 ignored), by the chunked linear + cross-entropy (`self.loss_chunk` rows at a time).

        A method of its own so that it can be compiled apart from the blocks (dist.py does, under
        FSDP2, where the blocks are compiled one by one)."""
        return linear_cross_entropy(
            h,
            self.lm_head.weight,
            targets,
            n_valid=self.config.vocab_size,
            chunk=self.loss_chunk,
            softcap=self.arch.logit_softcap,
        )

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        loss_only: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx, targets: [B, T] token ids. Returns logits [B, T, vocab_size] and mean CE loss.

        Targets equal to -1 are ignored. With `cache`, positions start at `cache.pos` and the
        cache is advanced by T. `loss_only` (training, validation): no logits are returned, and
        the loss comes from the chunked linear + cross-entropy (`self.loss_chunk` rows at a
        time), so no [B, T, vocab] tensor is ever held.
        """
        h = self.hidden_states(idx, cache)
        if loss_only:
            if targets is None:
                raise ValueError("loss_only needs targets")
            return None, self.head_loss(h, targets)
        logits = self.logits(h)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1
            )
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        stop_token: int | None = None,
    ) -> torch.Tensor:
        """Continue idx [B, T0]; return [B, T0 + n] ids. temperature 0 = greedy (argmax).

        With the KV cache, the prompt is run once and each new token costs one position.
        Without it, the full (cropped) context is re-run every step; greedy outputs are equal.
        """
        was_training = self.training
        self.eval()
        try:
            return self._generate(
                idx,
                max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                generator=generator,
                use_cache=use_cache,
                stop_token=stop_token,
            )
        finally:
            self.train(was_training)  # restored even when generation raises

    @torch.no_grad()
    def _generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float,
        top_k: int | None,
        generator: torch.Generator | None,
        use_cache: bool,
        stop_token: int | None,
    ) -> torch.Tensor:
        B, T0 = idx.shape
        limit = self.config.block_size
        cache: KVCache | None = None
        if use_cache:
            if T0 + max_new_tokens > limit:
                raise ValueError(
                    f"prompt ({T0}) + max_new_tokens ({max_new_tokens}) exceeds block_size "
                    f"{limit}; the KV cache cannot slide (use --no-kv-cache or fewer tokens)"
                )
            dtype = self.transformer.wte.weight.dtype
            cache = KVCache.empty(
                self.config, batch=B, max_len=T0 + max_new_tokens, device=idx.device, dtype=dtype
            )
        out = idx
        step_input = idx
        for _ in range(max_new_tokens):
            if cache is not None:
                logits, _ = self(step_input, cache=cache)
            else:
                logits, _ = self(out[:, -limit:])
            logits = logits[:, -1, :].float()  # [B, vocab]
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k > 0:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, -math.inf)
                probs = F.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            out = torch.cat([out, nxt], dim=1)
            step_input = nxt
            if stop_token is not None and B == 1 and int(nxt.item()) == stop_token:
                break
        return out
