"""CORE by equivalence: the packed scorer's per-task accuracy equals an independent
one-sequence-per-forward implementation of the reference rules (written here, sharing no code with
gpt2repro.core beyond the tokenizer) on a fixture bundle of every kind, with few-shot prompts
longer than the model's context; 2 ranks equal 1; the seeded orders equal the reference's literal
ones; bad bundles fail in one line."""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt2repro import core
from gpt2repro.config import ModelConfig
from gpt2repro.dist import DistInfo
from gpt2repro.errors import UserError
from gpt2repro.model import GPT
from gpt2repro.scoring import Batching
from gpt2repro.tokenizer import get_encoding

BUNDLE = Path(__file__).parent / "fixtures" / "core_bundle"
ONE = DistInfo()
BLOCK = 64  # the few-shot prompts of the fixture run to 100-180 tokens: cropped from the left


def tiny_model(seed: int = 0, arch: str = "gpt2") -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, arch=arch))
    if arch != "gpt2":  # the fast recipe's zero-initialised projections and head carry signal
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def tasks() -> list[core.Task]:
    return core.load_tasks(BUNDLE)


# --------------------------------------------------------------------------- the reference


def ref_tasks(bundle: Path) -> list[dict]:
    """core.yaml + eval_meta_data.csv read plainly: label, kind, shots, delimiter, baseline."""
    import yaml

    cfg = yaml.safe_load((bundle / "core.yaml").read_text())
    with (bundle / "eval_meta_data.csv").open() as f:
        base = {r["Eval Task"]: float(r["Random baseline"]) for r in csv.DictReader(f)}
    return [
        {
            "label": t["label"],
            "kind": t["icl_task_type"],
            "shots": t["num_fewshot"][0],
            "delim": t.get("continuation_delimiter", " "),
            "path": bundle / "eval_data" / t["dataset_uri"],
            "baseline": base[t["label"]],
        }
        for t in cfg["icl_tasks"]
    ]


def ref_prompts(kind: str, item: dict, shots: list[dict], d: str) -> list[str]:
    """The reference's prompts, written out shot by shot."""
    text = ""
    for s in shots:
        if kind == "multiple_choice":
            text += s["query"] + d + s["choices"][s["gold"]]
        elif kind == "schema":
            text += s["context_options"][s["gold"]] + d + s["continuation"]
        else:
            text += s["context"].strip() + d + s["continuation"]
        text += "\n\n"
    if kind == "multiple_choice":
        return [text + item["query"] + d + c for c in item["choices"]]
    if kind == "schema":
        return [text + c + d + item["continuation"] for c in item["context_options"]]
    last = text + item["context"].strip() + d
    return [last.strip(), last + item["continuation"]]


def ref_example(model: GPT, kind: str, item: dict, shots: list[dict], d: str) -> dict:
    """One example by the reference rules: each sequence through its own unpadded forward pass,
    logits everywhere. Returns correct, and per sequence the mean loss and greedy matches."""
    enc = get_encoding()
    seqs = [
        [50256, *enc.encode(p, allowed_special="all")] for p in ref_prompts(kind, item, shots, d)
    ]
    if kind == "multiple_choice":
        n = 0
        while all(len(s) > n for s in seqs) and len({s[n] for s in seqs}) == 1:
            n += 1
        spans = [(n, len(s)) for s in seqs]
    elif kind == "schema":
        n = 0
        while all(len(s) > n for s in seqs) and len({s[-1 - n] for s in seqs}) == 1:
            n += 1
        spans = [(len(s) - n, len(s)) for s in seqs]
    else:
        without, with_ = seqs
        assert with_[: len(without)] == without
        seqs, spans = [with_], [(len(without), len(with_))]
    means, greedy = [], []
    for s, (a, b) in zip(seqs, spans, strict=True):
        crop = max(0, len(s) - BLOCK)
        s, a, b = s[crop:], a - crop, b - crop
        t = torch.tensor(s)[None]
        with torch.no_grad():
            logits = model(t)[0][0].float()  # [len, vocab]
        losses = F.cross_entropy(logits[:-1], t[0, 1:], reduction="none")  # predicts s[1:]
        means.append(losses[a - 1 : b - 1].mean().item() if b > a else math.nan)
        greedy.append((logits[a - 1 : b - 1].argmax(-1) == t[0, a:b]).tolist())
    if kind == "language_modeling":
        correct = all(greedy[0])
    else:
        correct = means.index(min(means)) == item["gold"]  # Python's min: NaN rules included
    return {"correct": correct, "means": means, "greedy": greedy}


