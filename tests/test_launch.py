"""The launch scripts as a user runs them with DRY_RUN=1: the exact commands each prints (torchrun
arguments, nodes, rendezvous endpoint, config, resume flag) while nothing is run (every program
they could start is a recording stand-in on PATH); the SLURM head node's address found from stand-in
scontrol/getent/srun; shellcheck on every script."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from gpt2repro.config import load_config

LAUNCH = REPO / "launch"
SCRIPTS = ["cloud_setup.sh", "multi_node.sh", "restart_until_done.sh", "single_node.sh"]
# The module the scripts print (these tests only read printed commands, under DRY_RUN=1).
TORCHRUN = ["-m", "torch.distributed.run"]
CONFIG = "configs/gpt2_124m.toml"

# Stand-ins: each records its arguments, one call per line, in $CALLS, then does what the test
# needs. python records and runs the real interpreter (the scripts' look-ups must work).
STANDINS = {
    "python": f'echo "python $*" >> "$CALLS"\nexec {shlex.quote(sys.executable)} "$@"',
    "tmux": 'echo "tmux $*" >> "$CALLS"\n[ "$1" = has-session ] && exit 1\nexit 0',
    "apt-get": 'echo "apt-get $*" >> "$CALLS"',
    "sudo": 'echo "sudo $*" >> "$CALLS"',
    "nvidia-smi": 'echo "nvidia-smi $*" >> "$CALLS"',
    "scontrol": (
        'echo "scontrol $*" >> "$CALLS"\n'
        '[ "$*" = "show hostnames node[07-08]" ] && printf "node07\\nnode08\\n"'
    ),
    "getent": (
        'echo "getent $*" >> "$CALLS"\n'
        '[ "$*" = "ahostsv4 node07" ] && [ -n "$FAKE_GETENT" ] || exit 2\n'
        'printf "%s\\n" "$FAKE_GETENT"'
    ),
    "srun": (
        'echo "srun $*" >> "$CALLS"\n'
        '[ "$*" = "--nodes=1 --ntasks=1 -w node07 hostname -I" ] && echo "$FAKE_HOSTNAME_I"\n'
        "exit 0"
    ),
}


@pytest.fixture
def standins(tmp_path: Path) -> Path:
    """A bin/ directory of recording stand-ins, put first on PATH by `dry`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STANDINS.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)
    return bin_dir


