"""The packed HellaSwag scorer (context once, logits only where scored) by equivalence with the
plainest scorer (`reference_losses`: one unpadded forward pass per ending, logits everywhere), on
real-format examples, on 1 rank and on 2 (torchrun); and a compiled model does not recompile.

Tolerance: summed losses agree to 1e-5 relative. Both run in float32 on the CPU but differ in the
order of additions (other matmul shapes, a masked softmax over the packed row instead of a causal
one over the ending's row), so each activation carries a few units of float32 rounding (6e-8
relative); through 2 layers and a sum over <= 30 tokens that is ~1e-7 relative (measured: 3e-8).
1e-5 leaves two orders of margin, and any real mistake (a wrong position, a token seeing another
ending, a missing token) moves a sum by 1e-2 relative or more.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.hellaswag import write_hellaswag

from gpt2repro.config import ModelConfig
from gpt2repro.evaluate import (
    example_rows,
    hellaswag_losses,
    load_hellaswag,
    pack_example,
    packed_attention_mask,
    predictions,
    reference_losses,
    score_hellaswag,
    validation_loss,
)
from gpt2repro.model import GPT

CPU = torch.device("cpu")
TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=128)
RTOL = 1e-5


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(TINY)


@pytest.fixture(scope="module")
def hs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hellaswag(tmp_path_factory.mktemp("hs") / "hellaswag_val.jsonl", n=11)


@pytest.fixture(scope="module")
def examples(hs_file: Path):
    return load_hellaswag(hs_file)


def reference(model: GPT, examples) -> tuple[np.ndarray, np.ndarray]:
    ref = [reference_losses(model, ex, CPU) for ex in examples]
    return np.stack([s for s, _ in ref]), np.stack([c for _, c in ref])


def assert_same_scores(examples, sums, counts, ref_sums, ref_counts) -> None:
    np.testing.assert_allclose(sums, ref_sums, rtol=RTOL, atol=0)
    np.testing.assert_array_equal(counts, ref_counts)
    want = predictions(examples, ref_sums, ref_counts)
    for k, v in predictions(examples, sums, counts).items():
        np.testing.assert_array_equal(v, want[k], err_msg=k)


def test_each_packed_token_sees_exactly_its_own_row(examples) -> None:
    """Every ending token attends to the (token, position) pairs of its own context + ending
    row up to itself, nothing else; each scored hidden state predicts that row's next token."""
    long = [ex for ex in examples if len(ex.ctx_tokens) > TINY.block_size]
    assert long, "fixture must hold contexts longer than block_size (left-truncation)"
    for ex in [long[0], examples[0]]:
        p = pack_example(ex, TINY.block_size)
        rows = example_rows(ex, TINY.block_size)
        n_ctx = rows[0][1]
        assert len(p.tokens) == n_ctx + sum(len(e) - 1 for e in ex.ending_tokens)
        assert p.pos.max() < TINY.block_size
        mask = packed_attention_mask(torch.from_numpy(p.seg)[None])[0, 0].numpy()  # [R, R]
        for i in range(len(p.tokens)):
            toks = rows[p.seg[i]][0] if p.seg[i] >= 0 else rows[0][0][:n_ctx]
            seen = sorted((int(p.tokens[j]), int(p.pos[j])) for j in np.flatnonzero(mask[i]))
            assert seen == sorted((toks[t], t) for t in range(p.pos[i] + 1)), i
        for s, target, k in zip(p.sel, p.targets, p.ending, strict=True):
            assert rows[k][0][p.pos[s] + 1] == target
        assert list(np.bincount(p.ending)) == [len(e) for e in ex.ending_tokens]


@pytest.mark.parametrize("batch_examples, bucket", [(1, 1), (3, 8), (16, 32)])
def test_packed_equals_reference(examples, batch_examples: int, bucket: int) -> None:
    model = tiny_model()
    sums, counts = hellaswag_losses(
        model, examples, CPU, batch_examples=batch_examples, bucket=bucket
    )
    assert_same_scores(examples, sums, counts, *reference(model, examples))
    assert model.training  # the caller's mode is restored


