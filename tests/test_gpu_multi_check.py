"""bench/gpu_multi_check.sh, the prepared 2-GPU smoke: its time budget, the commands it would run
on GPUs (dry run), its comparison failing when a resumed run differs, and its CPU mode for real
(2 gloo processes, a tiny model: DDP and FSDP2 run, save, resume and compare)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO
from test_gpu_check import LIMIT_S, allowances, code_lines, read_tsv, run_script, table_rows

SCRIPT = REPO / "bench" / "gpu_multi_check.sh"
ORDER = [
    "env",
    "compile_smoke",
    "data",
    "ddp",
    "ddp_resume",
    "fsdp",
    "fsdp_resume",
    "ddp_buckets",
    "compare",
    "table",
]


def gpu_multi() -> ModuleType:
    """bench/gpu_multi.py as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_multi", REPO / "bench" / "gpu_multi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_allowances_fit_the_machine_limit() -> None:
    steps = allowances(SCRIPT)
    assert list(steps) == ORDER
    literal = 0
    for ln in code_lines(SCRIPT):
        for m in re.finditer(r"(?:^\s*|[|;&(]\s*|\bif\s+!?\s*)timeout\s+(?:-s \w+\s+)?(\d+)\s", ln):
            literal += int(m[1])
    assert sum(steps.values()) + literal < LIMIT_S


def test_dry_run_shows_the_two_gpu_commands(tmp_path: Path) -> None:
    p = run_script(tmp_path, {"GPU_CHECK_DRY_RUN": "1", "PYTHON": "python3"}, "out", script=SCRIPT)
    assert p.returncode == 0, p.stderr
    listed = re.findall(r"^== (\w+)", p.stdout, re.M)
    assert listed == ORDER
    cmds = {n: c for n, c in re.findall(r"^== (\w+).*\n   (.*)$", p.stdout, re.M)}
    assert cmds["env"].endswith("bench/gpu_env.py env cuda --gpus 2 ")
    for name, strategy in [("ddp", "ddp"), ("ddp_resume", "ddp"), ("fsdp", "fsdp")]:
        cmd = cmds[name]
        assert "-m torch.distributed.run --standalone --nproc_per_node=2 train.py" in cmd
        assert "--config configs/gpt2_124m.toml --train.device=cuda" in cmd
        assert f"--dist.strategy={strategy} --train.compile=true" in cmd
        assert "--train.max_steps=20 --checkpoint.every=10" in cmd
        assert "--train.total_batch_tokens=32768" in cmd  # 16 x 1024 x 2 ranks: no accumulation
        assert ("--checkpoint.resume=out/runs/ddp/ckpt/step_00000010" in cmd) == (
            name == "ddp_resume"
        )
    assert "--run.dir=out/runs/fsdp_resumed" in cmds["fsdp_resume"]
    assert "-m gpt2repro.bench train" in cmds["ddp_buckets"]
    assert "--dist.strategy=ddp" in cmds["ddp_buckets"]
    assert cmds["compare"].endswith("compare out --tol 1e-3 ")
    assert not any((tmp_path / "cwd").iterdir())


def test_compare_fails_when_a_resumed_run_differs(tmp_path: Path) -> None:
    """The comparison is a test that can fail: a resumed run whose loss drifts is not ok."""
    mod = gpu_multi()
    for name, losses in [
        ("ddp", [3.0, 2.5, 2.25, 2.0]),
        ("ddp_resumed", [2.25, 2.0]),
        ("fsdp", [3.0, 2.5, 2.25, 2.0]),
        ("fsdp_resumed", [2.25, 2.01]),
    ]:
        d = tmp_path / "runs" / name
        d.mkdir(parents=True)
        first = 5 - len(losses)
        recs = [{"step": first + i, "loss": v, "mem_gib": 1.5} for i, v in enumerate(losses)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = mod.compare(tmp_path, tol=1e-3)
    assert res["ddp"]["ok"] and res["ddp"]["bit_identical"] and res["ddp"]["resumed_from"] == 2
    assert res["ddp"]["steps_compared"] == 2 and res["ddp"]["peak_mem_gib"] == 1.5
    assert not res["fsdp"]["ok"] and abs(res["fsdp"]["max_rel_diff"] - 0.005) < 1e-9
    assert not res["ok"] and "fsdp: resumed = uninterrupted NO" in res["note"]
    assert mod.main(["compare", str(tmp_path), "--tol", "0.01"]) == 0
    (tmp_path / "runs" / "fsdp_resumed" / "metrics.jsonl").unlink()
    assert not mod.compare(tmp_path, tol=1.0)["ok"]


@pytest.mark.dist
def test_cpu_mode_runs_save_resume_and_compare(tmp_path: Path) -> None:
    """GPU_CHECK_DEVICE=cpu: 2 gloo ranks, DDP and FSDP2, 8 steps saved at 4, resumed from 4 in a
    second folder: the losses after step 4 equal bit for bit; DDP's buckets are reported."""
    out = tmp_path / "out"
    env = {"GPU_CHECK_DEVICE": "cpu", "PYTHON": sys.executable}
    p = run_script(tmp_path, env, str(out), timeout=300, script=SCRIPT)
    assert p.returncode == 0, p.stdout + p.stderr
    status = {r[0]: r[1] for r in read_tsv(out)}
    assert status == {n: "skipped" if n == "compile_smoke" else "ok" for n in ORDER[:-1]}
    for name in ("ddp_resume", "fsdp_resume"):
        log = (out / "logs" / f"{name}.log").read_text()
        assert "resumed from" in log and "at step 4" in log, log[-2000:]
    res = json.loads((out / "compare.json").read_text())
    for strategy in ("ddp", "fsdp"):
        r = res[strategy]
        assert r["ok"] and r["bit_identical"] and r["steps_compared"] == 4, r
        assert r["resumed_from"] == 4
    assert res["ddp_buckets"]["count"] >= 1
    rows = table_rows((out / "table.md").read_text())
    assert rows["compare"]["note"].startswith("ddp: resumed = uninterrupted ok (bit-identical)")
    assert rows["ddp_buckets"]["status"] == "ok"