def ref_core(
    model: GPT, bundle: Path = BUNDLE, cap: int = 0, only: tuple[str, ...] = ()
) -> dict[str, dict]:
    out = {}
    model.eval()
    for t in ref_tasks(bundle):
        if only and t["label"] not in only:
            continue
        data = [json.loads(line) for line in t["path"].read_text().splitlines() if line.strip()]
        random.Random(1337).shuffle(data)
        if cap > 0:
            data = data[:cap]
        results = []
        for idx, item in enumerate(data):
            shots = []
            if t["shots"] > 0:
                others = [i for i in range(len(data)) if i != idx]
                shots = [data[i] for i in random.Random(1234 + idx).sample(others, t["shots"])]
            results.append(ref_example(model, t["kind"], item, shots, t["delim"]))
        acc = sum(r["correct"] for r in results) / len(results)
        b = t["baseline"] / 100
        out[t["label"]] = {"acc": acc, "centered": (acc - b) / (1 - b), "examples": results}
    return out


# --------------------------------------------------------------------------- equivalence


def test_fixture_prompts_exceed_the_context(tasks) -> None:
    longest = {t.spec.label: max(len(s) for it in t.items() for s in it.sequences) for t in tasks}
    for label in ("mc_fewshot", "schema_fewshot", "lm_fewshot"):
        assert longest[label] > BLOCK + 30, (label, longest[label])
    kinds = {t.spec.kind for t in tasks}
    assert kinds == set(core.KINDS)
    # choices cropped by different amounts: an example packed as several rows
    mc = next(t for t in tasks if t.spec.label == "mc_fewshot")
    assert any(len(core.pack_item(it, BLOCK)) > 1 for it in mc.items())
    assert any(
        len(core.pack_item(it, BLOCK)) == 1 < len(it.sequences) for t in tasks for it in t.items()
    )


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_packed_equals_reference_per_task(tasks, arch: str) -> None:
    model = tiny_model(0, arch)
    ref = ref_core(model)
    model.train()
    got = core.evaluate_core(model, tasks, ONE, batching=Batching(3, 16))
    assert list(got["tasks"]) == list(ref)
    for label, r in ref.items():
        g = got["tasks"][label]
        assert g["acc"] == r["acc"], label
        assert g["centered"] == pytest.approx(r["centered"], abs=1e-12), label
        assert g["n"] == len(r["examples"])
    assert got["core"] == pytest.approx(np.mean([r["centered"] for r in ref.values()]), abs=1e-12)
    assert model.training  # the caller's mode is restored

    # per example and sequence: the same mean losses and greedy matches, not only the verdicts
    items = [it for t in tasks for it in t.items()]
    _, scores = core.score_items(model, items, ONE, batching=Batching(3, 16))
    refs = [e for r in ref.values() for e in r["examples"]]
    assert any(not e["correct"] for e in refs) and any(e["correct"] for e in refs)
    for j, (it, e) in enumerate(zip(items, refs, strict=True)):
        K = len(it.sequences)
        counts = scores.counts[j, :K]
        means = np.where(counts > 0, scores.sums[j, :K] / np.maximum(counts, 1), np.nan)
        np.testing.assert_allclose(means, e["means"], rtol=0, atol=2e-5, err_msg=str(j))
        assert list(scores.greedy[j, :K]) == [sum(g) for g in e["greedy"]], j
    # the fixture reaches the reference's NaN rule: a choice that is a prefix of another
    assert any(any(math.isnan(m) for m in e["means"]) for e in refs)


def test_capped_subset_equals_reference_and_is_fixed(tasks) -> None:
    """A per-task cap keeps the first N of the seeded order and draws shots from those N, as the
    reference's max_per_task: the same subset at every call (and so after a resume)."""
    model = tiny_model(1)
    bundle, labels = BUNDLE, ("mc_fewshot", "schema_fewshot", "lm_fewshot")
    tasks = [t for t in tasks if t.spec.label in labels]
    ref = {k: v for k, v in ref_core(model, bundle, cap=5, only=labels).items()}
    got = core.evaluate_core(model, tasks, ONE, max_per_task=5, batching=Batching(4, 32))
    for label, r in ref.items():
        assert got["tasks"][label]["acc"] == r["acc"], label
        assert got["tasks"][label]["n"] == 5
    reloaded = core.load_tasks(BUNDLE, labels)
    assert [t.items(5) for t in reloaded] == [t.items(5) for t in tasks]
    with pytest.raises(UserError, match="--core-max-per-task 3 is too small.*4 or more"):
        core.evaluate_core(model, tasks, ONE, max_per_task=3)