def test_score_hellaswag_equals_reference_accuracy(examples) -> None:
    model = tiny_model(1)
    ref_sums, ref_counts = reference(model, examples)
    labels = np.array([ex.label for ex in examples])
    got = score_hellaswag(model, examples, CPU, batch_examples=4)
    for k, v in predictions(examples, ref_sums, ref_counts).items():
        assert got[k] == float((v == labels).mean()), k


def test_compiled_evaluation_does_not_recompile(examples, monkeypatch) -> None:
    """Validation and HellaSwag on a compiled model: the second calls add no graph (fixed batch
    shapes, bucketed lengths), and the packed HellaSwag step itself is compiled."""
    import torch._dynamo

    graphs: list[int] = []  # number of graph inputs, one entry per compiled graph

    def counting_backend(gm: torch.fx.GraphModule, inputs: list) -> object:
        graphs.append(len(inputs))
        return gm.forward

    torch._dynamo.reset()
    model = tiny_model()
    compiled = torch.compile(model, backend=counting_backend)
    tokens = np.arange(16 * 5 + 1, dtype=np.uint16)
    after = []
    for _ in range(2):
        validation_loss(compiled, tokens, 16, 2, CPU)
        n_val = len(graphs)
        sums, counts = hellaswag_losses(compiled, examples, CPU, batch_examples=2, bucket=32)
        after.append((n_val, len(graphs)))
    (val1, hs1), (val2, hs2) = after
    assert val1 >= 1 and hs1 > val1  # both evaluations were compiled...
    assert (val2, hs2) == (hs1, hs1)  # ...and the second round compiled nothing new
    assert_same_scores(examples, sums, counts, *reference(model, examples))
    torch._dynamo.reset()


RANK_SCRIPT = """
import json, sys
import numpy as np, torch
from gpt2repro import dist
from gpt2repro.config import ModelConfig
from gpt2repro.evaluate import load_hellaswag, rank_losses, score_hellaswag
from gpt2repro.model import GPT

hs_file, out = sys.argv[1], sys.argv[2]
info = dist.setup("cpu")
torch.manual_seed(1)
model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=128))
examples = load_hellaswag(hs_file)
kw = dict(rank=info.rank, world_size=info.world_size, batch_examples=2)
idx, sums, counts = rank_losses(model, examples, info.device, **kw)
scores = score_hellaswag(model, examples, info.device, **kw)
np.savez(f"{out}/rank{info.rank}.npz", idx=np.array(idx), sums=sums, counts=counts)
with open(f"{out}/rank{info.rank}.json", "w") as f:
    json.dump(scores, f)
dist.teardown(clean=True)
"""


@pytest.mark.dist
def test_two_ranks_equal_reference(tmp_path: Path, hs_file: Path, examples, repo: Path) -> None:
    """torchrun, 2 gloo ranks: each rank's per-example summed losses equal the reference, and
    the all-reduced accuracies equal the reference's, on every rank."""
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("torchrun not found")
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    cmd = [exe, "--standalone", "--nproc_per_node=2", str(script), str(hs_file), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref_sums, ref_counts = reference(tiny_model(1), examples)
    seen = []
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npz")
        idx = list(got["idx"])
        assert idx == list(range(rank, len(examples), 2))
        assert_same_scores(
            [examples[i] for i in idx], got["sums"], got["counts"], ref_sums[idx], ref_counts[idx]
        )
        seen += idx
    assert sorted(seen) == list(range(len(examples)))
    labels = np.array([ex.label for ex in examples])
    want = {
        k: float((v == labels).mean())
        for k, v in predictions(examples, ref_sums, ref_counts).items()
    }
    for rank in range(2):
        scores = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert scores["n"] == len(examples)
        for k, v in want.items():
            assert scores[k] == pytest.approx(v, abs=1e-12), (rank, k)
