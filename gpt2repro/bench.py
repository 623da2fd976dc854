"""Throughput benchmarks (measurements, not tests). One subcommand per thing measured.

    python -m gpt2repro.bench data     # prep pipeline tokens/s vs raw tiktoken, same text, same cores
    python -m gpt2repro.bench loader   # TokenLoader time per batch (B=64, T=1024)
    python -m gpt2repro.bench train --config configs/gpt2_124m.toml [--section.key=value ...]
                                       # training step on synthetic tokens: tokens/s, MFU, memory
    torchrun --standalone --nproc_per_node=8 -m gpt2repro.bench train --config ...
    python -m gpt2repro.bench hellaswag [--bench-model gpt2 --train.device=cuda --limit 10042 --out F]
                                       # HellaSwag scoring: packed vs one example per pass
    python -m gpt2repro.bench core [--bench-model 4layer --limit 96 --train.device=cuda --out F]
                                       # CORE scoring: packed vs one example per pass
    python -m gpt2repro.bench table OUT_DIR   # one table of what bench/gpu_check.sh wrote there
                                              # (read by gpt2repro.gpu_results)

Settings shared with training are spelled as in train.py (`bench loader --train.micro_batch_size=16
--train.device=cuda`); a subcommand's short flags (`--batch-size`, `--device`, ...) are the same
settings, listed beside them in its --help. Numbers are recorded in docs/benchmarks.md with the
date, machine and command.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import functools
import json
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from gpt2repro import atomic
from gpt2repro.atomic import check_output_path
from gpt2repro.config import (
    AT_LEAST_1,
    NON_NEGATIVE,
    POSITIVE,
    Config,
    ModelConfig,
    ShowDefaults,
    add_option,
    grad_accum_steps,
    parse_verb_args,
    to_dict,
)
from gpt2repro.data import TokenLoader, write_shard
from gpt2repro.errors import UserError, add_debug_flag, run_cli
from gpt2repro.gpu_results import results_table
from gpt2repro.prep.shards import ShardOptions, Stream, jsonl_items, write_shards
from gpt2repro.tokenizer import EOT, N_VOCAB, get_encoding

# torch, and the modules that import it, are imported inside the benchmarks that need them (each
# marked "torch-side"): `bench data` must time data prep as it runs, in processes without torch.
if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from gpt2repro.config import Config
    from gpt2repro.dist import DistInfo
    from gpt2repro.scoring import Batching, Example
    from gpt2repro.train import Trainable, TrainContext

    # continuation_losses or full_row_losses: (model, examples, device, autocast dtype, batching)
    # -> [N, K] summed losses and token counts
    Scorer = Callable[
        [nn.Module, Sequence[Example], torch.device, torch.dtype | None, Batching],
        tuple[np.ndarray, np.ndarray],
    ]

_WORDS = (
    "the of and to in a is that for it as was with be by on not he I this are or his from at "
    "which but have an they you were her she there been one all we their has would when if so no "
    "will more about can said what out up them into only time some could new two may then do "
    "first any like now my such over our even most made after also did many before must through "
    "years where much your way well down should because each just those people how too little "
    "state good very make world still see own men work long get here between both life being "
    "under never day same another know while last might us great old year off come since against "
    "go came right used take three Government President 2024 1,000 $5 (see below) e-mail U.S. "
    "don't it's café naïve — “quoted” São Paulo"
)


def synthetic_corpus(n_bytes: int, seed: int = 0) -> list[str]:
    """Deterministic English-like documents (a few hundred to a few thousand characters each)."""
    rng = random.Random(seed)
    vocab = _WORDS.split(" ")
    docs: list[str] = []
    total = 0
    while total < n_bytes:
        paragraphs = []
        for _ in range(rng.randint(1, 8)):
            words = [rng.choice(vocab) for _ in range(rng.randint(20, 200))]
            paragraphs.append(" ".join(words).capitalize() + ".")
        doc = "\n\n".join(paragraphs)
        docs.append(doc)
        total += len(doc.encode())
    return docs


def bench_data(cfg: Config, args: argparse.Namespace) -> dict:
    """Pipeline (read JSONL -> tokenize in `workers` processes -> write shards) vs raw tiktoken."""

    docs = synthetic_corpus(int(args.mb * 1e6))
    enc = get_encoding()
    enc.encode_ordinary("warm up")
    raw_s = pipe_s = float("inf")
    raw_tokens = 0
    with tempfile.TemporaryDirectory(prefix="gpt2repro-bench-") as tmp:
        src = Path(tmp) / "corpus.jsonl"
        src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        # alternate raw and pipeline runs, best of each: the machine may be shared
        for i in range(args.repeat):
            t0 = time.perf_counter()
            raw = enc.encode_ordinary_batch(docs, num_threads=args.workers)
            raw_s = min(raw_s, time.perf_counter() - t0)
            raw_tokens = sum(len(t) for t in raw) + len(docs)  # + one EOT per document
            del raw
            t0 = time.perf_counter()  # includes starting the worker processes
            m = write_shards(
                lambda start: Stream(items=jsonl_items(src, start), nbytes=src.stat().st_size),
                Path(tmp) / f"out{i}",
                {"source": "bench"},
                prefix="bench",
                options=ShardOptions(shard_size=args.shard_size, workers=args.workers, quiet=True),
            )
            pipe_s = min(pipe_s, time.perf_counter() - t0)
    assert m["tokens"] == raw_tokens, (m["tokens"], raw_tokens)
    result = {
        "bench": "data",
        "documents": len(docs),
        "mbytes": round(args.mb, 1),
        "tokens": raw_tokens,
        "workers": args.workers,
        "raw_tok_per_s": round(raw_tokens / raw_s),
        "pipeline_tok_per_s": round(raw_tokens / pipe_s),
        "ratio": round(raw_s / pipe_s, 3),
    }
    return result


def check_loader_sizes(shards: int, shard_tokens: int, tmp: Path) -> None:
    """The shards `bench loader` writes fit the temporary directory's free space, and one shard
    (made in memory first) the machine's memory: one line naming the flags otherwise."""
    need = shards * shard_tokens * 2  # uint16 tokens
    free = shutil.disk_usage(tmp).free
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0
    if need > free or (ram and shard_tokens * 2 > ram):
        where = (
            f"the {free / 2**30:.1f} GiB free in {tmp}" if need > free else "this machine's memory"
        )
        raise UserError(
            f"--shards {shards} x --shard-tokens {shard_tokens:,} makes {need / 2**30:.1f} GiB of "
            f"shards, more than {where}; lower --shard-tokens or --shards"
        )