def test_two_ranks_give_the_same_counts(tasks) -> None:
    """Rank shares (no process group: each rank returns its own count) add up to one process's,
    and both ranks run the same number of forward passes."""
    model = tiny_model(2)
    tasks = [t for t in tasks if t.spec.label in ("mc_fewshot", "schema_zeroshot", "lm_fewshot")]
    full = core.evaluate_core(model, tasks, ONE, batching=Batching(2, 16))
    calls = [0]
    hidden_states = model.hidden_states

    def counted(*args, **kwargs):
        calls[0] += 1
        return hidden_states(*args, **kwargs)

    model.hidden_states = counted
    parts, forwards = [], []
    for rank in range(2):
        calls[0] = 0
        info = DistInfo(rank=rank, world_size=2)
        parts.append(core.evaluate_core(model, tasks, info, batching=Batching(2, 16)))
        forwards.append(calls[0])
    del model.hidden_states
    assert forwards[0] == forwards[1] > 0
    for label, r in full["tasks"].items():
        # each rank's "acc" is its own correct count over the task's full n
        assert sum(p["tasks"][label]["acc"] for p in parts) == pytest.approx(r["acc"]), label


def test_lm_greedy_continuations_count_as_right(tmp_path: Path) -> None:
    """LM rows whose continuation is the model's own greedy text score 1.0: the greedy rule is
    exercised on right answers too, not only on a random model's wrong ones."""
    model = tiny_model(3).eval()
    enc = get_encoding()
    rows = [
        json.loads(x)
        for x in (BUNDLE / "eval_data" / "lm_zeroshot.jsonl").read_text().split("\n")
        if x
    ]
    kept = []
    for row in rows:
        prefix = [50256, *enc.encode(row["context"].strip())]
        x = torch.tensor(prefix)[None]
        with torch.no_grad():
            nxt = model(x)[0][0, -1].argmax().item()
        text = enc.decode([nxt])
        if [50256, *enc.encode(row["context"].strip() + text)] == [*prefix, nxt]:
            kept.append({"context": row["context"], "continuation": text})
    assert len(kept) >= 3
    bundle = tmp_path / "b"
    (bundle / "eval_data").mkdir(parents=True)
    shutil.copy(BUNDLE / "eval_meta_data.csv", bundle)
    (bundle / "core.yaml").write_text(
        "icl_tasks:\n- label: lm_zeroshot\n  dataset_uri: lm.jsonl\n  num_fewshot: [0]\n"
        "  icl_task_type: language_modeling\n  continuation_delimiter: ''\n"
    )
    (bundle / "eval_data" / "lm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    got = core.evaluate_core(model, core.load_tasks(bundle), ONE)
    assert got["tasks"]["lm_zeroshot"]["acc"] == 1.0
    assert ref_core(model, bundle)["lm_zeroshot"]["acc"] == 1.0


# --------------------------------------------------------------------------- the rules, one by one


def test_seeded_orders_equal_the_literal_ones() -> None:
    for n in (1, 2, 13, 500):
        rows = list(range(n))
        random.Random(1337).shuffle(rows)
        assert core.seeded_order(n) == rows
    for n, k in ((12, 3), (14, 10), (3000, 10)):
        for i in (0, 1, n // 2, n - 1):
            others = [j for j in range(n) if j != i]
            assert core.fewshot_indices(n, i, k) == random.Random(1234 + i).sample(others, k)
    with pytest.raises(UserError, match="10-shot task needs at least 11 examples"):
        core.fewshot_indices(10, 0, 10)
    task = core.Task(
        core.TaskSpec("few", "language_modeling", "x", 3, " ", 0.0),
        ({"context": "a", "continuation": "b"},) * 3,
    )
    with pytest.raises(
        UserError, match="CORE task few: a 3-shot task needs at least 4 examples, got 3"
    ):
        task.items()


def test_prompt_layout() -> None:
    spec = core.TaskSpec("t", "language_modeling", "x", 1, "\nA:", 0.0)
    rows = [{"context": "  one ", "continuation": " 1"}, {"context": "two\n", "continuation": " 2"}]
    without, with_ = core.render_prompts(spec, rows, 0)
    assert with_ == "two\nA: 2\n\none\nA: 1" and without == "two\nA: 2\n\none\nA:"
    spec = core.TaskSpec("t", "multiple_choice", "x", 1, " ", 25.0)
    rows = [
        {"query": "q0", "choices": ["a", "b"], "gold": 1},
        {"query": "q1", "choices": ["c", "d"], "gold": 0},
    ]
    assert core.render_prompts(spec, rows, 0) == ["q1 c\n\nq0 a", "q1 c\n\nq0 b"]
    spec = core.TaskSpec("t", "schema", "x", 0, " ", 50.0)
    rows = [{"context_options": ["A did", "B did"], "continuation": "it", "gold": 0}]
    assert core.render_prompts(spec, rows, 0) == ["A did it", "B did it"]
    # a bare number in a row is printed as the reference's template prints it (str())
    spec = core.TaskSpec("t", "language_modeling", "x", 0, "", 0.0)
    row = {"context": "2+3=", "continuation": 5}
    assert core.check_row("language_modeling", row) is None
    assert core.render_prompts(spec, [row], 0) == ["2+3=", "2+3=5"]
    assert core.check_row("language_modeling", {"context": True, "continuation": "x"})
    assert core.centered(0.25, 25.0) == 0.0 and core.centered(1.0, 62.0) == 1.0


def test_item_tokens_and_scored_spans() -> None:
    enc = get_encoding()
    spec = core.TaskSpec("t", "multiple_choice", "x", 0, " ", 25.0)
    (item,) = core.task_items(spec, [{"query": "Q:", "choices": ["the cat", "the dog"], "gold": 1}])
    assert item.sequences[0] == (50256, *enc.encode("Q: the cat"))
    # " the" is shared by both choices: only " cat" / " dog" are scored
    assert item.starts == (len(enc.encode("Q: the")) + 1,) * 2
    spec = core.TaskSpec("t", "schema", "x", 0, " ", 50.0)
    (item,) = core.task_items(
        spec, [{"context_options": ["Ann", "Bob"], "continuation": "ran", "gold": 0}]
    )
    assert [len(s) - st for s, st in zip(item.sequences, item.starts, strict=True)] == [1, 1]


def test_cap_and_unknown_tasks_are_one_line_errors(tasks) -> None:
    with pytest.raises(UserError, match="unknown task.*nope.*mc_fewshot"):
        core.load_tasks(BUNDLE, ["nope"])
    assert [t.spec.label for t in core.load_tasks(BUNDLE, ["lm_zeroshot", "mc_zeroshot"])] == [
        "mc_zeroshot",
        "lm_zeroshot",
    ]
    small = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=64, vocab_size=512))
    with pytest.raises(UserError, match="vocab_size=512"):
        core.evaluate_core(small, tasks, ONE)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: (b / "core.yaml").unlink(), "core.yaml not found"),
        (lambda b: (b / "core.yaml").write_text("icl_tasks: 3\n"), "no 'icl_tasks' list"),
        (lambda b: (b / "core.yaml").write_text("a: [\n"), "not valid YAML"),
        (
            lambda b: (b / "eval_meta_data.csv").write_text("Eval Task,Random baseline\nx,1\n"),
            "no row for task 'mc_fewshot'",
        ),
        (
            lambda b: (b / "eval_data" / "mc_zeroshot.jsonl").write_text('{"query": "q"}\n'),
            r"mc_zeroshot.jsonl:1: missing key\(s\) choices, gold",
        ),
        (
            lambda b: (b / "eval_data" / "schema_zeroshot.jsonl").write_text(
                '{"context_options": ["a", "b"], "continuation": "c", "gold": 2}\n'
            ),
            r"schema_zeroshot.jsonl:1: 'gold' must be an index",
        ),
        (lambda b: (b / "eval_data" / "lm_zeroshot.jsonl").write_text("{oops\n"), "not valid JSON"),
        (lambda b: (b / "eval_data" / "lm_fewshot.jsonl").unlink(), "lm_fewshot.jsonl not found"),
    ],
)
def test_bad_bundle_is_one_line(tmp_path: Path, damage, message: str) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle)
    damage(bundle)
    with pytest.raises(UserError, match=message) as e:
        core.load_tasks(bundle)
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gpt2repro.hf import save_hf

    out = tmp_path_factory.mktemp("core_model") / "m"
    save_hf(tiny_model(4), out)
    return out


