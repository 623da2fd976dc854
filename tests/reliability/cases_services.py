"""Bad-input cases: wandb and the Hugging Face hub failing (the table is test_bad_inputs.py).

Each runs without network on purpose, whatever the machine has: wandb with no key (NETRC pointed
at a file of the world, WANDB_API_KEY removed), the hub offline (HF_HUB_OFFLINE=1) or unreachable
(HF_ENDPOINT on a closed port), the HellaSwag download through a proxy on a closed port.
"""

from __future__ import annotations

from pathlib import Path

from badinput import EVALUATE, FINEWEB, HELLASWAG, SAMPLE, TINY, TRAIN, TRAIN_M, Case

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection is refused
NO_WANDB_KEY: dict[str, str | None] = {
    "NETRC": "{w}/svc_no_netrc",  # absent: no `wandb login` here
    "WANDB_API_KEY": None,
    "WANDB_IDENTITY_TOKEN_FILE": None,
    "WANDB_BASE_URL": None,
}
HUB_OFFLINE: dict[str, str | None] = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
HUB_UNREACHABLE: dict[str, str | None] = {
    "HF_HUB_OFFLINE": None,
    "HF_DATASETS_OFFLINE": None,
    "HF_ENDPOINT": CLOSED,
}
NO_ROUTE: dict[str, str | None] = {"https_proxy": CLOSED, "HTTPS_PROXY": CLOSED, "no_proxy": None}


def build(w: Path) -> None:
    """The files these cases need, made in the world directory `w` before any case runs."""
    (w / "svc_netrc_other").write_text("machine example.org login me password x\n")
    (w / "svc_netrc_wandb").write_text(
        "machine api.wandb.ai login user password " + "k" * 40 + "\n"
    )


def cases() -> list[Case]:
    data = "--data.dir={w}/data"
    online = "--log.wandb_mode=online"
    hs = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
    return [
        # ---- wandb: no login is an input error before training (exit 2, not retried)
        Case("services-train-wandb-online-no-login", [*TRAIN, *TINY, data, "--run.dir={w}/svc_r1", online], ["log.wandb_mode=online", "`wandb login`", "--log.wandb_mode=offline"], ["model:"], env=NO_WANDB_KEY),
        Case("services-train-m-wandb-netrc-other-host", [*TRAIN_M, *TINY, data, "--run.dir={w}/svc_r2", online], ["no api.wandb.ai entry in {w}/svc_netrc_other", "`wandb login`"], ["model:"], env={**NO_WANDB_KEY, "NETRC": "{w}/svc_netrc_other"}),
        Case("services-train-wandb-on-prem-not-logged-in", [*TRAIN, *TINY, data, "--run.dir={w}/svc_r3", online], ["no wandb.example.org entry", "`wandb login`"], ["model:"], env={**NO_WANDB_KEY, "NETRC": "{w}/svc_netrc_wandb", "WANDB_BASE_URL": "https://wandb.example.org"}),
        Case("services-train-wandb-timeout-zero", [*TRAIN_M, *TINY, data, "--run.dir={w}/svc_r4", "--log.wandb_init_timeout_s=0"], ["log.wandb_init_timeout_s"]),
        # ---- data prep from the hub: offline or no route is one line with the offline recipe
        Case("services-fineweb-hub-offline", [*FINEWEB, "--dataset", "fineweb-edu", "--out-dir", "{w}/svc_o1"], ["HF_HUB_OFFLINE=1", "hf download HuggingFaceFW/fineweb-edu --repo-type dataset", "--input DIR/sample/10BT --out-dir {w}/svc_o1"], env=HUB_OFFLINE),
        Case("services-fineweb-revision-hub-offline", [*FINEWEB, "--dataset", "fineweb", "--sample", "100BT", "--revision", "main", "--out-dir", "{w}/svc_o2"], ["HF_HUB_OFFLINE=1", "--include 'sample/100BT/*'", "--prefix fineweb"], env=HUB_OFFLINE),
        Case("services-fineweb-hub-unreachable", [*FINEWEB, "--dataset", "fineweb", "--out-dir", "{w}/svc_o3"], ["cannot reach the Hugging Face hub for dataset HuggingFaceFW/fineweb", "hf download"], env=HUB_UNREACHABLE),
        Case("services-fineweb-revision-hub-unreachable", [*FINEWEB, "--dataset", "fineweb-edu", "--revision", "main", "--out-dir", "{w}/svc_o4"], ["cannot reach the Hugging Face hub", "--input DIR/sample/10BT"], env=HUB_UNREACHABLE),
        Case("services-fineweb-streaming-hub-unreachable", [*FINEWEB, "--dataset", "fineweb-edu", "--streaming", "--revision", "main", "--out-dir", "{w}/svc_o5"], ["cannot reach the Hugging Face hub", "hf download"], env=HUB_UNREACHABLE),
        # ---- HF GPT-2 weights by hub name
        Case("services-evaluate-hf-offline", [*EVALUATE, "--hf", "gpt2", "--val-data", "{w}/data", "--val-tokens", "256"], ["'gpt2'", "HF_HUB_OFFLINE=1", "hf download gpt2 config.json model.safetensors", "--hf DIR"], env=HUB_OFFLINE),
        Case("services-sample-hf-unreachable", [*SAMPLE, "--hf", "gpt2-medium", "--prompt", "hi"], ["cannot reach the Hugging Face hub for 'gpt2-medium'", "--hf DIR"], env=HUB_UNREACHABLE),
        # ---- the HellaSwag download: retried with backoff, then one line with the manual recipe
        Case("services-hellaswag-no-route", [*HELLASWAG, "--out-dir", "{w}/svc_o6", "--tries", "2"], [f"cannot download {hs}", "2 tries", "--file PATH/hellaswag_val.jsonl"], env=NO_ROUTE),
        Case("services-hellaswag-tries-zero", [*HELLASWAG, "--out-dir", "{w}/svc_o7", "--tries", "0"], ["--tries 0"]),
    ]  # fmt: skip