def bench_loader(cfg: Config, args: argparse.Namespace) -> dict:
    """Mean time per next_batch() over memory-mapped shards of random tokens (page cache warm)."""
    # torch-side: see the TYPE_CHECKING block
    import torch

    B, T, device = cfg.train.micro_batch_size, cfg.train.seq_len, cfg.train.device
    check_loader_sizes(args.shards, args.shard_tokens, Path(tempfile.gettempdir()))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="gpt2repro-bench-") as tmp:
        rng = np.random.default_rng(0)
        for i in range(args.shards):
            toks = rng.integers(0, 50257, size=args.shard_tokens, dtype=np.uint16)
            write_shard(Path(tmp) / f"bench_train_{i + 1:06d}.bin", toks)
        loader = TokenLoader(
            tmp,
            "train",
            batch_size=B,
            seq_len=T,
            seed=0,
            device=device,
        )
        for _ in range(args.warmup):
            loader.next_batch()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            x, y = loader.next_batch()
        if x.is_cuda:
            torch.cuda.synchronize()  # count the last copy too
        dt = (time.perf_counter() - t0) / args.steps
        assert x.shape == (B, T)
    return {
        "bench": "loader",
        "device": device,
        "B": B,
        "T": T,
        "shards": args.shards,
        "shard_tokens": args.shard_tokens,
        "ms_per_batch": round(dt * 1e3, 3),
        "tok_per_s": round(B * T / dt),
    }


def bench_train(cfg: Config, args: argparse.Namespace) -> dict:
    """The training step of `gpt2repro.train` (`train_step`: the same wrapping, precision,
    accumulation, guard and stop poll) on one fixed synthetic micro-batch: no data loading, so it
    measures the model, optimizer and communication."""
    import torch  # torch-side: see the TYPE_CHECKING block

    from gpt2repro import dist, train
    from gpt2repro.metrics import RunLog

    info = dist.setup(cfg.train.device, cfg.dist.backend)
    ok = False
    try:
        # The training rule (refuses a batch that B x T x world does not divide), unless --accum.
        grad_accum = args.accum or grad_accum_steps(cfg.train, info.world_size)
        B, T = cfg.train.micro_batch_size, cfg.train.seq_len
        tokens = torch.randint(0, cfg.model.vocab_size, (B, T + 1), device=info.device)
        run = train.TrainContext(
            cfg=cfg,
            info=info,
            trainable=train.build_model(cfg, info),  # one model on every rank, as in training
            loader=_FixedBatch(tokens[:, :-1], tokens[:, 1:]),  # [B, T] inputs and targets
            grad_accum=grad_accum,
            log=RunLog(Path(cfg.run.dir), cfg, is_main=False),  # as a non-main rank: silent
        )
        # Progress lines, so a step stopped by bench/gpu_check.sh (SIGTERM at its allowance)
        # still says how far it got: gpu_results reads the last one for the compile time so far.
        progress = _progress if info.is_main else (lambda what: None)  # one rank's lines
        progress("model built")
        first_s, _ = _timed_steps(run, min(1, args.warmup))  # compilation happens in step 1
        progress(f"step 1 done in {first_s:.1f} s (compile included)")
        rest_s, _ = _timed_steps(run, args.warmup - min(1, args.warmup))
        warmup_s = first_s + rest_s
        if info.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(info.device)
        progress(f"warm-up done in {warmup_s:.1f} s")
        seconds, loss = _timed_steps(run, args.steps)
        step_s = seconds / args.steps
        result = _train_result(
            cfg,
            info,
            run.trainable,
            grad_accum=grad_accum,
            warmup_s=warmup_s,
            step_s=step_s,
            final_loss=loss,
        )
        # The first step less a steady one: the compile time (eager: CUDA/cuBLAS start-up).
        result["first_step_s"] = round(first_s, 2)
        result["compile_s"] = round(max(0.0, first_s - step_s), 2) if args.warmup else None
        result["ddp_buckets"] = _ddp_buckets(run.trainable.model)
        ok = True
        return result if info.is_main else {}
    finally:
        dist.teardown(clean=ok)  # after an error on this rank, no barrier that could hang


