"""Distributed state has one home: the only reader of torchrun's environment variables.

`setup()` returns a `DistInfo` (rank, world size, device); every collective helper here is a no-op
in a single process, so callers never branch on "am I distributed?".
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import re
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

from gpt2repro.config import DistConfig
from gpt2repro.errors import RankFailed, UserError
from gpt2repro.model import GPT

T = TypeVar("T")

# torch.distributed.nn.functional's collectives default to `group=group.WORLD`, evaluated when it
# is imported: imported after init_process_group (by torch.distributed.checkpoint, at the first
# save), they would hold the default group past teardown (see `teardown`); imported here, None.
if dist.is_available():
    import torch.distributed.nn.functional  # noqa: F401

# The oldest torch for several processes: before 2.6, `torch.compile(DDP(model))` raises in
# dynamo's DDPOptimizer on our loss (a higher-order op in the graph), and FSDP2's public import
# path `torch.distributed.fsdp.fully_shard` does not exist. pyproject.toml asks for the same.
MIN_TORCH = (2, 6)


def torch_version(version: str) -> tuple[int, int]:
    """(major, minor) of a torch version string: "2.5.1+cu121" -> (2, 5)."""
    m = re.match(r"(\d+)\.(\d+)", version)
    if m is None:
        raise UserError(f"cannot read the torch version {version!r}: reinstall torch")
    return int(m[1]), int(m[2])


def require_torch_for(fallback: str) -> None:
    """One line naming the fix when this torch is older than MIN_TORCH. `fallback`: the settings
    that run on an older torch instead."""
    if torch_version(torch.__version__) < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        raise UserError(
            f"torch {torch.__version__} found; DDP with torch.compile and FSDP2 need torch >= "
            f"{need}: pip install 'torch>={need}' (or run with {fallback})"
        )


# How long a collective may wait once every rank has joined: torch's default.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


class PeersMissing(RankFailed):
    """Not every process joined the process group within dist.init_timeout_s. One line like a
    UserError, but not an input error: restart_until_done.sh retries it (a node may be late)."""


# Group for tiny CPU-side control messages (preemption flags); gloo even when training uses NCCL.
_CONTROL_GROUP: object | None = None


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None = single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def device_type(self) -> str:
        return self.device.type


def pick_device(
    requested: str = "auto", local_rank: int = 0, option: str = "train.device"
) -> torch.device:
    """cuda:<local_rank> if available, else mps, else cpu; or exactly what was requested.

    `option` is how the user spelled the setting (a config key, or a CLI flag like --device),
    for the error message."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{option}=cuda but CUDA is not available; use {option}=auto")
        return torch.device("cuda", local_rank)
    if requested in ("cpu", "mps"):
        return torch.device(requested)
    raise UserError(f"{option} must be auto, cuda, mps or cpu, got {requested!r}")


# The launcher's variables that say where this process stands; set together or not at all.
LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def env_world() -> tuple[int, int, int, int]:
    """(rank, local_rank, world_size, local_world_size) from torchrun's variables (or 0,0,1,1).

    Checked before any process group is made, one line each: WORLD_SIZE, RANK and LOCAL_RANK
    all present or all absent, integers, 0 <= RANK < WORLD_SIZE; and MASTER_ADDR/MASTER_PORT
    present when there are peers to meet."""
    given = {name: os.environ[name] for name in LAUNCH_VARS if name in os.environ}
    if not given:
        return 0, 0, 1, 1
    missing = [name for name in LAUNCH_VARS if name not in given]
    if missing:
        have = ", ".join(f"{k}={v}" for k, v in given.items())
        raise UserError(
            f"launcher environment: {have} is set but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not; launch with "
            "torchrun (it sets all three), or set WORLD_SIZE, RANK and LOCAL_RANK together"
        )
    values = {}
    for name in (*LAUNCH_VARS, "LOCAL_WORLD_SIZE"):
        raw = os.environ.get(name, given["WORLD_SIZE"] if name == "LOCAL_WORLD_SIZE" else "")
        try:
            values[name] = int(raw)
        except ValueError:
            raise UserError(
                f"launcher environment: {name}={raw!r} is not an integer; launch with torchrun, "
                f"or set {name} to a whole number"
            ) from None
    world, rank, local_rank = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise UserError(
            f"launcher environment: RANK={rank}, LOCAL_RANK={local_rank}, WORLD_SIZE={world} "
            "do not fit (need WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0); "
            "launch with torchrun"
        )
    if world > 1:
        unset = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if unset:
            raise UserError(
                f"launcher environment: WORLD_SIZE={world} but {' and '.join(unset)} not set; "
                "the processes cannot meet (torchrun sets them; set them to rank 0's host and "
                "a free port otherwise)"
            )
    return rank, local_rank, world, values["LOCAL_WORLD_SIZE"]