def dry(
    bin_dir: Path, script: str, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> tuple[list[list[str]], str, list[str]]:
    """Run launch/SCRIPT with DRY_RUN=1 from another directory; return the printed commands (the
    lines that are not `#` notes, split as the shell would), the whole output, and the calls the
    stand-ins recorded."""
    calls = bin_dir.parent / "calls.txt"
    calls.write_text("")
    full_env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(bin_dir.parent),
        "CALLS": str(calls),
        "DRY_RUN": "1",
        "PYTHON": str(bin_dir / "python"),  # the recording stand-in
        **(env or {}),
    }
    p = subprocess.run(
        ["bash", str(LAUNCH / script), *args],
        cwd=bin_dir.parent,  # the scripts find the repository themselves
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
    return [shlex.split(ln) for ln in lines], p.stdout + p.stderr, calls.read_text().splitlines()


def only_lookups(calls: list[str]) -> bool:
    """Whether the recorded calls are read-only look-ups: the GPU count, a config value, a name."""
    allowed = ("python -c import torch", "python -m gpt2repro.config", "tmux has-session")
    allowed += ("scontrol show", "getent ahostsv4", "srun --nodes=1 --ntasks=1 -w node07 hostname")
    return all(c.startswith(allowed) for c in calls)


def test_single_node(standins: Path) -> None:
    py = str(standins / "python")
    cmds, _, calls = dry(standins, "single_node.sh", "--config", CONFIG, env={"NPROC": "4"})
    assert cmds == [
        [py, *TORCHRUN, "--standalone", "--nproc_per_node=4", "train.py", "--config", CONFIG]
    ]
    assert calls == []
    # without NPROC: one process per visible GPU, at least one (this machine has none)
    cmds, _, calls = dry(standins, "single_node.sh", "--config", CONFIG)
    assert cmds[0][3:5] == ["--standalone", "--nproc_per_node=1"]
    assert only_lookups(calls) and len(calls) == 1


def test_multi_node(standins: Path) -> None:
    py = str(standins / "python")
    env = {"NNODES": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29555", "NPROC": "8"}
    cmds, _, calls = dry(standins, "multi_node.sh", "--config", CONFIG, env=env)
    assert cmds == [
        [
            py,
            *TORCHRUN,
            "--nnodes=2",
            "--nproc_per_node=8",
            "--rdzv_backend=c10d",
            "--rdzv_endpoint=10.0.0.1:29555",
            "--rdzv_id=gpt2repro",
            "train.py",
            "--config",
            CONFIG,
        ]
    ]
    assert calls == []
    del env["MASTER_ADDR"]
    _, out, _ = dry(standins, "multi_node.sh", "--config", CONFIG, env=env, check=False)
    assert "MASTER_ADDR: set MASTER_ADDR" in out


def test_restart_until_done(standins: Path) -> None:
    py = str(standins / "python")
    env = {"NNODES": "2", "MASTER_ADDR": "10.0.0.1", "NPROC": "1", "RDZV_ID": "job7"}
    args = ["--config", CONFIG, "--run.dir=/scratch/my run"]
    cmds, out, calls = dry(
        standins, "restart_until_done.sh", "launch/multi_node.sh", *args, env=env
    )
    assert "until /scratch/my run/DONE exists" in out
    assert cmds == [
        ["launch/multi_node.sh", *args, "--checkpoint.resume=auto"],  # one attempt
        [  # what that attempt runs
            py,
            *TORCHRUN,
            "--nnodes=2",
            "--nproc_per_node=1",
            "--rdzv_backend=c10d",
            "--rdzv_endpoint=10.0.0.1:29500",
            "--rdzv_id=job7",
            "train.py",
            *args,
            "--checkpoint.resume=auto",
        ],
    ]
    assert only_lookups(calls)
    # a config it cannot read is an input error: no attempt at all
    cmds, out, _ = dry(
        standins, "restart_until_done.sh", "launch/single_node.sh", "--config", "nope.toml",
        check=False,
    )  # fmt: skip
    assert cmds == [] and "nope.toml" in out


@pytest.mark.parametrize(
    "getent,hostname_i,master_addr,expected",
    [
        ("10.1.2.3        STREAM node07", "", "", "10.1.2.3"),  # DNS knows the node
        # Debian/Ubuntu's /etc/hosts maps the node's own name to 127.0.1.1: ask the node itself
        ("127.0.1.1       STREAM node07", "fe80::1 10.8.0.5 192.168.1.9", "", "10.8.0.5"),
        ("", "10.8.0.5", "", "10.8.0.5"),  # not in DNS at all
        ("127.0.1.1       STREAM node07", "127.0.0.1", "", None),  # only loopback: stop
        ("", "", "10.9.9.9", "10.9.9.9"),  # the user's MASTER_ADDR wins, no look-up
    ],
)
def test_slurm_head_node_address(
    standins: Path, getent: str, hostname_i: str, master_addr: str, expected: str | None
) -> None:
    env = {
        "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_JOB_NODELIST": "node[07-08]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_ID": "4242",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_CPUS_PER_TASK": "32",  # what sbatch sets from #SBATCH --cpus-per-task
        "FAKE_GETENT": getent,
        "FAKE_HOSTNAME_I": hostname_i,
    }
    if master_addr:
        env["MASTER_ADDR"] = master_addr
    py = str(standins / "python")
    cmds, out, calls = dry(standins, "slurm.sbatch", "--config", CONFIG, env=env, check=False)
    assert only_lookups(calls)
    if expected is None:
        assert cmds == []
        assert "no routable IPv4 address for head node node07" in out and "MASTER_ADDR" in out
        return
    assert cmds == [
        [
            "srun",
            "--kill-on-bad-exit=1",
            # Since Slurm 22.05 srun no longer inherits sbatch's --cpus-per-task: without it the
            # torchrun task and all its workers would share one CPU.
            "--cpus-per-task=32",
            py,
            *TORCHRUN,
            "--nnodes=2",
            "--nproc_per_node=4",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={expected}:29500",
            "--rdzv_id=4242",
            "train.py",
            "--checkpoint.resume=auto",
            "--config",
            CONFIG,
        ]
    ]
    asked_node = any(c.startswith("srun --nodes=1") for c in calls)
    assert asked_node == (not master_addr and not getent.startswith("10."))
    assert any(c.startswith("getent") for c in calls) == (not master_addr)


def test_slurm_outside_the_repository(standins: Path, tmp_path: Path) -> None:
    env = {"SLURM_SUBMIT_DIR": str(tmp_path), "MASTER_ADDR": "10.0.0.1"}
    cmds, out, _ = dry(standins, "slurm.sbatch", env=env, check=False)
    assert cmds == []
    assert out.strip() == (
        f"slurm.sbatch: {tmp_path} is not the gpt2repro repository: submit from its root "
        "(cd gpt2repro && sbatch --nodes=N launch/slurm.sbatch ...)"
    )


def makefile_torch_spec() -> str:
    (line,) = [
        ln for ln in (REPO / "Makefile").read_text().splitlines() if ln.startswith("TORCH_SPEC ?=")
    ]
    return line.split("?=", 1)[1].strip()


@pytest.mark.parametrize(
    "torch_spec",
    [None, "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128", "none"],
)
def test_cloud_setup(standins: Path, tmp_path: Path, torch_spec: str | None) -> None:
    venv = tmp_path / "venv"
    env = {"VENV": str(venv)}
    if torch_spec is not None:
        env["TORCH_SPEC"] = torch_spec
    cmds, out, calls = dry(standins, "cloud_setup.sh", "--log.wandb_mode=offline", env=env)
    assert only_lookups(calls), calls  # no apt-get, pip, tmux session or training ran
    assert not venv.exists()
    py = str(venv / "bin" / "python")
    assert cmds[0] == ["apt-get", "update"]  # as root: no sudo
    install = cmds[1]
    assert install[:3] == ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
    assert {"git", "tmux", "build-essential"} <= set(install)
    assert any(p.endswith("-venv") for p in install) and any(p.endswith("-dev") for p in install)
    assert cmds[2][1:] == ["-m", "venv", str(venv)]
    pip = [c[4:] for c in cmds if c[:4] == [py, "-m", "pip", "install"]]
    assert pip == [["--upgrade", "pip"], ["-e", ".[data,wandb]"]]
    # torch as the Makefile installs it (tools/install_torch.py: `auto` takes the CUDA build
    # where the NVIDIA driver is), or the build named
    spec = makefile_torch_spec() if torch_spec is None else torch_spec
    assert makefile_torch_spec() == "auto"
    assert [c for c in cmds if c[1:2] == ["tools/install_torch.py"]] == [
        [py, "tools/install_torch.py", spec]
    ]
    *_, mkdir, tmux = cmds
    assert mkdir == ["mkdir", "-p", "logs"]
    # the job's relative paths need the repository as working directory: tmux's -c, and the job
    # itself (the nohup path, or a pasted command) starts with a cd there
    assert tmux[:9] == ["tmux", "new-session", "-d", "-s", "gpt2repro", "-c", str(REPO), "bash",
                        "-c"]  # fmt: skip
    job = tmux[9]
    assert shlex.split(job.split(" || exit 1; ", 1)[0]) == ["cd", str(REPO)]
    cfg, _ = load_config(["--config", str(REPO / CONFIG)])
    hellaswag_dir = str(Path(cfg.eval.hellaswag_file).parent)
    inner = job.split("{ ", 1)[1].split("; }", 1)[0]  # set -o pipefail; { A && B && C; } 2>&1 | tee
    steps = [shlex.split(s) for s in inner.split(" && ")]
    assert steps == [
        [py, "data_prep/fineweb.py", "--dataset", "fineweb-edu", "--sample", "10BT",
         "--out-dir", cfg.data.dir],
        [py, "data_prep/hellaswag.py", "--out-dir", hellaswag_dir],
        [py, "data_prep/core.py", "--out-dir", str(Path(cfg.eval.core_bundle).parent)],
        ["env", f"PYTHON={py}", "launch/restart_until_done.sh", "launch/single_node.sh",
         "--config", CONFIG, "--log.wandb_mode=offline"],
    ]  # fmt: skip
    assert cfg.eval.core_every > 0  # CORE in the loop: its bundle is prepared first
    assert "; set -o pipefail; {" in job and job.endswith("2>&1 | tee -a logs/gpt2_124m.log")
    # how to watch it
    assert "tail -f logs/gpt2_124m.log" in out
    assert f"-m http.server 8000 --bind 127.0.0.1 --directory {cfg.run.dir}" in out
    assert "ssh -N -L 8000:127.0.0.1:8000" in out and "/report.html" in out
    assert "docs/wandb.md" in out


def _job_steps(cmds: list[list[str]]) -> list[list[str]]:
    """The steps of the job cloud_setup.sh starts (tmux ... bash -c JOB: `{ A && B && C; }`)."""
    job = cmds[-1][-1]
    return [shlex.split(s) for s in job.split("{ ", 1)[1].split("; }", 1)[0].split(" && ")]


def test_cloud_setup_prepares_the_core_bundle_only_for_core_in_the_loop(
    standins: Path, tmp_path: Path
) -> None:
    """eval.core_every=0: no bundle to prepare; a bundle folder data_prep/core.py would not write
    (it writes OUT_DIR/eval_bundle) and that is not there: stopped before the job, naming the
    fix; one that is there: used as it is."""
    env = {"VENV": str(tmp_path / "venv"), "MIN_FREE_GB": "0"}
    cmds, out, _ = dry(standins, "cloud_setup.sh", "--eval.core_every=0", env=env)
    assert not any("data_prep/core.py" in step for step in _job_steps(cmds))
    assert "would stop here" not in out
    cmds, _, _ = dry(standins, "cloud_setup.sh", f"--eval.core_bundle={tmp_path}/x/eval_bundle",
                     env=env)  # fmt: skip
    assert [s for s in _job_steps(cmds) if s[1:2] == ["data_prep/core.py"]] == [
        [str(tmp_path / "venv" / "bin" / "python"), "data_prep/core.py", "--out-dir",
         f"{tmp_path}/x"]
    ]  # fmt: skip
    mine = tmp_path / "my_bundle"
    cmds, out, _ = dry(standins, "cloud_setup.sh", f"--eval.core_bundle={mine}", env=env)
    note = f"# cloud_setup: would stop here: eval.core_bundle={mine} holds no core.yaml"
    assert out.count(note) == 1 and "--eval.core_every=0" in out
    assert out.index(note) < out.index("tmux new-session")
    mine.mkdir()
    (mine / "core.yaml").write_text("icl_tasks: []\n")
    cmds, out, _ = dry(standins, "cloud_setup.sh", f"--eval.core_bundle={mine}", env=env)
    assert "would stop here" not in out
    assert not any("data_prep/core.py" in step for step in _job_steps(cmds))


def test_cloud_setup_stops_without_a_driver_or_with_a_session(
    standins: Path, tmp_path: Path
) -> None:
    env = {"DRY_RUN": "0", "VENV": str(tmp_path / "venv")}  # for real, up to the first check
    (standins / "nvidia-smi").unlink()
    (standins / "tmux").write_text('#!/bin/sh\necho "tmux $*" >> "$CALLS"\n')  # a session exists
    _, out, _ = dry(standins, "cloud_setup.sh", env=env, check=False)
    assert out.strip() == (
        "cloud_setup: no NVIDIA driver (nvidia-smi not found): start the node from a GPU image "
        "with the driver installed"
    )
    (standins / "nvidia-smi").write_text("#!/bin/sh\n")
    (standins / "nvidia-smi").chmod(0o755)
    p_out = dry(standins, "cloud_setup.sh", env=env, check=False)[1]
    assert p_out.startswith("cloud_setup: tmux session gpt2repro is running already")
    assert len(p_out.strip().splitlines()) == 1


def test_cloud_setup_checks_free_disk_before_preparing_data(standins: Path, tmp_path: Path) -> None:
    """Too little disk for the sample (5 GB per billion tokens by default, MIN_FREE_GB to set it)
    stops before the job starts; enough, or shards already complete, go on."""
    env = {"VENV": str(tmp_path / "venv")}
    df = standins / "df"
    df.write_text(
        '#!/bin/sh\necho "df $*" >> "$CALLS"\n'
        'echo "Filesystem 1024-blocks Used Available Capacity Mounted on"\n'
        'echo "/dev/x 100000000 90000000 $FREE_KB 90% /"\n'
    )
    df.chmod(0o755)
    _, out, _ = dry(standins, "cloud_setup.sh", env={**env, "FREE_KB": str(20 * 1024**2)})
    note = "# cloud_setup: would stop here: only 20 GB free under "
    assert out.count(note) == 1 and "FineWeb-Edu 10BT needs about 50 GB" in out
    assert "--data.dir=PATH" in out and out.index(note) < out.index("tmux new-session")
    _, out, _ = dry(standins, "cloud_setup.sh", env={**env, "FREE_KB": str(60 * 1024**2)})
    assert "would stop here" not in out
    _, out, _ = dry(
        standins, "cloud_setup.sh", env={**env, "FREE_KB": str(60 * 1024**2), "MIN_FREE_GB": "70"}
    )
    assert "needs about 70 GB" in out
    cfg, _ = load_config(["--config", str(REPO / CONFIG)])
    data = tmp_path / "shards"
    data.mkdir()
    (data / "manifest.json").write_text('{"complete": true}')
    _, out, calls = dry(
        standins, "cloud_setup.sh", f"--data.dir={data}", env={**env, "FREE_KB": "1024"}
    )
    assert "would stop here" not in out and not any(c.startswith("df ") for c in calls)
    assert cfg.data.dir != str(data)


def test_cloud_setup_checks_the_wandb_login_before_starting_an_online_job(
    standins: Path, tmp_path: Path
) -> None:
    """--log.wandb_mode=online without a wandb key (no WANDB_API_KEY, no netrc entry in HOME):
    stopped before the job starts (under DRY_RUN noted, and the rest shown); with a key, or not
    online, no note."""
    env = {"VENV": str(tmp_path / "venv"), "MIN_FREE_GB": "0"}  # HOME is tmp_path: no ~/.netrc
    cmds, out, calls = dry(standins, "cloud_setup.sh", "--log.wandb_mode=online", env=env)
    note = "# cloud_setup: would stop here: log.wandb_mode=online but wandb has no login here ("
    assert out.count(note) == 1 and "`wandb login`" in out and "(then run this again)" in out
    line = next(ln for ln in out.splitlines() if ln.startswith(note))
    assert out.index(line) < out.index("tmux new-session")  # before the job
    assert "python -m gpt2repro.services wandb-login" in calls  # a look-up, run for real
    for more in ({"WANDB_API_KEY": "k" * 40}, {}):
        args = ["--log.wandb_mode=online"] if more else ["--log.wandb_mode=offline"]
        _, out, calls = dry(standins, "cloud_setup.sh", *args, env={**env, **more})
        assert "would stop here" not in out
        assert ("python -m gpt2repro.services wandb-login" in calls) == bool(more)
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    _, out, _ = dry(standins, "cloud_setup.sh", "--log.wandb_mode=online", env=env)
    assert "would stop here" not in out  # what `wandb login` writes


def test_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    # every script in launch/ is checked; a new one must also join SCRIPTS (and get a dry-run test)
    scripts = sorted(p.name for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))
    assert scripts == sorted([*SCRIPTS, "dry_run.sh", "slurm.sbatch"])
    # launch/.shellcheckrc lets shellcheck follow `source launch/dry_run.sh`
    p = subprocess.run(
        ["shellcheck", *scripts], cwd=LAUNCH, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stdout


@pytest.mark.parametrize(
    ("config", "sample"), [("configs/gpt2_350m.toml", "100BT"), ("configs/gpt2_124m.toml", "10BT")]
)
def test_cloud_setup_prepares_the_sample_the_config_trains_on(
    standins: Path, tmp_path: Path, config: str, sample: str
) -> None:
    # The larger configs read data/edu_fineweb100B: preparing the default 10BT sample there would
    # train them on a tenth of their data, repeated, without a word.
    env = {"VENV": str(tmp_path / "venv"), "CONFIG": config}
    cmds, _, _ = dry(standins, "cloud_setup.sh", env=env)
    job = cmds[-1][-1]  # tmux ... bash -c JOB
    prep = shlex.split(job.split("{ ", 1)[1].split(" && ", 1)[0])
    data_dir = load_config(["--config", str(REPO / config)])[0].data.dir
    assert prep[1:] == ["data_prep/fineweb.py", "--dataset", "fineweb-edu", "--sample", sample,
                        "--out-dir", data_dir]  # fmt: skip
