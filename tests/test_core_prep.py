"""data_prep/core.py: the bundle from a local zip or folder, recorded in a manifest and verified on
every later run; a changed bundle and an offline download are one line and leave nothing behind;
the Hugging Face mappings turn fixture rows of each dataset's format into CORE's three kinds."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from gpt2repro import core
from gpt2repro.errors import UserError
from gpt2repro.prep import core as prep

BUNDLE = Path(__file__).parent / "fixtures" / "core_bundle"


def make_zip(path: Path, bundle: Path = BUNDLE) -> Path:
    """A zip in the eval bundle's layout: everything under a top-level eval_bundle/."""
    with zipfile.ZipFile(path, "w") as z:
        for p in sorted(bundle.rglob("*")):
            if p.is_file():
                z.write(p, f"eval_bundle/{p.relative_to(bundle).as_posix()}")
    return path


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_zip_is_recorded_then_verified(tmp_path: Path, capsys) -> None:
    zip_path = make_zip(tmp_path / "eval_bundle.zip")
    out = tmp_path / "data" / "core"
    bundle = prep.prepare(out, bundle=zip_path, quiet=True)
    assert bundle == out / "eval_bundle" and (bundle / "core.yaml").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["zip_sha256"] == prep.sha256_file(zip_path)
    assert manifest["zip_bytes"] == zip_path.stat().st_size
    assert set(manifest["files"]) == {p for p in listing(BUNDLE) if "." in Path(p).name}
    assert [t["label"] for t in manifest["tasks"]] == [
        t.spec.label for t in core.load_tasks(BUNDLE)
    ]
    assert manifest["baseline_version"] == "n/a"
    assert listing(out) == [
        "eval_bundle",
        *[f"eval_bundle/{p}" for p in listing(BUNDLE)],
        "manifest.json",
    ]
    # a later run verifies against the record, downloads nothing
    prep.prepare(out)
    assert "present and valid (6 tasks)" in capsys.readouterr().out
    # the evaluation reads the prepared folder
    assert len(core.load_tasks(bundle)) == 6
    # a changed file is found
    (bundle / "eval_data" / "lm_zeroshot.jsonl").write_text(
        '{"context": "a", "continuation": "b"}\n'
    )
    with pytest.raises(
        UserError, match="differs from .*manifest.json .first: eval_data/lm_zeroshot"
    ):
        prep.prepare(out)


