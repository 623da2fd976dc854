"""The CORE eval bundle for gpt2repro.evaluate --core (and the in-loop CORE).

    python data_prep/core.py                              # download -> data/core/eval_bundle/
    python data_prep/core.py --bundle /mnt/eval_bundle.zip  # air-gapped: a local zip or directory
    python data_prep/core.py --hf-tasks arc_easy piqa ... # the tasks from Hugging Face instead

(or `gpt2repro prep core ...`, or `python -m gpt2repro.prep.core ...`).

The bundle is the zip nanochat's scripts/base_eval.py downloads (BUNDLE_URL): core.yaml,
eval_meta_data.csv and one JSONL per task under eval_data/. No sha256 of it is published, so the
first download records its size and sha256 in data/core/manifest.json (with every file's sha256,
the tasks and their random baselines) and every later run verifies against that record: a
changed bundle is refused, never silently used. The bundle is unpacked beside, validated (every
task read by the evaluation's own reader, gpt2repro.core) and only then moved into place.

`--hf-tasks` builds a bundle of the same layout from Hugging Face datasets (needs `datasets`),
mapped to the three kinds by the `map_*` functions below. Its prompts are ours, not the bundle's,
so its numbers are not comparable with nanochat's or GPT-2's published CORE (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from gpt2repro.atomic import check_output_path, publish_dir, sha256_file, write_json
from gpt2repro.core import load_tasks
from gpt2repro.errors import UserError, add_debug_flag, run_cli

BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
BUNDLE_DIR = "eval_bundle"  # inside --out-dir; the zip's own top-level folder has this name
MANIFEST = "manifest.json"
# DCLM's September 2025 baseline fix changed these three CORE tasks (percent, v1 -> v2):
# docs/reference.md. The manifest says which version a bundle's eval_meta_data.csv holds.
BASELINE_FIX = {
    "commonsense_qa": (20.0, 40.3),
    "agi_eval_lsat_ar": (20.0, 25.0),
    "bigbench_language_identification": (9.1, 25.0),
}
OFFLINE_HINT = (
    f"offline, download {BUNDLE_URL} elsewhere and run python data_prep/core.py --bundle "
    "PATH/eval_bundle.zip"
)


# --------------------------------------------------------------------------- the bundle


@contextlib.contextmanager
def _made_dir(out: Path) -> Iterator[None]:
    """Create `out` (and missing parents) for the work inside; on a failure, remove what this
    created, so a refused run leaves the file system as it found it."""
    top = out
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    created = not top.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if created:
            shutil.rmtree(top, ignore_errors=True)
        raise


def baseline_version(baselines: dict[str, float]) -> str:
    """'v1' (before DCLM's September 2025 fix), 'v2' (after), 'mixed', or 'n/a' (none of the
    three tasks the fix changed)."""
    seen = set()
    for label, (v1, v2) in BASELINE_FIX.items():
        if label in baselines:
            seen.add("v1" if baselines[label] == v1 else "v2" if baselines[label] == v2 else "?")
    if not seen:
        return "n/a"
    return seen.pop() if len(seen) == 1 and "?" not in seen else "mixed"


def file_hashes(bundle: Path) -> dict[str, str]:
    """sha256 of every file under `bundle`, by its path relative to it."""
    return {
        p.relative_to(bundle).as_posix(): sha256_file(p)
        for p in sorted(bundle.rglob("*"))
        if p.is_file()
    }


def validate_bundle(bundle: Path) -> list[dict[str, Any]]:
    """Read every task of the bundle as the evaluation does; its tasks as manifest entries."""
    tasks = load_tasks(bundle)
    return [
        {
            "label": t.spec.label,
            "kind": t.spec.kind,
            "shots": t.spec.num_fewshot,
            "n": len(t.rows),
            "random_baseline": t.spec.random_baseline,
        }
        for t in tasks
    ]


def _bundle_root(tree: Path, shown: str) -> Path:
    """The folder holding core.yaml: `tree` itself or its one eval_bundle/ (the zip's layout)."""
    for root in (tree, tree / BUNDLE_DIR):
        if (root / "core.yaml").is_file():
            return root
    raise UserError(
        f"{shown} holds no core.yaml (nor {BUNDLE_DIR}/core.yaml); is it the CORE eval bundle? "
        f"download {BUNDLE_URL}"
    )


def _extract(zip_path: Path, dest: Path, shown: str) -> None:
    try:
        with zipfile.ZipFile(zip_path) as z:
            for name in z.namelist():
                if name.startswith(("/", "\\")) or ".." in Path(name).parts:
                    raise UserError(f"{shown} holds an unsafe path {name!r}; not the CORE bundle")
            z.extractall(dest)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(
            f"{shown} is not a readable zip ({e}); download {BUNDLE_URL} again"
        ) from None


def _install(source: Path, out: Path, record: dict[str, Any], quiet: bool) -> Path:
    """Unpack (zip) or copy (directory) `source` beside out/eval_bundle, validate it, check it
    against the manifest's record, then move it into place and write the manifest."""
    manifest_path = out / MANIFEST
    old = _read_manifest(manifest_path)
    if (
        old
        and record.get("zip_sha256")
        and old.get("zip_sha256") not in (None, record["zip_sha256"])
    ):
        raise UserError(
            f"the bundle's sha256 {record['zip_sha256']} differs from the one recorded in "
            f"{manifest_path} ({old['zip_sha256']}): the bundle changed; delete {manifest_path} "
            "to accept the new one (its numbers may differ from earlier runs')"
        )
    staging = Path(tempfile.mkdtemp(prefix=".eval_bundle-", dir=out))
    try:
        if source.is_dir():
            shutil.copytree(_bundle_root(source, str(source)), staging / BUNDLE_DIR)
        else:
            _extract(source, staging / "unzipped", str(source))
            shutil.move(_bundle_root(staging / "unzipped", str(source)), staging / BUNDLE_DIR)
        try:
            tasks = validate_bundle(staging / BUNDLE_DIR)
        except UserError as e:  # name the user's bundle, not the staging copy
            shown = str(_bundle_root(source, str(source))) if source.is_dir() else f"{source}:"
            raise UserError(str(e).replace(str(staging / BUNDLE_DIR), shown)) from None
        baselines = {t["label"]: t["random_baseline"] for t in tasks}
        manifest = {
            **record,
            "files": file_hashes(staging / BUNDLE_DIR),
            "baseline_version": baseline_version(baselines),
            "tasks": tasks,
        }
        if old and old.get("files") and old["files"] != manifest["files"]:
            raise UserError(
                f"the bundle's files differ from those recorded in {manifest_path}: the bundle "
                f"changed; delete {manifest_path} to accept it"
            )
        publish_dir(staging / BUNDLE_DIR, out / BUNDLE_DIR)
        write_json(manifest_path, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not quiet:
        print(f"{out / BUNDLE_DIR}: {len(tasks)} tasks (baselines {manifest['baseline_version']})")
    return out / BUNDLE_DIR


def _read_manifest(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({e}); delete it and run again") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path} is not a CORE bundle manifest; delete it and run again")
    return manifest


def verify(out: Path) -> dict[str, Any]:
    """Check out/eval_bundle against the manifest's recorded file hashes; the manifest."""
    manifest_path = out / MANIFEST
    manifest = _read_manifest(manifest_path)
    if manifest is None:
        raise UserError(f"{manifest_path} not found; run python data_prep/core.py")
    got = file_hashes(out / BUNDLE_DIR)
    if got != manifest.get("files"):
        changed = sorted(set(got.items()) ^ set(manifest.get("files", {}).items()))
        name = changed[0][0] if changed else "?"
        raise UserError(
            f"{out / BUNDLE_DIR} differs from {manifest_path} (first: {name}); delete the folder "
            "and run python data_prep/core.py again"
        )
    return manifest


def _download(dest: Path, quiet: bool) -> None:
    try:
        response = urllib.request.urlopen(BUNDLE_URL, timeout=60)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise UserError(
            f"cannot download {BUNDLE_URL} ({getattr(e, 'reason', e)}); {OFFLINE_HINT}"
        ) from None
    bar = None
    with response, dest.open("wb") as f:
        length = response.headers.get("Content-Length")
        if not quiet:
            from tqdm import tqdm  # an optional package (the `data` extra), for the bar only

            total = int(length) if length else None
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name)
        try:
            for block in iter(lambda: response.read(1 << 20), b""):
                f.write(block)
                if bar is not None:
                    bar.update(len(block))
        except (urllib.error.URLError, OSError) as e:
            raise UserError(f"download of {BUNDLE_URL} broke off ({e}); run again") from None
        finally:
            if bar is not None:
                bar.close()


def prepare(
    out_dir: str | Path = "data/core",
    bundle: str | Path | None = None,
    force: bool = False,
    quiet: bool = False,
) -> Path:
    """The verified bundle folder out_dir/eval_bundle: kept when present and matching its
    manifest, else downloaded (or taken from `bundle`, a zip or directory) and recorded."""
    out = check_output_path(out_dir, "--out-dir", directory=True)
    if bundle is None and not force and (out / BUNDLE_DIR / "core.yaml").is_file():
        manifest = verify(out)
        if not quiet:
            print(f"{out / BUNDLE_DIR}: present and valid ({len(manifest['tasks'])} tasks)")
        return out / BUNDLE_DIR
    if bundle is not None:
        src = Path(bundle)
        if not src.exists():
            raise UserError(f"--bundle {src} does not exist; download {BUNDLE_URL} to it first")
        record: dict[str, Any] = {"source": {"kind": "local", "path": str(src)}}
        if src.is_file():
            record.update(zip_sha256=sha256_file(src), zip_bytes=src.stat().st_size)
        with _made_dir(out):
            return _install(src, out, record, quiet)
    with _made_dir(out):
        return _download_and_install(out, quiet)


def _download_and_install(out: Path, quiet: bool) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=out))
    try:
        zip_path = tmp / "eval_bundle.zip"
        _download(zip_path, quiet)
        record = {
            "source": {"kind": "url", "url": BUNDLE_URL},
            "zip_sha256": sha256_file(zip_path),
            "zip_bytes": zip_path.stat().st_size,
        }
        return _install(zip_path, out, record, quiet)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- Hugging Face tasks


