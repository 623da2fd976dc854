"""Sample text from a trained checkpoint or a Hugging Face GPT-2.

    python -m gpt2repro.sample --checkpoint runs/gpt2_124m --prompt "The meaning of life is"
    python -m gpt2repro.sample --hf gpt2 --temperature 0 --max-new-tokens 32 --json

`--checkpoint` takes a run directory (newest checkpoint), its checkpoint directory or one step
directory. `--device` is training's `--train.device` (either spelling). `--temperature 0` is
greedy decoding, and so is any temperature below GREEDY_BELOW (1e-6): dividing the logits by it
would overflow float32, and it is greedy in all but exact ties; otherwise top-k sampling at that
temperature (`--top-k 0` = full distribution). `--seed` (0 to 2**63 - 1) makes sampling
reproducible on the same device. `--num-samples` is at most MAX_SAMPLES (one batch).

`--json` prints one object: `prompt` (str), `prompt_tokens` (list of ids), `tokens` (the generated
ids only, without the prompt) and `text` (the decoded generated text). With `--num-samples 1`
`tokens` is a list of ids and `text` a string; with more, `tokens` is a list of lists and `text` a
list of strings, one per sample. Generation does not stop at <|endoftext|>: exactly
`--max-new-tokens` tokens are produced per sample.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

import torch

from gpt2repro import precision
from gpt2repro.config import (
    NON_NEGATIVE,
    SAMPLE_PROMPT,
    SEED,
    Range,
    ShowDefaults,
    add_option,
    parse_verb_args,
)
from gpt2repro.dist import pick_device
from gpt2repro.errors import UserError, add_debug_flag, run_cli
from gpt2repro.hf import load_model_or_hf
from gpt2repro.model import GPT
from gpt2repro.tokenizer import EOT, EOT_TEXT, get_encoding

if TYPE_CHECKING:  # annotations only: training imports this module, and must not need tiktoken
    import tiktoken

# Temperatures below this sample greedily: logits / 1e-38 overflow float32 to inf (NaN
# probabilities), and at 1e-6 only logits within about 1e-5 of the best would ever be drawn.
GREEDY_BELOW = 1e-6
# Samples are one batch: more than this is a typo, not a request (memory grows with it).
MAX_SAMPLES = 1024


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gpt2repro.sample",
        description="Generate text with GPT.generate (KV cache) from a checkpoint or an HF GPT-2.",
        formatter_class=ShowDefaults,
    )
    add_debug_flag(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="run dir, checkpoint dir or step dir of gpt2repro")
    src.add_argument("--hf", help="HF GPT-2: hub name (gpt2 ... gpt2-xl) or save_pretrained dir")
    p.add_argument("--prompt", default=SAMPLE_PROMPT, help="text to continue ('' = <|endoftext|>)")
    add_option(
        p,
        "--max-new-tokens",
        type=int,
        default=64,
        check=NON_NEGATIVE,
        help="tokens to generate per sample",
    )
    add_option(
        p,
        "--temperature",
        type=float,
        default=0.8,
        check=NON_NEGATIVE,
        help=f"0 (or below {GREEDY_BELOW:g}) = greedy (argmax)",
    )
    add_option(
        p,
        "--top-k",
        type=int,
        default=50,
        check=NON_NEGATIVE,
        help="sample among the k likeliest; 0 = all",
    )
    add_option(
        p, "--seed", type=int, default=None, check=SEED, help="seed for reproducible sampling"
    )
    add_option(
        p,
        "--num-samples",
        type=int,
        default=1,
        check=Range(lo=1, hi=MAX_SAMPLES),
        help="independent samples (one batch)",
    )
    p.add_argument("--no-kv-cache", action="store_true", help="re-run the full context each step")
    p.add_argument("--json", action="store_true", help="print one JSON object (see module doc)")
    return p


def sample(
    model: GPT,
    prompt_tokens: list[int],
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    num_samples: int = 1,
    seed: int | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """Generated ids (prompt excluded), one list per sample. `seed` seeds a generator on the
    model's device. Under a caller's `precision.autocast` the model runs in its dtype. A
    temperature below GREEDY_BELOW is greedy (0)."""
    if temperature < GREEDY_BELOW:
        temperature = 0.0  # dividing by it would overflow: greedy is its limit anyway
    device = model.transformer.wte.weight.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    idx = torch.tensor([prompt_tokens] * num_samples, dtype=torch.long, device=device)  # [B, T0]
    out = model.generate(
        idx,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k or None,
        generator=generator,
        use_cache=use_cache,
    )  # [B, T0 + max_new_tokens]
    return out[:, len(prompt_tokens) :].tolist()


def decode_continuation(
    enc: tiktoken.Encoding, prompt_tokens: list[int], generated: list[int]
) -> str:
    """The text of `generated` after the prompt. Prompt + continuation are decoded as bytes and
    the prompt's bytes dropped: a character whose bytes straddle the boundary is decoded whole
    instead of as two replacement characters."""
    prompt_bytes = enc.decode_bytes(prompt_tokens)
    whole = enc.decode_bytes(prompt_tokens + generated)
    return whole[len(prompt_bytes) :].decode("utf-8", errors="replace")


def complete(
    model: GPT,
    prompt: str,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    seed: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> str:
    """Prompt -> generate -> text: `prompt` followed by its sampled continuation (one sample).

    Used by the training loop's samples and `make demo`; the CLI below adds several samples,
    JSON and special tokens. At most as many tokens as fit the context after the prompt.
    """
    enc = get_encoding()
    prompt_tokens = enc.encode_ordinary(prompt) or [EOT]
    n = max(0, min(max_new_tokens, model.config.block_size - len(prompt_tokens)))
    device = model.transformer.wte.weight.device
    with precision.autocast(device, autocast_dtype):  # training's precision
        generated = sample(
            model, prompt_tokens, max_new_tokens=n, temperature=temperature, top_k=top_k, seed=seed
        )[0]
    return prompt + decode_continuation(enc, prompt_tokens, generated)


def main(argv: list[str]) -> int:
    # The one setting sample shares with training: the device, also spelled --device.
    cfg, args = parse_verb_args(
        argv, _parser(), keys=("train.device",), aliases={"--device": "train.device"}
    )
    device = pick_device(cfg.train.device, option=args.config_flags["train.device"])
    enc = get_encoding()
    prompt_tokens = enc.encode(args.prompt, allowed_special={EOT_TEXT}) or [EOT]
    model = load_model_or_hf(checkpoint=args.checkpoint, hf=args.hf, device=device)
    model_cfg = model.config
    if max(prompt_tokens) >= model_cfg.vocab_size:
        raise UserError(
            f"the prompt has token id {max(prompt_tokens)} but the model's vocab_size is "
            f"{model_cfg.vocab_size}; this model was not trained with the GPT-2 tokenizer"
        )
    use_cache = not args.no_kv_cache
    if use_cache and len(prompt_tokens) + args.max_new_tokens > model_cfg.block_size:
        raise UserError(
            f"prompt ({len(prompt_tokens)} tokens) + --max-new-tokens ({args.max_new_tokens}) "
            f"exceeds the context of {model_cfg.block_size}; shorten them or pass --no-kv-cache "
            "(the context then slides)"
        )
    if args.seed is not None:
        torch.manual_seed(args.seed)
    generated = sample(
        model,
        prompt_tokens,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        num_samples=args.num_samples,
        seed=args.seed,
        use_cache=use_cache,
    )
    texts = [decode_continuation(enc, prompt_tokens, t) for t in generated]
    if args.json:
        single = args.num_samples == 1
        obj = {
            "prompt": args.prompt,
            "prompt_tokens": prompt_tokens,
            "tokens": generated[0] if single else generated,
            "text": texts[0] if single else texts,
        }
        print(json.dumps(obj, ensure_ascii=False))
    else:
        for i, text in enumerate(texts):
            if args.num_samples > 1:
                print(f"--- sample {i + 1}/{args.num_samples}")
            print(args.prompt + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
