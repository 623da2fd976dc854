"""HF interop by equivalence: same weights -> same logits as transformers' GPT2LMHeadModel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpt2repro.config import ModelConfig
from gpt2repro.errors import UserError
from gpt2repro.hf import load_hf, save_hf
from gpt2repro.model import GPT, GPT2_SIZES, gpt2_config

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")


def hf_model(n_layer: int, n_head: int, n_embd: int, vocab: int = 50257, ctx: int = 64, seed=0):
    """A random HF GPT-2 (eval mode). Weights are spread wider than the init so logits differ."""
    torch.manual_seed(seed)
    eot = 50256 if vocab > 50256 else None
    cfg = transformers.GPT2Config(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        n_positions=ctx,
        vocab_size=vocab,
        bos_token_id=eot,
        eos_token_id=eot,
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and "ln_" not in name:
                p.normal_(0.0, 0.02)  # nonzero biases so a missed bias would show
            elif "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_logits(model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx).logits


def our_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx)[0]


@pytest.mark.parametrize(
    "n_layer,n_head,n_embd,vocab", [(2, 2, 64, 50257), (3, 4, 128, 50257), (1, 1, 32, 100)]
)
def test_logits_equal_hf(tmp_path: Path, n_layer: int, n_head: int, n_embd: int, vocab: int):
    ref = hf_model(n_layer, n_head, n_embd, vocab)
    ref.save_pretrained(tmp_path / "hf")
    ours = load_hf(str(tmp_path / "hf"))
    assert ours.lm_head.weight is ours.transformer.wte.weight  # still tied after loading
    for B, T in [(1, 1), (2, 17), (3, 64)]:
        idx = torch.randint(0, vocab, (B, T))
        torch.testing.assert_close(our_logits(ours, idx), hf_logits(ref, idx), atol=1e-5, rtol=0)


def test_logits_equal_hf_with_padded_vocab(tmp_path: Path):
    ref = hf_model(2, 2, 64)
    ref.save_pretrained(tmp_path / "hf")
    loaded = load_hf(str(tmp_path / "hf"))
    padded = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, pad_vocab_multiple=64))
    assert padded.config.padded_vocab_size == 50304
    sd = {k: v.clone() for k, v in loaded.state_dict().items()}
    wte = torch.zeros(50304, 64)
    wte[:50257] = sd["transformer.wte.weight"]
    sd["transformer.wte.weight"] = sd["lm_head.weight"] = wte
    padded.load_state_dict(sd)
    idx = torch.randint(0, 50257, (2, 33))
    out = our_logits(padded, idx)
    assert out.shape == (2, 33, 50257)  # padded ids are never predicted
    torch.testing.assert_close(out, hf_logits(ref, idx), atol=1e-5, rtol=0)

    # Exporting the padded model drops the padded rows and loads in transformers.
    exported = save_hf(padded, tmp_path / "export")
    cfg = json.loads((exported / "config.json").read_text())
    assert cfg["vocab_size"] == 50257
    back = transformers.GPT2LMHeadModel.from_pretrained(exported).eval()
    assert back.transformer.wte.weight.shape == (50257, 64)
    torch.testing.assert_close(hf_logits(back, idx), hf_logits(ref, idx), atol=1e-5, rtol=0)


def test_a_zero_init_model_exports_with_its_logits(tmp_path: Path):
    """zero_init changes only the starting values: once trained (here: perturbed) the model is
    GPT-2's, and its export gives transformers the same logits."""
    torch.manual_seed(0)
    ours = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, zero_init=True))
    assert not ours.config.is_gpt2 and ours.config.has_gpt2_modules
    assert not ours.transformer.h[0].attn.c_proj.weight.any()  # zero at the start
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf = transformers.GPT2LMHeadModel.from_pretrained(save_hf(ours, tmp_path / "out")).eval()
    idx = torch.randint(0, 50257, (2, 17))
    torch.testing.assert_close(our_logits(ours, idx), hf_logits(hf, idx), atol=1e-5, rtol=0)