def test_a_changed_bundle_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "core"
    prep.prepare(out, bundle=make_zip(tmp_path / "a.zip"), quiet=True)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = tmp_path / "other"
    shutil.copytree(BUNDLE, other)
    (other / "eval_data" / "mc_zeroshot.jsonl").write_text(
        '{"query": "q", "choices": ["a", "b"], "gold": 0}\n'
    )
    with pytest.raises(UserError, match="differs from the one recorded .*delete"):
        prep.prepare(out, bundle=make_zip(tmp_path / "b.zip", other), quiet=True)
    with pytest.raises(UserError, match="files differ from those recorded"):
        prep.prepare(out, bundle=other, quiet=True)  # a folder: its files are compared
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_folder_and_its_parent_are_accepted(tmp_path: Path) -> None:
    parent = tmp_path / "unzipped"
    shutil.copytree(BUNDLE, parent / "eval_bundle")
    for src in (parent, parent / "eval_bundle"):
        out = tmp_path / f"out-{src.name}"
        prep.prepare(out, bundle=src, quiet=True)
        manifest = json.loads((out / "manifest.json").read_text())
        assert "zip_sha256" not in manifest and manifest["source"]["kind"] == "local"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.zip", "does not exist"),
        (lambda d: (d / "x.zip").write_bytes(b"not a zip") and d / "x.zip", "not a readable zip"),
        (lambda d: make_zip(d / "e.zip", d / "empty"), "holds no core.yaml"),
    ],
)
def test_bad_bundle_paths_are_one_line(tmp_path: Path, make, message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    src = make(tmp_path)
    with pytest.raises(UserError, match=message) as e:
        prep.prepare(tmp_path / "out" / "core", bundle=src, quiet=True)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing left behind


def test_offline_download_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(prep, "BUNDLE_URL", "http://127.0.0.1:9/eval_bundle.zip")
    with pytest.raises(UserError, match="cannot download .*--bundle PATH/eval_bundle.zip") as e:
        prep.prepare(tmp_path / "data" / "core", quiet=True)
    assert "\n" not in str(e.value)
    assert listing(tmp_path) == []


def test_baseline_version() -> None:
    assert prep.baseline_version({"commonsense_qa": 20.0, "agi_eval_lsat_ar": 20.0}) == "v1"
    v2 = {"commonsense_qa": 40.3, "agi_eval_lsat_ar": 25.0, "bigbench_language_identification": 25}
    assert prep.baseline_version(v2) == "v2"
    assert prep.baseline_version({"commonsense_qa": 20.0, "agi_eval_lsat_ar": 25.0}) == "mixed"
    assert prep.baseline_version({"piqa": 50.0}) == "n/a"


# --------------------------------------------------------------------------- Hugging Face

# One row of each dataset, in the format its Hugging Face copy has.
HF_ROWS = {
    "arc_easy": {
        "question": "Which is a gas?",
        "choices": {"text": ["ice", "steam", "rock"], "label": ["A", "B", "C"]},
        "answerKey": "B",
    },
    "arc_challenge": {
        "question": "What is 2+2?",
        "choices": {"text": ["3", "4", "5", "6"], "label": ["1", "2", "3", "4"]},
        "answerKey": "2",
    },
    "piqa": {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0},
    "openbook_qa": {
        "question_stem": "The sun is",
        "choices": {"text": ["a star", "a moon", "a rock", "ice"], "label": list("ABCD")},
        "answerKey": "A",
    },
    "boolq": {"question": "is water wet", "passage": "Water is wet.", "answer": True},
    "copa": {
        "premise": "The man fell.",
        "choice1": "He slipped.",
        "choice2": "He sang.",
        "question": "cause",
        "label": 0,
    },
    "hellaswag_zeroshot": {"ctx": "A man walks", "endings": ["a", "b", "c", "d"], "label": "2"},
    "hellaswag": {"ctx": "A dog runs", "endings": ["w", "x", "y", "z"], "label": "0"},
    "winogrande": {
        "sentence": "Ann gave Bea a gift because _ was kind.",
        "option1": "Ann",
        "option2": "Bea",
        "answer": "1",
    },
    "lambada_openai": {"text": "she opened the door and saw her old friend"},
}


def test_every_hf_task_has_a_fixture_row() -> None:
    assert set(HF_ROWS) == set(prep.HF_TASKS)


def test_hf_mappings() -> None:
    assert prep.map_arc(HF_ROWS["arc_easy"]) == {
        "query": "Question: Which is a gas?\nAnswer:",
        "choices": ["ice", "steam", "rock"],
        "gold": 1,
    }
    assert prep.map_arc(HF_ROWS["arc_challenge"])["gold"] == 1  # numeric labels "1".."4"
    assert prep.map_boolq(HF_ROWS["boolq"])["gold"] == 1
    copa = prep.map_copa(HF_ROWS["copa"])
    assert copa["query"] == "The man fell because" and copa["choices"] == [
        "he slipped.",
        "he sang.",
    ]
    assert prep.map_winogrande(HF_ROWS["winogrande"]) == {
        "context_options": ["Ann gave Bea a gift because Ann", "Ann gave Bea a gift because Bea"],
        "continuation": "was kind.",
        "gold": 0,
    }
    assert prep.map_lambada(HF_ROWS["lambada_openai"]) == {
        "context": "she opened the door and saw her old",
        "continuation": "friend",
    }
    with pytest.raises(ValueError, match="answer 'E'"):
        prep.map_arc({**HF_ROWS["arc_easy"], "answerKey": "E"})


def test_hf_rows_make_a_bundle_the_evaluation_reads(tmp_path: Path) -> None:
    """Every mapping's rows pass the evaluation's row check; the bundle loads and tokenizes,
    including 10-shot tasks (11 rows each here)."""
    rows = {label: [prep.HF_TASKS[label][3](HF_ROWS[label])] * 11 for label in prep.HF_TASKS}
    prep.write_hf_bundle(tmp_path / "b", rows)
    tasks = core.load_tasks(tmp_path / "b")
    assert [t.spec.label for t in tasks] == list(prep.HF_TASKS)
    kinds = {t.spec.label: t.spec.kind for t in tasks}
    assert kinds["winogrande"] == "schema" and kinds["lambada_openai"] == "language_modeling"
    assert all(len(t.items(11)) == 11 for t in tasks)
    assert {t.spec.label: t.spec.random_baseline for t in tasks}["boolq"] == 62.0


def test_hf_offline_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    with pytest.raises(UserError, match="cannot load allenai/ai2_arc/ARC-Easy .*--bundle") as e:
        prep.prepare_hf(["arc_easy"], tmp_path / "out", quiet=True)  # HF_DATASETS_OFFLINE=1
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="no Hugging Face mapping for mmlu"):
        prep.prepare_hf(["mmlu"], tmp_path / "out", quiet=True)