def _choice_index(labels: list[str], key: str) -> int:
    if key not in labels:
        raise ValueError(f"answer {key!r} is not one of the choice labels {labels}")
    return labels.index(key)


def map_arc(row: dict) -> dict:
    """allenai/ai2_arc (ARC-Easy, ARC-Challenge) -> multiple choice."""
    labels = list(row["choices"]["label"])
    return {
        "query": f"Question: {row['question']}\nAnswer:",
        "choices": list(row["choices"]["text"]),
        "gold": _choice_index(labels, row["answerKey"]),
    }


def map_openbookqa(row: dict) -> dict:
    """allenai/openbookqa (main) -> multiple choice."""
    labels = list(row["choices"]["label"])
    return {
        "query": row["question_stem"],
        "choices": list(row["choices"]["text"]),
        "gold": _choice_index(labels, row["answerKey"]),
    }


def map_piqa(row: dict) -> dict:
    """PIQA (goal, sol1, sol2, label) -> multiple choice."""
    return {
        "query": f"Question: {row['goal']}\nAnswer:",
        "choices": [row["sol1"], row["sol2"]],
        "gold": int(row["label"]),
    }


def map_boolq(row: dict) -> dict:
    """google/boolq (question, passage, answer) -> multiple choice over no / yes."""
    return {
        "query": f"Passage: {row['passage']}\nQuestion: {row['question']}?\nAnswer:",
        "choices": ["no", "yes"],
        "gold": int(bool(row["answer"])),
    }