def test_cli_core_json_and_table(tmp_path: Path, hf_dir: Path, capsys) -> None:
    from gpt2repro.errors import run_cli
    from gpt2repro.evaluate import main

    out = tmp_path / "core.json"
    argv = ["--hf", str(hf_dir), "--core", "--core-bundle", str(BUNDLE), "--device", "cpu"]
    argv += ["--core-tasks", "mc_zeroshot", "lm_fewshot", "--json", str(out)]
    assert run_cli(main, argv) == 0
    printed = capsys.readouterr().out
    assert "CORE (mean centered)" in printed and "0.2565" in printed and "lm_fewshot" in printed
    assert "hellaswag" not in printed  # --core alone does not add the default HellaSwag
    got = json.loads(out.read_text())["core"]
    want = core.evaluate_core(
        tiny_model(4), core.load_tasks(BUNDLE, ["mc_zeroshot", "lm_fewshot"]), ONE
    )
    assert got["core"] == pytest.approx(want["core"], abs=1e-12)
    for label, r in want["tasks"].items():
        assert got["tasks"][label] == pytest.approx(r, abs=1e-12), label
    assert list(got["tasks"]) == ["mc_zeroshot", "lm_fewshot"]


@pytest.mark.dist
def test_cli_two_ranks_equal_reference(tmp_path: Path, hf_dir: Path, repo: Path) -> None:
    """`torchrun --nproc_per_node=2 -m gpt2repro.evaluate --core` (2 gloo ranks) gives the
    independent reference's per-task accuracy, as one process does."""
    import os
    import subprocess
    import sys

    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("torchrun not found")
    out = tmp_path / "core.json"
    cmd = [
        exe,
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "gpt2repro.evaluate",
        "--hf",
        str(hf_dir),
    ]
    cmd += ["--core", "--core-bundle", str(BUNDLE), "--device", "cpu", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("CORE (mean centered)") == 1  # only rank 0 prints
    got = json.loads(out.read_text())["core"]
    ref = ref_core(tiny_model(4))
    for label, r in ref.items():
        assert got["tasks"][label]["acc"] == r["acc"], label
    assert got["core"] == pytest.approx(np.mean([r["centered"] for r in ref.values()]), abs=1e-12)


def test_bench_core_packed_agrees_with_one_item_per_pass() -> None:
    """`bench core`'s two scorers on generated items of every kind (cropped ones included): the
    same summed losses and verdicts (the speed itself is docs/benchmarks.md's)."""
    from gpt2repro.bench import synthetic_core_items, time_core_scoring

    items = synthetic_core_items(9, BLOCK)
    assert {it.gold >= 0 for it in items} == {True, False}
    assert any(max(map(len, it.sequences)) > BLOCK for it in items)
    r = time_core_scoring(tiny_model(5), items, torch.device("cpu"), repeats=1)
    assert r["same_verdicts"] and r["max_abs_diff"] < 1e-4 and r["n"] == 9


def test_full_rows_for_fsdp_equal_packed(tasks, monkeypatch) -> None:
    """The unpacked path (FSDP-sharded models: each sequence a row through model(x)) gives the
    packed scorer's numbers, and both simulated ranks call the model equally often."""
    from gpt2repro import scoring

    model = tiny_model(6)
    items = [it for t in tasks for it in t.items()]
    _, packed = core.score_items(model, items, ONE, batching=Batching(4, 16))
    full = core.full_row_scores(model, items, ONE, batching=Batching(5, 16))
    np.testing.assert_array_equal(full.counts, packed.counts)
    np.testing.assert_array_equal(full.greedy, packed.greedy)
    np.testing.assert_allclose(full.sums, packed.sums, rtol=0, atol=2e-4)
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    forwards = []
    for rank in range(2):
        calls[0] = 0
        core.full_row_scores(model, items, DistInfo(rank=rank, world_size=2), batching=Batching(5))
        forwards.append(calls[0])
    assert forwards[0] == forwards[1] > 0
    monkeypatch.setattr(scoring, "is_fsdp", lambda m: True)  # evaluate_core takes that path
    got = core.evaluate_core(model, tasks, ONE, batching=Batching(5, 16))
    monkeypatch.undo()
    want = core.evaluate_core(model, tasks, ONE, batching=Batching(4, 16))
    assert got == want