def restart_count() -> int:
    """How often torchrun's elastic agent has restarted this job (`--max-restarts`); 0 in its
    first attempt and outside torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def setup(
    device: str = "auto",
    backend: str = "auto",
    timeout_s: float = 600.0,
    device_option: str = "train.device",
) -> DistInfo:
    """Initialise the process group when launched by torchrun with WORLD_SIZE > 1.

    `timeout_s` (dist.init_timeout_s): how long to wait for every peer to join; a peer that
    never comes is one line after that, not torch's 30 minutes. Collectives afterwards keep
    COLLECTIVE_TIMEOUT (a checkpoint or an evaluation on one rank may take minutes).
    `device_option`: how the user spelled the device setting, for error messages."""
    rank, local_rank, world, local_world = env_world()
    dev = pick_device(device, local_rank, option=device_option)
    if world == 1:
        return DistInfo(device=dev)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    try:
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
    except dist.DistError as e:  # the rendezvous: a peer missing, or the address unreachable
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        reason = " ".join(str(e).split())[:200]
        raise PeersMissing(
            f"rank {rank} of {world} gave up after waiting {timeout_s:g} s for the other "
            f"{world - 1} process(es) at {where} ({reason}); start every rank (check the node "
            "count and MASTER_ADDR), or wait longer with --dist.init_timeout_s"
        ) from None
    _set_collective_timeout(COLLECTIVE_TIMEOUT)  # the rendezvous's is short
    global _CONTROL_GROUP
    _CONTROL_GROUP = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
    return DistInfo(
        rank=rank,
        local_rank=local_rank,
        world_size=world,
        local_world_size=local_world,
        device=dev,
        backend=backend,
    )


def _set_collective_timeout(timeout: datetime.timedelta) -> None:
    """The default group's timeout for collectives from now on. torch has no public setter (the
    init timeout is both the rendezvous's and every collective's); a torch without this private
    one keeps dist.init_timeout_s for collectives too, said once on stderr."""
    try:
        dist.distributed_c10d._set_pg_timeout(timeout)
    except (AttributeError, RuntimeError) as e:
        print(
            f"warning: collectives keep dist.init_timeout_s as their timeout ({e}); raise it if "
            "a checkpoint or an evaluation takes longer",
            file=sys.stderr,
        )


def teardown(clean: bool = True) -> None:
    """Barrier, destroy the process groups, and free them, so every rank exits with status 0.

    The barrier keeps a rank from leaving while another still talks (and a bare destroy can
    abort FSDP2 over gloo). Freeing matters because `destroy_process_group` only forgets the
    groups: FSDP2's module state and its DeviceMeshes (which torch's DTensor caches keep for the
    life of the process) still hold them, and with them gloo's worker threads. Such a thread
    drops its last reference to a finished collective a moment after the collective returns;
    if the interpreter is shutting down by then, taking the GIL to free the tensors ends the
    thread inside a C++ destructor: "terminate called without an active exception", SIGABRT,
    after a run that printed "done" (`_free_process_groups`; tests/test_teardown.py).

    clean=False (after an error on this rank) skips the barrier, which could wait forever, and
    the freeing, whose join could wait for a collective a failed peer never joins.
    """
    global _CONTROL_GROUP
    control, _CONTROL_GROUP = _CONTROL_GROUP, None
    if not (dist.is_available() and dist.is_initialized()):
        return
    groups = [weakref.ref(g) for g in {dist.group.WORLD, control} if g is not None]
    del control
    if clean:
        dist.barrier()
    dist.destroy_process_group()
    if clean:
        _free_process_groups()
        if any(g() is not None for g in groups):  # a torch that keeps them somewhere new
            print(
                "warning: a process group outlived dist.teardown; the exit may abort with "
                "'terminate called without an active exception'",
                file=sys.stderr,
            )


def _free_process_groups() -> None:
    """Drop the references to destroyed process groups that torch keeps, so their C++ objects are
    freed now: each group's destructor waits for its gloo worker threads, with the GIL released
    (the threads may need it to free a collective's tensors), while the interpreter is whole.

    Holders: the sharded model's FSDP2 state (reference cycles: `gc.collect`), every
    DeviceMesh's `_pg_registry` (meshes live on in DTensor's sharding caches), and the defaults
    of torch.distributed.nn.functional (imported early for that, at the top of this module).
    """
    gc.collect()
    device_mesh = sys.modules.get("torch.distributed.device_mesh")
    if device_mesh is None:  # never imported: no mesh holds a group
        return
    for obj in gc.get_objects():
        # type(), not isinstance: some torch objects warn when their __class__ is read
        if issubclass(type(obj), device_mesh.DeviceMesh):
            registry = getattr(obj, "_pg_registry", None)
            if isinstance(registry, dict):
                registry.clear()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in one process); returns t."""
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks (no-op in one process); returns t. (gloo has no AVG op.)"""
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def broadcast_object(obj: T, src: int = 0) -> T:
    """Send a picklable object from rank `src` to all ranks (identity in one process)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is True on any rank.

    Runs over a gloo group on CPU tensors, so under NCCL it never waits for the GPU stream:
    cheap enough to call every step (used for preemption signals).
    """
    global _CONTROL_GROUP
    if not is_initialized():
        return flag
    if _CONTROL_GROUP is None:
        _CONTROL_GROUP = dist.group.WORLD
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_CONTROL_GROUP)
    return bool(t.item())


def all_gather_object(obj: object) -> list[object]:
    if not is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(
    raw_model: GPT, info: DistInfo, strategy: str, param_dtype: torch.dtype | None = None
) -> None:
    """fsdp: FSDP2 `fully_shard` each block, then the root, in place (parameters become DTensors).

    `param_dtype` (bfloat16, when the run computes in it and `dist.fsdp_mixed_precision` is on):
    each block's parameters are all-gathered in that dtype (half the bytes of float32) and its
    gradients reduce-scattered in float32; the sharded parameters, their gradients and the
    optimizer state stay float32. None: float32 all-gather (parameters cast per op by autocast).

    Every block but the last frees its gathered parameters after its forward and gathers them
    again for its backward; the last keeps them (`reshard_after_forward=False`), since the
    backward starts with it right away: one all-gather per step fewer for one block's memory
    (torchtitan does the same). The root keeps its own (wte, wpe, ln_f) by FSDP2's default.

    Call before building the optimizer. No-op for ddp or a single process.
    """
    if strategy == "fsdp" and info.distributed:
        require_torch_for("--dist.strategy=ddp --train.compile=false")
        # Imported here: torch.distributed.fsdp costs about 0.65 s to import, which DDP runs
        # and every single-process command never need.
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        blocks = raw_model.transformer.h
        for i, block in enumerate(blocks):
            fully_shard(block, mp_policy=mp, reshard_after_forward=i < len(blocks) - 1)
        fully_shard(raw_model, mp_policy=mp)


class _CompiledWhenGrad:
    """A compiled function where gradients are taken (training, and the recompute of an
    activation-checkpointed block, so both run the same graph), the eager one under no_grad
    (evaluation, sampling), which therefore never compiles for its shapes or the KV cache."""

    def __init__(self, eager: Callable[..., torch.Tensor], mode: str = "default") -> None:
        self.eager = eager
        self.compiled = torch.compile(eager, mode=mode)

    def __call__(self, *args: object, **kwargs: object) -> torch.Tensor:
        fn = self.compiled if torch.is_grad_enabled() else self.eager
        return fn(*args, **kwargs)


def compile_blocks(raw_model: GPT, mode: str = "default") -> None:
    """Compile each transformer block's forward and the head + loss (`GPT.head_loss`) apart,
    in place (torchtitan's per-block compile, for FSDP2).

    Compiling the root module instead breaks its graph at every FSDP2 hook (they are
    dynamo-disabled): the all-gathers of each block run between the compiled pieces. Here the
    hooks stay in eager `Block.__call__` and only the maths inside is compiled: one graph for all
    blocks (they have one code object) and one for the head and loss, with no graph break.
    Parameter names are unchanged (no `_orig_mod.` in state dicts). `mode`: torch.compile's
    (train.compile_mode).
    """
    for block in raw_model.transformer.h:
        block.forward = _CompiledWhenGrad(block.forward, mode)
    # An instance attribute that shadows the method, as `block.forward` above does.
    raw_model.head_loss = _CompiledWhenGrad(raw_model.head_loss, mode)  # type: ignore[method-assign]


def _bf16_compress_hook(backend: str | None) -> Callable[..., torch.futures.Future]:
    """torch's `bf16_compress_hook` (cast each bucket to bf16, all-reduce, cast back).

    DDP refuses it by name unless torch is a CUDA build with NCCL >= 2.10, which also shuts out
    gloo, which all-reduces bf16 fine (so on CPU it is called through a wrapper of another
    name). Under NCCL DDP's check stays in force.
    """
    if backend != "gloo":
        return default_hooks.bf16_compress_hook

    # No annotations: DDP compares them with the classes, and this module's are strings.
    def gloo_bf16_compress_hook(state, bucket):
        return default_hooks.bf16_compress_hook(state, bucket)

    return gloo_bf16_compress_hook


def wrap(
    raw_model: GPT, info: DistInfo, cfg: DistConfig, compile: bool, compile_mode: str = "default"
) -> nn.Module:
    """The module to train: DDP-wrapped across processes (ddp), then compiled (`compile_mode`:
    torch.compile's mode, train.compile_mode).

    Several processes with compile need torch >= 2.6 (MIN_TORCH): one line says so otherwise.

    ddp: `DDP(raw_model)` with `cfg.bucket_cap_mb` buckets, gradients as views into the buckets
    (`gradient_as_bucket_view`: no copy into and out of them, one gradient-sized buffer less),
    and optionally bf16 gradient compression; then `torch.compile(DDP(...))`, which lets dynamo
    split the graph at DDP's bucket boundaries so gradient all-reduces overlap the backward
    pass. The compiled module is a wrapper: `raw_model` stays the uncompiled handle for state
    dicts, eval and sampling, which therefore never recompile for their shapes.

    fsdp (sharded in place by `shard`): the blocks and the head + loss are compiled one by one,
    in place (`compile_blocks`); they run eagerly under no_grad, so eval and sampling through
    `raw_model` do not recompile either.
    """
    model: nn.Module = raw_model
    if cfg.strategy == "fsdp" and info.distributed:
        if compile:
            compile_blocks(raw_model, compile_mode)
        return raw_model
    if cfg.strategy == "ddp" and info.distributed:
        if compile:
            require_torch_for("--train.compile=false")
        device_ids = [info.local_rank] if info.device_type == "cuda" else None
        model = DDP(
            raw_model,
            device_ids=device_ids,
            bucket_cap_mb=cfg.bucket_cap_mb,
            gradient_as_bucket_view=True,
        )
        if cfg.grad_compression == "bf16":
            model.register_comm_hook(None, _bf16_compress_hook(info.backend))
    if compile:
        # A module (OptimizedModule, `._orig_mod` = model) that torch types as a plain callable.
        model = torch.compile(model, mode=compile_mode)  # type: ignore[assignment]
    return model


def on_main(check: Callable[[], T]) -> T:
    """Run `check` on rank 0 only and return its result on every rank; a UserError it raises is
    raised on every rank (so no rank is left waiting in a collective). Any other exception is
    re-raised on rank 0 and reported on the others as a RankFailed pointing at rank 0's log."""
    returned: tuple[T] | None = None  # (check's result,): a result that is None is one too
    message = None
    failure: BaseException | None = None
    if not is_initialized() or dist.get_rank() == 0:
        try:
            returned = (check(),)
        except UserError as e:
            message = str(e)
        except Exception as e:  # still tell the other ranks before raising
            failure = e
            message = f"rank 0 failed ({type(e).__name__}: {e}); see rank 0's output above"
    crashed = failure is not None
    message, crashed, returned = broadcast_object((message, crashed, returned))
    if failure is not None:
        raise failure
    if crashed:  # a crash on rank 0 is no input error: restarting may fix it
        raise RankFailed(message)
    if message is not None:
        raise UserError(message)
    assert returned is not None  # no message: check returned on rank 0
    return returned[0]


def raise_if_any(problem: str | None) -> None:
    """Collective: raise UserError(the first rank's problem) on every rank if any rank has one."""
    problems = all_gather_object(problem)
    first = next((p for p in problems if p is not None), None)
    if first is not None:
        raise UserError(str(first))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside torch.compile (`._orig_mod`) and DDP (`.module`) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def grad_sync(
    model: nn.Module,
    raw_model: nn.Module,
    strategy: str,
    info: DistInfo,
    sync: bool,
    keep_unsharded: bool = False,
) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce unless `sync` (all but the last micro-step): DDP's `no_sync`,
    or FSDP2's `set_requires_gradient_sync` flag on the raw (sharded) module.

    Under FSDP2 the skipped micro-steps accumulate each gradient unsharded, in float32 (the
    reduce dtype): 4 bytes per parameter on every GPU until the last micro-step reduce-scatters
    them (plan.py counts it). `keep_unsharded` (dist.fsdp_keep_unsharded): the parameters also
    stay gathered after those micro-steps' backward, so the next forward gathers nothing; the last
    micro-step frees them again, so the optimizer, evaluation and checkpoints see shards."""
    if not info.distributed:
        return contextlib.nullcontext()
    if strategy == "fsdp":
        raw_model.set_requires_gradient_sync(sync)  # type: ignore[operator]  # an FSDPModule method (shard)
        if keep_unsharded:
            raw_model.set_reshard_after_backward(sync)  # type: ignore[operator]  # FSDPModule's too
        return contextlib.nullcontext()
    ddp = getattr(model, "_orig_mod", model)  # compile(DDP(m)): no_sync lives on the DDP module
    return contextlib.nullcontext() if sync else ddp.no_sync()  # type: ignore[operator]  # a DDP method


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a possibly replicated DTensor (clip_grad_norm_ under FSDP2 returns one)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