_T0 = time.perf_counter()  # the benchmark's start, the origin of its progress lines


def _progress(what: str) -> None:
    """One line `bench: <what> at <t> s` (seconds since the benchmark started), flushed at once."""
    print(f"bench: {what} at {time.perf_counter() - _T0:.1f} s", flush=True)


def _ddp_buckets(model: nn.Module) -> dict[str, Any] | None:
    """DDP's gradient buckets after its rebuild (sizes in bytes, as torch's DDP logging data has
    them: the all-reduce splits), or None for a model that is not DDP-wrapped."""
    # torch-side: see the TYPE_CHECKING block
    from torch.nn.parallel import DistributedDataParallel as DDP

    ddp = getattr(model, "_orig_mod", model)  # torch.compile(DDP(...)) keeps DDP as _orig_mod
    if not isinstance(ddp, DDP):
        return None
    data = ddp._get_ddp_logging_data()
    sizes = str(data.get("rebuilt_bucket_sizes") or data.get("bucket_sizes") or "")
    return {"count": len([s for s in sizes.split(",") if s.strip()]), "bucket_sizes": sizes}


def _peak_rss_bytes() -> int:
    import resource  # POSIX only

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib * 1024


class _FixedBatch:
    """One fixed synthetic [B, T] micro-batch, returned at every micro-step."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.batch = (x, y)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch


def _timed_steps(run: TrainContext, count: int) -> tuple[float, float | None]:
    """`count` optimizer steps through `train.train_step`; (wall seconds, last loss or None)."""
    import torch  # torch-side: see the TYPE_CHECKING block

    from gpt2repro.train import train_step

    loss = None
    start = time.perf_counter()
    for _ in range(count):
        loss = train_step(run).loss
    if run.info.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, None if loss is None else float(loss.item())


def _train_result(
    cfg: Config,
    info: DistInfo,
    trainable: Trainable,
    *,
    grad_accum: int,
    warmup_s: float,
    step_s: float,
    final_loss: float | None,
) -> dict[str, Any]:
    # torch-side: see the TYPE_CHECKING block
    import torch

    from gpt2repro.hardware import flops_per_token, mfu, peak_flops

    train_cfg, model_cfg, device = cfg.train, cfg.model, info.device
    tokens_per_step = train_cfg.micro_batch_size * train_cfg.seq_len * info.world_size * grad_accum
    tok_s = tokens_per_step / step_s
    flops = flops_per_token(
        n_params=trainable.n_params,
        n_layer=model_cfg.n_layer,
        n_embd=model_cfg.n_embd,
        seq_len=train_cfg.seq_len,
        lookup_params=model_cfg.lookup_params,
    )
    peak = peak_flops(device)
    on_cuda = device.type == "cuda"
    dtype = trainable.autocast_dtype
    return {
        "bench": "train",
        "device": torch.cuda.get_device_name(device) if on_cuda else device.type,
        "world_size": info.world_size,
        "torch": torch.__version__,
        "n_params": trainable.n_params,
        "model": to_dict(cfg)["model"],
        "strategy": cfg.dist.strategy,
        "compile": trainable.compiled,
        "dtype": str(dtype) if dtype else "float32",
        "micro_batch": train_cfg.micro_batch_size,
        "seq_len": train_cfg.seq_len,
        # what else sets the memory (gpt2repro.plan compares its estimate with peak_mem_gib)
        "loss_chunk": train_cfg.loss_chunk,
        "activation_checkpointing": train_cfg.activation_checkpointing,
        "grad_accum": grad_accum,
        "tokens_per_step": tokens_per_step,
        "warmup_s": round(warmup_s, 2),
        "step_ms": round(1e3 * step_s, 2),
        "tok_per_s": round(tok_s),
        "tok_per_s_per_device": round(tok_s / info.world_size),
        "mfu": None
        if peak is None
        else round(
            mfu(flops, tokens_per_s=tok_s, peak_per_device=peak, n_devices=info.world_size) or 0.0,
            4,
        ),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if on_cuda
        else None,
        # CPU: the process's peak resident set (model, optimizer, activations, Python and torch
        # themselves); a coarse proxy, comparable between runs of the same shape.
        "peak_rss_gib": None if on_cuda else round(_peak_rss_bytes() / 2**30, 3),
        "final_loss": None if final_loss is None else round(final_loss, 4),
    }


# Words of the synthetic HellaSwag-shaped examples; their order and the seed fix the examples (and
# so the recorded numbers in docs/benchmarks.md).
_HELLASWAG_WORDS = (
    "the a man woman dog ball kitchen is are then puts takes runs quickly slowly "
    "into onto water bowl table camera shows continues begins while holding knife"
)


def synthetic_examples(n: int, seed: int = 0) -> list[Example]:
    """n HellaSwag-shaped examples of random words (context 40-120 tokens, endings 8-30).

    Built directly as token ids, one GPT-2-range id per word (the model is random, so which ids
    does not matter), so no tokenizer files are needed: the benchmark runs on a bare, offline box.
    """
    # torch-side: see the TYPE_CHECKING block
    from gpt2repro.hellaswag import N_ENDINGS
    from gpt2repro.scoring import Example

    rng = random.Random(seed)
    words = _HELLASWAG_WORDS.split(" ")
    ids = rng.sample(range(N_VOCAB), len(words))  # word i <-> token ids[i]

    def text(lo: int, hi: int) -> tuple[str, tuple[int, ...]]:
        picks = [rng.randrange(len(words)) for _ in range(rng.randint(lo, hi))]
        return " ".join(words[i] for i in picks), tuple(ids[i] for i in picks)

    out = []
    for _ in range(n):
        ctx, ctx_tokens = text(40, 120)
        endings = [text(8, 30) for _ in range(N_ENDINGS)]
        out.append(
            Example(
                context=ctx,
                continuations=tuple(e for e, _ in endings),
                label=rng.randrange(N_ENDINGS),
                context_tokens=ctx_tokens,
                continuation_tokens=tuple(t for _, t in endings),
            )
        )
    return out


def _timed_scoring(
    model: nn.Module,
    scorer: Scorer,
    examples: Sequence[Example],
    per_pass: int,
    bucket: int,
    *,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> tuple[float, np.ndarray, np.ndarray]:
    """(examples/s, summed losses, counts) of one scorer over `examples`."""
    # torch-side: see the TYPE_CHECKING block
    import torch

    from gpt2repro.scoring import Batching

    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    sums, counts = scorer(model, examples, device, autocast_dtype, Batching(per_pass, bucket))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(examples) / (time.perf_counter() - t0), sums, counts


def _positions_per_example(examples: Sequence[Example], block_size: int) -> dict[str, float]:
    """Mean positions fed per example: packed (and where logits are taken) vs one example per
    pass (4 rows padded to the longest, logits at every position)."""

    # torch-side: see the TYPE_CHECKING block
    from gpt2repro.scoring import example_rows, pack_example

    packs = [pack_example(ex, block_size) for ex in examples]
    ref = [
        ex.n_choices * max(len(t) - 1 for t, _ in example_rows(ex, block_size)) for ex in examples
    ]
    return {
        "packed_positions": float(np.mean([len(p.tokens) for p in packs])),
        "packed_logit_positions": float(np.mean([len(p.sel) for p in packs])),
        "single_positions": float(np.mean(ref)),
    }


def time_hellaswag_scoring(
    model: nn.Module | None = None,
    examples: Sequence[Example] | None = None,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    batch_examples: int = 16,
    bucket: int = 32,
    n_single: int = 64,
    repeats: int = 3,
) -> dict:
    """Examples/s of three scorers on the same model and examples, best of `repeats`
    alternating runs (a shared machine is noisy):

    - packed: `continuation_losses` (the evaluation's scorer: each context encoded once for its
      four endings, logits only at the scored positions), `batch_examples` examples per pass;
    - full rows: `full_row_losses` batched the same way (each ending a context + ending row,
      logits at every position: the scorer before the packed one);
    - one example per pass: `full_row_losses` with one example (4 rows padded to the longest)
      per forward pass, logits at every position: build-nanogpt's reference method, over the
      first `n_single` examples.

    Defaults: a tiny random GPT (2 layers, 2 heads, 64 wide) on 64 synthetic examples.
    """
    # torch-side: see the TYPE_CHECKING block
    import torch

    from gpt2repro.model import GPT
    from gpt2repro.scoring import (
        continuation_losses,
        full_row_losses,
        model_block_size,
        predictions,
    )

    device = device or torch.device("cpu")
    if model is None:
        torch.manual_seed(0)
        model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=256)).to(device)
    examples = list(examples) if examples is not None else synthetic_examples(64)
    single_set = examples[:n_single]

    run = functools.partial(_timed_scoring, model, device=device, autocast_dtype=autocast_dtype)
    # warm-up (and compile, if any)
    run(continuation_losses, examples[:batch_examples], batch_examples, bucket)
    run(full_row_losses, examples[:batch_examples], batch_examples, bucket)
    run(full_row_losses, examples[:2], 1, 1)
    packed = full = single = 0.0
    for _ in range(repeats):
        rate, s_packed, c_packed = run(continuation_losses, examples, batch_examples, bucket)
        packed = max(packed, rate)
        rate, _, _ = run(full_row_losses, examples, batch_examples, bucket)
        full = max(full, rate)
        rate, s_single, c_single = run(full_row_losses, single_set, 1, 1)
        single = max(single, rate)
    n = len(single_set)
    same = all(
        np.array_equal(v, predictions(single_set, s_single, c_single)[k])
        for k, v in predictions(single_set, s_packed[:n], c_packed[:n]).items()
    )
    return {
        "n": len(examples),
        "n_single": n,
        "batch_examples": batch_examples,
        "bucket": bucket,
        "packed_ex_per_s": packed,
        "full_ex_per_s": full,
        "single_ex_per_s": single,
        "speedup": packed / single,
        "speedup_vs_full": packed / full,
        **_positions_per_example(examples, model_block_size(model)),
        "max_abs_diff": float(np.abs(s_packed[:n] - s_single).max()),
        "max_rel_diff": float((np.abs(s_packed[:n] - s_single) / np.abs(s_single)).max()),
        "same_predictions": same,
    }


def bench_hellaswag(cfg: Config, args: argparse.Namespace) -> dict:
    """Batched vs one-example-at-a-time HellaSwag scoring on a random model (weights do not change
    the speed); real examples with --hellaswag FILE, else --limit (64) synthetic ones. Prints a
    few lines (`hellaswag_summary`) and returns the result (printed as JSON, written to --out)."""
    # torch-side: see the TYPE_CHECKING block
    import torch

    from gpt2repro import dist, precision
    from gpt2repro.hellaswag import DEFAULT_HELLASWAG, load_hellaswag
    from gpt2repro.model import GPT, gpt2_config

    device = dist.pick_device(cfg.train.device, option=args.config_flags["train.device"])
    torch.manual_seed(0)
    model_cfg = {
        "gpt2": lambda: gpt2_config("gpt2"),
        "4layer": lambda: ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=256),
        "tiny": lambda: ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=256),
    }[args.bench_model]()
    model: nn.Module = GPT(model_cfg).to(device)
    # unset (--train.compile=auto) = on for CUDA, as in training
    if cfg.train.compile if cfg.train.compile is not None else device.type == "cuda":
        # A module (OptimizedModule, `._orig_mod` = model) that torch types as a plain callable.
        model = torch.compile(model)  # type: ignore[assignment]
    if args.hellaswag:
        path = DEFAULT_HELLASWAG if args.hellaswag is True else args.hellaswag
        examples = load_hellaswag(path, limit=args.limit)
    else:
        examples = synthetic_examples(args.limit or 64)
    r = time_hellaswag_scoring(
        model,
        examples,
        device=device,
        autocast_dtype=precision.autocast_dtype(cfg.train.dtype, device),
        batch_examples=cfg.eval.batch_examples,
        bucket=args.bucket,
        n_single=min(len(examples), 64),
    )
    result = {
        "bench": "hellaswag",
        "bench_model": args.bench_model,
        "device": str(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        **r,
    }
    print(hellaswag_summary(result))
    return result


def hellaswag_summary(r: dict[str, Any]) -> str:
    """The lines `bench hellaswag` prints for its result `r` (the JSON it prints and writes to
    --out; bench/gpu_check.sh's table reads that JSON, gpu_results.hellaswag_note)."""
    threads = f", {r['threads']} threads" if r.get("threads") else ""
    per_pass = f"{r['batch_examples']} examples/pass, bucket {r['bucket']}"
    return (
        f"hellaswag scoring, random {r['bench_model']} GPT on {r['device']}{threads}:\n"
        f"  packed, batched ({per_pass}): {r['packed_ex_per_s']:.1f} ex/s over {r['n']} "
        f"(context once: {r['packed_positions']:.0f} positions per example, logits at "
        f"{r['packed_logit_positions']:.0f})\n"
        f"  full rows, batched ({per_pass}): {r['full_ex_per_s']:.1f} ex/s over {r['n']}\n"
        f"  one example per pass (reference): {r['single_ex_per_s']:.1f} ex/s over "
        f"{r['n_single']} ({r['single_positions']:.0f} positions per example, logits at all)\n"
        f"  speedup {r['speedup']:.2f}x over one example per pass, "
        f"{r['speedup_vs_full']:.2f}x over full rows batched; "
        f"max |summed loss diff| {r['max_abs_diff']:.2e}; "
        f"max relative {r['max_rel_diff']:.1e}; "
        f"same acc/acc_norm/acc_norm_char predictions: {'yes' if r['same_predictions'] else 'NO'}; "
        f"full 10,042-example set at the packed rate: {10042 / r['packed_ex_per_s']:.0f} s"
    )


def synthetic_core_items(n: int, block_size: int, seed: int = 0) -> list[Any]:
    """n CORE-shaped items of random GPT-2-range token ids, the three kinds in turn, shaped like
    the bundle's few-shot prompts at this context: multiple choice (a prompt of 0.6-1.2 x
    block_size tokens, four choices of 3-15), schema (two options of 1-3 tokens after a shared
    20-60, a shared continuation of 5-15), language modelling (0.4-1.0 x block_size, 1-5 scored).
    Built as token ids, so no tokenizer or bundle is needed (the model is random anyway)."""
    # torch-side: see the TYPE_CHECKING block
    from gpt2repro.core import Item

    rng = random.Random(seed)

    def toks(k: int) -> tuple[int, ...]:
        return tuple(rng.randrange(N_VOCAB - 1) for _ in range(k))

    items: list[Item] = []
    for i in range(n):
        if i % 3 == 0:
            prompt = (EOT, *toks(rng.randint(int(0.6 * block_size), int(1.2 * block_size))))
            seqs = tuple(prompt + toks(rng.randint(3, 15)) for _ in range(4))
            items.append(Item(seqs, (len(prompt),) * 4, rng.randrange(4)))
        elif i % 3 == 1:
            head, tail = (EOT, *toks(rng.randint(20, 60))), toks(rng.randint(5, 15))
            seqs = tuple(head + toks(rng.randint(1, 3)) + tail for _ in range(2))
            items.append(Item(seqs, tuple(len(s) - len(tail) for s in seqs), rng.randrange(2)))
        else:
            prompt = (EOT, *toks(rng.randint(int(0.4 * block_size), block_size)))
            items.append(Item((prompt + toks(rng.randint(1, 5)),), (len(prompt),), -1))
    return items


def time_core_scoring(
    model: nn.Module,
    items: Sequence[Any],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    batching: Batching | None = None,
    repeats: int = 3,
) -> dict:
    """Items/s of the packed CORE scorer (`core.score_items`, what evaluate --core and the loop
    run) and of one item per forward pass (`core.one_item_per_pass`) on the same items, best of
    `repeats` alternating runs; whether both give every item the same verdict."""
    # torch-side: see the TYPE_CHECKING block
    import torch

    from gpt2repro import core, dist, scoring

    batching = batching or scoring.DEFAULT_BATCHING
    info = dist.DistInfo(device=device)

    def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(items) / (time.perf_counter() - t0), out

    packed_fn = lambda: core.score_items(model, items, info, autocast_dtype, batching)[1]
    single_fn = lambda: core.one_item_per_pass(model, items, device, autocast_dtype)
    packed = single = 0.0
    for _ in range(repeats):
        rate, p = timed(packed_fn)
        packed = max(packed, rate)
        rate, (s_sums, s_counts, s_greedy) = timed(single_fn)
        single = max(single, rate)
    same = all(
        core.item_correct(it, p.sums[i], p.counts[i], p.greedy[i])
        == core.item_correct(it, s_sums[i], s_counts[i], s_greedy[i])
        for i, it in enumerate(items)
    )
    block_size = scoring.model_block_size(model)
    packs = [core.pack_item(it, block_size) for it in items]
    return {
        "n": len(items),
        "batch_examples": batching.batch_examples,
        "bucket": batching.bucket,
        "packed_ex_per_s": packed,
        "single_ex_per_s": single,
        "speedup": packed / single,
        "packed_positions": float(np.mean([sum(len(r.tokens) for r in p) for p in packs])),
        "single_positions": float(
            np.mean(
                [len(it.sequences) * min(block_size, max(map(len, it.sequences))) for it in items]
            )
        ),
        "max_abs_diff": float(np.abs(p.sums - s_sums).max()),
        "same_verdicts": same,
    }


def bench_core(cfg: Config, args: argparse.Namespace) -> dict:
    """CORE scoring, packed vs one example per forward pass, on generated items of the three
    kinds and a random model (no bundle, no download). Prints a few lines; returns the result."""
    # torch-side: see the TYPE_CHECKING block
    import torch

    from gpt2repro import dist, model, precision, scoring

    device = dist.pick_device(cfg.train.device, option=args.config_flags["train.device"])
    torch.manual_seed(0)
    model_cfg = {
        "gpt2": lambda: model.gpt2_config("gpt2"),
        "4layer": lambda: ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=256),
        "tiny": lambda: ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=256),
    }[args.bench_model]()
    gpt: nn.Module = model.GPT(model_cfg).to(device)
    if cfg.train.compile if cfg.train.compile is not None else device.type == "cuda":
        gpt = torch.compile(gpt)  # type: ignore[assignment]
    items = synthetic_core_items(args.limit or 96, model_cfg.block_size)
    r = time_core_scoring(
        gpt,
        items,
        device,
        precision.autocast_dtype(cfg.train.dtype, device),
        scoring.Batching(cfg.eval.batch_examples, args.bucket),
        repeats=args.repeat,
    )
    result = {
        "bench": "core",
        "bench_model": args.bench_model,
        "device": str(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        **r,
    }
    print(core_summary(result))
    return result


def core_summary(r: dict[str, Any]) -> str:
    """The lines `bench core` prints for its result `r`."""
    threads = f", {r['threads']} threads" if r.get("threads") else ""
    return (
        f"core scoring, random {r['bench_model']} GPT on {r['device']}{threads}, {r['n']} "
        f"generated items (MC / schema / LM):\n"
        f"  packed ({r['batch_examples']} rows/pass, bucket {r['bucket']}): "
        f"{r['packed_ex_per_s']:.1f} items/s ({r['packed_positions']:.0f} positions per item)\n"
        f"  one item per forward pass (reference): {r['single_ex_per_s']:.1f} items/s "
        f"({r['single_positions']:.0f} positions per item, logits at all)\n"
        f"  speedup {r['speedup']:.2f}x; max |summed loss diff| {r['max_abs_diff']:.2e}; "
        f"same verdicts: {'yes' if r['same_verdicts'] else 'NO'}"
    )


def bench_table(cfg: Config, args: argparse.Namespace) -> dict:
    """Print the table of a results folder (and write it to --md FILE). Returns no JSON."""
    results = Path(args.dir)
    if not results.is_dir():
        raise UserError(f"{results} is not a folder (give the OUT_DIR of bench/gpu_check.sh)")
    text = results_table(results)
    print(text)
    if args.md:
        atomic.write_text(args.md, text + "\n")
    return {}


class _OneLineErrors(argparse.ArgumentParser):
    """A subcommand's parser: a bad flag is one line (run_cli's), as a bad setting is."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see {self.prog} --help)")


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each subcommand's own (its flags; config settings are added by
    `parse_verb_args`)."""
    p = argparse.ArgumentParser(
        prog="python -m gpt2repro.bench",
        description=__doc__.split("\n")[0],
        formatter_class=ShowDefaults,
    )
    add_debug_flag(p)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_OneLineErrors)

    def command(name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help, description=help, formatter_class=ShowDefaults, **kwargs
        )

    d = command("data", "prep pipeline tokens/s vs raw tiktoken on the same text")
    add_option(d, "--mb", type=float, default=50.0, check=POSITIVE, help="megabytes of text")
    add_option(
        d,
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        check=AT_LEAST_1,
        help="processes/threads",
    )
    add_option(
        d, "--shard-size", type=int, default=100_000_000, check=AT_LEAST_1, help="tokens per shard"
    )
    add_option(d, "--repeat", type=int, default=3, check=AT_LEAST_1, help="report the best of N")
    d.set_defaults(func=bench_data)

    ld = command("loader", "TokenLoader time per batch")
    add_option(ld, "--shards", type=int, default=4, check=AT_LEAST_1, help="number of shards")
    add_option(
        ld,
        "--shard-tokens",
        type=int,
        default=10_000_000,
        check=AT_LEAST_1,
        help="tokens per shard",
    )
    add_option(ld, "--warmup", type=int, default=20, check=NON_NEGATIVE, help="untimed batches")
    add_option(ld, "--steps", type=int, default=500, check=AT_LEAST_1, help="timed batches")
    ld.set_defaults(func=bench_loader)

    tr = command(
        "train",
        "training step on synthetic tokens (tokens/s, MFU, peak memory)",
        usage="%(prog)s [--config FILE.toml] [--section.key=VALUE ...] [options]",
    )
    add_option(
        tr,
        "--warmup",
        type=int,
        default=5,
        check=NON_NEGATIVE,
        help="untimed steps (compilation happens here)",
    )
    add_option(tr, "--steps", type=int, default=10, check=AT_LEAST_1, help="timed optimizer steps")
    add_option(
        tr,
        "--accum",
        type=int,
        default=0,
        check=NON_NEGATIVE,
        help="micro-steps per step (0 = from the config)",
    )
    tr.add_argument("--out", help="also write the JSON result to this file")
    tr.set_defaults(func=bench_train)

    hs = command("hellaswag", "HellaSwag scoring: packed vs full rows vs one example per pass")
    hs.add_argument(
        "--bench-model",
        default="tiny",
        choices=("tiny", "4layer", "gpt2"),
        help="a random GPT: tiny (2 layers x 64), 4layer (4 x 128, the CPU demo's shape) or "
        "gpt2 (124M); all with GPT-2's 50257-token vocabulary",
    )
    hs.add_argument(
        "--hellaswag",
        nargs="?",
        const=True,  # the flag alone: evaluate's default file
        metavar="FILE",
        help="real examples from FILE (alone: the file `python -m gpt2repro.evaluate` reads)",
    )
    add_option(
        hs,
        "--limit",
        type=int,
        default=0,
        check=NON_NEGATIVE,
        help="examples (0 = 64 synthetic / all)",
    )
    add_option(
        hs, "--bucket", type=int, default=32, check=AT_LEAST_1, help="pad rows to a multiple of"
    )
    hs.add_argument("--out", help="also write the JSON result to this file")
    hs.set_defaults(func=bench_hellaswag)

    co = command("core", "CORE scoring: packed vs one example per pass, generated items")
    co.add_argument(
        "--bench-model",
        default="4layer",
        choices=("tiny", "4layer", "gpt2"),
        help="a random GPT: tiny (2 x 64), 4layer (4 x 128, block 256) or gpt2 (124M)",
    )
    add_option(co, "--limit", type=int, default=0, check=NON_NEGATIVE, help="items (0 = 96)")
    add_option(
        co, "--bucket", type=int, default=32, check=AT_LEAST_1, help="pad rows to a multiple of"
    )
    add_option(co, "--repeat", type=int, default=3, check=AT_LEAST_1, help="report the best of N")
    co.add_argument("--out", help="also write the JSON result to this file")
    co.set_defaults(func=bench_core)

    tb = command("table", "one table of a bench/gpu_check.sh results folder")
    tb.add_argument("dir", help="the folder (OUT_DIR of bench/gpu_check.sh)")
    tb.add_argument("--md", help="also write the table to this markdown file")
    tb.set_defaults(func=bench_table)
    return p, {"data": d, "loader": ld, "train": tr, "hellaswag": hs, "core": co, "table": tb}