def map_copa(row: dict) -> dict:
    """COPA (premise, choice1, choice2, question cause/effect, label) -> multiple choice: the
    premise joined to the choice by "because" or "therefore"."""
    joint = " because" if row["question"] == "cause" else " therefore"

    def lower_first(s: str) -> str:
        return s[:1].lower() + s[1:]

    return {
        "query": row["premise"].rstrip(".") + joint,
        "choices": [lower_first(row["choice1"]), lower_first(row["choice2"])],
        "gold": int(row["label"]),
    }


def map_hellaswag(row: dict) -> dict:
    """Rowan/hellaswag (ctx, endings, label as a string) -> multiple choice."""
    return {"query": row["ctx"], "choices": list(row["endings"]), "gold": int(row["label"])}


def map_winogrande(row: dict) -> dict:
    """allenai/winogrande (sentence with one "_", option1, option2, answer "1"/"2") -> schema:
    the sentence up to the blank, filled with each option, and the shared rest."""
    sentence = row["sentence"]
    cut = sentence.index("_")
    return {
        "context_options": [sentence[:cut] + row["option1"], sentence[:cut] + row["option2"]],
        "continuation": sentence[cut + 1 :].strip(),
        "gold": int(row["answer"]) - 1,
    }


def map_lambada(row: dict) -> dict:
    """EleutherAI/lambada_openai (text) -> language modelling: the passage, then its last word."""
    context, last = row["text"].rsplit(" ", 1)
    return {"context": context, "continuation": last}