def test_round_trip_hf_ours_hf_is_exact(tmp_path: Path):
    ref = hf_model(2, 4, 64)
    ref.save_pretrained(tmp_path / "hf")
    exported = save_hf(load_hf(str(tmp_path / "hf")), tmp_path / "again")
    a = safetensors_torch.load_file(tmp_path / "hf" / "model.safetensors")
    b = safetensors_torch.load_file(exported / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_save_hf_loads_in_transformers_with_tokenizer(tmp_path: Path):
    torch.manual_seed(1)
    ours = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=128))
    exported = save_hf(ours, tmp_path / "out")
    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json"} <= names
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left
    hf = transformers.GPT2LMHeadModel.from_pretrained(exported).eval()
    idx = torch.randint(0, 50257, (2, 40))
    torch.testing.assert_close(hf_logits(hf, idx), our_logits(ours, idx), atol=1e-5, rtol=0)
    cfg = json.loads((exported / "config.json").read_text())
    assert cfg["n_positions"] == 128 and cfg["tie_word_embeddings"] is True
    assert cfg["architectures"] == ["GPT2LMHeadModel"] and cfg["eos_token_id"] == 50256
    tok = transformers.AutoTokenizer.from_pretrained(exported)
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert tok.eos_token_id == 50256 and tok.decode([15496, 995]) == "Hello world"


