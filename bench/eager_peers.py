"""Eager training step, side by side in one process: our GPT (chunked loss, and full logits)
against Hugging Face's GPT2LMHeadModel and, when given its model.py, nanoGPT's model.

    python bench/eager_peers.py [--nanogpt PATH/TO/nanoGPT/model.py] [--rounds 3 --steps 10]

The same shape for every model (4 layers, width 256, 4 heads, T=256, B=4, GPT-2's vocabulary),
bf16 autocast on the CPU, torch's AdamW, no torch.compile. Rounds alternate the models (a shared
machine drifts); each figure is the median ms per optimizer step of one round. nanoGPT is not
part of this repository: pass the path of a checkout's model.py to include it.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable

import torch

from gpt2repro.config import ModelConfig
from gpt2repro.model import GPT

B, T, LAYERS, HEADS, WIDTH, VOCAB = 4, 256, 4, 4, 256, 50257


def ours(loss_chunk: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    model = GPT(ModelConfig(LAYERS, HEADS, WIDTH, T, VOCAB), loss_chunk=loss_chunk)
    return _stepper(model, lambda x, y: model(x, y, loss_only=True)[1])


def hf() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from transformers import GPT2Config, GPT2LMHeadModel  # an optional package (dev extra)

    cfg = GPT2Config(n_layer=LAYERS, n_head=HEADS, n_embd=WIDTH, n_positions=T, vocab_size=VOCAB)
    model = GPT2LMHeadModel(cfg)
    return _stepper(model, lambda x, y: model(input_ids=x, labels=x).loss)  # shifts inside


def nanogpt(path: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.GPTConfig(block_size=T, vocab_size=VOCAB, n_layer=LAYERS, n_head=HEADS,
                           n_embd=WIDTH, dropout=0.0, bias=True)  # fmt: skip
    model = module.GPT(cfg)
    return _stepper(model, lambda x, y: model(x, y)[1])


def _stepper(
    model: torch.nn.Module, loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16):
            loss = loss_of(x, y)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nanogpt", help="path of nanoGPT's model.py (optional peer)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round (after 3)")
    args = p.parse_args()
    torch.manual_seed(0)
    models = {"ours (chunked loss)": ours(1024), "ours (full logits)": ours(0), "HF": hf()}
    if args.nanogpt:
        models["nanoGPT"] = nanogpt(args.nanogpt)
    tokens = torch.randint(0, VOCAB, (B, T + 1))
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # [B, T]
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, step in models.items():
            for _ in range(3):
                step(x, y)
            per_step = []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step(x, y)
                per_step.append(1e3 * (time.perf_counter() - t0))
            times[name].append(statistics.median(per_step))
    for name, ms in times.items():
        print(f"{name:20s} " + "  ".join(f"{m:7.1f}" for m in ms) + "  ms/step")


if __name__ == "__main__":
    main()