# label -> (HF path, config, split, mapping, kind, shots, random baseline in percent): CORE's
# labels, shots and DCLM's baselines; the prompts are our mapping's.
HF_TASKS: dict[str, tuple[str, str | None, str, Callable[[dict], dict], str, int, float]] = {
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test", map_arc, "multiple_choice", 10, 25.0),
    "arc_challenge": (
        "allenai/ai2_arc",
        "ARC-Challenge",
        "test",
        map_arc,
        "multiple_choice",
        10,
        25.0,
    ),
    "piqa": ("ybisk/piqa", None, "validation", map_piqa, "multiple_choice", 10, 50.0),
    "openbook_qa": (
        "allenai/openbookqa",
        "main",
        "test",
        map_openbookqa,
        "multiple_choice",
        0,
        25.0,
    ),
    "boolq": ("google/boolq", None, "validation", map_boolq, "multiple_choice", 10, 62.0),
    "copa": ("super_glue", "copa", "validation", map_copa, "multiple_choice", 0, 50.0),
    "hellaswag_zeroshot": (
        "Rowan/hellaswag",
        None,
        "validation",
        map_hellaswag,
        "multiple_choice",
        0,
        25.0,
    ),
    "hellaswag": (
        "Rowan/hellaswag",
        None,
        "validation",
        map_hellaswag,
        "multiple_choice",
        10,
        25.0,
    ),
    "winogrande": (
        "allenai/winogrande",
        "winogrande_xl",
        "validation",
        map_winogrande,
        "schema",
        0,
        50.0,
    ),
    "lambada_openai": (
        "EleutherAI/lambada_openai",
        "en",
        "test",
        map_lambada,
        "language_modeling",
        0,
        0.0,
    ),
}


def _hf_rows(label: str) -> Iterable[dict]:
    path, config, split, *_ = HF_TASKS[label]
    try:
        import datasets  # optional package (the `data` extra)
    except ImportError:
        raise UserError("--hf-tasks needs the `datasets` package: pip install datasets") from None
    try:
        return datasets.load_dataset(path, config, split=split)
    except Exception as e:  # network and hub errors come in many types
        raise UserError(
            f"cannot load {path}{'/' + config if config else ''} from Hugging Face "
            f"({type(e).__name__}); offline, use the bundle instead: python data_prep/core.py "
            "--bundle PATH/eval_bundle.zip"
        ) from None


