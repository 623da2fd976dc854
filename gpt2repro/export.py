"""Export a gpt2repro checkpoint as a Hugging Face GPT-2 directory (see docs/hf.md).

    python -m gpt2repro.export --checkpoint runs/gpt2_124m --out exports/gpt2_124m

`--checkpoint` takes a run directory (newest checkpoint), its checkpoint directory or one step
directory. `--out` must lie outside every run directory (a directory holding `ckpt/`): training
prunes and moves files there, and would take the export with them. The output loads with `GPT2LMHeadModel.from_pretrained(OUT)` and
`AutoTokenizer.from_pretrained(OUT)`, e.g. for lm-evaluation-harness.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt2repro.config import ShowDefaults, parse_verb_args
from gpt2repro.errors import UserError, add_debug_flag, run_cli


def check_outside_runs(out: Path, flag: str) -> None:
    """Refuse an output directory inside a run directory (one that holds `ckpt/`) at any depth:
    checkpoint pruning and `--checkpoint.resume=restart` delete or move what is there."""
    out = Path(out).expanduser()
    spelled, real = out.absolute(), out.resolve()  # as written, and through any links
    for directory in dict.fromkeys([spelled, *spelled.parents, real, *real.parents]):
        if (directory / "ckpt").is_dir():
            raise UserError(
                f"{flag} {out} lies inside the run directory {directory} (it holds ckpt/), where "
                "training prunes and moves files; choose an output directory outside it, "
                f"e.g. exports/{directory.name}"
            )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m gpt2repro.export",
        description=__doc__.split("\n")[0],
        formatter_class=ShowDefaults,
    )
    add_debug_flag(p)
    p.add_argument("--checkpoint", required=True, help="run dir, checkpoint dir or step dir")
    p.add_argument(
        "--out", required=True, help="output directory outside any run (written atomically)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a previous export at --out (only that)"
    )
    _, args = parse_verb_args(argv, p)  # no settings shared with training: it loads on the CPU

    # Imported after parsing: `--help` and a bad flag answer without loading torch.
    from gpt2repro.atomic import check_output_path
    from gpt2repro.checkpoint import load_model, resolve
    from gpt2repro.hf import check_export_target, save_hf

    ckpt = resolve(args.checkpoint)
    out_dir = Path(args.out).expanduser()
    check_export_target(out_dir, args.overwrite, protect=ckpt)  # before loading anything
    check_outside_runs(out_dir, "--out")
    check_output_path(out_dir, "--out", directory=True)  # not under a file, and writable
    model = load_model(ckpt, "cpu")
    out = save_hf(model, out_dir, overwrite=args.overwrite, protect=ckpt)
    print(f"wrote {out} ({model.num_params():,} parameters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