def test_loads_keys_without_prefix_and_pytorch_bin(tmp_path: Path):
    """OpenAI's original upload: no 'transformer.' prefix, attn.bias buffers, pickle weights."""
    ref = hf_model(2, 2, 64, vocab=100)
    d = tmp_path / "old"
    ref.save_pretrained(d)
    sd = safetensors_torch.load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    old = {k.removeprefix("transformer."): v for k, v in sd.items()}
    for i in range(2):
        old[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        old[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    old["lm_head.weight"] = old["wte.weight"].clone()
    torch.save(old, d / "pytorch_model.bin")
    ours = load_hf(str(d))
    idx = torch.randint(0, 100, (2, 20))
    torch.testing.assert_close(our_logits(ours, idx), hf_logits(ref, idx), atol=1e-5, rtol=0)


def test_not_gpt2_dir(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserError, match=r"is not a GPT-2 checkpoint \(model_type=llama\)"):
        load_hf(str(tmp_path))


def test_wrong_activation_named(tmp_path: Path):
    cfg = {"model_type": "gpt2", "activation_function": "relu"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="activation_function=relu"):
        load_hf(str(tmp_path))


def test_missing_dir(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        load_hf(str(tmp_path / "nope"))


def test_hub_name_offline_not_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="local directory saved with save_pretrained") as e:
        load_hf("gpt2")
    assert "\n" not in str(e.value)
    # the offline recipe: download where there is network, then --hf DIR
    assert "(HF_HUB_OFFLINE=1 is set)" in str(e.value)
    assert "`hf download gpt2 config.json model.safetensors --local-dir DIR`" in str(e.value)
    assert "pass --hf DIR" in str(e.value)


def test_hub_unreachable_or_refusing_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No route (what the hub's client raises, hidden in huggingface_hub's own error): the
    offline recipe; the hub answering no: what it said, and which names to give."""
    import importlib

    import huggingface_hub
    from huggingface_hub import errors

    http = importlib.import_module(errors.Response.__module__.split(".")[0])  # httpx (or a copy)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")

    def unreachable(repo_id: str, **kw: object) -> str:
        try:
            raise http.ConnectError("[Errno 111] Connection refused")
        except Exception as e:
            raise errors.LocalEntryNotFoundError("cannot find the snapshot folder") from e

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(UserError) as e:
        load_hf("gpt2-medium")
    msg = str(e.value)
    assert msg.startswith("cannot reach the Hugging Face hub for 'gpt2-medium' (")
    assert "hf download gpt2-medium config.json model.safetensors" in msg and "--hf DIR" in msg
    assert "\n" not in msg

    def refused(repo_id: str, **kw: object) -> str:
        request = http.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
        raise errors.RepositoryNotFoundError(
            "401 Client Error. Repository Not Found", response=http.Response(401, request=request)
        )

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refused)
    with pytest.raises(UserError) as e:
        load_hf("gtp2")
    msg = str(e.value)
    assert msg.startswith("the Hugging Face hub refused 'gtp2' (RepositoryNotFoundError: 401")
    assert "gpt2, gpt2-medium" in msg and "hf download" not in msg and "\n" not in msg


def test_mismatched_weights_named_in_one_line(tmp_path: Path):
    ref = hf_model(2, 2, 64, vocab=100)
    ref.save_pretrained(tmp_path)
    sd = safetensors_torch.load_file(tmp_path / "model.safetensors")
    del sd["transformer.h.1.mlp.c_fc.bias"]
    sd["transformer.h.0.attn.c_proj.weight"] = torch.zeros(64, 32)
    sd["transformer.h.0.extra"] = torch.zeros(1)
    safetensors_torch.save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError) as e:
        load_hf(str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg
    assert "missing transformer.h.1.mlp.c_fc.bias" in msg
    assert "unexpected transformer.h.0.extra" in msg
    assert "transformer.h.0.attn.c_proj.weight" in msg and "shape mismatch" in msg


def test_overwrite_replaces_only_a_previous_export(tmp_path: Path):
    """--overwrite replaces a previous export (it carries our marker), never another directory."""
    model = GPT(ModelConfig(n_layer=1, n_head=1, n_embd=16, block_size=16, vocab_size=64))
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(UserError, match=str(out)):
            save_hf(model, out, overwrite=overwrite)
        assert (out / "precious.txt").read_text() == "keep me"
    export = tmp_path / "export"
    save_hf(model, export)
    assert (export / "gpt2repro_export.json").is_file()
    with pytest.raises(UserError, match="holds a previous export; pass --overwrite"):
        save_hf(model, export)
    (export / "notes.txt").write_text("the user's, beside the export")
    with pytest.raises(UserError, match="also holds notes.txt"):
        save_hf(model, export, overwrite=True)  # a marker alone does not make it ours
    (export / "notes.txt").unlink()
    (export / "config.json").write_text("{}")  # a stale file of the old export
    save_hf(model, export, overwrite=True)
    assert (export / "config.json").read_text() != "{}"
    assert (export / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "out"]  # no temp/old dirs


def test_export_files_get_the_usual_modes(tmp_path: Path):
    import os
    import stat

    model = GPT(ModelConfig(n_layer=1, n_head=1, n_embd=16, block_size=16, vocab_size=64))
    out = save_hf(model, tmp_path / "out")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f.name


def test_save_hf_wants_raw_model(tmp_path: Path):
    model = GPT(ModelConfig(n_layer=1, n_head=1, n_embd=16, block_size=16, vocab_size=64))
    with pytest.raises(TypeError, match="raw GPT"):
        save_hf(torch.nn.Sequential(model), tmp_path / "x")  # type: ignore[arg-type]


PARAMS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


@pytest.mark.parametrize("name", list(GPT2_SIZES))
def test_param_count_matches_hf(name: str):
    n_layer, n_head, n_embd = GPT2_SIZES[name]
    with torch.device("meta"):
        ours = GPT(gpt2_config(name))
        hf = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd)
        )
    n_hf = sum(p.numel() for p in hf.parameters())  # tied head counted once
    assert ours.num_params() == n_hf == PARAMS[name]


def test_export_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    import gpt2repro.checkpoint
    from gpt2repro.errors import run_cli
    from gpt2repro.export import main

    torch.manual_seed(0)
    ours = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=100))
    seen = []
    monkeypatch.setattr(
        gpt2repro.checkpoint, "load_model", lambda path, device: seen.append(path) or ours
    )
    monkeypatch.setattr(gpt2repro.checkpoint, "resolve", lambda path: Path(path))
    out = tmp_path / "exp"
    assert run_cli(main, ["--checkpoint", "runs/x", "--out", str(out)]) == 0
    assert seen == [Path("runs/x")] and "wrote" in capsys.readouterr().out
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    idx = torch.randint(0, 100, (1, 9))
    torch.testing.assert_close(hf_logits(hf, idx), our_logits(ours, idx), atol=1e-5, rtol=0)
    assert run_cli(main, ["--checkpoint", "runs/x", "--out", str(out)]) == 2
    assert "holds a previous export; pass --overwrite" in capsys.readouterr().err


def test_mistyped_local_path_is_not_sent_to_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="runs/exprot does not exist"):
        load_hf("runs/exprot")