def prepare_hf(labels: list[str], out_dir: str | Path = "data/core", quiet: bool = False) -> Path:
    """out_dir/hf_bundle: a bundle (core.yaml, eval_meta_data.csv, eval_data/) of the `labels`
    tasks from Hugging Face, mapped to CORE's kinds. Not comparable with the eval bundle."""
    unknown = [x for x in labels if x not in HF_TASKS]
    if unknown:
        raise UserError(
            f"--hf-tasks: no Hugging Face mapping for {', '.join(unknown)}; choose from "
            f"{', '.join(HF_TASKS)}"
        )
    out = check_output_path(out_dir, "--out-dir", directory=True)
    rows = {label: [HF_TASKS[label][3](dict(r)) for r in _hf_rows(label)] for label in labels}
    with _made_dir(out):
        staging = Path(tempfile.mkdtemp(prefix=".hf_bundle-", dir=out))
        try:
            write_hf_bundle(staging, rows)
            tasks = validate_bundle(staging)
            publish_dir(staging, out / "hf_bundle")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not quiet:
        print(
            f"{out / 'hf_bundle'}: {len(tasks)} tasks from Hugging Face (not comparable with CORE)"
        )
    return out / "hf_bundle"


def write_hf_bundle(bundle: Path, rows: dict[str, list[dict]]) -> None:
    """Write mapped rows as a bundle: core.yaml, eval_meta_data.csv and eval_data/<label>.jsonl."""
    (bundle / "eval_data").mkdir(parents=True, exist_ok=True)
    config = ["icl_tasks:"]
    meta = ["Eval Task,Random baseline"]
    for label, task_rows in rows.items():
        *_, kind, shots, baseline = HF_TASKS[label]
        with (bundle / "eval_data" / f"{label}.jsonl").open("w", encoding="utf-8") as f:
            for r in task_rows:
                f.write(json.dumps(r) + "\n")
        config += [
            f"- label: {label}",
            f"  dataset_uri: {label}.jsonl",
            f"  num_fewshot: [{shots}]",
            f"  icl_task_type: {kind}",
            '  continuation_delimiter: " "',
        ]
        meta.append(f"{label},{baseline}")
    (bundle / "core.yaml").write_text("\n".join(config) + "\n", encoding="utf-8")
    (bundle / "eval_meta_data.csv").write_text("\n".join(meta) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- CLI


def main(argv: list[str]) -> int:
    """Fetch, copy or build the CORE bundle the arguments describe; 0 when done."""
    p = argparse.ArgumentParser(prog="data_prep/core.py", description=__doc__.split("\n")[0])
    add_debug_flag(p)
    p.add_argument("--out-dir", default="data/core", help="where eval_bundle/ and manifest.json go")
    p.add_argument(
        "--bundle", metavar="PATH", help="a local eval_bundle.zip or its unpacked folder"
    )
    p.add_argument("--force", action="store_true", help="download again even when present")
    p.add_argument(
        "--hf-tasks",
        nargs="+",
        metavar="LABEL",
        help=f"build out-dir/hf_bundle from Hugging Face instead ({', '.join(HF_TASKS)})",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.hf_tasks:
        if args.bundle:
            raise UserError("--hf-tasks and --bundle exclude each other; pass one")
        prepare_hf(args.hf_tasks, args.out_dir, quiet=args.quiet)
    else:
        prepare(args.out_dir, args.bundle, force=args.force, quiet=args.quiet)
    return 0


def cli(argv: list[str] | None = None) -> int:
    """The command line (data_prep/core.py, `gpt2repro prep core`): `main` with one-line
    errors. Returns the exit status."""
    return run_cli(main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