# The settings each benchmark shares with training (parse_verb_args's keyword arguments), spelled
# as in train.py; a short flag is the same setting. `bench train` takes all of them, as train.py.
_SETTINGS: dict[str, dict[str, Any]] = {
    "data": {},
    "loader": {
        # model.block_size: the config's rule seq_len <= block_size holds here too
        "keys": ("train.micro_batch_size", "train.seq_len", "model.block_size", "train.device"),
        "aliases": {
            "--batch-size": "train.micro_batch_size",
            "--seq-len": "train.seq_len",
            "--device": "train.device",
        },
        "defaults": {"train.micro_batch_size": 64, "train.seq_len": 1024, "train.device": "cpu"},
    },
    "train": {"sections": tuple(f.name for f in dataclasses.fields(Config)), "config_file": True},
    "hellaswag": {
        "keys": ("train.device", "train.dtype", "train.compile", "eval.batch_examples"),
        "aliases": {
            "--device": "train.device",
            "--dtype": "train.dtype",
            "--compile": "train.compile",
            "--batch-examples": "eval.batch_examples",
        },
        "defaults": {"train.compile": False},  # compiling would dwarf a short measurement
    },
    "core": {
        "keys": ("train.device", "train.dtype", "train.compile", "eval.batch_examples"),
        "aliases": {
            "--device": "train.device",
            "--dtype": "train.dtype",
            "--compile": "train.compile",
            "--batch-examples": "eval.batch_examples",
        },
        "defaults": {"train.compile": False},
    },
    "table": {},
}


def parse_args(argv: list[str]) -> tuple[Config, argparse.Namespace]:
    """The subcommand's config settings (read as train.py reads them) and its own flags."""
    p, commands = _parser()
    i = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    if i == len(argv) or argv[i] not in commands or argv[:i]:
        p.parse_args(argv)  # the top-level --help, or argparse's error naming the subcommands
    name = argv[i]
    cfg, args = parse_verb_args(argv[i + 1 :], commands[name], **_SETTINGS[name])
    args.command = name
    return cfg, args


def main(argv: list[str]) -> int:
    cfg, args = parse_args(argv)
    for flag in ("out", "md"):  # output files, checked before the benchmark runs
        if getattr(args, flag, ""):
            check_output_path(getattr(args, flag), f"--{flag}", directory=False)
    result = args.func(cfg, args)
    if result:
        print(json.dumps(result))
        out = getattr(args, "out", "")
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    # A benchmark stopped by SIGTERM (bench/gpu_check.sh at the end of a step's allowance) first
    # prints every thread's stack, so the log says where it was (compiling, say), then dies as
    # SIGTERM's default would (chain). Here, not in main(): a process, not a caller, owns signals.
    if hasattr(faulthandler, "register"):  # not on Windows
        faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)
    raise SystemExit(run_cli(main))
